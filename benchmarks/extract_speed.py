"""How fast is `featx extract` against a seed-style loop, and how close to the hardware's peak?

    python benchmarks/extract_speed.py --data ../shared/data/utkface/labels.csv --n 1000

In one process, on the same N real photos (224x224 after preprocessing):
  1. a seed-style naive loop: fp32, NCHW, PIL + torchvision transforms, DataLoader(num_workers=0),
     batch 32, features kept in a Python list;
  2. featx extract (auto precision, channels_last, decode workers, writer thread) into a temp store.
Then: both throughputs and their ratio; featx's achieved conv FLOP/s as a fraction of this machine's
bf16 and fp32 matmul peak measured in the same run; peak RSS of featx extract at --rss-sizes images
(each in a fresh subprocess, resource.getrusage ru_maxrss). Not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from featx.backbones import deepest, tap_features
from featx.backbones.vgg16 import BLOCKS, VGG16
from featx.data import load
from featx.extract import describe_device, extract, resolve_device, resolve_precision
from featx.releases import get_release
from featx.weights import load_backbone, weights_dir


def conv_macs(model: VGG16, size: int, upto: int = 5) -> int:
    """Multiply-accumulates of the 3x3 convs up to block `upto` for one size x size image."""
    macs, h = 0, size
    for b, n in BLOCKS[:upto]:
        for i in range(1, n + 1):
            c = getattr(model, f"conv{b}_{i}")
            macs += h * h * c.in_channels * c.out_channels * 9
        h //= 2
    return macs


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 3.0) -> float:
    """Best sustained FLOP/s of a square matmul in `dtype` on `device`."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        for _ in range(3 if device.type == "cpu" else 20):
            a @ b
        sync()
        reps = 3 if device.type == "cpu" else 20
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - t))
    return best


def backbone_weights(name: str, weights: str | None, tmp: Path) -> tuple[str, str]:
    """(weights file, note). Falls back to a random-init full-size VGG16: the speed is the same."""
    if weights:
        return weights, ""
    path = weights_dir() / get_release(name).filename
    if path.is_file():
        return str(path), ""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in VGG16().state_dict().items()}
    out = tmp / "random-vgg16.safetensors"
    save_file(sd, str(out))
    return str(out), f"note: {path} absent; using a random-init full-size VGG16 (same speed, meaningless features)"


