"""Face detector speed: featx's PyTorch port of dlib's CNN detector against dlib's own, and the backbone.

    python benchmarks/detect_speed.py --dlib-python /work/scratch/facedet-dlib/bin/python \\
        --frames /work/data/lfw500/images --n 48 --crops /work/shared/data/utkface --batch 16

In one run, on the same images, decoded once up front (only detection is timed):
  frames  N raw 250x250 photos (LFW-style frames: --frames FOLDER of images; without it, frames built
          from UTKFace photos: a face scaled to 120 px on a background of another photo, see `built_frames`);
  crops   N 200x200 UTKFace face crops.
dlib (dlib-bin in a scratch venv, `cnn_face_detection_model_v1(dat)(image, upsample)`) runs in a
subprocess that stays up; its chunks alternate with featx's so both see the same machine load. featx runs
fp32 on the CPU with several speed settings (min_face / max_face / precision) next to dlib's exact
geometry; each line gives img/s, the ratio to dlib at upsample 1 (frames) or 0 (crops), and agreement
with dlib: featx at dlib's geometry against dlib at the same upsampling, featx's own settings against
the ratio's base; for each face dlib found, the best IoU among featx's faces (recall at IoU 0.5, median
IoU of those, share >= 0.95) and the faces featx found beyond dlib's count. The dlib.resnet backbone
(featx's Extractor, release preprocessing, fp32) runs on the same crops at 150 px for the "backbone's
own rate", and featx's face stage (`FaceStage`, as `extract --faces align` and `predict` run it: large
faces first for extraction, every face from 80 px for predict; its searches alone, and with the 5
points and the chip) on both. dlib's CPU seconds per wall second are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featx.faces.detect import DetectOptions, FaceDetector
from featx.faces.models import DETECTOR, model_path

DLIB_WORKER = r"""
import json, sys, time
import dlib, numpy as np
det = dlib.cnn_face_detection_model_v1(sys.argv[1])
for line in sys.stdin:
    path, up = line.split()
    imgs = np.load(path)
    t, cpu = time.perf_counter(), time.process_time()
    out = [[[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence] for d in det(im, int(up))]
           for im in imgs]
    print(json.dumps({"seconds": time.perf_counter() - t, "cpu": time.process_time() - cpu, "boxes": out}), flush=True)
"""


def built_frames(utk: Path, n: int) -> list[np.ndarray]:
    """250x250 frames from UTKFace photos: photo k at 120 px, pasted at (65, 45) on photo k+1 scaled up."""
    paths = sorted((utk / "images").glob("*.jpg"))[: n + 1]
    out = []
    for a, b in zip(paths, paths[1:]):
        back = Image.open(b).convert("RGB").resize((250, 250), Image.BILINEAR)
        back.paste(Image.open(a).convert("RGB").resize((120, 120), Image.BILINEAR), (65, 45))
        out.append(np.asarray(back))
    return out


def folder_frames(folder: Path, n: int) -> list[np.ndarray]:
    """The first n .jpg images (sorted paths) of a folder tree."""
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.rglob("*.jpg"))[:n]]


def iou(a, b) -> float:
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]) + 1, min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(iw, 0) * max(ih, 0)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def agreement(got: list[list], ref: list[list]) -> str:
    """Each reference face's best IoU among the faces found: recall at IoU 0.5, median, share >= 0.95."""
    best = np.array([max([iou(g, r) for g in gs] or [0.0]) for gs, rs in zip(got, ref) for r in rs])
    hit = best[best >= 0.5] if best.size else best
    extra = sum(max(0, len(gs) - len(rs)) for gs, rs in zip(got, ref))
    return (f"recall {np.mean(best >= 0.5) if best.size else 1:.3f} of {best.size} faces, IoU median "
            f"{np.median(hit) if hit.size else 0:.3f}, >=0.95 {np.mean(best >= 0.95) if best.size else 1:.2f}, "
            f"{extra} extra")


