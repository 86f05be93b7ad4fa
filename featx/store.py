"""The feature store: one Zarr v3 group per (manifest, release, weights, tap, preprocessing).

Layout (the group attrs hold the full provenance, written before any feature):
  features       [N, D] or [N, C, H, W]  fp16/fp32, chunked by rows (>= ~1 MB) and sharded by rows
  features_flip  same shape, features of the mirrored image (only with flip TTA)
  ok             [N] bool, false where the image failed to decode   } one chunk per shard,
  reason         [N] str, why a row failed ("" when ok)            } written with the shard
  row_hash       [N] str, a digest of each image file's bytes (resume recomputes rows whose file changed)
  checksums      [n_shards] str, sha256 of a written shard's decoded rows: `verify` compares it
  done           [n_shards] bool, one chunk each: a shard's marker, set only after its data and checksum
  labels [N] int64, split [N] str, paths [N] str, group [N] str (when the manifest has groups),
  extras/<k> [N] str (attrs["extras"] names the columns)           written once, at creation

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
IDENTITY_KEYS = ("manifest_hash", "release", "weights_sha256", "tap", "preprocess", "dtype", "flip", "faces")
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
        self.checked = "checksums" in group  # stores made before featx 0.2 have no checksums

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
        if r or stop != min(start + self.rows_per_shard, self.n):
            raise ValueError(f"({start}, {stop}) is not a shard of this store")
        return k

    def paths(self) -> np.ndarray:
        return read_strings(self.group["paths"])

    def ok(self) -> np.ndarray:
        return np.asarray(self.group["ok"][:], dtype=bool)

    def skipped(self, limit: int = 100) -> tuple[int, list[dict]]:
        """(count, first `limit` of {row, path, reason}) of rows whose image failed."""
        bad = np.flatnonzero(~self.ok())
        first = bad[:limit]
        reasons = read_strings(self.group["reason"], first) if first.size else []
        paths = read_strings(self.group["paths"], first) if first.size else []
        return int(bad.size), [{"row": int(i), "path": str(p), "reason": str(r)}
                               for i, p, r in zip(first, paths, reasons)]

    def row_hashes(self) -> np.ndarray | None:
        return read_strings(self.group["row_hash"]) if "row_hash" in self.group else None

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

    def reader(self) -> "FeatureStore":
        """A reading view of this store (it may be unfinished: only finished shards should be read)."""
        return FeatureStore(self.group, self.name)

    def reset_units(self, ks) -> None:
        """Mark shards as not done and drop their stored bytes, so the next run writes them afresh."""
        from zarr.core.sync import sync

        for k in map(int, ks):
            self.group["done"][k] = False
            for name in ("features", "features_flip", "ok", "reason", "row_hash"):
                if name in self.group:
                    arr = self.group[name]
                    key = arr.metadata.chunk_key_encoding.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))
                    sync(arr.store_path.store.delete(f"{arr.store_path.path}/{key}"))

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
    extras = dict(manifest.extras or {})
    attrs = {
        "featx": {"format": FORMAT, "version": FORMAT_VERSION, "state": "creating"},
        "identity": identity,
        **provenance,
        **{k: identity.get(k) for k in IDENTITY_KEYS},
        "n": n, "dim": list(dim), "classes": list(manifest.classes), "extras": list(extras),
        "rows_per_chunk": chunk, "rows_per_shard": shard, "n_shards": math.ceil(n / shard),
        "manifest_root": Path(manifest.root).resolve().as_posix(),  # a hint: runs read from the --data given
        "manifest_source": getattr(manifest, "source", None),
    }
    g = zarr.open_group(_as_store(store), mode="w", attributes=attrs)
    _create_arrays(g, n, dim, dtype, chunk, shard, identity["flip"])
    _write_rows(g, manifest, extras)
    g.attrs["featx"] = {**attrs["featx"], "state": "ready"}
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


def _write_rows(g: zarr.Group, manifest, extras: dict) -> None:
    n = len(manifest)

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

class FeatureStore:
    """Read-only view of a finished featx store. Every shard is verified against its checksum
    the first time any of its rows is read; a shard that does not verify is a one-line error."""

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
        self.rows_per_shard = int(self.attrs["rows_per_shard"])
        self.checked = "checksums" in group
        self._verified: set[int] = set()

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
        try:
            done = np.asarray(group["done"][:], dtype=bool)
        except Exception as e:
            raise FeatxError(f"store {name} is damaged ({_why(e)}); run `featx store repair {name} --data ...`") from None
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
        from .data import check_split

        check_split(split)
        keep = self.ok if split == "all" else self.ok & (self.split == split)
        return np.flatnonzero(keep).astype(np.int64)

    def _array(self, flip: bool = False) -> zarr.Array:
        if flip and not self.has_flip:
            raise FeatxError(f"store {self.name} has no flipped features; extract with --flip-tta")
        return self.group["features_flip" if flip else "features"]

    def dask_array(self, flip: bool = False):
        """The features as a lazy float32 dask array [N, *dim], one block per stored chunk."""
        import dask.array as da

        self.verify_all()
        return da.from_zarr(self._array(flip)).astype(np.float32)

    # --- integrity ---
    def shard_of(self, row: int) -> tuple[int, int, int]:
        k = row // self.rows_per_shard
        return k, k * self.rows_per_shard, min((k + 1) * self.rows_per_shard, self.n)

    def check_unit(self, k: int) -> str | None:
        """None when shard k verifies, else why not (one line)."""
        a, b = k * self.rows_per_shard, min((k + 1) * self.rows_per_shard, self.n)
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
            a, b = k * self.rows_per_shard, min((k + 1) * self.rows_per_shard, self.n)
            raise FeatxError(f"store {self.name}: shard {k} (rows {a}-{b - 1}) {why}; "
                             f"run `featx store repair {self.name} --data ...`")
        self._verified.add(k)

    def verify_all(self) -> None:
        for k in range(math.ceil(self.n / self.rows_per_shard)):
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
        done = np.asarray(fs.group["done"][:], dtype=bool)
    except Exception as e:
        raise FeatxError(f"store {fs.name} is damaged ({_why(e)}); re-extract into a new --store") from None
    out = []
    for k in range(math.ceil(fs.n / fs.rows_per_shard)):
        why = fs.check_unit(k) if done[k] else "not computed yet (rerun the same `featx extract`)"
        if why:
            a, b = k * fs.rows_per_shard, min((k + 1) * fs.rows_per_shard, fs.n)
            out.append({"shard": k, "rows": [a, b], "why": why})
    return out


def _open_for_verify(store: StoreArg) -> FeatureStore:
    name = store_name(store)
    group = _open_group(store, "r")
    if group is None or not _is_featx(group):
        raise FeatxError(f"no featx store at {name}")
    try:
        return FeatureStore(group, name)
    except Exception as e:
        raise FeatxError(f"store {name} is damaged ({_why(e)}); re-extract into a new --store") from None
