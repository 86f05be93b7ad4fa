"""`featx extract` and `featx store repair` from Python: a distributor chosen, the runner started.

    extract(data, "vgg16.hed", "cache/features/utk.zarr", tap="pool5-gap")
    extract(data, "vgg16.hed", "s3://b/utk.zarr", ExtractOptions(cluster="local:4"))
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import FeatxError
from ..store import StoreWriter, verify, writer_lock
from .inprocess import InProcess
from .options import ExtractOptions, options
from .runner import Distributor, run


def distributor(opts: ExtractOptions, client=None) -> Distributor:
    """In this process, unless a cluster, a scheduler or a client is given."""
    if client is None and not opts.distributed:
        return InProcess(opts)
    from .dask import Dask

    return Dask(opts, client)


def extract(data, backbone: str, store, opts: ExtractOptions | None = None, *, client=None, **kw) -> dict:
    """Extract features of every image in `data` into `store`; idempotent, resumable, refuses mixing.

    data: anything featx.data.load accepts, or a Manifest. Options: an ExtractOptions and/or its fields as
    keywords (tap=, weights=, batch_size=, device=, precision=, cluster=, scheduler=, ...).
    client: a distributed.Client to run on. Returns a summary dict (see `featx.extract.record.summary_line`).
    """
    opts = options(opts, **kw)
    if opts.distributed and client is None and str(store).startswith("memory://"):
        raise FeatxError("a memory:// store lives in one process; give the cluster a path, file:// or s3:// URL")
    return run(data, backbone, store, opts, distributor(opts, client))


def extract_on_cluster(data, backbone: str, store, *, client=None, **kw) -> dict:
    """`extract` on dask.distributed (cluster="local:N", scheduler="tcp://HOST:PORT" or a
    distributed.Client); with none of the three it runs in this process. Same store, same summary."""
    return extract(data, backbone, store, client=client, **kw)


def repair(store, data, opts: ExtractOptions | None = None, **kw) -> dict:
    """Recompute only the shards of `store` that do not verify (or whose images changed), from `data`.

    The store's own release, weights, tap, dtype, flip and precision are used; `opts` may add
    runtime settings (device, batch size, workers, cluster)."""
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
