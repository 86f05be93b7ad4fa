"""Fine-tune epoch time: streamed from the cached pool4 prefix vs a full 13-conv forward pass.

Both train the same block 5 + head on the same images in one process, at the same precision.
The full pass is what seed notebooks do: decode, preprocess, run blocks 1-4 frozen, then train block 5.

    python benchmarks/finetune_speed.py --data ../shared/data/utkface/labels.csv --n 512
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from featx.backbones import tap_features
from featx.data import load
from featx.extract import Extractor, ImageRows, resolve_precision
from featx.finetune import Block5Net, autocast_dtype, run_epoch
from featx.store import FeatureStore
from featx.weights import load_backbone


def full_pass_epoch(ex: Extractor, net, manifest, labels, opt, amp, batch_size) -> float:
    """One training epoch that decodes every image and runs all 13 convs (blocks 1-4 frozen)."""
    ds = ImageRows(manifest.root, manifest.paths, ex.preprocess)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=1)
    net.train()
    t0 = time.perf_counter()
    for i, x_u8, _, _ in loader:
        x = ex.normalize(x_u8)
        y = torch.from_numpy(labels[i.numpy()])
        with torch.no_grad(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            pool4 = tap_features(ex.model, x, "pool4")
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(net(pool4.float()).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--backbone", default="vgg16.hed")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    from featx.extract import extract

    manifest = load(a.data)
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(len(manifest), size=min(a.n, len(manifest)), replace=False))
    sub = manifest.subset(keep)
    release, base, _ = load_backbone(a.backbone)
    base = base.to(memory_format=torch.channels_last)
    prec = resolve_precision("auto", torch.device("cpu"))
    amp = autocast_dtype("cpu", "auto")
    labels = sub.label_ids()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        extract(sub, a.backbone, Path(tmp) / "p4.zarr", tap="pool4", progress=False)
        cache_fill = time.perf_counter() - t0
        store = FeatureStore.open(Path(tmp) / "p4.zarr")
        idx = store.indices("all")

        def fresh():
            torch.manual_seed(0)
            net = Block5Net(base, 2, [256], 0.5).to(memory_format=torch.channels_last)
            return net, torch.optim.AdamW(net.parameters(), lr=1e-4)

        net, opt = fresh()
        run_epoch(net, store, idx[:64], store.labels, train=True, opt=opt, batch_size=a.batch_size,
                  rng=np.random.default_rng(0), amp=amp)  # warm-up
        net, opt = fresh()
        t0 = time.perf_counter()
        run_epoch(net, store, idx, store.labels, train=True, opt=opt, batch_size=a.batch_size,
                  rng=np.random.default_rng(1), amp=amp)
        cached = time.perf_counter() - t0

        net, opt = fresh()
        ex = Extractor(a.backbone, tap="pool4", device="cpu", precision=prec)
        full = full_pass_epoch(ex, net, sub, labels, opt, amp, a.batch_size)

    n = len(sub)
    res = {"n": n, "precision": prec, "batch_size": a.batch_size, "cache_fill_s": round(cache_fill, 1),
           "cache_fill_img_per_s": round(n / cache_fill, 1),
           "epoch_cached_s": round(cached, 2), "epoch_full_s": round(full, 2),
           "speedup": round(full / cached, 2), "flop_ratio_forward": round(15.35 / (15.35 - 13.96), 1),
           # training block 5 costs about 3x its forward (backward ~2x); blocks 1-4 only run forward
           "flop_ratio_training": round((13.96 + 3 * (15.35 - 13.96)) / (3 * (15.35 - 13.96)), 1),
           "epoch_cached_img_per_s": round(n / cached, 1), "epoch_full_img_per_s": round(n / full, 1)}
    print(json.dumps(res, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
