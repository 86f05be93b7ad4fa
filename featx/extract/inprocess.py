"""The in-process distributor: every unit in this process, one model, decode workers, one writer thread."""

from __future__ import annotations

import os

import torch

from ..device import describe_device
from ..store import StoreWriter
from .extractor import Extractor
from .options import ExtractOptions
from .units import check_extractor, run_units


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
