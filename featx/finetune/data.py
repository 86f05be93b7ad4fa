"""Batches for a fine-tune: cached prefix maps streamed from a feature store, augmented on the maps.

Training rows are read in shuffled blocks of whole store chunks (memory stays at one block) through
the store's public `features(rows, flip=...)`. Augmentations of cached maps cost nothing extra:
  flip   - mirror the map left-right (an approximation of the mirrored photo's map);
  mirror - use the maps of the mirrored photos, cached next to the others (the prefix costs 2x);
  shift  - pad the map by `shift` cells and crop back at a random offset (a translation).
`pixels` instead reads the photos every epoch and runs the prefix again on randomly mirrored and
shifted pixels: exact, but each epoch then costs a full forward pass of the frozen prefix too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FeatxError

AUGMENTS = ("flip", "mirror", "shift", "pixels")
PIXEL_SHIFT = 1 / 16  # pixel-mode translation, as a fraction of the input size


def parse_augment(augment: str | None) -> tuple[str, ...]:
    """'flip,shift' -> ('flip', 'shift'); none/'' -> ()."""
    parts = tuple(sorted({p.strip() for p in str(augment or "").replace("+", ",").split(",")
                          if p.strip() and p.strip() != "none"}))
    bad = [p for p in parts if p not in AUGMENTS]
    if bad:
        raise FeatxError(f"--augment {bad[0]!r} is not supported; use none or a comma list of {', '.join(AUGMENTS)}")
    return parts


def epoch_rows(train_idx: np.ndarray, labels: np.ndarray, balance: str, rng: np.random.Generator) -> np.ndarray:
    """The rows of one epoch: all train rows, plus (balance="sample") random repeats of the smaller
    classes up to the largest class's count."""
    if balance != "sample":
        return train_idx
    y = labels[train_idx]
    classes, counts = np.unique(y, return_counts=True)
    extra = [rng.choice(train_idx[y == c], counts.max() - n, replace=True) for c, n in zip(classes, counts)]
    return np.concatenate([train_idx, *extra])


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """n / (k * count_c): each class weighs as much in the loss as the others."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return torch.tensor(counts.sum() / (n_classes * np.maximum(counts, 1)), dtype=torch.float32)


def row_blocks(store, rows: np.ndarray, block_rows: int, rng: np.random.Generator | None):
    """Yield groups of rows that share whole store chunks, about `block_rows` rows each.

    Without rng (evaluation): consecutive chunks, rows in order. With rng (training): the chunks are
    shuffled and a block takes the next ones in that order, its rows shuffled again. Shuffling whole
    blocks of consecutive rows instead was not enough: manifests are often sorted (UTKFace's file names
    start with age and gender), so a block of 512 neighbours held one class and the head swung to it
    from block to block (val accuracy fell 8 points while AUC held)."""
    cr = int(store.attrs["rows_per_chunk"])
    per_block = max(1, block_rows // cr)  # chunks a block holds
    rows = np.sort(np.asarray(rows, np.int64), kind="stable")
    chunk = rows // cr
    if rng is None:
        key = chunk // per_block
    else:
        ids = np.unique(chunk)
        rank = np.empty(len(ids), np.int64)
        rank[rng.permutation(len(ids))] = np.arange(len(ids))
        pos = rank[np.searchsorted(ids, chunk)]  # each row's chunk's place in the shuffled order
        order = np.argsort(pos, kind="stable")
        rows, key = rows[order], pos[order] // per_block
    groups = np.split(rows, np.flatnonzero(np.diff(key)) + 1) if rows.size else []
    for g in groups:
        yield rng.permutation(g) if rng is not None else g


def stream_blocks(store, rows: np.ndarray, block_rows: int, rng: np.random.Generator | None,
                  mirror: bool = False):
    """Yield (rows, maps float32 [k, C, H, W]) per block; with mirror and rng each row takes its
    mirrored photo's maps with probability 1/2."""
    for g in row_blocks(store, rows, block_rows, rng):
        x = store.features(g)
        if mirror and rng is not None:
            use = rng.random(len(g)) < 0.5
            if use.any():
                x[use] = store.features(g[use], flip=True)
        yield g, x


