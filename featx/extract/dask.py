"""The dask.distributed distributor (`Dask`), and features as dask arrays.

    extract(data, "vgg16.hed", "s3://bucket/utk.zarr", cluster="local:4")        # featx.extract.extract
    extract(data, "vgg16.hed", "/shared/utk.zarr", scheduler="tcp://head:8786")

The runner (`featx.extract.runner`) creates the store with its full provenance in this process, as for
an in-process run; this distributor then submits one task per unfinished shard (`featx.store.plan_units`):
each shard has exactly one writer, and a shard whose `done` marker is set is never computed again.
Workers keep their loaded model in a per-process cache, so the model loads once per worker.
A worker that dies mid-shard has that shard rerun elsewhere (dask reschedules it); a failed run
keeps every finished shard, and rerunning the same command does only what is left.

Multi-GPU: `cluster="local"` starts one worker per visible GPU (CUDA_VISIBLE_DEVICES pinned, resource
GPU=1). On an existing cluster, tasks ask for resources={"GPU": 1} whenever workers declare it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from ..errors import FeatxError

__all__ = ["Dask", "parse_cluster", "feature_array", "LocalSpec", "start_local", "run_shard", "worker_stats"]

CONNECT_TIMEOUT_S = 30  # --scheduler: how long to wait for the scheduler and its first worker


# --- the cluster spec --------------------------------------------------------------------------

@dataclass(frozen=True)
class LocalSpec:
    """`local` or `local:N`: a cluster of worker processes on this machine.

    N None: one worker per GPU, or on a CPU-only machine one per 4 cores (each uses its share of cores).
    """

    n_workers: int | None = None


def parse_cluster(spec: str | None) -> LocalSpec | None:
    """'local:N' -> LocalSpec(N); 'local' -> LocalSpec(None); None/'' -> None (no cluster)."""
    if spec is None or str(spec).strip() == "":
        return None
    s = str(spec).strip()
    kind, _, count = s.partition(":")
    if kind != "local" or (_ and not count):
        raise FeatxError(f"unknown --cluster {spec!r}; use local:N (N worker processes here) "
                         "or --scheduler tcp://HOST:PORT to join a running cluster")
    if not count:
        return LocalSpec(None)
    try:
        n = int(count)
    except ValueError:
        n = 0
    if n < 1:
        raise FeatxError(f"--cluster {spec!r}: N must be a whole number of workers, at least 1")
    return LocalSpec(n)


def local_gpus(device: str = "auto") -> list[str]:
    """CUDA device ids a local cluster should pin one worker each to ([] on CPU or with --device cpu)."""
    if device == "cpu":
        return []
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    return ids[:n] if len(ids) >= n else [str(i) for i in range(n)]


def start_local(spec: LocalSpec, *, device: str = "auto", processes: bool = True):
    """Start a local dask cluster of single-threaded worker processes (one per GPU on a GPU machine).

    Returns (cluster, info) where info has n_workers and the pinned gpus.
    """
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster
    from distributed.system import MEMORY_LIMIT

    gpus = local_gpus(device)
    cores = os.cpu_count() or 1
    if gpus:
        n = spec.n_workers or len(gpus)
        if n > len(gpus):
            raise FeatxError(f"--cluster local:{n} asks for {n} GPU workers but this machine has {len(gpus)} "
                             f"GPU(s); use local:{len(gpus)} (one worker per GPU) or --device cpu")
        memory = int(MEMORY_LIMIT * 0.9 // n)
        workers = {f"gpu{gpus[i]}": {"cls": Nanny, "options": {
            "nthreads": 1, "memory_limit": memory, "resources": {"GPU": 1}, "name": f"gpu{gpus[i]}",
            "env": {"CUDA_VISIBLE_DEVICES": gpus[i]}, "silence_logs": logging.ERROR}} for i in range(n)}
        cluster = SpecCluster(workers=workers, name="featx",
                              scheduler={"cls": Scheduler, "options": {"dashboard": False, "dashboard_address": ":0"}},
                              silence_logs=logging.ERROR)
        return cluster, {"n_workers": n, "gpus": gpus[:n]}
    n = spec.n_workers or max(1, cores // 4)
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes, dashboard_address=":0",
                           scheduler_kwargs={"dashboard": False}, memory_limit=int(MEMORY_LIMIT * 0.9 // n),
                           silence_logs=logging.ERROR)
    return cluster, {"n_workers": n, "gpus": []}


def gpu_resources(workers: dict, device: str = "auto") -> dict | None:
    """resources={"GPU": 1} when any worker declares a GPU resource (and the device is not cpu)."""
    if device == "cpu":
        return None
    has = any((w.get("resources") or {}).get("GPU") for w in workers.values())
    return {"GPU": 1} if has else None


@contextlib.contextmanager
def connect(cluster: str | LocalSpec | None, scheduler: str | None, *, device: str = "auto", client=None):
    """Yields (client, info): joins `scheduler`, starts `cluster`, or uses a given distributed.Client."""
    import dask
    from distributed import Client

    if client is not None:
        yield client, {"scheduler": client.scheduler.address, "local": False,
                       "in_process": getattr(getattr(client, "cluster", None), "processes", True) is False}
        return
    if scheduler:
        try:
            with dask.config.set({"distributed.comm.timeouts.connect": f"{CONNECT_TIMEOUT_S}s"}):
                c = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as e:
            why = " ".join(str(e).split())[:200]
            raise FeatxError(f"cannot reach the dask scheduler at {scheduler}: {why}") from None
        with c:
            try:
                c.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
            except (TimeoutError, OSError):
                raise FeatxError(f"no dask worker joined the scheduler at {scheduler} within "
                                 f"{CONNECT_TIMEOUT_S} s; start some with `dask worker {scheduler}`") from None
            yield c, {"scheduler": scheduler, "local": False, "in_process": False}
        return
    spec = cluster if isinstance(cluster, LocalSpec) else parse_cluster(cluster)
    # GPU workers decode with DataLoader processes, which a daemonic worker may not start
    with dask.config.set({"distributed.worker.daemon": False}) if local_gpus(device) else contextlib.nullcontext(), \
            kept_environ(THREAD_VARS):
        lc, info = start_local(spec, device=device)
        with lc, Client(lc, set_as_default=False) as c:
            yield c, {"scheduler": lc.scheduler_address, "local": True, "in_process": False, **info}


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@contextlib.contextmanager
def kept_environ(names):
    """Restore these environment variables afterwards: starting a LocalCluster sets OMP/MKL/OpenBLAS
    threads to 1 in this process's environment, which every later subprocess would inherit."""
    before = {k: os.environ.get(k) for k in names}
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- the worker side ---------------------------------------------------------------------------

