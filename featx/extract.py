"""Run a frozen base once over a dataset into a feature store: fast, resumable, never mixed.

Pipeline: DataLoader workers decode (featx.images.open_rgb) and resize/crop (release.preprocess)
to uint8; the device normalises exactly as Preprocess.to_tensor does, runs the model
(channels_last, bf16/fp16 autocast where the hardware has it, inference_mode), and a writer
thread assembles each shard and writes it, then its marker, while the next batches compute.

For a distributed runner (dask): `plan_units(store)` lists unfinished shards;
each task builds an `Extractor` once and calls `run_unit(store, start, stop, extractor=...)`;
the coordinator calls `finish(store, ...)` at the end.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import platform
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import __version__
from .backbones import tap_dim, tap_features
from .errors import FeatxError
from .images import ImageError, open_rgb
from .releases import RELEASES, Preprocess
from .store import StoreWriter, create, open_for_extract, plan_units, read_strings  # noqa: F401 (plan_units re-exported)
from .weights import load_backbone, read_record, sha256_file, weights_dir

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = ("float16", "float32")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = ["extract", "Extractor", "run_unit", "plan_units", "finish", "resolve_device", "resolve_precision"]


# --- device and precision -------------------------------------------------------------------

def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise FeatxError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatxError("--device cuda asked for, but torch sees no CUDA GPU")
    return torch.device(device)


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """Native bf16 matmul on this CPU (AVX512-BF16 or AMX); emulated bf16 would be slower than fp32."""
    flags = cpu_flags()
    return torch.backends.mkldnn.is_available() and bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 where the hardware has it, else fp16 on GPUs, else fp32."""
    if precision not in PRECISIONS:
        raise FeatxError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision != "auto":
        if device.type == "cpu" and precision == "fp16":
            raise FeatxError("fp16 on CPU is slow and lossy; use --precision bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    return f"cpu ({name}, {os.cpu_count()} cores)"


# --- the model side -----------------------------------------------------------------------

class Extractor:
    """A loaded base ready to turn uint8 image batches [B, H, W, 3] into store-dtype features."""

    def __init__(self, backbone: str, weights: str | Path | None = None, *, tap: str = "pool5-gap",
                 device: str = "auto", precision: str = "auto", dtype: str = "float16",
                 flip: bool = False, compile: bool = False, loaded=None):
        self.release, model, self.weights_sha256 = loaded or load_backbone(backbone, weights)
        self.tap = "+".join(self.release.parse_tap(tap))
        self.preprocess: Preprocess = self.release.preprocess
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if dtype not in DTYPES:
            raise FeatxError(f"unknown dtype {dtype!r}; use float16 or float32")
        self.dtype, self.flip, self.compiled = dtype, flip, compile
        model = model.eval().requires_grad_(False).to(self.device).to(memory_format=torch.channels_last)
        self.model = model
        self.dim = tap_dim(model, self.tap, self.preprocess.size, self.device)
        p = self.preprocess
        self.mean = torch.tensor(p.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(p.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        fn = lambda x: tap_features(model, x, self.tap)  # noqa: E731
        self.forward = torch.compile(fn, dynamic=False) if compile else fn
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
        if self.flip:
            x = torch.cat([x, x.flip(3)])
        if self.compiled and pad_to and b < pad_to:  # fixed shapes: no recompiles on the last batch
            pad = torch.zeros((pad_to - b, *x.shape[1:]), dtype=x.dtype, device=x.device)
            x = torch.cat([x, pad.contiguous(memory_format=torch.channels_last)])
        ctx = (torch.autocast(self.device.type, dtype=AUTOCAST[self.precision])
               if self.precision in AUTOCAST else contextlib.nullcontext())
        with ctx:
            f = self.forward(x)
        f = f[: (2 * b if self.flip else b)].float()
        if self.dtype == "float16":
            f = f.clamp(-65504.0, 65504.0).half()
        f = f.cpu().numpy()
        return (f[:b], f[b:]) if self.flip else (f, None)


# --- the data side ------------------------------------------------------------------------

class ImageRows(Dataset):
    """Row i -> (i, uint8 [size, size, 3] resized and cropped, ok, reason). Failures give zeros."""

    def __init__(self, root: str | Path, paths, preprocess: Preprocess):
        self.root, self.paths, self.preprocess = Path(root), list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.root / self.paths[i]
        try:
            img = self.preprocess.resize_crop(open_rgb(path))
            return i, torch.from_numpy(np.array(img, dtype=np.uint8)), True, ""
        except ImageError as e:
            reason = e.reason
        except Exception as e:  # a decoder bug must not stop a long run
            reason = f"{type(e).__name__}: {' '.join(str(e).split())}"
        s = self.preprocess.size
        return i, torch.zeros((s, s, 3), dtype=torch.uint8), False, reason


def unit_batches(units: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Batches never straddle shards, so a resumed shard sees the very same batches."""
    return [list(range(a, min(a + batch_size, stop))) for start, stop in units
            for a in range(start, stop, batch_size)]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(writer: StoreWriter, preprocess: Preprocess, units, batch_size: int, workers: int,
                pin: bool) -> DataLoader:
    g = writer.group
    ds = ImageRows(writer.attrs["manifest_root"], read_strings(g["paths"]), preprocess)
    return DataLoader(ds, batch_sampler=unit_batches(units, batch_size), num_workers=workers,
                      pin_memory=pin, worker_init_fn=_worker_init if workers else None,
                      prefetch_factor=4 if workers else None)


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

    def _add(self, rows: np.ndarray, feats, flips, ok: np.ndarray, reasons: list[str]) -> None:
        start, stop = self.units[bisect.bisect_right(self.starts, int(rows[0])) - 1]
        buf = self.buffers.get(start)
        if buf is None:
            m, w = stop - start, self.writer
            buf = {"f": np.zeros((m, *w.dim), w.dtype), "ff": np.zeros((m, *w.dim), w.dtype) if w.flip else None,
                   "ok": np.zeros(m, bool), "reason": [""] * m, "filled": 0}
            self.buffers[start] = buf
            self.peak_buffers = max(self.peak_buffers, len(self.buffers))
        pos = rows - start
        buf["f"][pos] = feats
        if buf["ff"] is not None:
            buf["ff"][pos] = flips
        buf["ok"][pos] = ok
        for p, r in zip(pos, reasons):
            buf["reason"][p] = r
        buf["filled"] += len(rows)
        if buf["filled"] == stop - start:
            self.writer.write_unit(start, stop, buf["f"], buf["ok"], buf["reason"], buf["ff"])
            del self.buffers[start]
            self.shards_written += 1


# --- running units --------------------------------------------------------------------------

def run_units(writer: StoreWriter, extractor: Extractor, units: list[tuple[int, int]], *,
              batch_size: int = 32, workers: int = 0, on_rows: Callable[[int], None] | None = None) -> dict:
    """Compute and write the given whole shards; returns {"rows", "skipped", "wall_s", "peak_shard_buffers"}."""
    t0 = time.perf_counter()
    if not units:
        return {"rows": 0, "skipped": 0, "wall_s": 0.0, "peak_shard_buffers": 0}
    for start, stop in units:
        writer.shard_index(start, stop)  # only whole shards: one writer per shard
    loader = make_loader(writer, extractor.preprocess, units, batch_size, workers,
                         pin=extractor.device.type == "cuda")
    batches = iter(loader)  # start the workers before the writer thread exists
    sink = ShardSink(writer, units)
    rows_done = skipped = 0
    try:
        for rows, x, ok, reasons in batches:
            feats, flips = extractor(x, pad_to=batch_size)
            ok = ok.numpy().astype(bool)
            if not ok.all():
                feats[~ok] = 0
                if flips is not None:
                    flips[~ok] = 0
                skipped += int((~ok).sum())
            sink.put((rows.numpy(), feats, flips, ok, list(reasons)))
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


def run_unit(store, start: int, stop: int, *, extractor: Extractor, batch_size: int = 32,
             workers: int = 0) -> dict:
    """One shard, start to marker: what a dask task calls. Never run two on the same shard."""
    writer = store if isinstance(store, StoreWriter) else StoreWriter.open(store)
    check_extractor(writer, extractor)
    return run_units(writer, extractor, [(start, stop)], batch_size=batch_size, workers=workers)


def check_precision(writer: StoreWriter, precision: str) -> None:
    """Refuse to add features of another precision to a store (explicit choices only: "auto" passes)."""
    have = writer.attrs.get("precision")
    if precision == "auto" or have == precision:
        return
    if writer.is_complete():
        raise FeatxError(f"store {writer.name} holds {have} features, not {precision}; use another --store")
    raise FeatxError(f"store {writer.name} was started at {have} precision, not {precision}; "
                     f"rerun with --precision {have} (features are never mixed)")


def complete_summary(writer: StoreWriter, t0: float) -> dict:
    """The summary of a run that found its store already complete."""
    ok = np.asarray(writer.group["ok"][:], dtype=bool)
    return {"store": writer.name, "n": writer.n, "computed": 0, "skipped": int((~ok).sum()),
            "already_complete": True, "wall_s": time.perf_counter() - t0}


def check_extractor(writer: StoreWriter, ex: Extractor) -> None:
    """The extractor must make the features the store was created for."""
    a = writer.attrs
    got = {"release": ex.release.name, "weights_sha256": ex.weights_sha256, "tap": ex.tap,
           "preprocess": ex.preprocess.to_dict(), "dtype": ex.dtype, "flip": ex.flip,
           "precision": ex.precision, "dim": list(ex.dim)}
    for k, v in got.items():
        want = a.get(k)
        if (list(want) if isinstance(want, (list, tuple)) else want) != (list(v) if isinstance(v, tuple) else v):
            if k == "precision":
                check_precision(writer, v)
            raise FeatxError(f"store {writer.name} was made with {k} {want!r}, not {v!r}")


def finish(store, run: dict | None = None) -> dict:
    """Record a run's timings and, once every shard is written, the summary attrs (single coordinator)."""
    writer = store if isinstance(store, StoreWriter) else StoreWriter.open(store)
    runs = list(writer.attrs.get("runs", []))
    if run and run.get("rows"):
        runs.append(run)
    values: dict[str, Any] = {"runs": runs}
    if writer.is_complete():
        ok = np.asarray(writer.group["ok"][:], dtype=bool)
        bad = np.flatnonzero(~ok)
        reasons = read_strings(writer.group["reason"], bad) if bad.size else []
        paths = read_strings(writer.group["paths"], bad) if bad.size else []
        wall = sum(r["wall_s"] for r in runs)
        rows = sum(r["rows"] for r in runs)
        values.update({
            "complete": True,
            "skipped": {"count": int(bad.size),
                        "first": [{"row": int(i), "path": str(p), "reason": str(r)}
                                  for i, p, r in list(zip(bad, paths, reasons))[:100]]},
            "timings": {"wall_s": round(wall, 3), "rows": rows,
                        "images_per_s": round(rows / wall, 2) if wall > 0 else None},
        })
    writer.update_attrs(values)
    return writer.attrs


# --- the command ----------------------------------------------------------------------------

def weights_identity(backbone: str, weights) -> tuple | None:
    """(release, weights path, sha256) without loading the model: the cache record's sha256 when
    the cached file is meant (load_backbone verifies it when the model is loaded), else the file's."""
    if backbone not in RELEASES:
        return None
    release = RELEASES[backbone]
    path = Path(weights) if weights else weights_dir() / release.filename
    if not path.is_file():
        load_backbone(backbone, weights)  # raises the one-line "no weights" error
    rec = read_record(release.name) if not weights else None
    return release, path, (rec["sha256"] if rec else sha256_file(path))


def versions() -> dict:
    import zarr

    return {"featx": __version__, "torch": torch.__version__, "zarr": zarr.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def default_workers(device: torch.device) -> int:
    n = os.cpu_count() or 1
    return max(1, min(12, n - 2)) if device.type == "cuda" else max(1, min(4, n // 4))


def extract(data, backbone: str, store, *, tap: str = "pool5-gap", weights=None, batch_size: int | None = None,
            device: str = "auto", precision: str = "auto", workers: int | None = None, flip_tta: bool = False,
            dtype: str = "float16", compile: bool = False, progress: bool = True,
            rows_per_shard: int | None = None, rows_per_chunk: int | None = None,
            cluster: str | None = None, scheduler: str | None = None) -> dict:
    """Extract features of every image in `data` into `store`; idempotent, resumable, refuses mixing.

    data: anything featx.data.load accepts, or a Manifest. batch_size: 32 on CPU, 128 on GPU when None.
    cluster ("local:N") or scheduler ("tcp://HOST:PORT"): run on dask instead (featx.cluster).
    Returns a summary dict (see `summary_line`).
    """
    if cluster or scheduler:
        from .cluster import extract_on_cluster

        return extract_on_cluster(data, backbone, store, cluster=cluster, scheduler=scheduler, tap=tap,
                                  weights=weights, batch_size=batch_size, device=device, precision=precision,
                                  workers=workers, flip_tta=flip_tta, dtype=dtype, compile=compile,
                                  progress=progress, rows_per_shard=rows_per_shard, rows_per_chunk=rows_per_chunk)
    t0 = time.perf_counter()
    if dtype not in DTYPES:
        raise FeatxError(f"unknown dtype {dtype!r}; use float16 or float32")
    if precision not in PRECISIONS:
        raise FeatxError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    from .data import Manifest, load

    manifest = data if isinstance(data, Manifest) else load(data)
    cheap = weights_identity(backbone, weights)
    if cheap:
        release, wpath, weights_sha = cheap
        loaded = None
    else:  # not a plain release (e.g. a fine-tuned model folder): load it to know it
        loaded = load_backbone(backbone, weights)
        release, weights_sha = loaded[0], loaded[2]
    tap = "+".join(release.parse_tap(tap))
    identity = {"manifest_hash": manifest.hash(), "release": release.name, "weights_sha256": weights_sha,
                "tap": tap, "preprocess": release.preprocess.to_dict(), "dtype": dtype, "flip": bool(flip_tta)}
    writer = open_for_extract(store, identity)
    if writer is not None and writer.is_complete():
        check_precision(writer, precision)
        return complete_summary(writer, t0)

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if writer is not None:
        check_precision(writer, prec)
    batch_size = batch_size or (128 if dev.type == "cuda" else 32)
    if batch_size < 1:
        raise FeatxError("--batch-size must be at least 1")
    workers = default_workers(dev) if workers is None else workers
    if loaded is None:
        loaded = load_backbone(backbone, weights)
        if loaded[2] != weights_sha:
            raise FeatxError(f"weights file {wpath} changed while starting; run again")
    ex = Extractor(backbone, tap=tap, device=str(dev), precision=prec, dtype=dtype, flip=flip_tta,
                   compile=compile, loaded=loaded)
    if writer is None:
        provenance = {
            "weights_file": str(wpath) if cheap else str(backbone),
            "release_info": release.to_dict(),
            "precision": prec,
            "device": describe_device(dev),
            "versions": versions(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": {"data": str(data) if not isinstance(data, Manifest) else None, "backbone": backbone},
        }
        writer = create(store, manifest=manifest, identity=identity, provenance=provenance, dim=ex.dim,
                        rows_per_shard=rows_per_shard, rows_per_chunk=rows_per_chunk)
    check_extractor(writer, ex)
    units = writer.plan_units()
    todo = sum(b - a for a, b in units)
    bar = progress_bar(progress, writer.n, writer.n - todo)
    with bar as (advance):
        stats = run_units(writer, ex, units, batch_size=batch_size, workers=workers, on_rows=advance)
    run = {"rows": stats["rows"], "wall_s": round(stats["wall_s"], 3),
           "images_per_s": round(stats["rows"] / stats["wall_s"], 2) if stats["wall_s"] > 0 else None,
           "device": describe_device(dev), "precision": prec, "batch_size": batch_size, "workers": workers,
           "compile": compile, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    attrs = finish(writer, run)
    return {"store": writer.name, "n": writer.n, "computed": stats["rows"], "skipped_now": stats["skipped"],
            "skipped": int(attrs.get("skipped", {}).get("count", 0)),
            "skipped_first": attrs.get("skipped", {}).get("first", []),
            "already_complete": False, "wall_s": time.perf_counter() - t0, "compute_wall_s": stats["wall_s"],
            "images_per_s": run["images_per_s"], "device": run["device"], "precision": prec,
            "peak_shard_buffers": stats["peak_shard_buffers"]}


@contextlib.contextmanager
def progress_bar(show: bool, total: int, completed: int, label: str = "extract"):
    """A rich bar with images/s and ETA on stderr; yields advance(k)."""
    if not show:
        yield lambda k: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.1f} img/s" if task.speed else "- img/s")

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), Rate(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True)) as p:
        task = p.add_task("extract", total=total, completed=completed)
        yield lambda k: p.advance(task, k)


def summary_line(s: dict) -> str:
    if s["already_complete"]:
        return (f"store {s['store']} is already complete ({s['n']} images, {s['skipped']} skipped); "
                f"nothing to do ({s['wall_s']:.1f} s)")
    rate = f", {s['images_per_s']:.1f} images/s" if s.get("images_per_s") else ""
    return (f"extracted {s['computed']} of {s['n']} images into {s['store']} in {s['wall_s']:.1f} s"
            f"{rate} on {s['device']} at {s['precision']}; skipped {s['skipped']} "
            f"(reasons in the store's `reason` array)")
