"""The one extraction runner: reader -> backbone -> writer, composed once; a distributor decides where.

    extract(data, "vgg16.hed", "cache/features/utk.zarr", tap="pool5-gap")
    extract(data, "vgg16.hed", "s3://b/utk.zarr", ExtractOptions(cluster="local:4"))

Reader (featx.reader): DataLoader workers decode and resize/crop to uint8. Backbone (`Extractor`):
the device normalises exactly as Preprocess.to_tensor does and runs the model (channels_last,
bf16/fp16 autocast where the hardware has it, inference_mode). Writer (`ShardSink`): a thread
assembles each shard and writes it, its checksum, then its marker, while the next batches compute.
Distributors run the unfinished units: `InProcess` here, `featx.cluster.Dask` on dask.distributed.
Argument checks, the writer lock, provenance, the run record and the summary live here only.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import platform
import queue
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__
from .backbones import tap_dim, tap_features
from .device import (AUTOCAST, PRECISIONS, autocast, cpu_flags, cpu_has_bf16, describe_device,  # noqa: F401
                     resolve_device, resolve_precision)
from .errors import FeatxError
from .progress import progress_bar
from .reader import ImageRows, digests, make_loader, unit_batches  # noqa: F401
from .releases import Preprocess, RELEASES
from .store import StoreWriter, create, open_for_extract, plan_units, writer_lock  # noqa: F401
from .weights import canonical_path, load_backbone, read_record, sha256_file

DTYPES = ("float16", "float32")

__all__ = ["extract", "ExtractOptions", "Extractor", "InProcess", "run_unit", "plan_units", "finish",
           "resolve_device", "resolve_precision", "summary_line"]


@dataclass(frozen=True)
class ExtractOptions:
    """Everything `featx extract` takes besides the data, the backbone and the store."""

    tap: str | None = None  # None: the family's default tap (VGG16 pool5-gap, the face bases' embedding)
    weights: str | None = None
    batch_size: int | None = None  # 32 on CPU, 128 on GPU
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None  # decode processes (default: by device)
    flip_tta: bool = False
    dtype: str = "float16"
    compile: bool = False
    progress: bool = True
    rows_per_shard: int | None = None
    rows_per_chunk: int | None = None
    cluster: str | None = None  # "local" / "local:N"
    scheduler: str | None = None  # "tcp://HOST:PORT"
    retries: int = 2

    def check(self) -> None:
        if self.dtype not in DTYPES:
            raise FeatxError(f"unknown dtype {self.dtype!r}; use float16 or float32")
        if self.precision not in PRECISIONS:
            raise FeatxError(f"unknown precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise FeatxError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise FeatxError(f"--workers must be 0 or more, not {self.workers}")
        if self.cluster not in (None, "") and self.scheduler:
            raise FeatxError("use --cluster (start a local cluster) or --scheduler (join one), not both")

    @property
    def distributed(self) -> bool:
        return self.cluster not in (None, "") or bool(self.scheduler)


def options(opts: ExtractOptions | None = None, **kw) -> ExtractOptions:
    """ExtractOptions from an object and/or keyword overrides (unknown names refused)."""
    names = {f.name for f in fields(ExtractOptions)}
    bad = sorted(set(kw) - names)
    if bad:
        raise TypeError(f"unknown extract option(s): {', '.join(bad)}")
    o = replace(opts or ExtractOptions(), **kw)
    o.check()
    return o


# --- the backbone side -----------------------------------------------------------------------

class Extractor:
    """A loaded base ready to turn uint8 image batches [B, H, W, 3] into store-dtype features."""

    def __init__(self, backbone: str, opts: ExtractOptions | None = None, loaded=None, **kw):
        o = options(opts, **kw)
        self.release, model, self.weights_sha256 = loaded or load_backbone(backbone, o.weights)
        self.tap = "+".join(self.release.parse_tap(o.tap))
        self.preprocess: Preprocess = self.release.preprocess
        self.device = resolve_device(o.device)
        self.precision = resolve_precision(o.precision, self.device, self.release.family.cpu_bf16)
        self.dtype, self.flip, self.compiled = o.dtype, o.flip_tta, o.compile
        model = model.eval().requires_grad_(False).to(self.device).to(memory_format=torch.channels_last)
        self.model = model
        self.dim = tap_dim(model, self.tap, self.preprocess.size, self.device)
        p = self.preprocess
        self.mean = torch.tensor(p.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(p.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        fn = lambda x: tap_features(model, x, self.tap)  # noqa: E731
        self.forward = torch.compile(fn, dynamic=False) if o.compile else fn
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def normalize(self, x_u8: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] RGB -> float32 [B, 3, H, W] channels_last, exactly as Preprocess.to_tensor."""
        p = self.preprocess
        x = x_u8.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if p.channels == "BGR":
            x = x.flip(1)
        x = x * (p.scale / 255.0)
        if p.norm == "per-image":
            mean = x.mean((1, 2, 3), keepdim=True)
            floor = 1.0 / float(x[0].numel()) ** 0.5
            x = (x - mean) / x.std((1, 2, 3), keepdim=True, correction=0).clamp_min(floor)
        else:
            x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, x_u8: torch.Tensor, pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Features (and flipped-image features) as numpy arrays in the store dtype."""
        b = x_u8.shape[0]
        x = self.normalize(x_u8)
        if self.compiled and pad_to and b < pad_to:  # fixed shapes: no recompiles on the last batch
            pad = torch.zeros((pad_to - b, *x.shape[1:]), dtype=x.dtype, device=x.device)
            x = torch.cat([x, pad]).contiguous(memory_format=torch.channels_last)
        n = x.shape[0]
        if self.flip:
            x = torch.cat([x, x.flip(3)])
        with autocast(self.device, self.precision):
            f = self.forward(x)
        f = f.float()
        if self.dtype == "float16":
            f = f.clamp(-65504.0, 65504.0).half()
        f = f.cpu().numpy()
        return (f[:b], f[n:n + b]) if self.flip else (f[:b], None)

    def use_int8(self, rows: ImageRows | None, record: dict | None = None) -> dict:
        """Quantize to int8: rebuild from a store's record, else calibrate on `rows` (a few hundred photos)."""
        from .quantize import Int8Options, calibration_rows, int8_model

        calib = () if record is not None else self._calibration(rows, calibration_rows(len(rows)))
        self.int8 = int8_model(self.model, self.tap, record=record, calib=calib, options=Int8Options())
        self.forward = self.int8
        return self.int8.record()

    def _calibration(self, rows: ImageRows, picks, batch: int = 32):
        for a in range(0, len(picks), batch):
            x = torch.stack([rows[int(i)][1] for i in picks[a:a + batch]])
            yield self.normalize(x)

    def info(self) -> dict:
        """What this extractor computes, for provenance and for the driver of a distributed run."""
        from .quantize import variant_release

        return {"release": variant_release(self.release.name, self.precision), "release_info": self.release.to_dict(),
                "weights_sha256": self.weights_sha256, "preprocess": self.preprocess.to_dict(),
                "tap": self.tap, "dim": list(self.dim), "precision": self.precision,
                "device_type": self.device.type, "device": describe_device(self.device), "versions": versions()}


