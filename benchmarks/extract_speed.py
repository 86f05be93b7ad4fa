"""How close does `featx extract` run to the bare model, and how much faster than a seed-style loop?

    python benchmarks/extract_speed.py --data ../shared/data/utkface/labels.csv --n 256 --precision auto,int8
    python benchmarks/extract_speed.py --data ... --n 20000 --device cuda --precision bf16 --batch-size 256

In ONE run, on the same N real photos:
  naive   the seed notebooks' loop: fp32, NCHW, PIL + torchvision transforms, DataLoader(num_workers=0),
          batch 32, features kept in a Python list (once, whatever --precision says);
  bare    the model alone at the given precision and layout (channels_last, autocast; int8: the PT2E model)
          on preprocessed tensors already in memory (on the GPU for cuda): the ceiling; timed just before
          and just after each featx run, and averaged;
  featx   `featx extract` as a whole process (a subprocess of the installed CLI) into a fresh store:
          decode workers, transfer, model, writer. Its own images/s (timed from the first batch) and the
          end-to-end rate (process start to exit, model load included) are both printed.
Then: efficiency = featx / bare (the pipeline's share of the ceiling), speed-up = featx / naive, the CPU
model and the flags that pick the precision, and on CUDA the GPU utilisation sampled during featx.
--repeat R runs the bare/featx pair R times (ratios within a run are what to compare; a shared
machine's absolute numbers drift). Not a test: run it on a quiet machine (or with `nice`).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from common import Stopwatch, machine, model_arguments, parser, weights_or_random
from featx.backbones import tap_features
from featx.data import load
from featx.device import AUTOCAST, describe_device, resolve_device, resolve_precision
from featx.extract import Extractor
from featx.releases import get_release
from featx.weights import load_backbone


@contextlib.contextmanager
def gpu_sampler(device: torch.device):
    """Yields a dict that gets {"gpu_util_mean", "gpu_util_max"} (percent) sampled every 0.2 s."""
    out: dict = {}
    if device.type != "cuda":
        yield out
        return
    samples, stop = [], threading.Event()

    def sample():
        while not stop.wait(0.2):
            try:
                samples.append(float(torch.cuda.utilization(device)))
            except Exception:  # no NVML: ask nvidia-smi
                r = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                    f"--id={device.index or 0}"], capture_output=True, text=True)
                if r.returncode == 0 and r.stdout.strip():
                    samples.append(float(r.stdout.split()[0]))
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield out
    finally:
        stop.set()
        t.join()
        if samples:
            busy = samples[len(samples) // 10:] or samples  # skip the start-up tenth
            out.update(gpu_util_mean=sum(busy) / len(busy), gpu_util_max=max(samples))


def naive_loop(manifest, release, weights: str, tap: str, device: torch.device, batch_size: int = 32) -> dict:
    """The seed notebooks' way: fp32 NCHW, torchvision transforms, no workers, a list of features."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    p = release.preprocess
    order = [2, 1, 0] if p.channels == "BGR" else [0, 1, 2]
    tf = transforms.Compose([
        transforms.Resize(p.resize), transforms.CenterCrop(p.size), transforms.ToTensor(),
        transforms.Lambda(lambda t: t[order] * p.scale), transforms.Normalize(p.mean, p.std),
    ])

    class Photos(Dataset):
        def __len__(self):
            return len(manifest)

        def __getitem__(self, i):
            return tf(Image.open(manifest.abspath(i)).convert("RGB"))

    model = load_backbone(release.name, weights)[1].to(device)
    feats = []
    with Stopwatch() as t, torch.no_grad():
        for x in DataLoader(Photos(), batch_size=batch_size, num_workers=0):
            feats.append(tap_features(model, x.to(device), tap).cpu().numpy())
    return {"images_per_s": sum(len(f) for f in feats) / t.s, "wall_s": t.s}


