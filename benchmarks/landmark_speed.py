"""featx's 5-point landmarks and dlib chip (featx.faces) against dlib's own C++, on the same photos and boxes.

    python benchmarks/landmark_speed.py --dat shape_predictor_5_face_landmarks.dat --photos 200 \\
        --dlib-python /work/scratch/facelmk-dlib/bin/python      # a Python with dlib (the baseline)

The first N photos of ../shared/data/utkface (decoded once, not timed), one fixed box each (12, 12, 167,
167: UTKFace chips are aligned, so dlib's HOG detector finds about that box). Timed: featx's landmarks
one face per call and all faces in one call (ShapePredictor.many), and featx's 150 px, padding 0.25 chip;
then, in a subprocess of --dlib-python, dlib.shape_predictor and dlib.get_face_chip on the same photos
and boxes, the two interleaved repeat by repeat. CPU time (process_time), best of --repeats, one thread
each (OMP/MKL/OpenBLAS set to 1); also checks the two agree (points equal, chips within one grey level).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

BOX = (12, 12, 167, 167)
DLIB = r"""
import json, sys, time, numpy as np, dlib
from PIL import Image
args = json.loads(sys.argv[1])
imgs = [np.asarray(Image.open(p).convert("RGB")) for p in args["paths"]]
sp, box = dlib.shape_predictor(args["dat"]), dlib.rectangle(*args["box"])
t0 = time.process_time(); shapes = [sp(a, box) for a in imgs]; t1 = time.process_time()
chips = [dlib.get_face_chip(a, s, 150, 0.25) for a, s in zip(imgs, shapes)]; t2 = time.process_time()
best_l, best_c = t1 - t0, t2 - t1
np.save(args["chips"], np.stack(chips))
print(json.dumps({"landmarks": best_l, "chips": best_c,
                  "points": [[[s.part(i).x, s.part(i).y] for i in range(5)] for s in shapes]}))
"""


def featx_times(sp, imgs: list[np.ndarray], best: dict) -> tuple[np.ndarray, np.ndarray]:
    from featx.backbones.dlib_resnet import DLIB5_CHIP
    from featx.faces.chip import cut

    t0 = time.process_time()
    for a in imgs:
        sp(a, [BOX])
    t1 = time.process_time()
    pts = sp.many(imgs, [[BOX]] * len(imgs))
    t2 = time.process_time()
    chips = [cut(a, DLIB5_CHIP, shape5=p[0]) for a, p in zip(imgs, pts)]
    t3 = time.process_time()
    for k, v in (("landmarks_one", t1 - t0), ("landmarks_many", t2 - t1), ("chips", t3 - t2)):
        best[k] = min(best.get(k, 1e9), v)
    return np.stack([p[0] for p in pts]), np.stack(chips)


def dlib_times(python: str, paths: list[str], dat: str, best: dict) -> tuple[np.ndarray, np.ndarray]:
    out = Path("/tmp") / f"landmark_speed_{os.getpid()}.npy"
    job = {"paths": paths, "dat": dat, "box": BOX, "chips": str(out)}
    res = json.loads(subprocess.run([python, "-c", DLIB, json.dumps(job)], check=True,
                                    capture_output=True, text=True).stdout)
    chips = np.load(out)
    out.unlink()
    for k in ("landmarks", "chips"):
        best[k] = min(best.get(k, 1e9), res[k])
    return np.array(res["points"]), chips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dat", required=True)
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dlib-python", help="a Python interpreter with dlib: the baseline")
    args = ap.parse_args()
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[v] = "1"
    paths = sorted(str(p) for p in (Path(args.shared) / "utkface" / "images").glob("*.jpg"))[: args.photos]
    imgs = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    n = len(imgs)
    from featx.faces.landmarks import ShapePredictor

    t0 = time.process_time()
    sp = ShapePredictor.from_file(args.dat)
    load, ours, theirs = time.process_time() - t0, {}, {}
    for _ in range(args.repeats):  # interleaved, so both see the same load on a shared machine
        pts, chips = featx_times(sp, imgs, ours)
        if args.dlib_python:
            their_pts, their_chips = dlib_times(args.dlib_python, paths, args.dat, theirs)
    print(f"featx: load {load:.2f} s; landmarks {1e3 * ours['landmarks_one'] / n:.2f} ms/face one per call, "
          f"{1e3 * ours['landmarks_many'] / n:.2f} ms/face in one call; chip {1e3 * ours['chips'] / n:.2f} ms/face "
          f"({n} photos, 200x200, CPU time, best of {args.repeats})")
    if not args.dlib_python:
        return
    same = int((np.abs(pts - their_pts).max((1, 2)) == 0).sum())
    diff = np.abs(chips.astype(int) - their_chips.astype(int)).max()
    print(f"dlib:  landmarks {1e3 * theirs['landmarks'] / n:.2f} ms/face, "
          f"chip {1e3 * theirs['chips'] / n:.2f} ms/face; featx / dlib time: "
          f"landmarks {ours['landmarks_one'] / theirs['landmarks']:.1f}x one per call, "
          f"{ours['landmarks_many'] / theirs['landmarks']:.1f}x batched; chip {ours['chips'] / theirs['chips']:.1f}x")
    print(f"agreement: {same}/{n} faces with dlib's very points; chips differ by at most {diff} grey level(s)")
    sys.exit(0 if same == n and diff <= 1 else 1)


if __name__ == "__main__":
    main()
