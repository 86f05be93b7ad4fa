"""The feature store: one Zarr v3 group per (manifest, release, weights, tap, preprocessing).

Layout (the group attrs hold the full provenance, written before any feature):
  features       [N, D] or [N, C, H, W]  fp16/fp32, chunked by rows (>= ~1 MB) and sharded by rows
  features_flip  same shape, features of the mirrored image (only with flip TTA)
  ok             [N] bool, false where the image failed to decode   } one chunk per shard,
  reason         [N] str, why a row failed ("" when ok)            } written with the shard
  done           [n_shards] bool, one chunk each: a shard's marker, set only after its data is written
  labels [N] int64, split [N] str, paths [N] str, group [N] str (when the manifest has groups),
  extras/<k> [N] str (attrs["extras"] names the columns)           written once, at creation

The unit of work is one shard (a row range). Only one writer may ever write a shard
(Zarr has no locking), which `plan_units` + `StoreWriter.write_unit` make natural.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import FeatxError

FORMAT = "featx-store"
FORMAT_VERSION = 1
# Two stores are the same extraction only when all of these agree.
IDENTITY_KEYS = ("manifest_hash", "release", "weights_sha256", "tap", "preprocess", "dtype", "flip")
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
        return None


def _is_featx(group: zarr.Group) -> bool:
    meta = group.attrs.get("featx")
    return isinstance(meta, dict) and meta.get("format") == FORMAT


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
        "manifest_hash": "other data (manifest {a:.12} vs {b:.12})",
        "release": "release {a!r}, not {b!r}",
        "weights_sha256": "other weights (sha256 {a:.12} vs {b:.12})",
        "tap": "tap {a!r}, not {b!r}",
        "preprocess": "other preprocessing ({a} vs {b})",
        "dtype": "dtype {a}, not {b}",
        "flip": "flip TTA {a}, not {b}",
    }
    for key in IDENTITY_KEYS:
        a, b = have.get(key), identity.get(key)
        if a != b:
            what = words[key].format(a=str(a), b=str(b))
            raise FeatxError(f"store {name} was made from {what}; features are never mixed: use another --store")


class StoreWriter:
    """Write access to a featx store: plan the unfinished shards, write one shard at a time."""

    def __init__(self, group: zarr.Group, name: str):
        self.group, self.name = group, name
        self.attrs = dict(group.attrs)
        self.n = int(self.attrs["n"])
        self.rows_per_shard = int(self.attrs["rows_per_shard"])
        self.dim = tuple(self.attrs["dim"])
        self.dtype = self.attrs["dtype"]
        self.flip = bool(self.attrs["flip"])

    @classmethod
    def open(cls, store: StoreArg) -> "StoreWriter":
        group = _open_group(store, "r+")
        if group is None or not _is_featx(group):
            raise FeatxError(f"{store_name(store)} is not a featx store")
        if group.attrs["featx"].get("state") != "ready":
            raise FeatxError(f"store {store_name(store)} was never fully created; rerun featx extract")
        return cls(group, store_name(store))

    @property
    def shards(self) -> list[tuple[int, int]]:
        s = self.rows_per_shard
        return [(a, min(a + s, self.n)) for a in range(0, self.n, s)]

    def done(self) -> np.ndarray:
        return np.asarray(self.group["done"][:], dtype=bool)

    def plan_units(self) -> list[tuple[int, int]]:
        """Row ranges (start, stop) of the shards not yet written."""
        done = self.done()
        return [u for u, d in zip(self.shards, done) if not d]

    def is_complete(self) -> bool:
        return bool(self.done().all())

    def shard_index(self, start: int, stop: int) -> int:
        k, r = divmod(start, self.rows_per_shard)
        if r or stop != min(start + self.rows_per_shard, self.n):
            raise ValueError(f"({start}, {stop}) is not a shard of this store")
        return k

    def write_unit(self, start: int, stop: int, features: np.ndarray, ok: np.ndarray,
                   reasons: list[str] | np.ndarray, features_flip: np.ndarray | None = None) -> None:
        """Write one whole shard's rows, then its marker. Only one writer per shard, ever."""
        k = self.shard_index(start, stop)
        m = stop - start
        if features.shape != (m, *self.dim) or len(ok) != m or len(reasons) != m:
            raise ValueError(f"shard ({start}, {stop}) wants {m} rows of {self.dim}, got {features.shape}")
        if self.flip and features_flip is None:
            raise ValueError("this store keeps flipped features; pass features_flip")
        g = self.group
        g["features"][start:stop] = to_store_dtype(features, self.dtype)
        if self.flip:
            g["features_flip"][start:stop] = to_store_dtype(features_flip, self.dtype)
        g["ok"][start:stop] = np.asarray(ok, dtype=bool)
        g["reason"][start:stop] = np.asarray(reasons, dtype=str)
        g["done"][k] = True  # the marker comes last: a crash before it means "redo this shard"

    def update_attrs(self, values: dict) -> None:
        """Only the single coordinating process may call this (attrs are one object)."""
        self.group.attrs.update(values)
        self.attrs.update(values)


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
    if not _is_featx(group):
        raise FeatxError(f"{name} exists and is not a featx store; choose another --store")
    check_identity(dict(group.attrs), identity, name)
    if group.attrs["featx"].get("state") != "ready":
        return None  # creation was interrupted before any feature was written: create again
    return StoreWriter(group, name)


