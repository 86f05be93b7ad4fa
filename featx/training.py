"""Training glue: a feature store in, a saved head out. Heads (featx.heads) take arrays; this module
picks the rows of one target from a store, fits, scores on the val rows and writes the head card.

    card = train(store, "logreg", "heads/gender")                   # store: a path, URL or FeatureStore
    cards = train_all(store, ["logreg", "ridge"], "heads/")           # one head per target
    card = train(use_target(open_store(path), "age"), "ridge", "heads/age")
    rows, proba = predict_rows(head, store, idx)                      # chunk by chunk, bounded memory
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
SPLITS = ("train", "val", "test")
DEFAULT_HEADS = {"classify": "logreg", "regress": "ridge"}  # when --head names none for a task


# ---------- working with stores ----------

def open_store(store, targets: str | None = None) -> Any:
    """A FeatureStore (through target set `targets`, default the current one) from a path or URL;
    anything else is taken to be a store already."""
    if isinstance(store, (str, os.PathLike)):
        from .store import FeatureStore

        return FeatureStore.open(store, targets)
    return store


def use_target(store, target: str | None = None, task: str = "auto") -> Any:
    """The store seen through `target` and `task` (auto: numeric targets regress, others classify);
    target None: the store as it is (its label, or the target a view already has)."""
    if target is None:
        return store
    if hasattr(store, "use"):
        return store.use(target, task)
    if target != "label" or task == "regress":
        raise FeatxError(f"store {getattr(store, 'name', '')} has no targets but its label")
    return store


def is_regression(store) -> bool:
    return getattr(store, "task", "classify") == "regress"


def head_task(kind: str) -> str:
    from .heads import get_head_class

    return getattr(get_head_class(kind), "task", "") or "classify"


def pick_head(kinds: list[str], store) -> str:
    """The kind among `kinds` (--head, comma-separated) that fits the store's task; the task's default
    when none is given. A kind of the other task is a one-line error saying why."""
    task = getattr(store, "task", "classify")
    if not kinds:
        return DEFAULT_HEADS[task]
    fit = [k for k in kinds if head_task(k) == task]
    if fit:
        return fit[0]
    name = getattr(store, "target", "label")
    want = ", ".join(k for k in head_kinds() if head_task(k) == task)
    if task == "regress":
        why = f"target {name!r} is numeric: it is regressed (or use --task classify when it has few values)"
    else:
        why = f"target {name!r} is categorical ({len(store.classes)} classes): it is classified"
    raise FeatxError(f"--head {','.join(kinds)} cannot learn it: {why}; use --head {want}")


def head_kinds() -> list[str]:
    from .heads import HEADS

    return list(HEADS)


def choice_line(store) -> str:
    """One line: the target, its type and what is learned."""
    name = getattr(store, "target", "label")
    tset = getattr(store, "tset", None)
    if tset is None:
        return f"target {name}: {len(store.classes)} classes ({', '.join(store.classes[:6])}); classifying"
    d = tset.target(name).describe()
    if is_regression(store):
        return f"target {name}: numeric, {d['min']:g} to {d['max']:g} ({d['distinct']} values); regressing"
    shown = ", ".join(store.classes[:6]) + (", ..." if len(store.classes) > 6 else "")
    return f"target {name}: {d['type']}, {len(store.classes)} classes ({shown}); classifying"


def store_label(store, given=None) -> str:
    """A short name for report folders: the store folder's name without .zarr."""
    raw = str(given if given is not None else getattr(store, "name", "store"))
    name = Path(raw.rstrip("/")).name or "store"
    return name[:-5] if name.endswith(".zarr") else name