def augment_maps(x: torch.Tensor, flip: bool, shift: int, rng: np.random.Generator) -> torch.Tensor:
    """Random left-right flips and translations by up to `shift` cells (zero padding) of a batch of maps."""
    b, _, h, w = x.shape
    if flip:
        use = torch.from_numpy(rng.random(b) < 0.5)
        x = torch.where(use.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
    if shift > 0:
        d = rng.integers(0, 2 * shift + 1, (b, 2))
        xp = F.pad(x, (shift, shift, shift, shift))
        out = torch.empty_like(x)
        for dy, dx in {(int(a), int(c)) for a, c in d}:  # one copy per offset, not per map (64x faster)
            m = torch.from_numpy((d[:, 0] == dy) & (d[:, 1] == dx)).to(x.device)
            out[m] = xp[m, :, dy:dy + h, dx:dx + w]
        x = out
    return x


@dataclass
class MapBatches:
    """Training or evaluation batches from the prefix store."""

    store: object
    batch_size: int
    block_rows: int = 512
    augment: tuple[str, ...] = ()
    shift: int = 1

    def __call__(self, rows: np.ndarray, rng: np.random.Generator | None):
        train = rng is not None
        mirror = train and "mirror" in self.augment
        for g, x in stream_blocks(self.store, rows, self.block_rows, rng, mirror):
            for b in range(0, len(g), self.batch_size):
                xb = torch.from_numpy(x[b:b + self.batch_size])
                if train:
                    xb = augment_maps(xb, "flip" in self.augment,
                                      self.shift if "shift" in self.augment else 0, rng)
                yield g[b:b + self.batch_size], xb


class PixelRows(torch.utils.data.Dataset):
    """(row, flip, dy, dx) -> the preprocessed photo, mirrored and translated (reflect padding)."""

    def __init__(self, root: Path, paths, preprocess):
        self.root, self.paths, self.preprocess = Path(root), paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        from ..images import open_rgb

        row, flip, dy, dx = item
        x = self.preprocess(open_rgb(self.root / self.paths[row]))
        if flip:
            x = x.flip(2)
        s = int(self.preprocess.size * PIXEL_SHIFT)
        if s:
            h, w = x.shape[1:]
            x = F.pad(x[None], (s, s, s, s), mode="reflect")[0][:, s + dy:s + dy + h, s + dx:s + dx + w]
        return row, x


@dataclass
class PixelBatches:
    """Training batches from the photos: the frozen prefix runs again on augmented pixels (full-forward cost)."""

    store: object
    net: torch.nn.Module  # TuneNet; its base model runs the prefix
    prefix: str
    preprocess: object  # the release's Preprocess
    batch_size: int
    workers: int = 0
    amp: torch.dtype | None = None

    def __call__(self, rows: np.ndarray, rng: np.random.Generator | None):
        from ..backbones import forward_taps

        ds = PixelRows(self.store.root, list(self.store.paths), self.preprocess)
        s = int(self.preprocess.size * PIXEL_SHIFT)
        order = rng.permutation(rows)
        flips, d = rng.random(len(order)) < 0.5, rng.integers(-s, s + 1, (len(order), 2))
        items = [(int(r), bool(f), int(a), int(b)) for r, f, (a, b) in zip(order, flips, d)]
        batches = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=self.workers)
        dev = next(self.net.parameters()).device
        for r, x in loader:
            with torch.no_grad(), torch.autocast(dev.type, dtype=self.amp, enabled=self.amp is not None):
                m = forward_taps(self.net.base, x.to(dev), {self.prefix})[self.prefix]
            yield r.numpy(), m.float()