def create(store: StoreArg, *, manifest, identity: dict, provenance: dict, dim: tuple[int, ...],
           rows_per_shard: int | None = None, rows_per_chunk: int | None = None) -> StoreWriter:
    """Create the group with its full provenance first, then the arrays, then mark it ready.

    `manifest` is a featx.data.Manifest; `identity` has IDENTITY_KEYS.
    """
    n = len(manifest)
    if n == 0:
        raise FeatxError("the dataset has no images")
    dtype = identity["dtype"]
    dim = tuple(int(d) for d in dim)
    chunk, shard = layout(n, dim, dtype, rows_per_shard, rows_per_chunk)
    n_shards = math.ceil(n / shard)
    extras = dict(manifest.extras or {})
    attrs = {
        "featx": {"format": FORMAT, "version": FORMAT_VERSION, "state": "creating"},
        "identity": identity,
        **provenance,
        **{k: identity[k] for k in IDENTITY_KEYS},
        "n": n,
        "dim": list(dim),
        "classes": list(manifest.classes),
        "extras": list(extras),
        "rows_per_chunk": chunk,
        "rows_per_shard": shard,
        "n_shards": n_shards,
        "manifest_root": Path(manifest.root).resolve().as_posix(),
        "manifest_source": getattr(manifest, "source", None),
    }
    g = zarr.open_group(_as_store(store), mode="w", attributes=attrs)
    feat_kw = dict(shape=(n, *dim), chunks=(chunk, *dim), shards=(shard, *dim), dtype=dtype, fill_value=0)
    g.create_array("features", **feat_kw)
    if identity["flip"]:
        g.create_array("features_flip", **feat_kw)
    g.create_array("ok", shape=(n,), chunks=(shard,), dtype=bool, fill_value=False)
    g.create_array("reason", shape=(n,), chunks=(shard,), dtype=str)
    g.create_array("done", shape=(n_shards,), chunks=(1,), dtype=bool, fill_value=False)

    def strings(name: str, values) -> None:
        g.create_array(name, shape=(n,), chunks=(min(n, 65536),), dtype=str)[:] = np.asarray(values, dtype=str)

    lab = g.create_array("labels", shape=(n,), chunks=(min(n, 65536),), dtype="int64")
    lab[:] = np.asarray(manifest.label_ids(), dtype=np.int64)
    strings("split", manifest.splits)
    strings("paths", manifest.paths)
    if manifest.groups is not None:
        strings("group", manifest.groups)
    for k, name in enumerate(extras):
        strings(f"extras/{k}", extras[name])
    g.attrs["featx"] = {**attrs["featx"], "state": "ready"}
    return StoreWriter(g, store_name(store))


def plan_units(store: StoreArg | StoreWriter) -> list[tuple[int, int]]:
    """Row ranges of the unfinished shards: the work left, one unit per shard (for dask too)."""
    w = store if isinstance(store, StoreWriter) else StoreWriter.open(store)
    return w.plan_units()


