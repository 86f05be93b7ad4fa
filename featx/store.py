"""The feature store: one Zarr v3 group per (release, weights, tap, preprocessing, dtype, flip); rows are
images, keyed by content (the digest of each file's bytes), never by labels.

Layout (the group attrs hold the full provenance, written before any feature):
  features       [N, D] or [N, C, H, W]  fp16/fp32, chunked by rows (>= ~1 MB) and sharded by rows
  features_flip  same shape, features of the mirrored image (only with flip TTA)
  ok             [N] bool, false where the image failed to decode   } one chunk per shard,
  reason         [N] str, why a row failed ("" when ok)            } written with the shard
  row_hash       [N] str, a digest of each image file's bytes (resume recomputes rows whose file changed)
  checksums      [n_shards] str, sha256 of a written shard's decoded rows: `verify` compares it
  done           [n_shards] bool, one chunk each: a shard's marker, set only after its data and checksum
  paths          [N] str, each row's path relative to its segment's root (attrs["segments"])
  targets/<id>/  one target set per manifest (featx.targets): rows (store row of each manifest row),
                 paths, split, group, columns/<k>; its attrs name it and type its columns

Rows grow in segments (attrs["segments"]: [start, stop, root]): a manifest with new images appends a
segment that starts on a shard boundary, so finished shards are never rewritten. Rows between
segments belong to no shard and no target set. Stores of format 1 (keyed by the manifest hash, labels
in root arrays) still open and read, as one target set; `upgrade` turns them into format 2.

The unit of work is one shard (a row range). Only one writer may ever write a shard
(Zarr has no locking), which `plan_units` + `StoreWriter.write_unit` make natural, and only one
process (the driver of a run) may write a store at a time: `writer_lock` holds an OS lock on
`<store>.lock` for the run's lifetime. This is the only module that touches Zarr.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import FeatxError

FORMAT = "featx-store"
# 2 (featx 0.2): rows keyed by image content, target sets, a sha256 per shard and a digest per row's image.
# 1 (before 0.2): one manifest per store, labels in root arrays, checksums and digests only in its last
# months; it still opens and reads, and `upgrade` makes it format 2. A newer format is refused in one line.
FORMAT_VERSION = 2
# Two stores hold the same features only when all of these agree (format 1 also had the manifest hash).
IDENTITY_KEYS = ("release", "weights_sha256", "tap", "preprocess", "dtype", "flip", "faces")
CHUNK_BYTES = 1 << 20  # at least about 1 MB a chunk
MAX_SHARD_ROWS = 2048  # the unit of work: small enough to lose little on a crash
MAX_SHARD_BYTES = 64 << 20  # a shard is assembled in memory before it is written
FP16_MAX = 65504.0

StoreArg = Any  # a local path, an fsspec URL ("memory://x", "file:///x", "s3://b/x") or a zarr StoreLike


def store_name(store: StoreArg) -> str:
    return str(store) if isinstance(store, (str, os.PathLike)) else repr(store)


def _local_path(store: StoreArg) -> Path | None:
    if isinstance(store, os.PathLike):
        return Path(store)
    if isinstance(store, str):
        if store.startswith("file://"):
            return Path(store[len("file://"):])
        if "://" not in store:
            return Path(store)
    return None


def _as_store(store: StoreArg) -> StoreArg:
    """What zarr.open_group gets: local paths (file:// URLs too) as str, other URLs and stores as given."""
    local = _local_path(store)
    return str(local) if local is not None else store


def _open_group(store: StoreArg, mode: str) -> zarr.Group | None:
    """The zarr group at `store`, or None when nothing is there."""
    try:
        return zarr.open_group(_as_store(store), mode=mode)
    except zarr.errors.ContainsArrayError:
        raise FeatxError(f"{store_name(store)} is a Zarr array, not a featx store") from None
    except (OSError, KeyError, ValueError):  # nothing there, or not Zarr at all
        local = _local_path(store)
        if local is not None and (local / "features").is_dir() and not (local / "zarr.json").exists():
            raise FeatxError(f"store {store_name(store)} is damaged: its zarr.json is missing; "
                             "re-extract into a new --store") from None
        return None
    except Exception as e:  # a damaged zarr.json
        raise FeatxError(f"store {store_name(store)} is damaged: {' '.join(str(e).split())[:200]}") from None


def _is_featx(group: zarr.Group, name: str) -> bool:
    """A featx store of a format this featx reads (a newer one is refused in one line)."""
    meta = group.attrs.get("featx")
    if not (isinstance(meta, dict) and meta.get("format") == FORMAT):
        return False
    _readable(meta.get("version", 1), name)
    return True


def _readable(version, name: str) -> int:
    """The format `version` of store `name`, or a one-line error when this featx cannot read it."""
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise FeatxError(f"{name} is a featx store of format {version}; this featx "
                         f"{_featx_version()} reads formats 1 to {FORMAT_VERSION}: upgrade featx")
    return version


def _featx_version() -> str:
    from . import __version__

    return __version__


def _occupied(store: StoreArg) -> bool:
    """True when something other than nothing / an empty folder sits at `store`."""
    local = _local_path(store)
    if local is not None:
        return local.exists() and (not local.is_dir() or any(local.iterdir()))
    if isinstance(store, str):
        import fsspec

        fs, path = fsspec.core.url_to_fs(store)
        return fs.exists(path) and (not fs.isdir(path) or bool(fs.ls(path)))
    return False


def row_bytes(dim: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(dim)) * np.dtype(dtype).itemsize


def layout(n: int, dim: tuple[int, ...], dtype: str, rows_per_shard: int | None = None,
           rows_per_chunk: int | None = None) -> tuple[int, int]:
    """(rows per chunk, rows per shard): chunks of >= ~1 MB, shards a whole number of chunks."""
    rb = row_bytes(dim, dtype)
    chunk = rows_per_chunk or math.ceil(CHUNK_BYTES / rb)
    if rows_per_shard:
        chunk = min(chunk, rows_per_shard)
        shard = math.ceil(rows_per_shard / chunk) * chunk
    else:
        k = max(1, min(MAX_SHARD_ROWS // chunk, MAX_SHARD_BYTES // (chunk * rb)))
        shard = chunk * k
    chunk = max(1, min(chunk, n))
    shard = max(chunk, min(shard, math.ceil(n / chunk) * chunk))
    return chunk, shard


def check_identity(attrs: dict, identity: dict, name: str) -> None:
    """Refuse, in one line, a store made from different data, release, weights, tap or preprocessing."""
    have = attrs.get("identity", {})
    identity = json.loads(json.dumps(identity))  # compare as stored (tuples become lists)
    words = {
        "release": "release {a!r}, not {b!r}",
        "weights_sha256": "other weights (sha256 {a:.12} vs {b:.12})",
        "tap": "tap {a!r}, not {b!r}",
        "preprocess": "other preprocessing ({a} vs {b})",
        "dtype": "dtype {a}, not {b}",
        "flip": "flip TTA {a}, not {b}",
        "faces": "another face stage ({a} vs {b})",
    }
    for key in IDENTITY_KEYS:
        a, b = have.get(key), identity.get(key)
        if a != b:
            what = words[key].format(a=str(a), b=str(b))
            raise FeatxError(f"store {name} was made from {what}; features are never mixed: use another --store")


def unit_checksum(features: np.ndarray, flips: np.ndarray | None, ok: np.ndarray, reasons) -> str:
    """sha256 of a shard's rows as stored (store dtype, decoded): what `verify` recomputes."""
    h = hashlib.sha256()
    for a in (features, flips):
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    h.update(np.asarray(ok, dtype=bool).tobytes())
    h.update("\0".join(str(r) for r in reasons).encode())
    return h.hexdigest()


class Geometry:
    """Rows, segments and shards of a store (shared by the writer and the reader).

    A shard k covers rows k*S up to the end of its segment or S rows, whichever comes first."""

    def _geometry(self, attrs: dict) -> None:
        self.n = int(attrs["n"])
        self.rows_per_shard = int(attrs["rows_per_shard"])
        root = str(attrs.get("manifest_root", ""))
        self.segments = [(int(a), int(b), str(r)) for a, b, r in attrs.get("segments") or [[0, self.n, root]]]
        self.n_shards = math.ceil(self.n / self.rows_per_shard)

    def shard_range(self, k: int) -> tuple[int, int]:
        a = k * self.rows_per_shard
        stop = next((b for s, b, _ in self.segments if s <= a < b), None)
        if stop is None:
            raise ValueError(f"shard {k} is outside this store")
        return a, min(a + self.rows_per_shard, stop)

    @property
    def shards(self) -> list[tuple[int, int]]:
        return [self.shard_range(k) for k in range(self.n_shards)]

    def real_rows(self) -> np.ndarray:
        """True for rows in a segment (False for the gaps between segments)."""
        m = np.zeros(self.n, bool)
        for a, b, _ in self.segments:
            m[a:b] = True
        return m


class StoreWriter(Geometry):
    """Write access to a featx store: plan the unfinished shards, write one shard at a time, grow by
    a segment, write target sets."""

    def __init__(self, group: zarr.Group, name: str):
        self.group, self.name = group, name
        self.attrs = dict(group.attrs)
        self._geometry(self.attrs)
        self.dim = tuple(self.attrs["dim"])
        self.dtype = self.attrs["dtype"]
        self.flip = bool(self.attrs["flip"])
        self.checked = "checksums" in group  # stores made before featx 0.2 have no checksums
        self.version = int(self.attrs["featx"].get("version", 1))

    @classmethod
    def open(cls, store: StoreArg) -> "StoreWriter":
        group = _open_group(store, "r+")
        if group is None or not _is_featx(group, store_name(store)):
            raise FeatxError(f"{store_name(store)} is not a featx store")
        if group.attrs["featx"].get("state") != "ready":
            raise FeatxError(f"store {store_name(store)} was never fully created; rerun featx extract")
        return cls(group, store_name(store))

    def done(self) -> np.ndarray:
        return np.asarray(self.group["done"][:self.n_shards], dtype=bool)

    def unit_done(self, k: int) -> bool:
        return bool(self.group["done"][k])

    def plan_units(self) -> list[tuple[int, int]]:
        """Row ranges (start, stop) of the shards not yet written."""
        done = self.done()
        return [u for u, d in zip(self.shards, done) if not d]

    def is_complete(self) -> bool:
        return bool(self.done().all())

    def shard_index(self, start: int, stop: int) -> int:
        k, r = divmod(start, self.rows_per_shard)
        if r or k >= self.n_shards or (start, stop) != self.shard_range(k):
            raise ValueError(f"({start}, {stop}) is not a shard of this store")
        return k

    def paths(self) -> np.ndarray:
        return read_strings(self.group["paths"], slice(0, self.n))

    def ok(self) -> np.ndarray:
        return np.asarray(self.group["ok"][:self.n], dtype=bool) & self.real_rows()

    def skipped(self, limit: int = 100) -> tuple[int, list[dict]]:
        """(count, first `limit` of {row, path, reason}) of rows whose image failed."""
        bad = np.flatnonzero(~self.ok() & self.real_rows())
        first = bad[:limit]
        reasons = read_strings(self.group["reason"], first) if first.size else []
        paths = read_strings(self.group["paths"], first) if first.size else []
        return int(bad.size), [{"row": int(i), "path": str(p), "reason": str(r)}
                               for i, p, r in zip(first, paths, reasons)]

    def row_hashes(self) -> np.ndarray | None:
        return read_strings(self.group["row_hash"], slice(0, self.n)) if "row_hash" in self.group else None

    def write_unit(self, start: int, stop: int, features: np.ndarray, ok: np.ndarray,
                   reasons: list[str] | np.ndarray, features_flip: np.ndarray | None = None,
                   row_hash=None) -> None:
        """Write one whole shard's rows, its checksum, then its marker. Only one writer per shard, ever."""
        k = self.shard_index(start, stop)
        m = stop - start
        if features.shape != (m, *self.dim) or len(ok) != m or len(reasons) != m:
            raise ValueError(f"shard ({start}, {stop}) wants {m} rows of {self.dim}, got {features.shape}")
        if self.flip and features_flip is None:
            raise ValueError("this store keeps flipped features; pass features_flip")
        g = self.group
        f = to_store_dtype(features, self.dtype)
        ff = to_store_dtype(features_flip, self.dtype) if self.flip else None
        ok = np.asarray(ok, dtype=bool)
        reasons = np.asarray(reasons, dtype=str)
        g["features"][start:stop] = f
        if self.flip:
            g["features_flip"][start:stop] = ff
        g["ok"][start:stop] = ok
        g["reason"][start:stop] = reasons
        if self.checked:
            if row_hash is not None:
                g["row_hash"][start:stop] = np.asarray(row_hash, dtype=str)
            g["checksums"][k] = unit_checksum(f, ff, ok, reasons)
        g["done"][k] = True  # the marker comes last: a crash before it means "redo this shard"

    def reader(self, targets: str | None = None) -> "FeatureStore":
        """A reading view of this store (it may be unfinished: only finished shards should be read)."""
        return FeatureStore(self.group, self.name, targets)

    def reset_units(self, ks) -> None:
        """Mark shards as not done and drop their stored bytes, so the next run writes them afresh."""
        from zarr.core.sync import sync

        for k in map(int, ks):
            self.group["done"][k] = False
            for name in ("features", "features_flip", "ok", "reason"):
                if name in self.group:
                    arr = self.group[name]
                    key = arr.metadata.chunk_key_encoding.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))
                    sync(arr.store_path.store.delete(f"{arr.store_path.path}/{key}"))

    def update_attrs(self, values: dict) -> None:
        """Only the single coordinating process may call this (attrs are one object)."""
        self.group.attrs.update(values)
        self.attrs.update(values)

    # --- growing by content ---
    def match(self, digests) -> np.ndarray:
        """The store row of each image digest (a distinct row per repeat), -1 for images not stored yet."""
        from .targets import multiset_match

        stored = self.row_hashes()
        return multiset_match(stored if stored is not None else np.zeros(0, str), list(digests))

    def grow(self, paths, digests, root: str) -> np.ndarray:
        """Append a segment of rows (not computed yet) for new images; returns their store rows.

        The arrays grow first and the attrs (n, segments) last: a crash in between leaves the store as
        it was, with a longer tail that nothing reads and the next grow reuses."""
        k = len(paths)
        if k == 0:
            return np.zeros(0, np.int64)
        if not self.checked or "row_hash" not in self.group:
            raise FeatxError(f"store {self.name} predates checksums and cannot grow; extract into a new --store")
        start = math.ceil(self.n / self.rows_per_shard) * self.rows_per_shard
        stop = start + k
        g = self.group
        for name in ("features", "features_flip", "ok", "reason", "row_hash", "paths"):
            if name in g:
                g[name].resize((stop, *g[name].shape[1:]))
        n_shards = math.ceil(stop / self.rows_per_shard)
        for name, empty in (("checksums", ""), ("done", False)):
            g[name].resize((n_shards,))
            g[name][self.n_shards:n_shards] = np.asarray([empty] * (n_shards - self.n_shards))
        g["paths"][start:stop] = np.asarray(paths, dtype=str)
        g["row_hash"][start:stop] = np.asarray(digests, dtype=str)
        segments = [list(s) for s in self.segments] + [[start, stop, str(root)]]
        self.update_attrs({"n": stop, "n_shards": n_shards, "segments": segments, "complete": False})
        self._geometry(self.attrs)
        return np.arange(start, stop, dtype=np.int64)

    # --- target sets ---
    def write_target_set(self, ts, current: bool = True) -> str:
        """Add (or replace, by manifest hash) a target set; returns its id. The list in the attrs is
        written last, so a crash leaves an unlisted group that the next write replaces."""
        ids = list(self.attrs.get("target_sets", []))
        same = [i for i in ids if self.group[f"targets/{i}"].attrs.get("manifest_hash") == ts.manifest_hash]
        sid = same[0] if same else _free_id(ids)
        _write_set(self.group, sid, ts)
        self.update_attrs({"target_sets": ids if same else ids + [sid], "current_set": sid if current else
                           self.attrs.get("current_set", sid)})
        return sid

    def add_columns(self, sid: str, columns: dict[str, np.ndarray], kinds: dict[str, str]) -> None:
        """New typed columns on target set `sid`: arrays first, the set's column list last."""
        g = self.group[f"targets/{sid}"]
        have = [list(c) for c in g.attrs["columns"]]
        n = int(g["rows"].shape[0])
        for j, (name, values) in enumerate(columns.items(), start=len(have)):
            _strings(g, f"columns/{j}", values, n)
            have.append([name, kinds[name]])
        g.attrs["columns"] = have
        self.update_attrs({"current_set": sid})

    def set_kind(self, sid: str, name: str, kind: str) -> None:
        g = self.group[f"targets/{sid}"]
        g.attrs["columns"] = [[c, kind if c == name else k] for c, k in g.attrs["columns"]]

    def upgrade(self) -> None:
        """A format-1 store (one manifest, labels in root arrays) becomes format 2 in place: its rows
        become target set s0; no feature is touched. Digests missing from old stores stay empty."""
        if self.version >= 2:
            return
        ts = legacy_set(self.group, self.attrs)
        g = self.group
        if "row_hash" not in g:
            g.create_array("row_hash", shape=(self.n,), chunks=(self.rows_per_shard,), dtype=str)
        _write_set(g, "s0", ts)
        identity = {k: v for k, v in self.attrs["identity"].items() if k != "manifest_hash"}
        self.update_attrs({"featx": {**self.attrs["featx"], "version": FORMAT_VERSION}, "identity": identity,
                           "segments": [[0, self.n, self.attrs.get("manifest_root", "")]],
                           "target_sets": ["s0"], "current_set": "s0", "upgraded_from": 1})
        self.checked = "checksums" in g
        self.version = FORMAT_VERSION

    def fill_hashes(self, rows: np.ndarray, digests) -> None:
        """Digests for rows that have none (stores upgraded from format 1, rows not computed yet)."""
        g = self.group["row_hash"]
        have = read_strings(g, slice(0, self.n))
        rows = np.asarray(rows, np.int64)
        want = np.asarray(digests, dtype=str)
        empty = have[rows] == ""
        if empty.any():
            have[rows[empty]] = want[empty]
            g[:self.n] = have


def attach(w: StoreWriter, manifest, digests, name: str | None = None) -> dict:
    """Map a manifest onto the store by content, under the writer lock: a format-1 store is upgraded
    first, images not stored yet get rows in a new segment (computed later, as unfinished shards), and
    the manifest becomes a target set. Returns {rows, new, kept, set}."""
    from .targets import TargetSet, set_name

    digests = [str(d) for d in digests]
    if w.version < 2:
        same = w.attrs.get("identity", {}).get("manifest_hash") == manifest.hash()
        if not same and not w.is_complete():
            raise FeatxError(f"store {w.name} was started by an older featx with another manifest and is "
                             "unfinished; finish it with the command that started it, or use another --store")
        w.upgrade()
        if same:
            w.fill_hashes(np.arange(len(manifest)), digests)
    rows = w.match(digests)
    new = np.flatnonzero(rows < 0)
    if new.size:
        root = Path(manifest.root).resolve().as_posix()
        rows[new] = w.grow([manifest.paths[i] for i in new], [digests[i] for i in new], root)
    sets = set_infos(w.group, w.attrs)
    mine = [s["name"] for s in sets if s["manifest_hash"] == manifest.hash()]
    ts = TargetSet.from_manifest(manifest, rows, name or (mine[0] if mine else
                                                          set_name(manifest, [s["name"] for s in sets])))
    w.write_target_set(ts)
    return {"rows": rows, "new": int(new.size), "kept": int(len(rows) - new.size), "set": ts.name}


def image_paths(w: StoreWriter, manifest=None, rows=None) -> list[str]:
    """Absolute image path of every store row: from its segment's root, or, for the rows of `manifest`
    (store rows `rows`), from the manifest as given now (the data may have moved)."""
    stored = w.paths()
    out = [""] * w.n
    for a, b, root in w.segments:
        for i in range(a, b):
            out[i] = os.path.normpath(os.path.join(root, stored[i]))
    if manifest is not None:
        for i, r in enumerate(rows):
            out[int(r)] = str(manifest.abspath(i))
    return out


def set_infos(g: zarr.Group, attrs: dict) -> list[dict]:
    """[{id, name, n, manifest_hash, current}] of a format-2 store's target sets, in the order added."""
    out = []
    for sid in attrs.get("target_sets", []):
        t = g[f"targets/{sid}"]
        out.append({"id": sid, "name": t.attrs["name"], "n": int(t["rows"].shape[0]),
                    "manifest_hash": t.attrs["manifest_hash"], "current": sid == attrs.get("current_set")})
    return out


def _free_id(ids: list[str]) -> str:
    k = len(ids)
    while f"s{k}" in ids:
        k += 1
    return f"s{k}"


def _strings(g: zarr.Group, name: str, values, n: int) -> None:
    arr = g.create_array(name, shape=(n,), chunks=(max(1, min(n, 65536)),), dtype=str, overwrite=True)
    if n:
        arr[:] = np.asarray(values, dtype=str)


def _write_set(g: zarr.Group, sid: str, ts) -> None:
    """A target set's arrays, then its attrs (the column list), under targets/<sid>."""
    t = g.require_group("targets").create_group(sid, overwrite=True)
    n = len(ts.rows)
    arr = t.create_array("rows", shape=(n,), chunks=(max(1, min(n, 65536)),), dtype="int64")
    if n:
        arr[:] = np.asarray(ts.rows, np.int64)
    _strings(t, "paths", ts.paths, n)
    _strings(t, "split", ts.split, n)
    if ts.groups is not None:
        _strings(t, "group", ts.groups, n)
    for j, name in enumerate(ts.columns):
        _strings(t, f"columns/{j}", ts.columns[name], n)
    t.attrs.update({"name": ts.name, "manifest_hash": ts.manifest_hash, "root": str(ts.root), "source": ts.source,
                    "columns": [[c, ts.kinds[c]] for c in ts.columns], "extra": ts.extra})


def read_set(g: zarr.Group, sid: str):
    """The TargetSet stored under targets/<sid>."""
    from .targets import LazyColumns, TargetSet

    t = g[f"targets/{sid}"]
    a = dict(t.attrs)
    index = {name: j for j, (name, _) in enumerate(a["columns"])}
    cols = LazyColumns(index, lambda name: read_strings(t[f"columns/{index[name]}"]))
    return TargetSet(name=a["name"], manifest_hash=a["manifest_hash"], root=a["root"],
                     rows=np.asarray(t["rows"][:], np.int64), paths=read_strings(t["paths"]),
                     split=read_strings(t["split"]), columns=cols, kinds={c: k for c, k in a["columns"]},
                     groups=read_strings(t["group"]) if "group" in t else None, source=a.get("source", "csv"),
                     extra=a.get("extra", {}))


def legacy_set(g: zarr.Group, attrs: dict):
    """The one target set of a format-1 store, from its root arrays."""
    from pathlib import PurePath

    from .targets import TargetSet, infer_kind

    n = int(attrs["n"])
    classes = np.asarray(attrs["classes"], dtype=str)
    cols = {"label": classes[np.asarray(g["labels"][:], np.int64)]}
    cols.update({name: read_strings(g[f"extras/{k}"]) for k, name in enumerate(attrs.get("extras", []))})
    kinds = {c: infer_kind(c, v) for c, v in cols.items()}
    src = (attrs.get("command") or {}).get("data")
    name = PurePath(src).stem if src else "manifest"
    return TargetSet(name=name, manifest_hash=str(attrs.get("manifest_hash", "")),
                     root=str(attrs.get("manifest_root", "")), rows=np.arange(n, dtype=np.int64),
                     paths=read_strings(g["paths"]), split=read_strings(g["split"]), columns=cols, kinds=kinds,
                     groups=read_strings(g["group"]) if "group" in g else None,
                     source=str(attrs.get("manifest_source") or "csv"), extra={"from": "format 1"})


def read_strings(arr: zarr.Array, sel=slice(None)) -> np.ndarray:
    """A Zarr string array (or a selection of it) as a plain numpy str array."""
    a = arr[sel] if not isinstance(sel, np.ndarray) else arr.get_orthogonal_selection(sel)
    return np.array(np.asarray(a).astype(object), dtype=str)


def to_store_dtype(a: np.ndarray, dtype: str) -> np.ndarray:
    if np.dtype(dtype) == np.float16:
        a = np.clip(a, -FP16_MAX, FP16_MAX)
    return np.asarray(a, dtype=dtype)


def open_for_extract(store: StoreArg, identity: dict) -> StoreWriter | None:
    """The existing store for `identity`, None when there is none yet; refuses anything else."""
    name = store_name(store)
    group = _open_group(store, "r+")
    if group is None:
        if _occupied(store):
            raise FeatxError(f"{name} exists and is not a featx store; choose another --store")
        return None
    if not _is_featx(group, name):
        raise FeatxError(f"{name} exists and is not a featx store; choose another --store")
    check_identity(dict(group.attrs), identity, name)
    if group.attrs["featx"].get("state") != "ready":
        return None  # creation was interrupted before any feature was written: create again
    return StoreWriter(group, name)


def create(store: StoreArg, *, manifest, identity: dict, provenance: dict, dim: tuple[int, ...],
           rows_per_shard: int | None = None, rows_per_chunk: int | None = None, digests=None) -> StoreWriter:
    """Create the group with its full provenance first, then the arrays and the manifest's target set,
    then mark it ready. One row per manifest row; `digests` (one per row) key the rows by content.

    `manifest` is a featx.data.Manifest; `identity` has IDENTITY_KEYS.
    """
    from .targets import TargetSet
    from .targets import set_name as name_of

    n = len(manifest)
    if n == 0:
        raise FeatxError("the dataset has no images")
    dtype = identity["dtype"]
    dim = tuple(int(d) for d in dim)
    chunk, shard = layout(n, dim, dtype, rows_per_shard, rows_per_chunk)
    root = Path(manifest.root).resolve().as_posix()
    attrs = {
        "featx": {"format": FORMAT, "version": FORMAT_VERSION, "state": "creating"},
        "identity": identity,
        **provenance,
        **{k: identity.get(k) for k in IDENTITY_KEYS},
        "n": n, "dim": list(dim),
        "rows_per_chunk": chunk, "rows_per_shard": shard, "n_shards": math.ceil(n / shard),
        "segments": [[0, n, root]],
        "manifest_root": root,  # a hint: runs read from the --data given
        "manifest_source": getattr(manifest, "source", None),
    }
    g = zarr.open_group(_as_store(store), mode="w", attributes=attrs)
    _create_arrays(g, n, dim, dtype, chunk, shard, identity["flip"])
    _strings(g, "paths", manifest.paths, n)
    if digests is not None:
        g["row_hash"][:] = np.asarray(digests, dtype=str)
    ts = TargetSet.from_manifest(manifest, np.arange(n), name_of(manifest))
    _write_set(g, "s0", ts)
    g.attrs.update({"target_sets": ["s0"], "current_set": "s0",
                    "featx": {**attrs["featx"], "state": "ready"}})
    return StoreWriter(g, store_name(store))


def _create_arrays(g: zarr.Group, n: int, dim: tuple, dtype: str, chunk: int, shard: int, flip: bool) -> None:
    feat_kw = dict(shape=(n, *dim), chunks=(chunk, *dim), shards=(shard, *dim), dtype=dtype, fill_value=0)
    g.create_array("features", **feat_kw)
    if flip:
        g.create_array("features_flip", **feat_kw)
    n_shards = math.ceil(n / shard)
    g.create_array("ok", shape=(n,), chunks=(shard,), dtype=bool, fill_value=False)
    g.create_array("reason", shape=(n,), chunks=(shard,), dtype=str)
    g.create_array("row_hash", shape=(n,), chunks=(shard,), dtype=str)
    g.create_array("checksums", shape=(n_shards,), chunks=(1,), dtype=str)
    g.create_array("done", shape=(n_shards,), chunks=(1,), dtype=bool, fill_value=False)


def plan_units(store: StoreArg | StoreWriter) -> list[tuple[int, int]]:
    """Row ranges of the unfinished shards: the work left, one unit per shard (for dask too)."""
    w = store if isinstance(store, StoreWriter) else StoreWriter.open(store)
    return w.plan_units()


# --- one writer per store ---------------------------------------------------------------------

def lock_path(store: StoreArg) -> Path | None:
    local = _local_path(store)
    return None if local is None else local.parent / (local.name + ".lock")


@contextlib.contextmanager
def writer_lock(store: StoreArg, what: str = "featx extract"):
    """Hold `<store>.lock` (an OS lock: freed by the kernel if the holder dies) while writing the store.

    A second writer gets a one-line error naming the holder. Only local and NFS paths can be locked;
    object stores (s3://) and memory:// are not (one run per store is then the user's to keep).
    """
    path = lock_path(store)
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FeatxError(f"store {store_name(store)} is being written by {_holder(fd)}; "
                             "one writer per store: wait for it to finish (or stop it)") from None
        me = {"owner": getpass.getuser(), "pid": os.getpid(), "host": socket.gethostname(), "command": what,
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        yield me
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    try:
        h = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"{h.get('command', 'featx')} (pid {h.get('pid')} on {h.get('host')}, user {h.get('owner')}, since {h.get('since')})"
    except (OSError, ValueError):
        return "another process"


# --- reading ----------------------------------------------------------------------------------

class FeatureStore(Geometry):
    """Read-only view of a finished featx store, through one target set and one target.

    Row arrays (labels, values, split, paths, extras, ok) are indexed by store row; rows outside the
    target set have split "" and never appear in `indices`. Every shard is verified against its checksum
    the first time any of its rows is read; a shard that does not verify is a one-line error."""

    def __init__(self, group: zarr.Group, name: str, targets: str | None = None, target: str = "label",
                 task: str = "auto"):
        self.group, self.name = group, name
        self.attrs: dict = dict(group.attrs)
        self._geometry(self.attrs)
        self.version = _readable(self.attrs["featx"].get("version", 1), name)
        self.release: str = self.attrs["release"]
        self.tap: str = self.attrs["tap"]
        self.dim: tuple[int, ...] = tuple(self.attrs["dim"])
        self.has_flip: bool = bool(self.attrs["flip"])
        self.checked = "checksums" in group
        self._verified: set[int] = set()
        self.set_id = self._choose_set(targets)
        self.tset = read_set(group, self.set_id) if self.version >= 2 else legacy_set(group, self.attrs)
        self._use(target, task)

    def _choose_set(self, targets: str | None) -> str:
        ids = list(self.attrs.get("target_sets", [])) if self.version >= 2 else ["s0"]
        if targets is None:
            return self.attrs.get("current_set") or ids[-1]
        for sid, info in zip(ids, self.target_sets()):
            if targets in (sid, info["name"]):
                return sid
        names = ", ".join(i["name"] for i in self.target_sets())
        raise FeatxError(f"store {self.name} has no target set {targets!r}; target sets: {names}")

    def target_sets(self) -> list[dict]:
        """[{id, name, n, manifest_hash, current}] in the order they were added."""
        if self.version < 2:
            ts = legacy_set(self.group, self.attrs)
            return [{"id": "s0", "name": ts.name, "n": len(ts), "manifest_hash": ts.manifest_hash, "current": True}]
        return set_infos(self.group, self.attrs)

    def _use(self, target: str, task: str) -> None:
        from .targets import resolve_task

        t = self.tset.target(target)
        task, classes = resolve_task(t, task)
        self.target, self.kind, self.task = target, t.kind, task
        self.classes: list[str] = classes if task == "classify" else []
        self.root = Path(self.tset.root)
        self.attrs.update(manifest_hash=self.tset.manifest_hash, manifest_root=self.tset.root,
                          classes=self.classes, target=target, task=task, target_set=self.tset.name,
                          extras=[c for c in self.tset.columns if c != "label"])
        for k in ("labels", "values", "present", "extras"):
            self.__dict__.pop(k, None)

    def use(self, target: str = "label", task: str = "auto") -> "FeatureStore":
        """This store seen through another target (and task); shares the verified shards."""
        import copy

        view = copy.copy(self)
        view.__dict__ = dict(self.__dict__)
        view.attrs = dict(self.attrs)
        view._use(target, task)
        return view

    @classmethod
    def open(cls, store: StoreArg, targets: str | None = None, target: str = "label",
             task: str = "auto", complete: bool = True) -> "FeatureStore":
        """The store through target set `targets` (default: the current one) and `target`;
        complete=False also opens an unfinished store (to read its targets, not its features)."""
        name = store_name(store)
        group = _open_group(store, "r")
        if group is None:
            raise FeatxError(f"no feature store at {name}; run `featx extract` first")
        if not _is_featx(group, name):
            raise FeatxError(f"{name} is not a featx store")
        if group.attrs["featx"].get("state") != "ready":
            raise FeatxError(f"store {name} is unfinished; rerun the same `featx extract` to complete it")
        n_shards = math.ceil(int(group.attrs["n"]) / int(group.attrs["rows_per_shard"]))
        try:
            done = np.asarray(group["done"][:n_shards], dtype=bool)
        except Exception as e:
            raise FeatxError(f"store {name} is damaged ({_why(e)}); run `featx store repair {name} --data ...`") from None
        if complete and not done.all():
            raise FeatxError(f"store {name} is unfinished ({int(done.sum())} of {done.size} shards); "
                             "rerun the same `featx extract` to complete it")
        return cls(group, name, targets, target, task)

    def __repr__(self) -> str:
        return (f"FeatureStore({self.name!r}, n={self.n}, dim={self.dim}, release={self.release!r}, tap={self.tap!r}, "
                f"target_set={self.tset.name!r}, target={self.target!r})")

    def _scatter(self, values, fill) -> np.ndarray:
        values = np.asarray(values)
        out = np.full(self.n, fill, dtype=values.dtype if values.dtype.kind != "U" else object)
        out[self.tset.rows] = values
        return out.astype(str) if values.dtype.kind == "U" else out

    @cached_property
    def in_set(self) -> np.ndarray:
        return self._scatter(np.ones(len(self.tset), bool), False)

    @cached_property
    def present(self) -> np.ndarray:
        """True where the current target has a value (and the row is in the target set)."""
        return self._scatter(self.tset.target(self.target).present(), False)

    @cached_property
    def labels(self) -> np.ndarray:
        """int64 class ids of the current target in `classes`, -1 where missing or outside the set."""
        if self.task != "classify":
            raise FeatxError(f"target {self.target!r} is regressed: its values are numbers, not classes")
        return self._scatter(self.tset.target(self.target).codes(self.classes), -1).astype(np.int64)

    @cached_property
    def values(self) -> np.ndarray:
        """float64 values of a numeric target, NaN where missing or outside the set."""
        t = self.tset.target(self.target)
        if t.kind != "numeric":
            raise FeatxError(f"target {self.target!r} is categorical: it has classes, not values")
        return self._scatter(t.numbers(), np.nan).astype(np.float64)

    @cached_property
    def split(self) -> np.ndarray:
        return self._scatter(self.tset.split, "")

    @cached_property
    def ok(self) -> np.ndarray:
        return np.asarray(self.group["ok"][:self.n], dtype=bool) & self.real_rows()

    @cached_property
    def reasons(self) -> np.ndarray:
        return read_strings(self.group["reason"], slice(0, self.n))

    @cached_property
    def paths(self) -> np.ndarray:
        """Each row's path relative to `root` (the target set's root) for rows in the set."""
        out = read_strings(self.group["paths"], slice(0, self.n)).astype(object)
        out[self.tset.rows] = self.tset.paths
        return out.astype(str)

    @cached_property
    def groups(self) -> np.ndarray | None:
        return self._scatter(self.tset.groups, "") if self.tset.groups is not None else None

    @cached_property
    def extras(self) -> Mapping[str, np.ndarray]:
        """Every column of the target set but `label`, by store row ("" outside the set), each read
        when first asked for."""
        from .targets import LazyColumns

        cols = self.tset.columns
        return LazyColumns([c for c in cols if c != "label"], lambda c: self._scatter(cols[c], ""))

    @property
    def kinds(self) -> dict[str, str]:
        """The type of each column of the target set (`label` included): categorical or numeric
        (featx.targets); it decides how a group column is bucketed (featx.metrics.bins_for)."""
        return dict(self.tset.kinds)

    def indices(self, split: str = "all") -> np.ndarray:
        """Rows of the target set that decoded fine and have a value for the current target, in
        `split` ("train", "val", "test") or "all"."""
        from .data import check_split

        check_split(split)
        keep = self.ok & self.in_set & self.present
        if split != "all":
            keep &= self.split == split
        return np.flatnonzero(keep).astype(np.int64)

    def missing(self, split: str = "all") -> int:
        """Usable rows of the set (in `split`) left out because the current target has no value there."""
        keep = self.ok & self.in_set & ~self.present
        if split != "all":
            keep &= self.split == split
        return int(keep.sum())

    def _array(self, flip: bool = False) -> zarr.Array:
        if flip and not self.has_flip:
            raise FeatxError(f"store {self.name} has no flipped features; extract with --flip-tta")
        return self.group["features_flip" if flip else "features"]

    def dask_array(self, flip: bool = False):
        """The features as a lazy float32 dask array [N, *dim], one block per stored chunk."""
        import dask.array as da

        self.verify_all()
        return da.from_zarr(self._array(flip))[:self.n].astype(np.float32)

    # --- integrity ---
    def shard_of(self, row: int) -> tuple[int, int, int]:
        k = row // self.rows_per_shard
        return (k, *self.shard_range(k))

    def check_unit(self, k: int) -> str | None:
        """None when shard k verifies, else why not (one line)."""
        a, b = self.shard_range(k)
        try:
            f = np.asarray(self.group["features"][a:b])
            ff = np.asarray(self.group["features_flip"][a:b]) if self.has_flip else None
            ok = np.asarray(self.group["ok"][a:b], dtype=bool)
            reasons = read_strings(self.group["reason"], slice(a, b))
            want = str(self.group["checksums"][k]) if self.checked else None
        except Exception as e:
            return f"cannot be read ({_why(e)})"
        if want is None:
            return None
        if not want:
            return "has no checksum (written but never finished)"
        if unit_checksum(f, ff, ok, reasons) != want:
            return "does not match its checksum (its bytes changed on disk)"
        return None

    def verify_unit(self, k: int) -> None:
        if k in self._verified:
            return
        why = self.check_unit(k)
        if why:
            a, b = self.shard_range(k)
            raise FeatxError(f"store {self.name}: shard {k} (rows {a}-{b - 1}) {why}; "
                             f"run `featx store repair {self.name} --data ...`")
        self._verified.add(k)

    def verify_all(self) -> None:
        for k in range(self.n_shards):
            self.verify_unit(k)

    def _groups(self, idx) -> Iterator[tuple[np.ndarray, np.ndarray, int, int]]:
        """(positions in idx, sorted rows, chunk start, chunk stop) per chunk touched; shards verified."""
        cr = int(self.attrs["rows_per_chunk"])
        if idx is None:
            idx = np.arange(self.n)
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"row index out of range for a store of {self.n} rows")
        order = np.argsort(idx, kind="stable")
        rows = idx[order]
        cid = rows // cr
        for seg in np.split(np.arange(rows.size), np.flatnonzero(np.diff(cid)) + 1):
            if seg.size:
                lo = int(cid[seg[0]]) * cr
                self.verify_unit(lo // self.rows_per_shard)
                yield order[seg], rows[seg], lo, min(lo + cr, self.n)

    def _read(self, arr: zarr.Array, lo: int, hi: int) -> np.ndarray:
        try:
            return np.asarray(arr[lo:hi])
        except Exception as e:
            raise FeatxError(f"store {self.name}: rows {lo}-{hi - 1} cannot be read ({_why(e)}); "
                             f"run `featx store repair {self.name} --data ...`") from None

    def iter_chunks(self, idx=None, flip: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, float32 features) one stored chunk at a time, rows ascending; bounded memory."""
        arr = self._array(flip)
        for _, rows, lo, hi in self._groups(idx):
            yield rows, np.asarray(self._read(arr, lo, hi)[rows - lo], dtype=np.float32)

    def features(self, idx=None, flip: bool = False) -> np.ndarray:
        """float32 features [len(idx), *dim] in the order of idx (all rows when None)."""
        arr = self._array(flip)
        m = self.n if idx is None else len(np.asarray(idx).reshape(-1))
        out = np.empty((m, *self.dim), dtype=np.float32)
        for pos, rows, lo, hi in self._groups(idx):
            out[pos] = self._read(arr, lo, hi)[rows - lo]
        return out


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"


def verify(store: StoreArg) -> list[dict]:
    """Every shard that does not verify: [{shard, rows, why}]; [] for a sound store."""
    fs = _open_for_verify(store)
    try:
        done = np.asarray(fs.group["done"][:fs.n_shards], dtype=bool)
    except Exception as e:
        raise FeatxError(f"store {fs.name} is damaged ({_why(e)}); re-extract into a new --store") from None
    out = []
    for k in range(fs.n_shards):
        why = fs.check_unit(k) if done[k] else "not computed yet (rerun the same `featx extract`)"
        if why:
            a, b = fs.shard_range(k)
            out.append({"shard": k, "rows": [a, b], "why": why})
    return out


def _open_for_verify(store: StoreArg) -> FeatureStore:
    name = store_name(store)
    group = _open_group(store, "r")
    if group is None or not _is_featx(group, name):
        raise FeatxError(f"no featx store at {name}")
    try:
        return FeatureStore(group, name)
    except Exception as e:
        raise FeatxError(f"store {name} is damaged ({_why(e)}); re-extract into a new --store") from None