_LOCK = threading.Lock()
_EXTRACTORS: dict[tuple, Any] = {}
_STATS: Counter = Counter()  # loads, units, rows in this process


SAME = ("backbone", "weights", "device", "dtype", "flip", "compile", "faces")


def _fits(key: dict, spec: dict) -> bool:
    """A cached extractor serves `spec` when all settings agree; "auto" precision and an unknown sha accept any;
    no tap means the family's default tap."""
    return (all(key[k] == spec[k] for k in SAME) and spec["precision"] in ("auto", key["precision"])
            and spec["weights_sha256"] in (None, key["weights_sha256"])
            and key["tap"] == (spec["tap"] or key["default_tap"]))


def get_extractor(spec: dict):
    """The loaded base for `spec`, built once per worker process and reused by its later tasks.

    Cached per process by (backbone, weights, sha256, tap, device, precision, dtype, flip, compile).
    """
    from .extractor import Extractor

    with _LOCK:
        for key, ex in _EXTRACTORS.values():
            if _fits(key, spec):
                return ex
        ex = Extractor(spec["backbone"], weights=spec["weights"], tap=spec["tap"], device=spec["device"],
                       precision=spec["precision"], dtype=spec["dtype"], flip_tta=spec["flip"],
                       compile=spec["compile"], faces=spec["faces"])
        if spec["weights_sha256"] and ex.weights_sha256 != spec["weights_sha256"]:
            raise FeatxError(f"the weights this worker loaded (sha256 {ex.weights_sha256:.12}) are not the "
                             f"driver's ({spec['weights_sha256']:.12}); give every worker the same --weights file")
        key = {**{k: spec[k] for k in SAME}, "precision": ex.precision, "weights_sha256": ex.weights_sha256,
               "tap": ex.tap, "default_tap": "+".join(ex.release.parse_tap(None))}
        _EXTRACTORS.clear()  # one model per worker at a time
        _EXTRACTORS[tuple(key.values())] = (key, ex)
        _STATS["loads"] += 1
        return ex


def worker_stats(dask_worker=None) -> dict:
    """This process's counts (model loads, shards and rows computed) and pinning: client.run(worker_stats)."""
    resources = dict(getattr(getattr(dask_worker, "state", None), "total_resources", None) or {})
    return {"loads": _STATS["loads"], "units": _STATS["units"], "rows": _STATS["rows"], "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "resources": resources,
            "decode_processes": _STATS["decode_processes"]}


