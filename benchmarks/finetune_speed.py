"""Fine-tune epoch time: streamed from the cached prefix vs a full forward of the frozen prefix each epoch.

For each prefix tap (VGG16: pool4 = block 5 trains; pool3 = blocks 4 and 5 train) it fills the prefix
cache for a sample of photos, then times one training epoch from the cache (`--augment flip,shift`)
and one that decodes the photos and runs the frozen prefix again (`--augment pixels`, what seed
notebooks do). The FLOP ratio comes from torch's FlopCounterMode on one image, so any family works.

    python benchmarks/finetune_speed.py --data cache/data/utk.csv --n 256 --taps pool4,pool3
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from common import Stopwatch, machine, parser, sample
from featx.backbones import forward_taps, trainable_stages
from featx.data import load
from featx.device import resolve_precision
from featx.extract import extract
from featx.finetune.config import FineTuneConfig
from featx.finetune.pipeline import autocast_dtype
from featx.finetune.data import MapBatches, PixelBatches
from featx.finetune.model import TuneNet
from featx.finetune.train import Loop, Optimiser
from featx.store import FeatureStore
from featx.weights import load_backbone


def flops(model, stages: list[str], x: torch.Tensor) -> tuple[float, float]:
    """Forward GFLOPs of one image: (the prefix up to the first trainable stage, the trainable stages)."""
    order = list(model.stage_names())
    prefix = order[order.index(stages[0]) - 1]
    with torch.no_grad():
        with FlopCounterMode(display=False) as a:
            m = forward_taps(model, x, {prefix})[prefix]
        with FlopCounterMode(display=False) as b:
            forward_taps(model, m, {stages[-1]}, start=prefix)
    return a.get_total_flops() / 1e9, b.get_total_flops() / 1e9


def time_epoch(net, batches, store, cfg, amp) -> float:
    loop = Loop(np.asarray(store.labels, np.int64), "cpu", amp, cfg.label_smoothing)
    idx = store.indices("all")
    opt = Optimiser(net, cfg, -(-len(idx) // cfg.batch_size))
    with Stopwatch() as t:
        loop.train(net, batches, idx, opt, np.random.default_rng(1))
    return t.s


def one_tap(sub, a, base, tap: str, tmp: Path) -> dict:
    release, model, _ = base
    stages = trainable_stages(model, tap, release.family.finetune[tap])
    cfg = FineTuneConfig(from_tap=tap, batch_size=a.batch_size)
    amp = autocast_dtype("cpu", "auto")
    with Stopwatch() as t:
        extract(sub, a.backbone, tmp / f"{tap}.zarr", tap=tap, weights=a.weights, progress=False)
    fill = t.s
    store = FeatureStore.open(tmp / f"{tap}.zarr")

    def fresh():
        torch.manual_seed(0)
        return TuneNet(model, stages, "mlp", len(store.classes), 256, 0.5, torch.from_numpy(store.features([0, 1])))

    net = fresh()
    cached = time_epoch(net, MapBatches(store, a.batch_size, 512, ("flip", "shift"), 1), store, cfg, amp)
    net = fresh()
    full = time_epoch(net, PixelBatches(store, net, tap, release.preprocess, a.batch_size, a.workers, amp),
                      store, cfg, amp)
    size = release.preprocess.size
    f_prefix, f_train = flops(model, stages, torch.zeros(1, 3, size, size))
    n = len(sub)
    return {"tap": tap, "trains": stages, "n": n, "cache_fill_s": round(fill, 1),
            "epoch_cached_s": round(cached, 1), "epoch_full_forward_s": round(full, 1),
            "cost_ratio_full_vs_cached": round(full / cached, 2),
            "gflops_prefix": round(f_prefix, 3), "gflops_trained_forward": round(f_train, 3),
            # training costs about 3x the forward of what trains (backward ~2x); the prefix runs forward only
            "flop_ratio_training": round((f_prefix + 3 * f_train) / (3 * f_train), 2),
            "epoch_cached_img_per_s": round(n / cached, 1), "epoch_full_img_per_s": round(n / full, 1)}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--backbone", default="vgg16.hed")
    ap.add_argument("--weights", default=None, help="weights FILE (tests use a tiny model)")
    ap.add_argument("--taps", default="pool4,pool3")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    manifest = load(a.data)
    sub = manifest.subset(sample(np.arange(len(manifest)), a.n, seed=0))
    base = load_backbone(a.backbone, a.weights)
    res = {"machine": machine(), "threads": torch.get_num_threads(),
           "precision": resolve_precision("auto", torch.device("cpu")), "load_avg_start": os.getloadavg()[0],
           "batch_size": a.batch_size, "taps": []}
    with tempfile.TemporaryDirectory() as tmp:
        for tap in a.taps.split(","):
            res["taps"].append(one_tap(sub, a, base, tap.strip(), Path(tmp)))
            print(json.dumps(res["taps"][-1]), flush=True)
    res["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(res, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