# --- the writer thread ---------------------------------------------------------------------

class ShardSink:
    """Writer thread behind a bounded queue: collects each shard's rows, then writes the shard."""

    def __init__(self, writer: StoreWriter, units: list[tuple[int, int]], maxsize: int = 8):
        self.writer, self.units = writer, sorted(units)
        self.starts = [u[0] for u in self.units]
        self.q: queue.Queue = queue.Queue(maxsize)
        self.error: BaseException | None = None
        self.buffers: dict[int, dict] = {}
        self.shards_written = 0
        self.peak_buffers = 0
        self.thread = threading.Thread(target=self._run, name="featx-writer", daemon=True)
        self.thread.start()

    def put(self, item) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        if self.buffers:
            raise RuntimeError(f"{len(self.buffers)} shard(s) received only part of their rows")

    def _run(self) -> None:
        try:
            while (item := self.q.get()) is not None:
                self._add(*item)
        except BaseException as e:  # handed to the main thread at its next put
            self.error = e

    def _add(self, rows: np.ndarray, feats, flips, ok: np.ndarray, reasons: list[str], digests: list[str]) -> None:
        start, stop = self.units[bisect.bisect_right(self.starts, int(rows[0])) - 1]
        buf = self.buffers.get(start)
        if buf is None:
            m, w = stop - start, self.writer
            buf = {"f": np.zeros((m, *w.dim), w.dtype), "ff": np.zeros((m, *w.dim), w.dtype) if w.flip else None,
                   "ok": np.zeros(m, bool), "reason": [""] * m, "digest": [""] * m, "filled": 0}
            self.buffers[start] = buf
            self.peak_buffers = max(self.peak_buffers, len(self.buffers))
        pos = rows - start
        buf["f"][pos] = feats
        if buf["ff"] is not None:
            buf["ff"][pos] = flips
        buf["ok"][pos] = ok
        for p, r, d in zip(pos, reasons, digests):
            buf["reason"][p], buf["digest"][p] = r, d
        buf["filled"] += len(rows)
        if buf["filled"] == stop - start:
            self.writer.write_unit(start, stop, buf["f"], buf["ok"], buf["reason"], buf["ff"], buf["digest"])
            del self.buffers[start]
            self.shards_written += 1


