"""The reader: manifest rows -> decoded, resized and cropped uint8 batches, in DataLoader workers.

Batches never straddle units (shards), so a resumed unit sees the very same batches. Each row also
carries a digest of its file's bytes, kept in the store: a later run notices a changed image.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
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
    """Row i -> (i, uint8 [size, size, 3] resized and cropped, ok, reason, digest). Failures give zeros.
    `faces` (the face stage, featx.faces.stage.FaceStage) maps a batch of photos to their largest faces'
    chips, each (chip, note) or (None, reason): the note (several faces) is kept as the row's reason."""

    def __init__(self, root: str | Path, paths, preprocess: Preprocess,
                 faces: Callable[[list[Image.Image]], list[tuple[Image.Image | None, str]]] | None = None):
        self.root, self.paths, self.preprocess, self.faces = Path(root), list(paths), preprocess, faces

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, rows: list[int]) -> list[tuple]:
        """A batch of rows (DataLoader calls this once per batch): decoded, then the face stage batched."""
        opened = [self._open(int(i)) for i in rows]
        photos = [img for img, _ in opened if img is not None]
        cut = iter(self._faces(photos)) if self.faces is not None and photos else None
        out = []
        for i, (img, reason) in zip(rows, opened):
            note = ""
            if img is not None and cut is not None:
                img, note = next(cut)
            if img is None:
                out.append(self._failed(int(i), note or reason))
            else:
                out.append(self._row(int(i), img, note))
        return out

    def _open(self, i: int) -> tuple[Image.Image | None, str]:
        try:
            return open_rgb(self.root / self.paths[i]), ""
        except ImageError as e:
            return None, e.reason
        except Exception as e:  # a decoder bug must not stop a long run
            return None, why(e)

    def _faces(self, photos: list[Image.Image]) -> list[tuple[Image.Image | None, str]]:
        try:
            return self.faces(photos)
        except Exception as e:  # the stage failing on a batch fails its rows, not the run
            return [(None, f"face stage: {why(e)}")] * len(photos)

    def _row(self, i: int, img: Image.Image, note: str) -> tuple:
        try:
            img = self.preprocess.resize_crop(img)
        except Exception as e:
            return self._failed(i, why(e))
        digest = file_digest(self.root / self.paths[i])
        return i, torch.from_numpy(np.array(img, dtype=np.uint8)), True, note, digest

    def _failed(self, i: int, reason: str) -> tuple:
        s = self.preprocess.size
        return i, torch.zeros((s, s, 3), dtype=torch.uint8), False, reason, file_digest(self.root / self.paths[i])


def why(e: BaseException) -> str:
    return e.reason if isinstance(e, ImageError) else f"{type(e).__name__}: {' '.join(str(e).split())}"


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
