"""Heads over cached features: train, save (safetensors arrays + a JSON card), load, check.

    head = make_head("logreg", seed=0)          # or linear-svm, rbf-svm, mlp, sgd
    head.fit(X, y, X_val, y_val)                # hyperparameters chosen on (X_val, y_val)
    save_head(head, "heads/gender", card)       # head.safetensors + head.json, never a pickle
    head, card = load_head("heads/gender")
    card = train(store, "logreg", "heads/gender")   # the whole thing, from a FeatureStore
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FeatxError
from .base import Head
from .linear import LinearSVMHead, LogRegHead
from .mlp import MLPHead, pick_device
from .rbf import RBFSVMHead
from .sgd import SGDHead

HEAD_CLASSES: dict[str, type[Head]] = {c.kind: c for c in (LogRegHead, LinearSVMHead, RBFSVMHead, MLPHead, SGDHead)}
HEADS: tuple[str, ...] = tuple(HEAD_CLASSES)
CARD_FORMAT = "featx-head"
CARD_VERSION = 1
ARRAYS_FILE = "head.safetensors"
CARD_FILE = "head.json"
SELECT_ON = ("val", "holdout")
# provenance copied from the store attrs into the card
PROVENANCE_KEYS = ("release", "tap", "preprocess", "manifest_hash", "weights_sha256", "dtype", "precision", "dim")


def make_head(kind: str, **params) -> Head:
    """A new, unfitted head. params: seed, class_weight, grid, n_classes and the kind's own settings."""
    if kind not in HEAD_CLASSES:
        raise FeatxError(f"unknown head {kind!r}; use one of {', '.join(HEADS)}")
    return HEAD_CLASSES[kind](**params)


# ---------- saving and loading ----------

def save_head(head: Head, out_dir: str | Path, card: dict) -> Path:
    """Write head.safetensors (the learned arrays) and head.json (the card). Returns the folder."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    card = {"format": CARD_FORMAT, "version": CARD_VERSION, **card, "head": head.kind,
            "params": to_json(head.get_params())}
    arrays = {k: np.ascontiguousarray(v) for k, v in head.arrays().items()}
    tmp = out / (ARRAYS_FILE + ".tmp")
    save_file(arrays, str(tmp), metadata={"format": CARD_FORMAT, "head": head.kind})
    os.replace(tmp, out / ARRAYS_FILE)
    tmp = out / (CARD_FILE + ".tmp")
    tmp.write_text(json.dumps(to_json(card), indent=2) + "\n")
    os.replace(tmp, out / CARD_FILE)
    return out


def read_card(head_dir: str | Path) -> dict:
    path = Path(head_dir) / CARD_FILE
    if not path.is_file():
        raise FeatxError(f"no saved head at {head_dir} (missing {CARD_FILE}); train one with `featx train-head`")
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FeatxError(f"cannot read {path}: {e}") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise FeatxError(f"{path} is not a featx head card")
    if card.get("version", 0) > CARD_VERSION:
        raise FeatxError(f"{path} has card version {card['version']}; this featx reads up to {CARD_VERSION}")
    if card.get("head") not in HEAD_CLASSES:
        raise FeatxError(f"{path} names unknown head {card.get('head')!r}")
    return card


def load_head(head_dir: str | Path) -> tuple[Head, dict]:
    """(head, card) from a folder written by save_head. Reads JSON and safetensors only."""
    from safetensors.numpy import load_file

    card = read_card(head_dir)
    path = Path(head_dir) / ARRAYS_FILE
    if not path.is_file():
        raise FeatxError(f"{head_dir} has a card but no {ARRAYS_FILE}")
    try:
        arrays = load_file(str(path))
    except Exception as e:  # safetensors raises several types
        raise FeatxError(f"cannot read {path}: {e}") from None
    return HEAD_CLASSES[card["head"]].from_arrays(card["params"], arrays), card


def check_compatible(card: dict, store_attrs: dict) -> None:
    """Refuse features from another release, tap, weights file, preprocessing or shape.

    Another manifest is fine: evaluating on another collection is the point.
    """
    have, want = card.get("provenance", {}), store_attrs
    for key, what in (("release", "release"), ("tap", "tap")):
        if have.get(key) != want.get(key):
            raise FeatxError(f"head was trained on {what} {have.get(key)!r} features but the store has "
                             f"{what} {want.get(key)!r}; extract the store with --backbone {have.get('release')} "
                             f"--tap {have.get('tap')} or train a head on it")
    for key, what in (("weights_sha256", "weights"), ("preprocess", "preprocessing")):
        a, b = have.get(key), want.get(key)
        if a is not None and b is not None and to_json(a) != to_json(b):
            if key == "weights_sha256":
                a, b = str(a)[:12], str(b)[:12]
            raise FeatxError(f"head was trained on features from other {what} ({a} vs {b}); "
                             "features from the same release must match exactly")
    if have.get("dim") is not None and want.get("dim") is not None and list(have["dim"]) != list(want["dim"]):
        raise FeatxError(f"head expects features of shape {have['dim']} but the store has {list(want['dim'])}")


# ---------- working with stores ----------

def open_store(store) -> Any:
    """A FeatureStore from a path or URL; anything else is taken to be a store already."""
    if isinstance(store, (str, os.PathLike)):
        from ..store import FeatureStore

        return FeatureStore.open(store)
    return store


def store_label(store, given=None) -> str:
    """A short name for report folders: the store folder's name without .zarr."""
    raw = str(given if given is not None else getattr(store, "name", "store"))
    name = Path(raw.rstrip("/")).name or "store"
    return name[:-5] if name.endswith(".zarr") else name