def naive_loop(manifest, release, weights: str, tap: str, batch_size: int = 32) -> dict:
    """The seed notebooks' way: fp32 NCHW, torchvision transforms, no workers, a list of features."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    p = release.preprocess
    order = [2, 1, 0] if p.channels == "BGR" else [0, 1, 2]
    tf = transforms.Compose([
        transforms.Resize(p.resize), transforms.CenterCrop(p.size), transforms.ToTensor(),
        transforms.Lambda(lambda t: t[order] * p.scale),
        transforms.Normalize(p.mean, p.std),
    ])

    class Photos(Dataset):
        def __len__(self):
            return len(manifest)

        def __getitem__(self, i):
            return tf(Image.open(manifest.abspath(i)).convert("RGB"))

    t0 = time.perf_counter()
    _, model, _ = load_backbone(release.name, weights)
    t1 = time.perf_counter()
    feats = []
    with torch.no_grad():
        for x in DataLoader(Photos(), batch_size=batch_size, num_workers=0):
            feats.append(tap_features(model, x, tap).numpy())
    wall = time.perf_counter() - t1
    n = sum(len(f) for f in feats)
    return {"images": n, "wall_s": wall, "images_per_s": n / wall, "model_load_s": t1 - t0}


def rss_child(args) -> None:
    """Run featx extract on the first --n images into a fresh store; print peak RSS as JSON."""
    m = load(args.data)
    m = m.subset(range(min(args.n, len(m))))
    with tempfile.TemporaryDirectory() as tmp:
        s = extract(m, args.backbone, Path(tmp) / "rss.zarr", tap=args.tap, weights=args.weights,
                    batch_size=args.batch_size, device=args.device, precision=args.precision,
                    workers=args.workers, progress=False)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"n": s["n"], "images_per_s": s["images_per_s"],
                      "peak_rss_mb": self_kb / 1024, "peak_rss_workers_mb": kids_kb / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--backbone", default="vgg16.hed")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--tap", default="pool5-gap")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--rss-sizes", default="1000,4000", help="image counts for the peak-RSS subprocesses ('' = skip)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="featx-bench-"))
    try:
        args.weights, note = backbone_weights(args.backbone, args.weights, tmp)
        if args.rss_child:
            rss_child(args)
        else:
            run(args, note, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, note: str, tmp: Path) -> None:
    if note:
        print(note)
    release = get_release(args.backbone)
    manifest = load(args.data)
    manifest = manifest.subset(range(min(args.n, len(manifest))))
    n = len(manifest)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    print(f"{n} images from {args.data}; {describe_device(device)}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    out: dict = {"n": n, "device": describe_device(device), "release": release.name, "tap": args.tap, "note": note}

    if not args.skip_naive:
        r = naive_loop(manifest, release, args.weights, args.tap)
        out["naive"] = r
        print(f"naive loop  fp32 NCHW, workers 0, batch 32: {r['images_per_s']:8.2f} images/s ({r['wall_s']:.1f} s)")

    t = time.perf_counter()
    s = extract(manifest, args.backbone, tmp / "bench.zarr", tap=args.tap, weights=args.weights,
                batch_size=args.batch_size, device=args.device, precision=args.precision, workers=args.workers,
                compile=args.compile, progress=False)
    total = time.perf_counter() - t
    out["featx"] = {"images_per_s": s["images_per_s"], "compute_wall_s": s["compute_wall_s"],
                    "total_wall_s": total, "precision": s["precision"]}
    print(f"featx extract {s['precision']}, channels_last:    {s['images_per_s']:8.2f} images/s "
          f"({s['compute_wall_s']:.1f} s; {total:.1f} s with model load and store setup)")
    if "naive" in out:
        out["speedup"] = s["images_per_s"] / out["naive"]["images_per_s"]
        print(f"speed-up featx / naive: {out['speedup']:.2f}x")

    size = release.preprocess.size
    macs = conv_macs(load_backbone(args.backbone, args.weights)[1], size, int(deepest(load_backbone(args.backbone, args.weights)[1], args.tap.split("+"))[4:]))
    achieved = 2 * macs * s["images_per_s"]
    peaks = {"bf16": matmul_peak(device, torch.bfloat16), "fp32": matmul_peak(device, torch.float32)}
    out["conv_gflop_per_image"] = 2 * macs / 1e9
    out["achieved_tflops"] = achieved / 1e12
    out["matmul_peak_tflops"] = {k: v / 1e12 for k, v in peaks.items()}
    print(f"convs: {macs / 1e9:.2f} GMAC = {2 * macs / 1e9:.1f} GFLOP per {size}x{size} image; featx achieves "
          f"{achieved / 1e12:.3f} TFLOP/s")
    for k, v in peaks.items():
        print(f"  = {achieved / v:6.1%} of the measured {k} matmul peak ({v / 1e12:.3f} TFLOP/s)")
        out[f"fraction_of_{k}_peak"] = achieved / v

    sizes = [int(x) for x in args.rss_sizes.split(",") if x.strip()]
    out["rss"] = []
    for k in sizes:
        cmd = [sys.executable, __file__, "--rss-child", "--data", args.data, "--n", str(k),
               "--backbone", args.backbone, "--weights", args.weights, "--tap", args.tap,
               "--device", args.device, "--precision", args.precision]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(f"peak RSS at {k} images: child failed: {r.stderr.strip().splitlines()[-1:]}")
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        out["rss"].append(d)
        print(f"peak RSS at {d['n']:5d} images: {d['peak_rss_mb']:7.1f} MB (largest decode worker "
              f"{d['peak_rss_workers_mb']:.1f} MB)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