def predict_rows(head: Head, store, idx: np.ndarray, mirror: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(rows, proba) for store rows `idx` (a regression head: (rows, values)), one stored chunk at a time
    (bounded memory); rows ascending. `mirror` (a head trained with mirrored features, on a store that
    has them): the mean of the answers for each photo and its mirror image, as predict and export give."""
    regress = getattr(head, "task", "classify") == "regress"
    answer = head.predict if regress else head.predict_proba
    flips = (False, True) if mirror and getattr(store, "has_flip", False) else (False,)
    rows, out = np.zeros(0, np.int64), 0.0
    for flip in flips:
        parts = [(r, answer(X)) for r, X in store.iter_chunks(idx, flip=flip)]
        if not parts:
            return rows, np.zeros(0) if regress else np.zeros((0, getattr(head, "n_classes_", None) or 2))
        rows = np.concatenate([np.asarray(r) for r, _ in parts])
        out = out + np.concatenate([y for _, y in parts]) / len(flips)
    return rows, out


def mirrored(card: dict) -> bool:
    """Whether a head answers with the mean over each photo and its mirror image (trained with them)."""
    return bool(card.get("training", {}).get("augment_flip"))


# ---------- train(): a store in, a saved head out ----------

@dataclass
class Rows:
    """The rows a head trains and selects on, and how they were chosen."""

    labels: np.ndarray  # int64 class ids, or float64 values for a regressed target
    train: np.ndarray
    val: np.ndarray
    on: str  # recorded as selection["on"]
    flips: tuple[bool, ...]
    left_out: dict  # rows per split without a value for the target


def training_rows(store, select_on: str, seed: int, augment_flip: bool) -> Rows:
    """Check the store and the options; train rows, and val rows (the val split or a holdout)."""
    if select_on not in SELECT_ON:
        raise FeatxError(f"unknown --select-on {select_on!r}; use val (the store's val split) "
                         "or holdout (20% of the train split)")
    if augment_flip and not store.has_flip:
        raise FeatxError(f"store {getattr(store, 'name', '')} has no flipped features; "
                         "extract it with --flip-tta to use --augment-flip")
    regress = is_regression(store)
    if not regress and len(store.classes) < 2:
        raise FeatxError(f"target {getattr(store, 'target', 'label')!r} has fewer than two classes")
    labels = np.asarray(store.values, np.float64) if regress else np.asarray(store.labels, np.int64)
    tr, va = store.indices("train"), store.indices("val")
    if len(tr) == 0:
        raise FeatxError("the store has no usable train rows")
    on = "val split"
    if select_on == "holdout" or len(va) == 0:
        if select_on == "val":
            raise FeatxError("the store has no usable val rows; use --select-on holdout")
        a, b = holdout(labels[tr], seed, regress)
        tr, va, on = tr[a], tr[b], "holdout 20% of the train split"
    left_out = {s: store.missing(s) for s in SPLITS} if hasattr(store, "missing") else {}
    return Rows(labels, tr, va, on, (False, True) if augment_flip else (False,), left_out)


def holdout(y: np.ndarray, seed: int, regress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) positions: 20%, stratified by class (random for a regressed target)."""
    if regress:
        order = np.random.default_rng(seed).permutation(len(y))
        k = max(1, int(round(0.2 * len(y))))
        return np.sort(order[k:]), np.sort(order[:k])
    from .heads.base import holdout_split

    return holdout_split(y, 0.2, seed)


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


@dataclass
class TrainOptions:
    """How a head is trained, besides the store and the head kind."""

    select_on: str = "val"
    class_weight: str | None = None
    seed: int = 0
    augment_flip: bool = False
    params: dict | None = None


def train(store, kind: str | None, out: str | Path, select_on: str = "val", class_weight: str | None = None,
          seed: int = 0, augment_flip: bool = False, params: dict | None = None) -> dict:
    """Train a `kind` head (None: the task's default) on the store's train split, choose hyperparameters
    on val, save it to `out`; returns the card. The store's label is learned, or the target of a view:
    train(use_target(open_store(path, "utk"), "age"), "ridge", "heads/age")."""
    view = use_target(open_store(store))
    opts = TrainOptions(select_on, class_weight, seed, augment_flip, params)
    return fit_and_save(view, pick_head([kind] if kind else [], view), out, opts)


def fit_and_save(store, kind: str, out: str | Path, o: TrainOptions) -> dict:
    """Fit a `kind` head on a store view (one target), score it on val, save it with its card."""
    regress = is_regression(store)
    extra = {} if regress else {"class_weight": o.class_weight, "n_classes": len(store.classes)}
    if regress and o.class_weight:
        raise FeatxError("--class-weight is for classes; a regressed target has none")
    head = make_head(kind, seed=o.seed, **extra, **(o.params or {}))
    rows = training_rows(store, o.select_on, o.seed, o.augment_flip)
    fit_seconds = fit_on_store(head, store, rows)
    val_rows, out_val = predict_rows(head, store, rows.val)
    if regress:
        from .metrics import regression_metrics

        val_metrics = regression_metrics(rows.labels[val_rows], out_val)
    else:
        val_metrics = compute_metrics(rows.labels[val_rows], out_val, list(store.classes))
    val_metrics.pop("per_class", None)
    val_metrics.pop("groups", None)
    card = {
        "target": getattr(store, "target", "label"), "task": "regress" if regress else "classify",
        "target_set": getattr(getattr(store, "tset", None), "name", None),
        "classes": list(store.classes),
        "positive": store.classes[1] if len(store.classes) == 2 else None,
        "provenance": to_json(provenance(store)),
        "selection": head.selection_,
        "training": {
            "n_train": int(len(rows.train)) * len(rows.flips), "n_val": int(len(rows.val)),
            "left_out": rows.left_out, "select_on": o.select_on, "class_weight": o.class_weight, "seed": o.seed,
            "augment_flip": o.augment_flip, "fit_seconds": round(fit_seconds, 4),
            "device": head.selection_.get("device", "cpu"),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        },
        "val_metrics": val_metrics,
    }
    save_head(head, out, card)
    return read_card(out)


# ---------- --target all: one head per target, one read of the features ----------

class SharedFeatures:
    """A store view whose in-memory reads (features(idx)) come from one read of the rows every target
    may use, shared by every target's view; streaming reads (iter_chunks) go to the store."""

    LIMIT = 4 << 30  # bytes; above it every read goes to the store

    def __init__(self, store, cache: dict | None = None):
        self._store, self._cache = store, cache if cache is not None else {}

    def __getattr__(self, name):
        return getattr(self._store, name)

    def use(self, target: str, task: str = "auto") -> "SharedFeatures":
        return SharedFeatures(self._store.use(target, task), self._cache)

    def features(self, idx=None, flip: bool = False) -> np.ndarray:
        s = self._store
        usable = np.flatnonzero(s.ok & s.in_set)
        if idx is None or usable.size * int(np.prod(s.dim)) * 4 > self.LIMIT:
            return s.features(idx, flip=flip)
        if flip not in self._cache:
            pos = np.full(s.n, -1, np.int64)
            pos[usable] = np.arange(usable.size)
            self._cache[flip] = (pos, s.features(usable, flip=flip))
        pos, X = self._cache[flip]
        return X[pos[np.asarray(idx, np.int64)]]


def all_targets(store) -> list[str]:
    """Every target of the store's target set; `label` is left out when another column holds the same
    values (CelebA's `Male` when the label is Male)."""
    cols = store.tset.columns
    same = [c for c in cols if c != "label" and np.array_equal(cols[c], cols["label"])]
    return [c for c in cols if not (c == "label" and same)]


def train_all(store, kinds: list[str], out: str | Path, o: TrainOptions | None = None, task: str = "auto",
              targets: str | None = None, on_done=None) -> list[dict]:
    """One head per target under out/<target>, sharing one read of the features. Every target's task
    and head are checked before any is trained. Returns one card per target."""
    o = o or TrainOptions()
    base = SharedFeatures(open_store(store, targets))
    if not hasattr(base, "tset"):
        raise FeatxError("--target all needs a feature store with target sets")
    plan = []
    for t in all_targets(base):
        view = base.use(t, task)
        plan.append((t, view, pick_head(kinds, view)))
    cards = []
    for t, view, kind in plan:
        cards.append(fit_and_save(view, kind, Path(out) / safe_name(t), o))
        if on_done:
            on_done(cards[-1])
    return cards


def safe_name(target: str) -> str:
    """A folder name for a target: letters, digits, - and _ kept, the rest as _."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in target) or "_"