def probe(spec: dict) -> dict:
    """Load the base on a worker (it stays cached there) and say what it computes."""
    return get_extractor(spec).info()


def cpu_threads(host_threads: dict) -> int:
    """Torch threads for this worker: its host's cores shared among the dask threads on that host.
    (Dask workers start with OMP_NUM_THREADS=1, which would leave a CPU worker on one core.)"""
    from distributed import get_worker
    from distributed.comm import get_address_host

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        host = get_address_host(get_worker().address)
    except ValueError:  # not inside a dask task
        return cores
    return max(1, cores // max(1, int(host_threads.get(host, 1))))


def _fast_decode_processes() -> None:
    """Dask workers inherit the `spawn` start method, so every shard's DataLoader processes would import
    torch afresh (seconds each). Fork them from a forkserver that has featx and torch loaded instead."""
    if multiprocessing.get_start_method(allow_none=True) == "spawn":
        multiprocessing.set_forkserver_preload(["featx.extract"])
        multiprocessing.set_start_method("forkserver", force=True)


def run_shard(store: str, start: int, stop: int, spec: dict) -> dict:
    """One dask task: compute shard [start, stop) and write it, then its marker. Skips a finished shard."""
    import torch

    from ..store import StoreWriter
    from .units import run_unit

    writer = StoreWriter.open(store)
    k = writer.shard_index(start, stop)
    if writer.unit_done(k):
        return {"shard": k, "rows": 0, "skipped": 0, "wall_s": 0.0, "already_done": True}
    ex = get_extractor(spec)
    if ex.device.type == "cpu" and spec.get("set_threads"):
        torch.set_num_threads(cpu_threads(spec.get("host_threads") or {}))
    workers = int(spec.get("workers") or 0)
    if workers and multiprocessing.current_process().daemon:
        workers = 0  # a daemonic dask worker may not start DataLoader processes
    if workers and spec.get("set_threads"):
        _fast_decode_processes()
    stats = run_unit(writer, start, stop, extractor=ex, paths=spec.get("paths"), batch_size=spec["batch_size"],
                     workers=workers)
    _STATS["units"] += 1
    _STATS["rows"] += stats["rows"]
    _STATS["decode_processes"] = max(_STATS["decode_processes"], workers)
    return {"shard": k, "rows": stats["rows"], "skipped": stats["skipped"], "several_faces": stats["several_faces"],
            "wall_s": stats["wall_s"],
            "already_done": False, "pid": os.getpid()}


# --- the driver side ---------------------------------------------------------------------------

def _worker_store(store) -> str:
    """The store as a string every worker can open: local paths made absolute, URLs kept."""
    if isinstance(store, os.PathLike) or (isinstance(store, str) and "://" not in store):
        return str(Path(store).expanduser().resolve())
    if isinstance(store, str):
        return store
    raise FeatxError("a cluster run needs the store as a path or URL that every worker can reach")


def _task_error(k: int, fut) -> FeatxError:
    from distributed import KilledWorker

    try:
        e = fut.exception()
    except BaseException as x:  # cancelled: the scheduler or the connection went away
        e = x
    if isinstance(e, FeatxError):
        return FeatxError(f"shard {k}: {e}")
    if isinstance(e, KilledWorker):
        why = "its workers died each time it ran (out of memory?)"
    else:
        why = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    return FeatxError(f"shard {k} failed: {why}; finished shards are kept, rerun the same command to resume")


class Dask:
    """The dask.distributed distributor: one task per unfinished shard, the model loaded once per worker."""

    def __init__(self, opts, client=None):
        self.opts, self.client = opts, client
        self.local = parse_cluster(opts.cluster) if isinstance(opts.cluster, str) else opts.cluster
        if opts.device not in ("auto", "cpu", "cuda"):
            raise FeatxError(f"unknown device {opts.device!r} for a cluster; use auto, cpu or cuda (each worker "
                             "uses the GPU it is pinned to)")
        self.stack = contextlib.ExitStack()
        self.where = self.cluster_info = None
        self.extractor = None  # the model lives on the workers
        self.spec: dict = {}

    def __enter__(self) -> "Dask":
        self.c, self.info = self.stack.enter_context(connect(self.local, self.opts.scheduler,
                                                             device=self.opts.device, client=self.client))
        workers_info = self.c.scheduler_info(n_workers=-1)["workers"]
        self.resources = gpu_resources(workers_info, self.opts.device)
        host_threads: Counter = Counter()
        for w in workers_info.values():
            host_threads[w.get("host")] += int(w.get("nthreads") or 1)
        self.n_workers = len(workers_info)
        self.token = uuid.uuid4().hex[:8]
        o = self.opts
        self.spec = {"weights": str(Path(o.weights).expanduser().resolve()) if o.weights else None,
                     "weights_sha256": None, "tap": o.tap, "device": o.device, "dtype": o.dtype,
                     "flip": bool(o.flip_tta), "compile": o.compile, "precision": o.precision, "faces": o.faces,
                     "host_threads": dict(host_threads), "set_threads": not self.info.get("in_process")}
        self.cluster_info = {"scheduler": self.info["scheduler"], "n_workers": self.n_workers}
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def load(self, backbone: str, loaded=None) -> dict:
        """Load the base on a worker (it stays cached there) and learn what it computes."""
        self.spec["backbone"] = backbone
        got = self.c.submit(probe, self.spec, key=f"featx-probe-{self.token}", pure=False,
                            retries=self.opts.retries, resources=self.resources).result()
        self.spec.update(precision=got["precision"], weights_sha256=got["weights_sha256"], tap=got["tap"])
        self.on_gpu = got["device_type"] == "cuda"
        gpu = bool(self.resources) or bool(self.info.get("gpus"))
        self.where = f"{self.n_workers} dask worker(s){' (1 GPU each)' if gpu and self.on_gpu else ''}: {got['device']}"
        return got

    def decode_workers(self) -> int:
        """Decode processes per GPU worker; CPU workers decode in their own thread."""
        if self.opts.workers is not None:
            return self.opts.workers
        if not self.on_gpu:
            return 0
        n_local = max(1, self.info.get("n_workers") or 1)
        return max(1, min(12, (os.cpu_count() or 2) // n_local - 1)) if self.info.get("local") else 4

    def run(self, writer, units, paths, advance) -> dict:
        wstore = _worker_store(writer.name)
        if wstore.startswith("memory://") and not self.info.get("in_process"):
            raise FeatxError("a memory:// store lives in one process; give the cluster a path, file:// or s3:// URL")
        spec = {**self.spec, "batch_size": self.opts.batch_size or (128 if self.on_gpu else 32),
                "workers": self.decode_workers()}
        stats = _run_units(self.c, writer, wstore, units, spec, self, advance, paths)
        per_worker = {a: s for a, s in self.c.run(worker_stats, on_error="return").items() if isinstance(s, dict)}
        return {**stats, "batch_size": spec["batch_size"], "workers": spec["workers"], "n_workers": self.n_workers,
                "scheduler": self.info["scheduler"], "per_worker": per_worker,
                "cluster": {**self.cluster_info, "units": stats["units"]}}


def _run_units(c, writer, wstore: str, units, spec: dict, d: Dask, advance, paths) -> dict:
    """Submit one task per unfinished shard (with its images' paths); advance as they complete. Never
    raises mid-way: returns the first task error in "error" so the driver can record what was done."""
    from distributed import as_completed

    t = time.perf_counter()
    futures = {}
    for start, stop in units:
        k = writer.shard_index(start, stop)
        f = c.submit(run_shard, wstore, start, stop, {**spec, "paths": list(paths[start:stop])},
                     key=f"featx-shard-{k:06d}-{d.token}", pure=False,
                     retries=d.opts.retries, resources=d.resources)
        futures[f] = (k, start, stop)
    rows = skipped = several = done_units = already = 0
    error = None
    try:
        for f in as_completed(list(futures), loop=c.loop):
            k, start, stop = futures[f]
            if f.status != "finished":
                error = _task_error(k, f)
                break
            r = f.result()
            rows += r["rows"]
            skipped += r["skipped"]
            several += r.get("several_faces", 0)
            already += bool(r.get("already_done"))
            done_units += not r.get("already_done")
            advance(stop - start)
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            c.cancel(pending)
    return {"rows": rows, "skipped": skipped, "several_faces": several, "units": done_units, "units_already_done": already,
            "wall_s": time.perf_counter() - t, "error": error}


# --- features as dask arrays -----------------------------------------------------------------

def feature_array(store, flip: bool = False):
    """The store's features as a lazy float32 dask array [N, *dim], one block per stored chunk.

    Works on stores larger than memory, e.g. `feature_array(s)[idx].mean(axis=0).compute()`.
    `store` is a path, URL or an open featx.store.FeatureStore (which must be finished).
    """
    from ..store import FeatureStore

    fs = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    return fs.dask_array(flip)
