"""dlib's shape predictor (Kazemi & Sullivan 2014: a cascade of regression-tree forests), read and run
without dlib, in numpy, vectorised over the faces of an image.

The file is dlib's `serialize(shape_predictor)` (dlib/image_processing/shape_predictor.h), in the
encodings featx.importers.dlib_dat describes and reads for the ResNet (every value is a dlib integer; a
float is two of them):
  version 1; initial_shape (matrix<float,0,1>: -rows, -1, then the values x0 y0 x1 y1 ...);
  forests (one per cascade level, each a vector of trees; a tree: splits (idx1, idx2, thresh) in
  breadth-first order, then leaf_values (matrices of 2*parts floats)); anchor_idx (per level, per feature
  pixel: the initial-shape point it hangs on); deltas (per level, per feature pixel: x, y offsets).

Prediction, as dlib's shape_predictor::operator()(img, rect): the shape lives in the box's normalised
frame ((0,0) = the box's top-left corner, (1,1) its bottom-right, dlib's inclusive corners). At each level
the feature pixels are moved by the similarity transform from the initial shape to the current one,
mapped to the image, rounded to the nearest pixel (dlib's point conversion), and read as grey
((r + g + b) // 3 for RGB, dlib's get_pixel_intensity; 0 outside the image). Each tree compares two
feature pixels per node (f[idx1] - f[idx2] > thresh: left child) and adds its leaf to the shape, in
float32, tree after tree. The parts dlib returns are rounded to whole pixels; `rounded=False` keeps the
fractions.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FeatxError

MAX_PARTS = 1000
BIG = 1 << 20  # pixels: a bigger image is made grey only where the cascade reads it
# dlib's float exponents that stand for +inf, -inf, NaN (as featx.importers.dlib_dat reads them; that
# package imports torch, which this stage does not need)
SPECIAL_EXPONENTS = {32000: np.inf, 32001: -np.inf, 32002: np.nan}


def _token_starts(data: bytes) -> np.ndarray:
    """Offsets of the dlib integers that tile `data` (each: a control byte, then `ctrl & 15` bytes)."""
    step = data.translate(bytes((b & 15) + 1 for b in range(256)))
    n, pos, starts = len(data), 0, array("q")  # 8 bytes an entry, not a Python int's 36
    add = starts.append
    while pos < n:
        add(pos)
        pos += step[pos]
    return np.frombuffer(starts, np.int64) if starts else np.zeros(0, np.int64)


def decode_ints(data: bytes, what: str) -> np.ndarray:
    """The whole file as dlib integers (int64), vectorised after one pass over the control bytes."""
    starts = _token_starts(data)
    buf = np.frombuffer(data + bytes(9), np.uint8)
    ctrl = buf[starts]
    length = (ctrl & 15).astype(np.int64)
    bad = (length == 0) | (length > 8) | ((ctrl & 0x70) != 0)
    if bad.any() or (starts[-1] + 1 + length[-1] if len(starts) else 0) != len(data):
        at = int(starts[np.argmax(bad)]) if bad.any() else len(data)
        raise FeatxError(f"{what}: bad dlib integer at byte {at} (not a dlib shape_predictor file?)")
    windows = np.lib.stride_tricks.sliding_window_view(buf, 8)  # the 8 bytes after each control byte
    vals = np.ascontiguousarray(windows[starts + 1]).view("<u8").reshape(-1)
    full = length >= 8
    vals &= np.where(full, np.uint64(2**64 - 1),
                     (np.uint64(1) << (8 * np.where(full, 0, length)).astype(np.uint64)) - np.uint64(1))
    if (vals > np.uint64(2**63 - 1)).any():
        raise FeatxError(f"{what}: an integer over 63 bits (not a dlib shape_predictor file?)")
    out = vals.astype(np.int64)
    return np.where(ctrl & 0x80, -out, out)


def floats(pairs: np.ndarray) -> np.ndarray:
    """dlib floats from (mantissa, exponent) integer pairs -> float32."""
    mant, expo = pairs[0::2].astype(np.float64), pairs[1::2]
    special = (expo >= min(SPECIAL_EXPONENTS)) & (expo <= max(SPECIAL_EXPONENTS))
    out = np.ldexp(mant, np.where(special, 0, np.clip(expo, -1100, 1100)).astype(np.int64))
    for e, v in SPECIAL_EXPONENTS.items():
        out[expo == e] = v
    return out.astype(np.float32)


class _Cursor:
    """Walks the integer stream with the shape_predictor layout; any misfit is one FeatxError line."""

    def __init__(self, toks: np.ndarray, what: str):
        self.t, self.pos, self.what = toks, 0, what

    def fail(self, msg: str) -> FeatxError:
        return FeatxError(f"{self.what}: {msg} (not a dlib shape_predictor file)")

    def take(self, n: int) -> np.ndarray:
        if n < 0 or self.pos + n > len(self.t):
            raise self.fail("the file ends early")
        out = self.t[self.pos: self.pos + n]
        self.pos += n
        return out

    def count(self, limit: int, what: str) -> int:
        n = int(self.take(1)[0])
        if not 0 <= n <= limit:
            raise self.fail(f"{what} of {n}")
        return n

    def column(self, what: str) -> np.ndarray:
        """A matrix<float,0,1>: -rows, -1, then the values."""
        nr, nc = (int(v) for v in self.take(2))
        if nc != -1 or nr > 0:
            raise self.fail(f"{what} is a {-nr}x{-nc} matrix, expected a column")
        return floats(self.take(-2 * nr))


@dataclass(frozen=True)
class ShapeModel:
    """A shape predictor's arrays (L levels, T trees per level, S splits and S+1 leaves per tree,
    F feature pixels per level, P parts)."""

    initial: np.ndarray  # (P, 2) float32, normalised box frame
    idx1: np.ndarray  # (L, T, S) int64
    idx2: np.ndarray  # (L, T, S) int64
    thresh: np.ndarray  # (L, T, S) float32
    leaves: np.ndarray  # (L, T, S + 1, P, 2) float32
    anchor: np.ndarray  # (L, F) int64
    deltas: np.ndarray  # (L, F, 2) float32

    @property
    def parts(self) -> int:
        return self.initial.shape[0]

    @property
    def depth(self) -> int:
        return int(np.log2(self.leaves.shape[2]))


def _tree(c: _Cursor, parts: int) -> tuple[np.ndarray, np.ndarray]:
    n = c.count(1 << 20, "a tree with a split count")
    split = c.take(4 * n).reshape(n, 4)  # idx1, idx2, thresh (mantissa, exponent)
    if (split[:, :2] < 0).any():
        raise c.fail("a negative split index")
    n_leaves = c.count(1 << 21, "a tree with a leaf count")
    if n_leaves != n + 1 or n_leaves & (n_leaves - 1):
        raise c.fail(f"a tree with {n} splits and {n_leaves} leaves (dlib needs full trees)")
    leaves = c.take(n_leaves * (2 + 4 * parts)).reshape(n_leaves, 2 + 4 * parts)
    if (leaves[:, 0] != -2 * parts).any() or (leaves[:, 1] != -1).any():
        raise c.fail(f"a leaf that is not a column of {2 * parts}")
    return split, leaves[:, 2:]  # the leaves' floats, still as (mantissa, exponent) integers


def _forests(c: _Cursor, parts: int) -> tuple[np.ndarray, np.ndarray]:
    levels, splits, leaves = c.count(10_000, "a cascade of levels"), [], []
    for _ in range(levels):
        trees = [_tree(c, parts) for _ in range(c.count(1 << 20, "a level of trees"))]
        if not trees or len({t[0].shape[0] for t in trees}) != 1:
            raise c.fail("a level whose trees differ in depth (featx runs equal-depth trees)")
        splits.append(np.stack([t[0] for t in trees]))
        raw = np.stack([t[1] for t in trees])  # (trees, leaves, 4 * parts)
        leaves.append(floats(raw.reshape(-1)).reshape(raw.shape[0], raw.shape[1], parts, 2))
    if not levels or len({s.shape for s in splits}) != 1:
        raise c.fail("levels of different sizes (featx runs equal-size levels)")
    return np.stack(splits), np.stack(leaves)


def _encoding(c: _Cursor, levels: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
    if c.count(10_000, "anchor_idx of levels") != levels:
        raise c.fail("anchor_idx and forests disagree on the number of levels")
    anchor = [c.take(c.count(1 << 24, "a level of anchors")) for _ in range(levels)]
    if c.count(10_000, "deltas of levels") != levels:
        raise c.fail("deltas and forests disagree on the number of levels")
    deltas = [floats(c.take(4 * c.count(1 << 24, "a level of deltas"))).reshape(-1, 2) for _ in range(levels)]
    if len({len(a) for a in anchor} | {len(d) for d in deltas}) != 1:
        raise c.fail("levels with different numbers of feature pixels")
    anchor = np.stack(anchor)
    if anchor.min(initial=0) < 0 or anchor.max(initial=0) >= parts:
        raise c.fail("an anchor outside the shape")
    return anchor, np.stack(deltas)


def _check_start(head: bytes, what: str) -> None:
    """Tell another kind of file from its first bytes, before decoding all of it."""
    starts = _token_starts(head)[:3]
    toks = decode_ints(head[: int(starts[-1])], what) if len(starts) == 3 else []
    if len(toks) >= 2 and toks[0] == 1 and toks[1] > 0:  # a string after the version: a dlib network
        name = head[starts[2]: starts[2] + min(int(toks[1]), 40)].decode("latin-1")
        raise FeatxError(f"{what}: a dlib network ({name!r}), not a dlib shape_predictor file")
    if len(toks) < 2 or toks[0] != 1 or toks[1] >= 0:
        raise FeatxError(f"{what}: does not start as a dlib shape_predictor (version 1, initial shape)")


def read_shape_model(data: bytes, what: str) -> ShapeModel:
    """dlib's serialised shape_predictor -> its arrays; a file of another kind is one FeatxError line."""
    if len(data) < 8:
        raise FeatxError(f"{what}: {len(data)} bytes (not a dlib shape_predictor file)")
    _check_start(data[:64], what)
    c = _Cursor(decode_ints(data, what), what)
    if int(c.take(1)[0]) != 1:
        raise c.fail("no shape_predictor version 1 at the start")
    initial = c.column("the initial shape")
    if not 0 < len(initial) <= 2 * MAX_PARTS or len(initial) % 2:
        raise c.fail(f"an initial shape of {len(initial)} values")
    parts = len(initial) // 2
    split, leaves = _forests(c, parts)
    anchor, deltas = _encoding(c, split.shape[0], parts)
    if c.pos != len(c.t):
        raise c.fail(f"{len(c.t) - c.pos} values left after the last level")
    idx = split[..., :2]
    if idx.max(initial=0) >= anchor.shape[1]:
        raise c.fail("a split on a feature pixel the level does not have")
    thresh = floats(split[..., 2:].reshape(-1)).reshape(split.shape[:-1])
    return ShapeModel(initial.reshape(parts, 2), idx[..., 0].copy(), idx[..., 1].copy(), thresh,
                      leaves, anchor, deltas)


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (no reflection) taking src (P, 2) to each dst (n, P, 2), in float64:
    the same transform as dlib's find_similarity_transform (Umeyama), in closed form for 2-d.
    Returns M (n, 2, 2) and t (n, 2) with dst ~ src @ M.T + t."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(1)
    s, d = src - ms, dst - md[:, None]
    var = (s ** 2).sum()
    if var == 0:
        m = np.broadcast_to(np.eye(2), (len(dst), 2, 2)).copy()
    else:
        a = (s[None, :, 0] * d[..., 0] + s[None, :, 1] * d[..., 1]).sum(1) / var
        b = (s[None, :, 0] * d[..., 1] - s[None, :, 1] * d[..., 0]).sum(1) / var
        m = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], 1)
    return m, md - np.einsum("nij,j->ni", m, ms)


