"""The writer thread: a bounded queue in front of the store; each shard is written (features, checksum,
then its done marker) once all its rows have arrived, while the next batches compute."""

from __future__ import annotations

import bisect
import queue
import threading

import numpy as np

from ..store import StoreWriter


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
