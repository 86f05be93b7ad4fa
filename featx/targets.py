"""Targets beside features: the typed columns of a manifest (label, age, race, CelebA attributes, ...)
and a "target set" per manifest: its rows in the store, its split, its groups and its columns.

Features are keyed by image content (featx.store); labels are not. A store holds one target set per
manifest extracted into it (or joined with `featx labels add`), each mapping its rows to store rows.

Types: `label` is always categorical. Any other column is numeric when every value present parses as
a finite number and either some value is not a whole number, or there are more than MAX_CODES distinct
values, or it is an age (named as in featx.metrics.AGE_COLUMNS); otherwise categorical (UTKFace: `age`
numeric, `race` 0-4 categorical, CelebA attributes categorical). A declared type (`featx labels add
--numeric/--categorical`, `featx labels type`, or a loader's own) wins. The type decides what a head
learns (classify or regress) and how a report groups rows by the column (featx.metrics.bins_for).
Missing values: an empty cell, or na, n/a, nan, null, none (any case).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import FeatxError
from .metrics import AGE_COLUMNS, finite_number

KINDS = ("categorical", "numeric")
MAX_CODES = 10  # whole-number columns with at most this many distinct values are codes (race 0-4)
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none"})


def is_missing(v) -> bool:
    return str(v).strip().lower() in MISSING


def infer_kind(name: str, values) -> str:
    """categorical or numeric, by the rule in the module docstring."""
    if name == "label":
        return "categorical"
    present = [str(v).strip() for v in values if not is_missing(v)]
    nums = [finite_number(v) for v in present]
    if not present or any(x is None for x in nums):
        return "categorical"
    fractional = any(x != int(x) for x in nums)
    many = len(set(nums)) > MAX_CODES or name.lower() in AGE_COLUMNS
    return "numeric" if fractional or many else "categorical"


MAX_CLASSES = 50  # a classifier over a numeric target with more distinct values than this is refused
TASKS = ("auto", "classify", "regress")


def too_many_classes(k: int, n: int) -> bool:
    """A numeric target is no set of classes when it has over MAX_CLASSES values, or over MAX_CODES
    values with fewer than 5 rows each on average."""
    return k > MAX_CLASSES or (k > MAX_CODES and n < 5 * k)


def resolve_task(t: "Target", task: str) -> tuple[str, list[str]]:
    """(classify | regress, class names) for learning target `t` under --task `task` (auto: numeric
    targets regress); a regression of a categorical target, or a classifier over a numeric target with
    too many values, is a one-line error saying why."""
    if task not in TASKS:
        raise FeatxError(f"unknown --task {task!r}; use auto, classify or regress")
    if task == "auto":
        task = "regress" if t.kind == "numeric" else "classify"
    classes = t.classes()
    if task == "regress" and t.kind != "numeric":
        more = ", ..." if len(classes) > 5 else ""
        raise FeatxError(f"target {t.name!r} is categorical ({len(classes)} classes: {', '.join(classes[:5])}{more}); "
                         f"regression needs a numeric target (declare it with `featx labels type STORE {t.name} "
                         "numeric`)")
    if task == "classify" and t.kind == "numeric" and too_many_classes(len(classes), int(t.present().sum())):
        raise FeatxError(f"target {t.name!r} is numeric with {len(classes)} distinct values; a classifier "
                         "would learn each value as a class: use --task regress (or auto)")
    return task, classes if task == "classify" else []


def check_kind(kind: str, name: str) -> str:
    if kind not in KINDS:
        raise FeatxError(f"unknown type {kind!r} for target {name!r}; use categorical or numeric")
    return kind


class LazyColumns(Mapping):
    """name -> values, each loaded on first use: a store with 40 targets reads only the ones asked for."""

    def __init__(self, names, load):
        self._names, self._load, self._got = list(names), load, {}

    def __getitem__(self, name: str):
        if name not in self._names:
            raise KeyError(name)
        if name not in self._got:
            self._got[name] = self._load(name)
        return self._got[name]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@dataclass
class Target:
    """One typed column over the rows of a target set (raw strings kept; views computed)."""

    name: str
    kind: str
    raw: np.ndarray  # str, one per target-set row

    def present(self) -> np.ndarray:
        return np.fromiter((not is_missing(v) for v in self.raw), bool, len(self.raw))

    def numbers(self) -> np.ndarray:
        """float64 values, NaN where missing; a one-line error when a present value is not a number."""
        out = np.full(len(self.raw), np.nan)
        for i, v in enumerate(self.raw):
            if not is_missing(v):
                x = finite_number(str(v).strip())
                if x is None:
                    raise FeatxError(f"target {self.name!r} is numeric but row {i} holds {str(v)!r}")
                out[i] = x
        return out

    def classes(self) -> list[str]:
        """Sorted class names (numeric columns: by value); missing values are no class."""
        from .data import canonical_label

        vals = {canonical_label(str(v).strip()) for v in self.raw if not is_missing(v)}
        if vals and all(finite_number(v) is not None for v in vals) and self.kind == "numeric":
            return sorted(vals, key=float)
        return sorted(vals)

    def codes(self, classes: list[str] | None = None) -> np.ndarray:
        """int64 class ids in `classes` (default: self.classes()), -1 where missing."""
        from .data import canonical_label

        index = {c: k for k, c in enumerate(classes if classes is not None else self.classes())}
        return np.fromiter((-1 if is_missing(v) else index.get(canonical_label(str(v).strip()), -1)
                            for v in self.raw), np.int64, len(self.raw))

    def describe(self) -> dict:
        """count, missing, and classes with counts (categorical) or min, max, mean (numeric)."""
        have = self.present()
        d = {"name": self.name, "type": self.kind, "count": int(have.sum()), "missing": int((~have).sum())}
        if self.kind == "numeric":
            x = self.numbers()[have]
            d.update(distinct=int(np.unique(x).size), min=float(x.min()) if x.size else None,
                     max=float(x.max()) if x.size else None, mean=float(x.mean()) if x.size else None)
        else:
            codes = self.codes()
            d["classes"] = {c: int((codes == k).sum()) for k, c in enumerate(self.classes())}
        return d


@dataclass
class TargetSet:
    """One manifest's view of a store: which store row each of its rows is, and its columns."""

    name: str
    manifest_hash: str
    root: str  # the manifest's root (absolute): paths are relative to it
    rows: np.ndarray  # int64 store row of each manifest row
    paths: np.ndarray  # str
    split: np.ndarray  # str: train | val | test
    columns: Mapping[str, np.ndarray]  # name -> raw str values ("label" first)
    kinds: dict[str, str]  # name -> categorical | numeric
    groups: np.ndarray | None = None
    source: str = "csv"
    extra: dict = field(default_factory=dict)  # free provenance (created, split_by, ...)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def targets(self) -> list[str]:
        return list(self.columns)

    def target(self, name: str) -> Target:
        if name not in self.columns:
            raise FeatxError(f"no target {name!r} in target set {self.name!r}; targets: {', '.join(self.columns)}")
        return Target(name, self.kinds[name], self.columns[name])

    @classmethod
    def from_manifest(cls, m, rows, name: str, declared: dict | None = None) -> "TargetSet":
        """The target set of a featx.data.Manifest whose rows are store rows `rows`."""
        import time

        cols = {"label": np.asarray(m.labels, dtype=str),
                **{k: np.asarray(v, dtype=str) for k, v in m.extras.items()}}
        declared = {**getattr(m, "types", {}), **(declared or {})}
        kinds = {k: check_kind(declared[k], k) if k in declared else infer_kind(k, v) for k, v in cols.items()}
        kinds["label"] = "categorical"
        return cls(name=name, manifest_hash=m.hash(), root=str(m.root), rows=np.asarray(rows, np.int64),
                   paths=np.asarray(m.paths, dtype=str), split=np.asarray(m.splits, dtype=str), columns=cols,
                   kinds=kinds, groups=None if m.groups is None else np.asarray(m.groups, dtype=str),
                   source=m.source, extra={"split_by": m.split_by,
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def set_name(m, taken=()) -> str:
    """A short name for a manifest's target set: its file's stem (or its source), unique in `taken`."""
    from pathlib import Path

    src = getattr(m, "origin", None)
    base = Path(src).stem if src else (m.source or "data")
    if base in ("labels", "manifest", "data") and src:
        base = f"{Path(src).parent.name}-{base}" if Path(src).parent.name else base
    name = base or "data"
    return name if name not in taken else f"{name}-{m.hash()[:8]}"


def multiset_match(store_keys: np.ndarray, keys: list[str]) -> np.ndarray:
    """For each key, a distinct store row holding it (k-th occurrence -> k-th such row), else -1.

    Keys are image digests: features of equal bytes are equal, so another manifest over the same
    photos maps onto the rows already computed. An empty key (unreadable file) never matches."""
    pools: dict[str, list[int]] = {}
    for i, k in enumerate(store_keys):
        if k:
            pools.setdefault(str(k), []).append(i)
    used: dict[str, int] = {}
    out = np.full(len(keys), -1, np.int64)
    for j, k in enumerate(keys):
        pool = pools.get(k) if k else None
        if pool:
            n = used.get(k, 0)
            if n < len(pool):
                out[j] = pool[n]
                used[k] = n + 1
    return out


__all__ = ["KINDS", "MAX_CODES", "MAX_CLASSES", "TASKS", "MISSING", "LazyColumns", "Target", "TargetSet",
           "check_kind", "infer_kind", "is_missing", "multiset_match", "resolve_task", "set_name", "too_many_classes"]
