"""Running units (whole shards): decode, extract, write. What both distributors call."""

from __future__ import annotations

import contextlib
import time
from typing import Callable

from ..errors import FeatxError
from ..reader import ImageRows, make_loader
from ..store import StoreWriter, image_paths
from .extractor import Extractor
from .sink import ShardSink


def run_units(writer: StoreWriter, extractor: Extractor, units: list[tuple[int, int]], *, paths,
              batch_size: int = 32, workers: int = 0, on_rows: Callable[[int], None] | None = None) -> dict:
    """Compute and write the given whole shards; `paths[row]` is the image of each store row (absolute).
    Returns {"rows", "skipped", "wall_s", "peak_shard_buffers"}."""
    t0 = time.perf_counter()
    if not units:
        return {"rows": 0, "skipped": 0, "wall_s": 0.0, "peak_shard_buffers": 0}
    for start, stop in units:
        writer.shard_index(start, stop)  # only whole shards: one writer per shard
    rows_ds = ImageRows("/", paths, extractor.preprocess, extractor.face_step)
    batches = iter(make_loader(rows_ds, units, batch_size, workers, pin=extractor.device.type == "cuda"))
    sink = ShardSink(writer, units)  # started after the decode workers exist
    rows_done = skipped = several = 0
    try:
        for rows, x, ok, reasons, digs in batches:
            feats, flips = extractor(x, pad_to=batch_size)
            ok = ok.numpy().astype(bool)
            if not ok.all():
                feats[~ok] = 0
                if flips is not None:
                    flips[~ok] = 0
                skipped += int((~ok).sum())
            several += sum(1 for k, r in zip(ok, reasons) if k and r)  # the face stage's "N faces" notes
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
    return {"rows": rows_done, "skipped": skipped, "several_faces": several, "wall_s": time.perf_counter() - t0,
            "peak_shard_buffers": sink.peak_buffers}


def run_unit(store, start: int, stop: int, *, extractor: Extractor, paths=None,
             batch_size: int = 32, workers: int = 0) -> dict:
    """One shard, start to marker: what a dask task calls. Never run two on the same shard.
    `paths`: the shard's images (absolute, one per row); default: where the store last saw them."""
    writer = store if isinstance(store, StoreWriter) else StoreWriter.open(store)
    check_extractor(writer, extractor)
    full = image_paths(writer)
    if paths is not None:
        full[start:stop] = list(paths)
    return run_units(writer, extractor, [(start, stop)], paths=full, batch_size=batch_size, workers=workers)


def check_precision(writer: StoreWriter, precision: str) -> None:
    """Refuse to add features of another precision to a store (explicit choices only: "auto" passes)."""
    from ..quantize import check_no_mixing

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
           "preprocess": info["preprocess"], "precision": info["precision"], "dim": list(info["dim"]),
           "faces": info.get("faces")}
    if isinstance(ex, Extractor):
        got.update(dtype=ex.dtype, flip=ex.flip)
    for k, v in got.items():
        want = a.get(k)
        if (list(want) if isinstance(want, (list, tuple)) else want) != (list(v) if isinstance(v, tuple) else v):
            if k == "precision":
                check_precision(writer, v)
            raise FeatxError(f"store {writer.name} was made with {k} {want!r}, not {v!r}")
