"""`featx labels`: the targets of a store, and new ones joined by path without any extraction.

    describe(store)                        # target sets, targets, types, counts, classes or ranges
    add(store, "ages.csv")                 # new columns joined by path (or, for moved photos, by content)
    set_type(store, "race", "categorical")

A CSV row the target set lacks is a one-line error naming the first few, and nothing is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import FeatxError
from .targets import Target, check_kind, infer_kind, is_missing


def describe(store, targets: str | None = None) -> dict:
    """{store, format, sets: [...], set: {name, n, manifest_hash, split: {..}, targets: [describe()...]}}."""
    from .store import FeatureStore

    fs = FeatureStore.open(store, targets, complete=False)
    ts = fs.tset
    split = {s: int((ts.split == s).sum()) for s in ("train", "val", "test")}
    return {"store": fs.name, "format": fs.version, "sets": fs.target_sets(),
            "set": {"id": fs.set_id, "name": ts.name, "n": len(ts), "manifest_hash": ts.manifest_hash,
                    "root": ts.root, "split": split,
                    "targets": [ts.target(c).describe() for c in ts.columns]}}


@dataclass
class Joined:
    """How a CSV's rows met a target set's rows."""

    pos: np.ndarray  # target-set row of each CSV row
    by_path: int = 0
    by_content: int = 0
    unmatched: list[str] = field(default_factory=list)


def join(ts, table, row_hash: np.ndarray | None) -> Joined:
    """Each CSV row's row in the target set: by absolute path, else by the file's digest."""
    from .reader import file_digest

    index = {os.path.normpath(os.path.join(ts.root, p)): i for i, p in enumerate(ts.paths)}
    by_digest: dict[str, int] = {}
    if row_hash is not None:
        for i, d in enumerate(row_hash[ts.rows]):
            if d:
                by_digest.setdefault(str(d), i)
    j = Joined(np.full(len(table.paths), -1, np.int64))
    for k, p in enumerate(table.paths):
        full = os.path.normpath(os.path.join(table.root, p))
        i = index.get(full)
        if i is None and by_digest:
            i = by_digest.get(file_digest(Path(full)) or "\0")
            j.by_content += i is not None
        else:
            j.by_path += i is not None
        if i is None:
            j.unmatched.append(p)
        else:
            j.pos[k] = i
    return j


def plan_columns(ts, table, joined: Joined, declared: dict[str, str]) -> tuple[dict, dict, list[str]]:
    """(new columns over the target set's rows, their kinds, columns skipped as identical)."""
    from .data import SPLIT_NAMES, canonical_label

    new, kinds, same = {}, {}, []
    existing = {**ts.columns, "split": ts.split, **({"group": ts.groups} if ts.groups is not None else {})}
    for name, values in table.columns.items():
        v = np.asarray(values, dtype=str)
        key = {"identity": "group"}.get(name.lower(), name.lower() if name.lower() in ("split", "group") else name)
        if key in existing:
            have = np.asarray(existing[key], dtype=str)[joined.pos]
            norm = (lambda x: SPLIT_NAMES.get(x.lower(), x)) if key == "split" else canonical_label
            if any(norm(a) != norm(b) for a, b in zip(v, have)):
                raise FeatxError(f"column {name!r} is already in target set {ts.name!r} with other values; "
                                 "rename the new column (splits and groups stay as extracted); nothing changed")
            same.append(name)
            continue
        col = np.full(len(ts), "", dtype=object)
        col[joined.pos] = v
        col = col.astype(str)
        kind = check_kind(declared[name], name) if name in declared else infer_kind(name, col)
        if kind == "numeric":
            Target(name, kind, col).numbers()  # a one-line error when a value is not a number
        new[name], kinds[name] = col, kind
    return new, kinds, same


def add(store, data, targets: str | None = None, numeric=(), categorical=()) -> dict:
    """Join the columns of CSV `data` (path,COL,...) to a target set by path: no extraction.
    Returns {set, rows, by_path, by_content, added: {name: kind}, identical: [...], missing: {name: n}}."""
    from .data import load_columns
    from .store import StoreWriter, legacy_set, read_set, writer_lock

    declared = {**{c: "numeric" for c in numeric}, **{c: "categorical" for c in categorical}}
    table = load_columns(data)
    unknown = sorted(set(declared) - set(table.columns))
    if unknown:
        raise FeatxError(f"--numeric/--categorical name columns that {data} lacks: {', '.join(unknown)}")
    with writer_lock(store, "featx labels add"):
        w = StoreWriter.open(store)
        fs = w.reader(targets) if w.version >= 2 else None
        sid = fs.set_id if fs else "s0"
        ts = read_set(w.group, sid) if fs else legacy_set(w.group, w.attrs)
        joined = join(ts, table, w.row_hashes())
        if joined.unmatched:
            u = joined.unmatched
            raise FeatxError(f"{len(u)} of {len(table.paths)} rows of {data} are not in target set {ts.name!r} of "
                             f"store {w.name}, e.g. {', '.join(u[:3])}; nothing changed")
        new, kinds, same = plan_columns(ts, table, joined, declared)
        if new:
            w.upgrade()
            w.add_columns(sid, new, kinds)
    return {"set": ts.name, "rows": len(table.paths), "of": len(ts), "by_path": joined.by_path,
            "by_content": joined.by_content, "added": kinds, "identical": same,
            "missing": {c: int(sum(is_missing(x) for x in v)) for c, v in new.items()}}


def set_type(store, column: str, kind: str, targets: str | None = None) -> dict:
    """Declare a target categorical or numeric (a numeric one must hold numbers)."""
    from .store import StoreWriter, writer_lock

    check_kind(kind, column)
    if column == "label" and kind != "categorical":
        raise FeatxError("`label` is the class label: it stays categorical; add a numeric copy with `labels add`")
    with writer_lock(store, "featx labels type"):
        w = StoreWriter.open(store)
        w.upgrade()
        fs = w.reader(targets)
        t = fs.tset.target(column)
        if kind == "numeric":
            Target(column, kind, t.raw).numbers()
        w.set_kind(fs.set_id, column, kind)
    return {"set": fs.tset.name, "target": column, "type": kind, "was": t.kind}