def decode_normalized(manifest, ex: Extractor, n: int, workers: int) -> torch.Tensor:
    """The first n photos decoded, resized and normalised as featx does: float [n, 3, H, W] channels_last."""
    from torch.utils.data import DataLoader

    from featx.reader import ImageRows

    ds = ImageRows(manifest.root, manifest.paths[:n], ex.preprocess)
    parts = [ex.normalize(b[1]) for b in DataLoader(ds, batch_size=64, num_workers=workers)]  # b[1]: pixels
    return torch.cat(parts).contiguous(memory_format=torch.channels_last)


def model_fn(ex: Extractor, precision: str, x: torch.Tensor, args):
    """(callable on a normalised batch, note): the model as featx runs it at `precision`."""
    if precision == "int8":
        from featx.quantize import Int8Options, calibration_rows, quantize_int8

        rows = torch.as_tensor(calibration_rows(len(x), args.calib, seed=0))
        calib = [x[rows[a: a + 32]] for a in range(0, len(rows), 32)]
        q8 = quantize_int8(ex.model, calib, ex.tap, Int8Options(batch_size=args.batch, compile=args.compile))
        q8.lower()
        return q8, (f"int8: calibrated on {len(rows)} photos in {q8.info['quantize_s']:.1f} s, lowered "
                    f"({q8.info['lowering']}) in {q8.info['lower_s']:.1f} s")
    fn = (lambda t: tap_features(ex.model, t, ex.tap))
    if args.compile:
        fn = torch.compile(fn, dynamic=False)
    ctx = (lambda: torch.autocast(ex.device.type, dtype=AUTOCAST[precision])) if precision in AUTOCAST \
        else contextlib.nullcontext

    def run(t):
        with ctx():
            return fn(t)
    return run, ""