def predict_rows(head: Head, store, idx: np.ndarray, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(rows, proba) for store rows `idx`, one stored chunk at a time (bounded memory); rows ascending."""
    rows_out, proba_out = [], []
    for rows, X in store.iter_chunks(idx, flip=flip):
        rows_out.append(np.asarray(rows))
        proba_out.append(head.predict_proba(X))
    if not rows_out:
        return np.zeros(0, np.int64), np.zeros((0, head.n_classes or 2))
    return np.concatenate(rows_out), np.concatenate(proba_out)


def provenance(store) -> dict:
    attrs = dict(store.attrs)
    prov = {k: attrs.get(k) for k in PROVENANCE_KEYS}
    prov["release"] = prov["release"] or store.release
    prov["tap"] = prov["tap"] or store.tap
    prov["dim"] = list(store.dim)
    prov["store"] = str(getattr(store, "name", ""))
    return to_json(prov)


def versions() -> dict:
    import sklearn
    import torch

    from .. import __version__

    return {"featx": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "torch": torch.__version__}


def train(store, kind: str, out: str | Path, select_on: str = "val", class_weight: str | None = None,
          seed: int = 0, augment_flip: bool = False, params: dict | None = None) -> dict:
    """Train a `kind` head on the store's train split, choose hyperparameters, save it to `out`; returns the card."""
    from ..report import compute_metrics

    store = open_store(store)
    head = make_head(kind, seed=seed, class_weight=class_weight, n_classes=len(store.classes), **(params or {}))
    if select_on not in SELECT_ON:
        raise FeatxError(f"unknown --select-on {select_on!r}; use val (the store's val split) "
                         "or holdout (20% of the train split)")
    if augment_flip and not store.has_flip:
        raise FeatxError(f"store {getattr(store, 'name', '')} has no flipped features; "
                         "extract it with --flip-tta to use --augment-flip")
    if len(store.classes) < 2:
        raise FeatxError("the store has fewer than two classes")
    labels = np.asarray(store.labels, np.int64)
    tr, va = store.indices("train"), store.indices("val")
    if len(tr) == 0:
        raise FeatxError("the store has no usable train rows")
    on = "val split"
    if select_on == "holdout" or len(va) == 0:
        if select_on == "val":
            raise FeatxError("the store has no usable val rows; use --select-on holdout")
        from .base import holdout_split

        a, b = holdout_split(labels[tr], 0.2, seed)
        tr, va, on = tr[a], tr[b], "holdout 20% of the train split"
    flips = (False, True) if augment_flip else (False,)

    t0 = time.perf_counter()
    if isinstance(head, SGDHead):
        head.fit_stream(lambda idx, flip: store.iter_chunks(idx, flip=flip), labels, tr, va, flips, on=on)
    else:
        X = store.features(tr)
        y = labels[tr]
        if augment_flip:
            X = np.concatenate([X, store.features(tr, flip=True)])
            y = np.concatenate([y, y])
        head.fit(X, y, store.features(va), labels[va])
        del X
        head.selection["on"] = on
    fit_seconds = time.perf_counter() - t0

    rows, proba = predict_rows(head, store, va)
    val_metrics = compute_metrics(labels[rows], proba, list(store.classes))
    val_metrics.pop("per_class", None)
    card = {
        "classes": list(store.classes),
        "positive": store.classes[1] if len(store.classes) == 2 else None,
        "provenance": provenance(store),
        "selection": head.selection,
        "training": {
            "n_train": int(len(tr)) * len(flips), "n_val": int(len(va)), "select_on": select_on,
            "class_weight": class_weight, "seed": seed, "augment_flip": augment_flip,
            "fit_seconds": round(fit_seconds, 4),
            "device": pick_device(head.params["device"]) if kind == "mlp" else "cpu",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        },
        "val_metrics": val_metrics,
    }
    save_head(head, out, card)
    return read_card(out)


def to_json(x):
    """numpy scalars/arrays and tuples -> plain JSON values."""
    if isinstance(x, dict):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_json(x.tolist())
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        x = float(x)
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


__all__ = ["HEADS", "Head", "make_head", "save_head", "load_head", "read_card", "check_compatible", "train",
           "open_store", "predict_rows", "store_label"]