def check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise FeatxError(f"landmarks need an HxWx3 (or HxW) uint8 image, got {image.dtype} {image.shape}")
    return image


def grey(pixels: np.ndarray) -> np.ndarray:
    """dlib's intensity of RGB uint8 pixels (..., 3): (r + g + b) // 3, as float32."""
    return (pixels.astype(np.uint16).sum(-1) // 3).astype(np.float32)


def dlib_round(x: np.ndarray) -> np.ndarray:
    """dlib's float -> integer point conversion: floor(x + 0.5)."""
    return np.floor(np.asarray(x, np.float64) + 0.5)


def as_boxes(boxes) -> np.ndarray:
    """(n, 4) left, top, right, bottom, dlib's inclusive pixel corners, as whole pixels (dlib's
    drectangle -> rectangle conversion rounds half away from zero)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not np.isfinite(b).all():
        raise FeatxError("face boxes must be finite numbers")
    b = np.sign(b) * np.floor(np.abs(b) + 0.5)
    flat = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if flat.any():
        raise FeatxError(f"face box {b[flat][0].tolist()} has right <= left or bottom <= top")
    return b


class ShapePredictor:
    """`ShapePredictor.from_file(dat)(image, boxes)` -> (n, parts, 2) x, y image coordinates."""

    def __init__(self, model: ShapeModel):
        self.model = model

    @classmethod
    def from_file(cls, path: str | Path) -> "ShapePredictor":
        path = Path(path)
        if not path.is_file():
            raise FeatxError(f"{path}: no such shape predictor file")
        return cls(read_shape_model(path.read_bytes(), path.name))

    @property
    def parts(self) -> int:
        return self.model.parts

    def __call__(self, image: np.ndarray, boxes, rounded: bool = True) -> np.ndarray:
        """The faces in `boxes` (n, 4) of one image -> (n, parts, 2)."""
        return self.many([image], [boxes], rounded)[0]

    def many(self, images: list[np.ndarray], boxes: list, rounded: bool = True) -> list[np.ndarray]:
        """Faces of several images in one vectorised pass: boxes[i] (n_i, 4) are image i's faces."""
        if len(images) != len(boxes):
            raise FeatxError(f"{len(images)} images but {len(boxes)} lists of face boxes")
        images, box = [check_image(im) for im in images], [as_boxes(b) for b in boxes]
        counts = [len(b) for b in box]
        frames = Frames(images, counts)
        allbox = np.concatenate(box) if box else np.zeros((0, 4))
        shape = self.normalised(frames, allbox)
        scale = np.stack([allbox[:, 2] - allbox[:, 0], allbox[:, 3] - allbox[:, 1]], -1)[:, None]
        pts = allbox[:, None, :2] + shape.astype(np.float64) * scale
        return np.split(dlib_round(pts) if rounded else pts, np.cumsum(counts)[:-1])

    def normalised(self, frames: "Frames", box: np.ndarray) -> np.ndarray:
        """The cascade for whole-pixel boxes (n, 4), face i in frame i: (n, parts, 2) float32 in each box's
        normalised frame."""
        m, n = self.model, len(box)
        cur = np.broadcast_to(m.initial, (n, m.parts, 2)).astype(np.float32)
        if n == 0:
            return cur
        origin = box[:, None, :2]
        scale = np.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]], -1)[:, None]
        feat_base = np.arange(n)[:, None] * m.anchor.shape[1]
        trees, n_splits = m.idx1.shape[1], m.idx1.shape[2]
        tree_base = np.arange(trees)[None] * n_splits
        leaf_base = np.arange(trees)[None] * (n_splits + 1) - n_splits
        for level in range(m.idx1.shape[0]):
            tform = similarity(m.initial, cur)[0].astype(np.float32)
            dx, dy = m.deltas[level][None, :, 0], m.deltas[level][None, :, 1]
            moved = np.stack([tform[:, 0, :1] * dx + tform[:, 0, 1:] * dy,
                              tform[:, 1, :1] * dx + tform[:, 1, 1:] * dy], -1) + cur[:, m.anchor[level]]
            feats = frames.values(dlib_round(origin + moved.astype(np.float64) * scale)).reshape(-1)
            i1, i2, th = m.idx1[level].reshape(-1), m.idx2[level].reshape(-1), m.thresh[level].reshape(-1)
            node = np.zeros((n, trees), np.int64)
            for _ in range(m.depth):
                at = tree_base + node
                go_left = feats[feat_base + i1[at]] - feats[feat_base + i2[at]] > th[at]
                node = 2 * node + 2 - go_left
            leaf = m.leaves[level].reshape(-1, m.parts, 2)[leaf_base + node]  # (n, T, parts, 2)
            steps = np.concatenate([cur[:, None], leaf], 1)
            cur = np.cumsum(steps, axis=1, dtype=np.float32)[:, -1]  # dlib adds tree after tree, in float
        return cur