# --- running units --------------------------------------------------------------------------

def run_units(writer: StoreWriter, extractor: Extractor, units: list[tuple[int, int]], *, root: str | Path,
              batch_size: int = 32, workers: int = 0, on_rows: Callable[[int], None] | None = None) -> dict:
    """Compute and write the given whole shards, reading images under `root`.
    Returns {"rows", "skipped", "wall_s", "peak_shard_buffers"}."""
    t0 = time.perf_counter()
    if not units:
        return {"rows": 0, "skipped": 0, "wall_s": 0.0, "peak_shard_buffers": 0}
    for start, stop in units:
        writer.shard_index(start, stop)  # only whole shards: one writer per shard
    rows_ds = ImageRows(root, writer.paths(), extractor.preprocess)
    batches = iter(make_loader(rows_ds, units, batch_size, workers, pin=extractor.device.type == "cuda"))
    sink = ShardSink(writer, units)  # started after the decode workers exist
    rows_done = skipped = 0
    try:
        for rows, x, ok, reasons, digs in batches:
            feats, flips = extractor(x, pad_to=batch_size)
            ok = ok.numpy().astype(bool)
            if not ok.all():
                feats[~ok] = 0
                if flips is not None:
                    flips[~ok] = 0
                skipped += int((~ok).sum())
            sink.put((rows.numpy(), feats, flips, ok, list(reasons), list(digs)))
            rows_done += len(rows)
            if on_rows:
                on_rows(len(rows))
        sink.close()
    finally:
        if sink.thread.is_alive() and sink.error is None:
            with contextlib.suppress(Exception):
                sink.q.put_nowait(None)
        del batches
    return {"rows": rows_done, "skipped": skipped, "wall_s": time.perf_counter() - t0,
            "peak_shard_buffers": sink.peak_buffers}


def run_unit(store, start: int, stop: int, *, extractor: Extractor, root: str | Path | None = None,
             batch_size: int = 32, workers: int = 0) -> dict:
    """One shard, start to marker: what a dask task calls. Never run two on the same shard."""
    writer = store if isinstance(store, StoreWriter) else StoreWriter.open(store)
    check_extractor(writer, extractor)
    root = root or writer.attrs["manifest_root"]
    return run_units(writer, extractor, [(start, stop)], root=root, batch_size=batch_size, workers=workers)


def check_precision(writer: StoreWriter, precision: str) -> None:
    """Refuse to add features of another precision to a store (explicit choices only: "auto" passes)."""
    from .quantize import check_no_mixing

    have = writer.attrs.get("precision")
    check_no_mixing(writer.name, have, precision)
    if precision == "auto" or have == precision:
        return
    if writer.is_complete():
        raise FeatxError(f"store {writer.name} holds {have} features, not {precision}; use another --store")
    raise FeatxError(f"store {writer.name} was started at {have} precision, not {precision}; "
                     f"rerun with --precision {have} (features are never mixed)")


def check_extractor(writer: StoreWriter, ex: Extractor | dict) -> None:
    """The extractor (or its info()) must make the features the store was created for."""
    info = ex.info() if isinstance(ex, Extractor) else ex
    a = writer.attrs
    got = {"release": info["release"], "weights_sha256": info["weights_sha256"], "tap": info["tap"],
           "preprocess": info["preprocess"], "precision": info["precision"], "dim": list(info["dim"])}
    if isinstance(ex, Extractor):
        got.update(dtype=ex.dtype, flip=ex.flip)
    for k, v in got.items():
        want = a.get(k)
        if (list(want) if isinstance(want, (list, tuple)) else want) != (list(v) if isinstance(v, tuple) else v):
            if k == "precision":
                check_precision(writer, v)
            raise FeatxError(f"store {writer.name} was made with {k} {want!r}, not {v!r}")


