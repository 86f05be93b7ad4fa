"""Training glue: a feature store in, a saved head out. Heads (featx.heads) take arrays; this module
picks the rows from a store, fits, scores on the val rows and writes the head card.

    card = train(store, "logreg", "heads/gender")   # store: a path, URL or FeatureStore
    rows, proba = predict_rows(head, store, idx)     # chunk by chunk, bounded memory
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FeatxError
from .heads import Head, make_head, read_card, save_head
from .heads.card import to_json
from .metrics import compute_metrics
from .provenance import provenance, versions

SELECT_ON = ("val", "holdout")


# ---------- working with stores ----------

def open_store(store) -> Any:
    """A FeatureStore from a path or URL; anything else is taken to be a store already."""
    if isinstance(store, (str, os.PathLike)):
        from .store import FeatureStore

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
        return np.zeros(0, np.int64), np.zeros((0, getattr(head, "n_classes_", None) or 2))
    return np.concatenate(rows_out), np.concatenate(proba_out)


# ---------- train(): a store in, a saved head out ----------

@dataclass
class Rows:
    """The rows a head trains and selects on, and how they were chosen."""

    labels: np.ndarray
    train: np.ndarray
    val: np.ndarray
    on: str  # recorded as selection["on"]
    flips: tuple[bool, ...]


def training_rows(store, select_on: str, seed: int, augment_flip: bool) -> Rows:
    """Check the store and the options; train rows, and val rows (the val split or a holdout)."""
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
        from .heads.base import holdout_split

        a, b = holdout_split(labels[tr], 0.2, seed)
        tr, va, on = tr[a], tr[b], "holdout 20% of the train split"
    return Rows(labels, tr, va, on, (False, True) if augment_flip else (False,))


def fit_on_store(head: Head, store, rows: Rows) -> float:
    """Fit `head` on the store's rows: streamed from chunks when the head can, else in memory. Seconds taken."""
    t0 = time.perf_counter()
    if hasattr(head, "fit_stream"):
        head.fit_stream(lambda idx, flip: store.iter_chunks(idx, flip=flip), rows.labels, rows.train, rows.val,
                        rows.flips, on=rows.on)
    else:
        X = np.concatenate([store.features(rows.train, flip=f) for f in rows.flips])
        y = np.concatenate([rows.labels[rows.train]] * len(rows.flips))
        head.fit(X, y, store.features(rows.val), rows.labels[rows.val])
        del X
        head.selection_["on"] = rows.on
    return time.perf_counter() - t0


def train(store, kind: str, out: str | Path, select_on: str = "val", class_weight: str | None = None,
          seed: int = 0, augment_flip: bool = False, params: dict | None = None) -> dict:
    """Train a `kind` head on the store's train split, choose hyperparameters, save it to `out`; returns the card."""
    store = open_store(store)
    head = make_head(kind, seed=seed, class_weight=class_weight, n_classes=len(store.classes), **(params or {}))
    rows = training_rows(store, select_on, seed, augment_flip)
    fit_seconds = fit_on_store(head, store, rows)
    val_rows, proba = predict_rows(head, store, rows.val)
    val_metrics = compute_metrics(rows.labels[val_rows], proba, list(store.classes))
    val_metrics.pop("per_class", None)
    card = {
        "classes": list(store.classes),
        "positive": store.classes[1] if len(store.classes) == 2 else None,
        "provenance": to_json(provenance(store)),
        "selection": head.selection_,
        "training": {
            "n_train": int(len(rows.train)) * len(rows.flips), "n_val": int(len(rows.val)),
            "select_on": select_on, "class_weight": class_weight, "seed": seed, "augment_flip": augment_flip,
            "fit_seconds": round(fit_seconds, 4),
            "device": head.selection_.get("device", "cpu"),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        },
        "val_metrics": val_metrics,
    }
    save_head(head, out, card)
    return read_card(out)
