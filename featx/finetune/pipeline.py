"""Fine-tune the last stages of a backbone plus a head, from a cached prefix.

A composition of four parts:
  1. a config (`featx.finetune.config`);
  2. a prefix cache: a feature store of the family's prefix tap (VGG16: pool4, or pool3), built once by
     `featx.extract` and reused by every run and hyper-parameter on the same data and base weights;
  3. a trainer (`featx.finetune.train`) over the stages between the prefix tap and the head-input tap
     (`Family.finetune`, `backbones.trainable_stages`), fed by `featx.finetune.data`;
  4. an export of the best checkpoint as a release folder (`featx.finetune.export`).
Nothing here is specific to one family: the family comes from the base release's `arch`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import FeatxError
from .config import FineTuneConfig, RunOptions, split_options

def prefix_store_for(manifest, release_name: str, weights_sha: str, tap: str, mirror: bool) -> Path:
    """Default prefix cache: shared by fine-tunes of the same data, base weights and prefix tap."""
    from ..paths import featx_home

    home = featx_home()
    tag = f"{manifest.hash()[:12]}-{weights_sha[:8]}{'-flip' if mirror else ''}"
    return home / "features" / f"prefix-{release_name}-{tag}-{tap}.zarr"


def prefix_cache(manifest, backbone: str, base: tuple, cfg: FineTuneConfig, run: RunOptions):
    """Build (or resume, or reuse) the feature store of the prefix tap; returns it opened."""
    from ..extract.command import extract
    from .data import parse_augment
    from ..store import FeatureStore

    release, _, sha = base
    mirror = "mirror" in parse_augment(cfg.augment)
    path = Path(run.cache) if run.cache else prefix_store_for(manifest, release.name, sha, cfg.from_tap, mirror)
    extract(manifest, backbone, path, tap=cfg.from_tap, weights=run.weights, device=run.device,
            precision=run.precision, workers=run.workers, flip_tta=mirror, dtype="float16", progress=run.progress)
    store = FeatureStore.open(path)
    if mirror and not store.has_flip:
        raise FeatxError(f"--augment mirror needs a prefix store with mirrored maps; {path} has none")
    return store


def autocast_dtype(device: str, precision: str) -> torch.dtype | None:
    """The autocast dtype of extract's precision policy (None for fp32)."""
    from ..device import AUTOCAST, resolve_precision

    return AUTOCAST.get(resolve_precision(precision, torch.device(device)))


def build_parts(store, base: tuple, cfg: FineTuneConfig, run: RunOptions, device: str):
    """(net, training batches, evaluation batches) for this store and recipe."""
    from ..backbones import trainable_stages
    from .data import MapBatches, PixelBatches, parse_augment
    from .model import TuneNet

    release, model, _ = base
    fam = release.family
    stages = trainable_stages(model, cfg.from_tap, fam.finetune[cfg.from_tap])
    train_idx = store.indices("train")
    sample = np.sort(np.random.default_rng(cfg.seed).choice(train_idx, min(len(train_idx), 256), replace=False))
    torch.manual_seed(cfg.seed)
    net = TuneNet(model, stages, cfg.head, len(store.classes), cfg.hidden, cfg.dropout,
                  torch.from_numpy(store.features(sample)))
    net = net.to(device).to(memory_format=torch.channels_last)
    aug = parse_augment(cfg.augment)
    evals = MapBatches(store, 256, run.block_rows)
    if "pixels" in aug:
        train = PixelBatches(store, net, cfg.from_tap, release.preprocess, cfg.batch_size,
                             run.workers or 0, autocast_dtype(device, run.precision))
    else:
        train = MapBatches(store, cfg.batch_size, run.block_rows, aug, cfg.shift)
    return net, train, evals


def split_scores(loop, net, evals, store, rows) -> dict:
    """accuracy and AUC on `rows`, and accuracy by age group when the data has an age column."""
    if len(rows) == 0:
        return {}
    r = loop.evaluate(net, evals, rows)
    out = {"accuracy": r["accuracy"], "auc": r["auc"], "n": int(len(rows))}
    age = store.extras.get("age")
    if age is not None:
        a = np.array([float(v) if str(v).strip() not in ("", "nan") else np.nan for v in age[r["rows"]]])
        right = r["proba"].argmax(1) == loop.labels[r["rows"]]
        for name, m in (("adults", a >= 13), ("children", a < 13)):
            if m.any():
                out[f"accuracy_{name}"], out[f"n_{name}"] = float(right[m].mean()), int(m.sum())
    return out


def identity_of(cfg: FineTuneConfig, base: tuple, manifest_hash: str) -> dict:
    release, _, sha = base
    return {"backbone": release.name, "weights_sha256": sha, "manifest_hash": manifest_hash, **asdict(cfg)}