@torch.inference_mode()
def time_bare(fn, x: torch.Tensor, batch: int, min_s: float) -> dict:
    """img/s of fn over x in batches of `batch` (a short last batch is dropped), at least min_s seconds."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    n = (len(x) // batch) * batch or len(x)
    t = time.perf_counter()
    fn(x[:batch])  # warm-up (compile, oneDNN primitive creation, cudnn autotune)
    sync()
    warm = time.perf_counter() - t
    done, t0 = 0, time.perf_counter()
    while True:
        for a in range(0, n, batch):
            fn(x[a: a + batch])
            done += min(batch, n - a)
        sync()
        if time.perf_counter() - t0 >= min_s:
            break
    wall = time.perf_counter() - t0
    return {"images_per_s": done / wall, "wall_s": wall, "warmup_s": warm}


def featx_process(args, csv: Path, precision: str, store: Path) -> dict:
    """`featx extract` as a user runs it, in its own process; its reported img/s and the end-to-end rate."""
    cmd = [sys.executable, "-m", "featx_cli.main", "extract", "--data", str(csv), "--backbone", args.backbone,
           "--store", str(store), "--tap", args.tap, "--precision", precision, "--device", args.device,
           "--batch-size", str(args.batch), "--quiet"]
    cmd += ["--weights", args.weights]
    cmd += ["--workers", str(args.workers)] if args.workers is not None else []
    cmd += ["--compile"] if args.compile else []
    with Stopwatch() as t, gpu_sampler(resolve_device(args.device)) as gpu:
        r = subprocess.run(cmd, capture_output=True, text=True)
    wall = t.s
    shutil.rmtree(store, ignore_errors=True)
    if r.returncode:
        return {"error": (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1]}
    m = re.search(r"([\d.]+) images/s", r.stdout)
    return {"images_per_s": float(m.group(1)) if m else None, "end_to_end_per_s": args.n_used / wall,
            "process_wall_s": wall, **gpu}


def parse_args():
    ap = parser(__doc__)
    model_arguments(ap)
    ap.add_argument("--batch-size", type=int, default=None, help="default 32 on CPU, 128 on GPU (as featx)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="comma-separated, e.g. fp32,bf16,int8")
    ap.add_argument("--workers", type=int, default=None, help="featx decode workers (default: featx's)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--calib", type=int, default=256, help="int8 calibration photos (of the N)")
    ap.add_argument("--repeat", type=int, default=1, help="bare/featx pairs per precision")
    ap.add_argument("--min-s", type=float, default=None, help="bare model: time at least this long")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--json", default=None)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="featx-bench-"))
    try:
        args.weights, note = weights_or_random(args.backbone, args.weights, tmp)  # the subprocess gets it too
        if note:
            print(note)
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path) -> None:
    device = resolve_device(args.device)
    args.batch = args.batch_size or (128 if device.type == "cuda" else 32)
    args.min_s = args.min_s if args.min_s is not None else (5.0 if device.type == "cuda" else 1.0)
    manifest = load(args.data)
    manifest = manifest.subset(range(min(args.n, len(manifest))))
    args.n_used = len(manifest)
    csv = manifest.write(tmp / "bench.csv")
    precisions = [resolve_precision(p, device) if p == "auto" else p for p in args.precision.split(",")]
    print(f"{args.n_used} photos from {args.data}; {args.backbone} tap {args.tap}; batch {args.batch}")
    print(f"device: {describe_device(device)}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"machine: {machine()}; auto precision here: {resolve_precision('auto', device)}")
    out: dict = {"n": args.n_used, "device": describe_device(device), "machine": machine(), "tap": args.tap,
                 "backbone": args.backbone, "batch": args.batch, "compile": args.compile, "runs": []}
    if not args.skip_naive:
        nv = naive_loop(manifest, get_release(args.backbone), args.weights, args.tap, device)
        out["naive"] = nv
        print(f"naive  fp32 NCHW, no workers, batch 32     {nv['images_per_s']:9.2f} img/s")
    ex = Extractor(args.backbone, weights=args.weights, tap=args.tap, device=str(device), precision="fp32")
    x = decode_normalized(manifest, ex, min(args.n_used, 128 if device.type == "cpu" else 2048), 1)
    fns = {}
    for p in precisions:
        fns[p], why = model_fn(ex, p, x, args)
        if why:
            print(why)
    for rep in range(args.repeat):
        for p in precisions:
            before = time_bare(fns[p], x, args.batch, args.min_s)
            fx = featx_process(args, csv, p, tmp / f"s-{p}-{rep}.zarr")
            after = time_bare(fns[p], x, args.batch, args.min_s)  # bracket featx: load drifts on shared machines
            bare = {"images_per_s": (before["images_per_s"] + after["images_per_s"]) / 2,
                    "before": before["images_per_s"], "after": after["images_per_s"]}
            row = {"precision": p, "repeat": rep, "bare": bare, "featx": fx}
            out["runs"].append(row)
            print(line(row, out.get("naive")))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def line(row: dict, naive: dict | None) -> str:
    b, f = row["bare"], row["featx"]
    text = (f"{row['precision']:>5} run {row['repeat'] + 1}: bare {b['images_per_s']:8.2f} img/s "
            f"({b['before']:.2f} before, {b['after']:.2f} after)")
    if "error" in f:
        return text + f"; featx extract failed: {f['error']}"
    eff = f["images_per_s"] / b["images_per_s"]
    row.update(efficiency=eff, speedup=f["images_per_s"] / naive["images_per_s"] if naive else None)
    text += (f" | featx {f['images_per_s']:8.2f} img/s ({f['end_to_end_per_s']:.2f} end to end, "
             f"{f['process_wall_s']:.0f} s) | efficiency {eff:.3f}")
    if naive:
        text += f" | speed-up over naive {row['speedup']:.2f}x"
    if "gpu_util_mean" in f:
        text += f" | GPU util {f['gpu_util_mean']:.0f}% (max {f['gpu_util_max']:.0f}%)"
    return text


if __name__ == "__main__":
    main()