class Dlib:
    """dlib's own detector in the scratch venv, one process kept up."""

    def __init__(self, python: str, dat: Path, tmp: Path):
        self.tmp = tmp
        self.proc = subprocess.Popen([python, "-c", DLIB_WORKER, str(dat)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.wall = self.cpu = 0.0  # dlib's CPU seconds per wall second: the threads it keeps busy

    def __call__(self, imgs: list[np.ndarray], up: int) -> tuple[float, list[list]]:
        path = self.tmp / "chunk.npy"
        np.save(path, np.stack(imgs))
        self.proc.stdin.write(f"{path} {up}\n")
        self.proc.stdin.flush()
        r = json.loads(self.proc.stdout.readline())
        self.wall, self.cpu = self.wall + r["seconds"], self.cpu + r["cpu"]
        return r["seconds"], [[b[:4] for b in boxes] for boxes in r["boxes"]]


def run_all(runs: dict, images: list[np.ndarray], chunk: int) -> dict:
    """Every run on every chunk, runs alternating per chunk: name -> (seconds, boxes per image)."""
    spent, boxes = {k: 0.0 for k in runs}, {k: [] for k in runs}
    for a in range(0, len(images), chunk):
        part = images[a: a + chunk]
        for name, fn in runs.items():
            s, b = fn(part, a)
            spent[name] += s
            boxes[name] += b
    return {k: (spent[k], boxes[k]) for k in runs}


def featx_run(det: FaceDetector, threads: int = 0, **kw):
    """featx's detector with DetectOptions(**kw); `threads` > 0: torch limited to that many for this run."""
    def fn(part, _):
        before = torch.get_num_threads()
        torch.set_num_threads(threads or before)
        try:
            t = time.perf_counter()
            faces = det(part, DetectOptions(**kw))
            return time.perf_counter() - t, [[list(f.box) for f in fs] for fs in faces]
        finally:
            torch.set_num_threads(before)
    det([np.zeros((250, 250, 3), np.uint8)], DetectOptions(**kw))  # warm-up
    return fn


def stage_run(coarse: float | None, detect_only: bool = False):
    """featx's face stage as extraction (coarse: largest face first) or predict (coarse None) runs it:
    its searches only, or detector + 5 points + dlib.resnet's chip."""
    from featx.faces.stage import FaceStage
    from featx.releases import get_release

    stage = FaceStage("align", get_release("dlib.resnet").chip, coarse=coarse)
    stage.faces_many([np.zeros((250, 250, 3), np.uint8)])  # loads both models

    def fn(part, _):
        t = time.perf_counter()
        if detect_only:
            boxes = [[list(f.box) for f in fs] for fs in stage.detect(part)]
        else:
            boxes = [[list(f.box) for f in fs] for fs in stage.faces_many(part)]
        return time.perf_counter() - t, boxes
    return fn


STAGE_RUNS = {"featx stage detect, extraction policy": (0.5, True),
              "featx stage detect+5 points+chip, extraction policy": (0.5, False),
              "featx stage detect+5 points+chip, predict policy": (None, False)}


def report(title: str, results: dict, n: int, base: str) -> None:
    """img/s, ratio to `base`, agreement with dlib at the same upsampling (featx's own settings: with `base`)."""
    print(f"\n{title}; ratios to {base}")
    for name, (s, boxes) in results.items():
        line = f"  {name:40s} {n / s:7.2f} img/s  {results[base][0] / s:6.1f}x"
        ref = name.replace("featx", "dlib").split(" (")[0] if "(dlib geometry)" in name else base
        if name != ref and not name.startswith("backbone") and ref in results:
            line += f"  vs {ref}: " + agreement(boxes, results[ref][1])
        print(line)


def backbone_run(crops: list[np.ndarray]):
    from featx.extract import Extractor

    ex = Extractor("dlib.resnet", tap="embedding", device="cpu", precision="fp32")
    pre = ex.release.preprocess
    chips = torch.from_numpy(np.stack([np.asarray(pre.resize_crop(Image.fromarray(c)), np.uint8) for c in crops]))
    ex(chips[:2])

    def fn(part, i):
        t = time.perf_counter()
        ex(chips[i: i + len(part)])
        return time.perf_counter() - t, [[] for _ in part]
    return fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dlib-python", required=True, help="python of a venv with dlib-bin")
    ap.add_argument("--frames", help="folder of raw 250x250 photos (LFW); default: frames built from --crops")
    ap.add_argument("--crops", default="../shared/data/utkface")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16, help="images per featx call (and per alternation)")
    ap.add_argument("--dlib-crops-up1", action="store_true", help="also time dlib at upsample 1 on the crops")
    args = ap.parse_args()
    utk = Path(args.crops)
    frames = folder_frames(Path(args.frames), args.n) if args.frames else built_frames(utk, args.n)
    crops = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((utk / "images").glob("*.jpg"))[: args.n]]
    dat = model_path(DETECTOR, print)
    det = FaceDetector.from_file(dat, "cpu")
    det16 = FaceDetector.from_file(dat, "cpu", precision="bf16")
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    print(f"CPU: {cpu}; torch threads {torch.get_num_threads()}; load average {open('/proc/loadavg').read().split()[:3]}")
    with tempfile.TemporaryDirectory() as tmp:
        dl = Dlib(args.dlib_python, dat, Path(tmp))
        runs = {"dlib upsample 1": lambda p, _: dl(p, 1), "dlib upsample 0": lambda p, _: dl(p, 0),
                "featx upsample 1 (dlib geometry)": featx_run(det, upsample=1),
                "featx upsample 1 (dlib geometry), 1 thread": featx_run(det, threads=1, upsample=1),
                "featx upsample 0 (dlib geometry)": featx_run(det, upsample=0),
                **{f"featx min_face {m}, max_face 250": featx_run(det, min_face=m, max_face=250) for m in (50, 60, 80, 100)},
                "featx min_face 80, max_face 250, bf16": featx_run(det16, min_face=80, max_face=250),
                **{k: stage_run(*v) for k, v in STAGE_RUNS.items()}}
        sizes = sorted({f"{f.shape[1]}x{f.shape[0]}" for f in frames})
        report(f"frames ({len(frames)} images, {', '.join(sizes)})", run_all(runs, frames, args.batch), len(frames),
               "dlib upsample 1")
        runs = {"dlib upsample 0": lambda p, _: dl(p, 0),
                **({"dlib upsample 1": lambda p, _: dl(p, 1)} if args.dlib_crops_up1 else {}),
                "featx upsample 0 (dlib geometry)": featx_run(det, upsample=0),
                "featx min_face 120, max_face 240 (crops)": featx_run(det, min_face=120, max_face=240),
                "featx min_face 160, max_face 240 (crops)": featx_run(det, min_face=160, max_face=240),
                **{k: stage_run(*v) for k, v in STAGE_RUNS.items()},
                "backbone dlib.resnet 150 px fp32": backbone_run(crops)}
        report(f"crops ({len(crops)} UTKFace photos, 200x200)", run_all(runs, crops, args.batch), len(crops),
               "dlib upsample 0")
        dl.proc.stdin.close()
        dl.proc.wait()
        print(f"\ndlib kept {dl.cpu / dl.wall:.2f} CPU busy per wall second (featx: torch, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