class Frames:
    """Where each face's feature pixels are read. Images up to BIG pixels are made grey whole and laid end to
    end (one gather serves all their faces); a bigger one is read only where sampled, so a 12-megapixel
    photo costs about what a small one does. counts[i]: how many faces (rows, in order) image i has."""

    def __init__(self, images: list[np.ndarray], counts: list[int]):
        first = np.cumsum([0] + list(counts))
        n = int(first[-1])
        self.start, self.h, self.w = (np.full(n, -1, np.int64) for _ in range(3))
        self.big, flat, offset = [], [], 0
        for img, lo, hi in zip(images, first[:-1], first[1:]):
            if hi == lo:
                continue
            if img.shape[0] * img.shape[1] > BIG:
                self.big.append((img, lo, hi))
                continue
            g = img if img.ndim == 2 else (img.astype(np.uint16).sum(2) // 3).astype(np.uint8)
            self.start[lo:hi], self.h[lo:hi], self.w[lo:hi] = offset, g.shape[0], g.shape[1]
            flat.append(g.reshape(-1))
            offset += g.size
        self.flat = np.concatenate(flat) if flat else np.zeros(0, np.uint8)
        self.small = np.flatnonzero(self.start >= 0)

    def values(self, pts: np.ndarray) -> np.ndarray:
        """Grey values at whole-pixel points (n, F, 2), face i's in its image, float32; 0 outside."""
        out = np.zeros(pts.shape[:-1], np.float32)
        if len(self.small):
            rows = self.small
            x, y, h, w = pts[rows, :, 0], pts[rows, :, 1], self.h[rows, None], self.w[rows, None]
            inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            at = np.where(inside, self.start[rows, None] + y * w + x, 0).astype(np.int64)
            out[self.small] = np.where(inside, self.flat[at], 0)
        for img, lo, hi in self.big:
            x, y = pts[lo:hi, :, 0], pts[lo:hi, :, 1]
            inside = (x >= 0) & (x < img.shape[1]) & (y >= 0) & (y < img.shape[0])
            px = img[y[inside].astype(np.int64), x[inside].astype(np.int64)]
            out[lo:hi][inside] = px.astype(np.float32) if img.ndim == 2 else grey(px)
        return out


def pixel_values(image: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Grey values of one image at whole-pixel points (F, 2) as float32; 0 outside the image (dlib's rule)."""
    return Frames([check_image(image)], [1]).values(np.asarray(pts)[None])[0]