class FeatureStore:
    """Read-only view of a finished featx store."""

    def __init__(self, group: zarr.Group, name: str):
        self.group, self.name = group, name
        self.attrs: dict = dict(group.attrs)
        self.release: str = self.attrs["release"]
        self.tap: str = self.attrs["tap"]
        self.classes: list[str] = list(self.attrs["classes"])
        self.n: int = int(self.attrs["n"])
        self.dim: tuple[int, ...] = tuple(self.attrs["dim"])
        self.has_flip: bool = bool(self.attrs["flip"])
        self.root = Path(self.attrs["manifest_root"])

    @classmethod
    def open(cls, store: StoreArg) -> "FeatureStore":
        name = store_name(store)
        group = _open_group(store, "r")
        if group is None:
            raise FeatxError(f"no feature store at {name}; run `featx extract` first")
        if not _is_featx(group):
            raise FeatxError(f"{name} is not a featx store")
        if group.attrs["featx"].get("state") != "ready":
            raise FeatxError(f"store {name} is unfinished; rerun the same `featx extract` to complete it")
        done = np.asarray(group["done"][:], dtype=bool)
        if not done.all():
            raise FeatxError(f"store {name} is unfinished ({int(done.sum())} of {done.size} shards); "
                             "rerun the same `featx extract` to complete it")
        return cls(group, name)

    def __repr__(self) -> str:
        return f"FeatureStore({self.name!r}, n={self.n}, dim={self.dim}, release={self.release!r}, tap={self.tap!r})"

    def _strings(self, name: str) -> np.ndarray:
        return read_strings(self.group[name])

    @cached_property
    def labels(self) -> np.ndarray:
        return np.asarray(self.group["labels"][:], dtype=np.int64)

    @cached_property
    def split(self) -> np.ndarray:
        return self._strings("split")

    @cached_property
    def ok(self) -> np.ndarray:
        return np.asarray(self.group["ok"][:], dtype=bool)

    @cached_property
    def reasons(self) -> np.ndarray:
        return self._strings("reason")

    @cached_property
    def paths(self) -> np.ndarray:
        return self._strings("paths")

    @cached_property
    def groups(self) -> np.ndarray | None:
        return self._strings("group") if "group" in self.group else None

    @cached_property
    def extras(self) -> dict[str, np.ndarray]:
        return {name: self._strings(f"extras/{k}") for k, name in enumerate(self.attrs.get("extras", []))}

    def indices(self, split: str = "all") -> np.ndarray:
        """Rows that decoded fine, in `split` ("train", "val", "test") or "all"."""
        if split not in ("all", "train", "val", "test"):
            raise FeatxError(f"unknown split {split!r}; use train, val, test or all")
        keep = self.ok if split == "all" else self.ok & (self.split == split)
        return np.flatnonzero(keep).astype(np.int64)

    def array(self, flip: bool = False) -> zarr.Array:
        if flip and not self.has_flip:
            raise FeatxError(f"store {self.name} has no flipped features; extract with --flip-tta")
        return self.group["features_flip" if flip else "features"]

    def _groups(self, idx) -> Iterator[tuple[np.ndarray, np.ndarray, int, int]]:
        """(positions in idx, sorted rows, chunk start, chunk stop) per chunk touched."""
        cr = int(self.attrs["rows_per_chunk"])
        if idx is None:
            for lo in range(0, self.n, cr):
                hi = min(lo + cr, self.n)
                yield np.arange(lo, hi), np.arange(lo, hi), lo, hi
            return
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"row index out of range for a store of {self.n} rows")
        order = np.argsort(idx, kind="stable")
        rows = idx[order]
        cid = rows // cr
        for seg in np.split(np.arange(rows.size), np.flatnonzero(np.diff(cid)) + 1):
            if seg.size:
                lo = int(cid[seg[0]]) * cr
                yield order[seg], rows[seg], lo, min(lo + cr, self.n)

    def iter_chunks(self, idx=None, flip: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, float32 features) one stored chunk at a time, rows ascending; bounded memory."""
        arr = self.array(flip)
        for _, rows, lo, hi in self._groups(idx):
            block = arr[lo:hi]
            yield rows, np.asarray(block[rows - lo], dtype=np.float32)

    def features(self, idx=None, flip: bool = False) -> np.ndarray:
        """float32 features [len(idx), *dim] in the order of idx (all rows when None)."""
        arr = self.array(flip)
        m = self.n if idx is None else len(np.asarray(idx).reshape(-1))
        out = np.empty((m, *self.dim), dtype=np.float32)
        for pos, rows, lo, hi in self._groups(idx):
            out[pos] = arr[lo:hi][rows - lo]
        return out
