"""How close does the bare model run to this CPU's matmul peak? TFLOP/s per precision, in one run.

    python benchmarks/compute_peak.py --data ../shared/data/utkface/labels.csv --n 64 --precision fp32,bf16

In one process, for each precision: the peak, a square float matmul (--matrix, fp32 or under bf16 autocast)
repeated for at least --min-s seconds; and the bare model (extract_speed.py's: release preprocessing,
channels_last, autocast; photos decoded and normalised in memory), its FLOPs per image counted once by
torch's FlopCounterMode (2 per multiply-add), its TFLOP/s and that as a share of the peak at the same
precision. The peaks are measured just before and just after the model and averaged (a shared machine's
load drifts). Not a test: run it on a quiet machine.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import Stopwatch, machine, model_arguments, parser, weights_or_random
from extract_speed import decode_normalized, model_fn, time_bare
from featx.data import load
from featx.device import AUTOCAST
from featx.extract import Extractor


@torch.inference_mode()
def matmul_tflops(n: int, precision: str, min_s: float) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    with torch.autocast("cpu", dtype=AUTOCAST.get(precision, torch.bfloat16), enabled=precision in AUTOCAST):
        a @ b  # warm-up
        done = 0
        with Stopwatch() as t:
            while True:
                a @ b
                done += 1
                if time.perf_counter() - t.t0 >= min_s:
                    break
    return done * 2 * n**3 / t.s / 1e12


def gflops_per_image(fn, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as count:
        fn(x[:1])
    return count.get_total_flops() / 1e9


def main() -> None:
    ap = parser(__doc__)
    model_arguments(ap, n=64)
    ap.add_argument("--precision", default="fp32,bf16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--matrix", type=int, default=2048)
    ap.add_argument("--min-s", type=float, default=3.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights, note = weights_or_random(a.backbone, a.weights, Path(tmp))
        print(f"machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(note or f"weights: {weights}")
        run(a, weights)


def run(a, weights: str) -> None:
    m = load(a.data)
    ex = Extractor(a.backbone, weights=weights, tap=a.tap, device="cpu", precision="fp32")
    x = decode_normalized(m, ex, min(a.n, len(m)), workers=1)
    opts = SimpleNamespace(compile=False, batch=a.batch, calib=0)
    print(f"{len(x)} photos, {a.backbone} tap {a.tap}, batch {a.batch}")
    print("| precision | matmul peak TFLOP/s | bare model img/s | GFLOP / image | bare model TFLOP/s | share of peak |")
    print("|---|---|---|---|---|---|")
    for p in a.precision.split(","):
        fn, _ = model_fn(ex, p, x, opts)
        gf = gflops_per_image(fn, x)
        before = matmul_tflops(a.matrix, p, a.min_s)
        bare = time_bare(fn, x, a.batch, a.min_s)["images_per_s"]
        peak = (before + matmul_tflops(a.matrix, p, a.min_s)) / 2
        print(f"| {p} | {peak:.3f} | {bare:.2f} | {gf:.1f} | {bare * gf / 1e3:.3f} | {bare * gf / 1e3 / peak:.0%} |",
              flush=True)


if __name__ == "__main__":
    main()