# --- distributors ---------------------------------------------------------------------------

class InProcess:
    """Runs every unit in this process: one model, decode workers, one writer thread."""

    def __init__(self, opts: ExtractOptions):
        self.opts, self.extractor, self.where = opts, None, None

    def __enter__(self) -> "InProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.extractor = None

    def load(self, backbone: str, loaded=None) -> dict:
        self.extractor = Extractor(backbone, self.opts, loaded=loaded)
        self.where = describe_device(self.extractor.device)
        return self.extractor.info()

    def run(self, writer: StoreWriter, units, root, advance) -> dict:
        o, ex = self.opts, self.extractor
        check_extractor(writer, ex)
        batch = o.batch_size or (128 if ex.device.type == "cuda" else 32)
        workers = default_workers(ex.device) if o.workers is None else o.workers
        stats = run_units(writer, ex, units, root=root, batch_size=batch, workers=workers, on_rows=advance)
        return {**stats, "units": len(units), "error": None, "batch_size": batch, "workers": workers}


def default_workers(device: torch.device) -> int:
    n = os.cpu_count() or 1
    return max(1, min(12, n - 2)) if device.type == "cuda" else max(1, min(4, n // 4))


def distributor(opts: ExtractOptions, client=None):
    if client is None and not opts.distributed:
        return InProcess(opts)
    from .cluster import Dask

    return Dask(opts, client)


# --- the command ----------------------------------------------------------------------------

def weights_identity(backbone: str, weights) -> tuple | None:
    """(release, weights path, sha256) without loading the model: the cache record's sha256 when
    the cached file is meant (load_backbone verifies it when the model is loaded), else the file's."""
    if backbone not in RELEASES:
        return None
    release = RELEASES[backbone]
    path = Path(weights) if weights else canonical_path(release.name)
    if not path.is_file():
        load_backbone(backbone, weights)  # raises the one-line "no weights" error
    rec = read_record(release.name) if not weights else None
    return release, path, (rec["sha256"] if rec else sha256_file(path))


def versions() -> dict:
    import zarr

    return {"featx": __version__, "torch": torch.__version__, "zarr": zarr.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


@dataclass
class Job:
    """One extraction: what is asked, and the store as found."""

    manifest: Any
    backbone: str
    store: Any
    opts: ExtractOptions
    identity: dict | None = None  # known before loading the model for plain releases
    writer: StoreWriter | None = None
    note: str = ""  # what a resume kept and recomputed
    source: str | None = None  # the --data given, for provenance

    def identity_for(self, info: dict) -> dict:
        return {"manifest_hash": self.manifest.hash(), "release": info["release"],
                "weights_sha256": info["weights_sha256"], "tap": info["tap"], "preprocess": info["preprocess"],
                "dtype": self.opts.dtype, "flip": bool(self.opts.flip_tta)}


def open_job(data, backbone: str, store, opts: ExtractOptions) -> Job:
    """Load the manifest; for a plain release, find the existing store without loading the model."""
    from .data import Manifest, load

    manifest = data if isinstance(data, Manifest) else load(data)
    job = Job(manifest, str(backbone), store, opts, source=None if isinstance(data, Manifest) else str(data))
    cheap = weights_identity(job.backbone, opts.weights)
    if cheap:
        release, _, sha = cheap
        from .quantize import variant_release

        info = {"release": variant_release(release.name, opts.precision), "weights_sha256": sha,
                "tap": "+".join(release.parse_tap(opts.tap)),
                "preprocess": release.preprocess.to_dict()}
        job.identity = job.identity_for(info)
        job.writer = open_for_extract(store, job.identity)
        if job.writer is not None:
            check_precision(job.writer, opts.precision)
    return job


def refresh(writer: StoreWriter, manifest) -> tuple[list[int], str]:
    """Finished shards that must be computed again: damaged ones, and ones whose image files changed
    since (their digests differ from the data given now). Returns (shards reset, one-line note)."""
    stored = writer.row_hashes()
    if not writer.checked or stored is None:
        return [], ""  # a store from before featx 0.2: nothing to compare with
    fs = writer.reader()
    done = writer.done()
    finished = [i for k, (a, b) in enumerate(writer.shards) if done[k] for i in range(a, b)]
    now = digests(manifest.root, manifest.paths, finished)  # unfinished shards are computed anyway
    damaged, changed, images = [], [], 0
    for k, (a, b) in enumerate(writer.shards):
        if not done[k]:
            continue
        diff = sum(now[i] != stored[i] for i in range(a, b))
        if diff:
            changed.append(k)
            images += diff
        elif fs.check_unit(k):
            damaged.append(k)
    reset = sorted(damaged + changed)
    writer.reset_units(reset)
    if not reset:
        return [], ""
    kept = int(done.sum()) - len(reset)
    return reset, (f"kept {kept} finished shard(s); recomputing {len(reset)}: {len(changed)} with "
                   f"{images} changed image(s), {len(damaged)} damaged")


def extract(data, backbone: str, store, opts: ExtractOptions | None = None, *, client=None, **kw) -> dict:
    """Extract features of every image in `data` into `store`; idempotent, resumable, refuses mixing.

    data: anything featx.data.load accepts, or a Manifest. Options: an ExtractOptions and/or its fields as
    keywords (tap=, weights=, batch_size=, device=, precision=, cluster=, scheduler=, ...).
    client: a distributed.Client to run on. Returns a summary dict (see `summary_line`).
    """
    t0 = time.perf_counter()
    opts = options(opts, **kw)
    if opts.distributed and client is None and str(store).startswith("memory://"):
        raise FeatxError("a memory:// store lives in one process; give the cluster a path, file:// or s3:// URL")
    with writer_lock(store):
        job = open_job(data, backbone, store, opts)
        if job.writer is not None:
            _, job.note = refresh(job.writer, job.manifest)
            if job.writer.is_complete():
                return complete_summary(job.writer, t0)
        with distributor(opts, client) as d:
            writer, info = start(job, d)
            if writer.is_complete():
                return complete_summary(writer, t0)
            units = writer.plan_units()
            todo = sum(b - a for a, b in units)
            with progress_bar(opts.progress, writer.n, writer.n - todo, "extract") as advance:
                stats = d.run(writer, units, str(job.manifest.root), advance)
        return record(job, writer, info, stats, d.where, t0)


def start(job: Job, d) -> tuple[StoreWriter, dict]:
    """Load the model where the units will run; create the store (provenance first) when new."""
    loaded = None
    if job.identity is None:  # not a plain release (e.g. a fine-tuned model folder): load it to know it
        loaded = load_backbone(job.backbone, job.opts.weights) if not job.opts.distributed else None
    info = d.load(job.backbone, loaded)
    if job.identity is not None and info["weights_sha256"] != job.identity["weights_sha256"]:
        raise FeatxError(f"weights for {job.backbone} changed while starting; run again")
    writer = job.writer
    if writer is None and job.identity is None:
        writer = open_for_extract(job.store, job.identity_for(info))
        if writer is not None:
            _, job.note = refresh(writer, job.manifest)
    if info["precision"] == "int8":
        info["int8"] = int8_for(job, d, writer)
    if writer is None:
        writer = create(job.store, manifest=job.manifest, identity=job.identity or job.identity_for(info),
                        provenance=provenance(job, info, d), dim=tuple(info["dim"]),
                        rows_per_shard=job.opts.rows_per_shard, rows_per_chunk=job.opts.rows_per_chunk)
    check_extractor(writer, info)
    return writer, info


def int8_for(job: Job, d, writer: StoreWriter | None) -> dict:
    """int8: the store's recorded scales (resume), else calibrate on the data; in this process only."""
    if not isinstance(d, InProcess):
        raise FeatxError("--precision int8 runs in one process for now; drop --cluster/--scheduler")
    ex = d.extractor
    record = writer.attrs.get("int8") if writer is not None else None
    return ex.use_int8(ImageRows(job.manifest.root, job.manifest.paths, ex.preprocess), record)


def provenance(job: Job, info: dict, d) -> dict:
    return {
        "weights_file": str(job.opts.weights or job.backbone),
        "release_info": info["release_info"],
        "precision": info["precision"],
        "device": info["device"],
        "versions": info["versions"],
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": {"data": job.source, "backbone": job.backbone},
        **({"cluster": d.cluster_info} if getattr(d, "cluster_info", None) else {}),
        **({"int8": info["int8"]} if info.get("int8") else {}),
    }


def record(job: Job, writer: StoreWriter, info: dict, stats: dict, where: str, t0: float) -> dict:
    """The run record in the store, the summary attrs, and the summary; re-raises a unit's error after."""
    o = job.opts
    rate = round(stats["rows"] / stats["wall_s"], 2) if stats["wall_s"] > 0 else None
    run = {"rows": stats["rows"], "wall_s": round(stats["wall_s"], 3), "images_per_s": rate, "device": where,
           "precision": info["precision"], "batch_size": stats.get("batch_size"), "workers": stats.get("workers"),
           "compile": o.compile, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           **({"cluster": stats["cluster"]} if stats.get("cluster") else {})}
    attrs = finish(writer, run)
    if stats.get("error") is not None:
        raise stats["error"]
    skipped = attrs.get("skipped", {})
    return {"store": writer.name, "n": writer.n, "computed": stats["rows"], "skipped_now": stats["skipped"],
            "skipped": int(skipped.get("count", 0)), "skipped_first": skipped.get("first", []),
            "already_complete": False, "wall_s": time.perf_counter() - t0, "compute_wall_s": stats["wall_s"],
            "images_per_s": rate, "device": where, "precision": info["precision"], "note": job.note,
            "peak_shard_buffers": stats.get("peak_shard_buffers"), "units": stats.get("units"),
            **{k: stats[k] for k in ("units_already_done", "n_workers", "scheduler", "per_worker") if k in stats}}


def complete_summary(writer: StoreWriter, t0: float) -> dict:
    """The summary of a run that found its store already complete."""
    count, _ = writer.skipped(0)
    return {"store": writer.name, "n": writer.n, "computed": 0, "skipped": count,
            "already_complete": True, "wall_s": time.perf_counter() - t0}


def finish(store, run: dict | None = None) -> dict:
    """Record a run's timings and, once every shard is written, the summary attrs (single coordinator)."""
    writer = store if isinstance(store, StoreWriter) else StoreWriter.open(store)
    runs = list(writer.attrs.get("runs", []))
    if run and run.get("rows"):
        runs.append(run)
    values: dict[str, Any] = {"runs": runs}
    if writer.is_complete():
        count, first = writer.skipped(100)
        wall = sum(r["wall_s"] for r in runs)
        rows = sum(r["rows"] for r in runs)
        values.update({
            "complete": True,
            "skipped": {"count": count, "first": first},
            "timings": {"wall_s": round(wall, 3), "rows": rows,
                        "images_per_s": round(rows / wall, 2) if wall > 0 else None},
        })
    writer.update_attrs(values)
    return writer.attrs


def repair(store, data, opts: ExtractOptions | None = None, **kw) -> dict:
    """Recompute only the shards of `store` that do not verify (or whose images changed), from `data`.

    The store's own release, weights, tap, dtype, flip and precision are used; `opts` may add
    runtime settings (device, batch size, workers, cluster)."""
    from .store import verify

    bad = [b["shard"] for b in verify(store)]
    w = StoreWriter.open(store)
    a = w.attrs
    weights = a.get("weights_file") if a.get("weights_file") not in (None, a["command"].get("backbone")) else None
    if weights and not Path(weights).is_file():
        weights = None  # the cache file of a release: found again by name
    with writer_lock(store, "featx store repair"):
        w.reset_units(bad)
    o = options(opts, **kw)
    o = replace(o, tap=a["tap"], dtype=a["dtype"], flip_tta=bool(a["flip"]), precision=a["precision"],
                weights=o.weights or weights)
    s = extract(data, a["command"].get("backbone") or a["release"], store, o)
    s["repaired"] = bad
    return s


def summary_line(s: dict) -> str:
    if s["already_complete"]:
        return (f"store {s['store']} is already complete ({s['n']} images, {s['skipped']} skipped); "
                f"nothing to do ({s['wall_s']:.1f} s)")
    rate = f", {s['images_per_s']:.1f} images/s" if s.get("images_per_s") else ""
    return (f"extracted {s['computed']} of {s['n']} images into {s['store']} in {s['wall_s']:.1f} s"
            f"{rate} on {s['device']} at {s['precision']}; skipped {s['skipped']} "
            f"(reasons in the store's `reason` array)")
