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
    """Default prefix cache: one per base weights and prefix tap, shared by every dataset and target
    (its rows are keyed by image content). A cache an older featx named after one manifest is reused."""
    from ..paths import featx_home

    home = featx_home() / "features"
    flip = "-flip" if mirror else ""
    old = home / f"prefix-{release_name}-{manifest.hash()[:12]}-{weights_sha[:8]}{flip}-{tap}.zarr"
    return old if old.exists() else home / f"prefix-{release_name}-{weights_sha[:8]}{flip}-{tap}.zarr"


def prefix_cache(manifest, backbone: str, base: tuple, cfg: FineTuneConfig, run: RunOptions):
    """Build (or resume, or reuse) the feature store of the prefix tap; returns it opened."""
    from ..extract.command import extract
    from .data import parse_augment
    from ..store import FeatureStore

    release, _, sha = base
    mirror = "mirror" in parse_augment(cfg.augment)
    path = Path(run.cache) if run.cache else prefix_store_for(manifest, release.name, sha, cfg.from_tap, mirror)
    s = extract(manifest, backbone, path, tap=cfg.from_tap, weights=run.weights, device=run.device,
                precision=run.precision, workers=run.workers, flip_tta=mirror, dtype="float16", progress=run.progress)
    store = FeatureStore.open(path, targets=s["target_set"])
    if mirror and not store.has_flip:
        raise FeatxError(f"--augment mirror needs a prefix store with mirrored maps; {path} has none")
    view = store.use(cfg.target, cfg.task)
    cfg.check_task(view.task)
    return view


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
    outputs = 1 if store.task == "regress" else len(store.classes)
    net = TuneNet(model, stages, cfg.head, outputs, cfg.hidden, cfg.dropout,
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
    """accuracy and AUC on `rows` (a regressed target: MAE and RMSE), and accuracy (MAE) of adults and
    children when the data has an age column."""
    if len(rows) == 0:
        return {}
    r = loop.evaluate(net, evals, rows)
    keys = ("mae", "rmse") if loop.regress else ("accuracy", "auc")
    out = {**{k: r[k] for k in keys}, "n": int(len(rows))}
    if loop.regress:
        mean, scale = loop.scale
        err = np.abs(r["pred"] - (loop.labels[r["rows"]] * scale + mean))
    else:
        right = r["proba"].argmax(1) == loop.labels[r["rows"]]
    age = store.extras.get("age")
    if age is not None:
        a = np.array([float(v) if str(v).strip() not in ("", "nan") else np.nan for v in age[r["rows"]]])
        for name, m in (("adults", a >= 13), ("children", a < 13)):
            if m.any():
                out[f"{keys[0]}_{name}"] = float(err[m].mean() if loop.regress else right[m].mean())
                out[f"n_{name}"] = int(m.sum())
    return out


def regression_labels(store, train_idx) -> tuple[np.ndarray, tuple[float, float]]:
    """A regressed target as the net learns it: (y - mean) / scale of the train rows, float32."""
    y = np.asarray(store.values, np.float64)
    mean = float(y[train_idx].mean())
    scale = float(y[train_idx].std()) or 1.0
    return ((y - mean) / scale).astype(np.float32), (mean, scale)


def check_target(manifest, cfg: FineTuneConfig) -> None:
    """--target and --task checked on the manifest, before the prefix cache costs anything."""
    from ..targets import TargetSet, resolve_task

    ts = TargetSet.from_manifest(manifest, np.arange(len(manifest)), "data")
    task, _ = resolve_task(ts.target(cfg.target), cfg.task)
    cfg.check_task(task)


def identity_of(cfg: FineTuneConfig, base: tuple, manifest_hash: str) -> dict:
    """What a run's result depends on (the target fields only when not at their defaults, so runs made
    before targets existed keep their identity)."""
    from .config import TARGET_DEFAULTS

    release, _, sha = base
    recipe = {k: v for k, v in asdict(cfg).items() if not (k in TARGET_DEFAULTS and v == TARGET_DEFAULTS[k])}
    return {"backbone": release.name, "weights_sha256": sha, "manifest_hash": manifest_hash, **recipe}


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
    check_target(manifest, cfg)
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


def make_loop(store, train_idx, cfg: FineTuneConfig, run: RunOptions):
    """The trainer's loop for the store's target: class ids and cross-entropy, or standardised values
    and a smooth L1 (or L1) loss."""
    from .data import class_weights
    from .train import Loop

    amp = autocast_dtype(run.device, run.precision)
    if store.task == "regress":
        labels, scale = regression_labels(store, train_idx)
        return Loop(labels, run.device, amp, 0.0, None, run.progress, True, cfg.loss, scale)
    labels = np.asarray(store.labels, np.int64)
    weight = class_weights(labels[train_idx], len(store.classes)) if cfg.balance == "weights" else None
    return Loop(labels, run.device, amp, cfg.label_smoothing, weight, run.progress)


def train_and_export(store, base, cfg, run, out, identity, *, log, times) -> dict:
    """Parts 3 and 4: train from the opened prefix store, export the best checkpoint as a release."""
    from .export import Lineage, export_head, export_release, write_record
    from .train import Optimiser, Trainer

    train_idx, val_idx, test_idx = (store.indices(s) for s in ("train", "val", "test"))
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise FeatxError("fine-tuning needs train and val rows; the data has none in one of them")
    device = run.device
    net, batches, evals = build_parts(store, base, cfg, run, device)
    loop = make_loop(store, train_idx, cfg, run)
    n_epoch = len(train_idx) if cfg.balance != "sample" else \
        len(store.classes) * int(np.bincount(loop.labels[train_idx]).max())
    opt = Optimiser(net, cfg, -(-n_epoch // cfg.batch_size))
    trainer = Trainer(net, cfg, out, loop, batches, evals, log)
    pr = trainer.fit(opt, identity, train_idx, val_idx)

    va, te = (split_scores(loop, net, evals, store, r) for r in (val_idx, test_idx))
    t_start, prefix_s = times
    keys = ("mae", "rmse") if loop.regress else ("accuracy", "auc")
    summary = {"best_epoch": pr.best_epoch, "epochs_run": len(pr.history), "val_loss": None,
               "target": store.target, "task": store.task,
               **{f"val_{k}": va[k] for k in keys}, **{f"test_{k}": te.get(k) for k in keys},
               "n_test": int(len(test_idx)),
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
    export_head(net, release, lin, out, head_card(store, loop, {k: va[k] for k in keys}))
    write_record(out, release, pr.history)
    trainer.clean()
    from ..weights import register_finetuned

    register_finetuned(out)
    alone = " (the head alone)" if pr.best_epoch == 0 else ""
    shown = lambda d: " ".join(f"{k} {d[k]:.4f}" for k in keys)  # noqa: E731
    log(f"fine-tuned {name} for {store.target}: best epoch {pr.best_epoch}{alone}, val {shown(va)}"
        + (f", test {shown(te)} on {te['n']} images" if te else "") + f"; {summary['wall_seconds']:.0f}s in all")
    return summary


def head_card(store, loop, val_metrics: dict) -> dict:
    """What the exported head's card says besides provenance: target, task, classes (or the target's
    scale, for a regressed one) and the val scores."""
    card = {"target": store.target, "task": store.task, "val_metrics": val_metrics,
            "classes": list(store.classes), "positive": store.classes[1] if len(store.classes) == 2 else None}
    if loop.regress:
        y = np.asarray(store.values)[store.indices("train")]
        card["regression"] = {"mean": loop.scale[0], "scale": loop.scale[1], "range": [float(y.min()), float(y.max())]}
    return card
