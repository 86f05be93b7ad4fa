"""The reader: manifest rows -> decoded, resized and cropped uint8 batches, in DataLoader workers.

Batches never straddle units (shards), so a resumed unit sees the very same batches. Each row also
carries a digest of its file's bytes, kept in the store: a later run notices a changed image.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .images import ImageError, open_rgb
from .releases import Preprocess


def file_digest(path: Path) -> str:
    """blake2b-128 of the file's bytes; "" when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
    except OSError:
        return ""


class ImageRows(Dataset):
    """Row i -> (i, uint8 [size, size, 3] resized and cropped, ok, reason, digest). Failures give zeros."""

    def __init__(self, root: str | Path, paths, preprocess: Preprocess):
        self.root, self.paths, self.preprocess = Path(root), list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.root / self.paths[i]
        digest = file_digest(path)
        try:
            img = self.preprocess.resize_crop(open_rgb(path))
            return i, torch.from_numpy(np.array(img, dtype=np.uint8)), True, "", digest
        except ImageError as e:
            reason = e.reason
        except Exception as e:  # a decoder bug must not stop a long run
            reason = f"{type(e).__name__}: {' '.join(str(e).split())}"
        s = self.preprocess.size
        return i, torch.zeros((s, s, 3), dtype=torch.uint8), False, reason, digest


def unit_batches(units: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Batches never straddle shards, so a resumed shard sees the very same batches."""
    return [list(range(a, min(a + batch_size, stop))) for start, stop in units
            for a in range(start, stop, batch_size)]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(rows: ImageRows, units, batch_size: int, workers: int, pin: bool) -> DataLoader:
    return DataLoader(rows, batch_sampler=unit_batches(units, batch_size), num_workers=workers,
                      pin_memory=pin, worker_init_fn=_worker_init if workers else None,
                      prefetch_factor=4 if workers else None)


def digests(root: str | Path, paths, rows) -> dict[int, str]:
    """File digests of `rows` (for checking a resumed store against the data given now)."""
    root = Path(root)
    return {int(i): file_digest(root / paths[i]) for i in rows}