def already_done(out: Path, identity: dict, log) -> dict | None:
    import json

    if not (out / "release.json").is_file():
        return None
    done = json.loads((out / "release.json").read_text())
    if done.get("lineage", {}).get("config") == identity:
        log(f"{out} is already fine-tuned with these settings; nothing to do")
        return done["lineage"]["summary"]
    raise FeatxError(f"{out} holds a model fine-tuned with other settings; use another --out")


def fine_tune(data, backbone: str, out: str | Path, *, unfreeze: str | None = None, log=print,
              **options) -> dict:
    """Fine-tune from a cached prefix and export a release; returns the summary. Resumes after a kill.

    options: any FineTuneConfig field (the recipe) or RunOptions field (weights, cache, device, ...).
    """
    from ..data import Manifest, load
    from ..device import resolve_device
    from ..weights import load_backbone

    t_start = time.perf_counter()
    cfg, run = split_options(options, unfreeze)
    out = Path(out)
    base = load_backbone(backbone, run.weights)
    cfg.check(base[0].family)
    device = resolve_device(run.device).type
    manifest = data if isinstance(data, Manifest) else load(data)
    identity = identity_of(cfg, base, manifest.hash())
    done = already_done(out, identity, log)
    if done is not None:
        return done
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store = prefix_cache(manifest, backbone, base, cfg, run)
    prefix_s = time.perf_counter() - t0
    return train_and_export(store, base, cfg, replace(run, device=device), out, identity, log=log,
                            times=(t_start, prefix_s))


def train_and_export(store, base, cfg, run, out, identity, *, log, times) -> dict:
    """Parts 3 and 4: train from the opened prefix store, export the best checkpoint as a release."""
    from .data import class_weights
    from .export import Lineage, export_head, export_release, write_record
    from .train import Loop, Optimiser, Trainer

    train_idx, val_idx, test_idx = (store.indices(s) for s in ("train", "val", "test"))
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise FeatxError("fine-tuning needs train and val rows; the data has none in one of them")
    device = run.device
    net, batches, evals = build_parts(store, base, cfg, run, device)
    labels = np.asarray(store.labels, np.int64)
    weight = class_weights(labels[train_idx], len(store.classes)) if cfg.balance == "weights" else None
    loop = Loop(labels, device, autocast_dtype(device, run.precision), cfg.label_smoothing, weight, run.progress)
    n_epoch = len(train_idx) if cfg.balance != "sample" else \
        len(store.classes) * int(np.bincount(labels[train_idx]).max())
    opt = Optimiser(net, cfg, -(-n_epoch // cfg.batch_size))
    trainer = Trainer(net, cfg, out, loop, batches, evals, log)
    pr = trainer.fit(opt, identity, train_idx, val_idx)

    va, te = (split_scores(loop, net, evals, store, r) for r in (val_idx, test_idx))
    t_start, prefix_s = times
    summary = {"best_epoch": pr.best_epoch, "epochs_run": len(pr.history), "val_loss": None,
               "val_accuracy": va["accuracy"], "val_auc": va["auc"],
               "test_accuracy": te.get("accuracy"), "test_auc": te.get("auc"), "n_test": int(len(test_idx)),
               "test": te, "train_seconds": round(pr.seconds, 1), "prefix_seconds": round(prefix_s, 1),
               "wall_seconds": round(time.perf_counter() - t_start, 1),
               "epoch_seconds": [h["seconds"] for h in pr.history], "head_probe": pr.probe}
    best = next(h for h in [pr.probe or {}, *pr.history] if h.get("epoch") == pr.best_epoch)
    summary["val_loss"] = best["val_loss"]
    fam = base[0].family
    head_tap = net.head_tap(fam.finetune[cfg.from_tap])
    lin = Lineage(base[0], base[2], cfg.from_tap, head_tap, store.attrs["manifest_hash"], identity, str(store.name))
    name = run.name or f"{base[0].name}+{out.name}"
    release = export_release(net, lin, out, name, summary)
    export_head(net, release, lin, out, {"classes": list(store.classes),
                                         "positive": store.classes[1] if len(store.classes) == 2 else None,
                                         "val_metrics": {"accuracy": va["accuracy"], "auc": va["auc"]}})
    write_record(out, release, pr.history)
    trainer.clean()
    from ..weights import register_finetuned

    register_finetuned(out)
    alone = " (the head alone)" if pr.best_epoch == 0 else ""
    log(f"fine-tuned {name}: best epoch {pr.best_epoch}{alone}, val acc {va['accuracy']:.4f} auc {va['auc']:.4f}"
        + (f", test acc {te['accuracy']:.4f} on {te['n']} images" if te else "")
        + f"; {summary['wall_seconds']:.0f}s in all")
    return summary
