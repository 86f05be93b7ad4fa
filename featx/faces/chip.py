"""The chip a face release was trained on, cut from a photo: dlib's aligned 5-point chip, or a box chip.

`Chip` states a release's chip as data (a small frozen value, kept next to its Preprocess):
  Chip("dlib5", size, padding)  dlib's get_face_chip_details + extract_image_chip: the similarity
      transform that best takes dlib's 5-point reference template (eye corners and the base of the nose,
      in a unit square widened by `padding` on every side) onto the face's 5 landmarks gives the chip's
      rectangle and angle; the chip is resampled upright. dlib.resnet: Chip("dlib5", 150, padding=0.25)
      (what dlib's compute_face_descriptor(img, face) cuts; dlib_face_recognition_resnet_model_v1 was
      trained on such chips).
  Chip("box", size, margin)  a detector box (dlib's inclusive corners left, top, right, bottom) grown by
      `margin` times its side (half on each side), squared about its centre on the longer side, resampled
      to size x size, unrotated; outside the photo is black (facenet's crop clips to the photo and
      stretches instead). facenet.casia: Chip("box", 160, margin=0.32) (davidsandberg/facenet aligns its
      evaluation sets with MTCNN boxes plus 32 source pixels (16 a side), resized to 160; MTCNN's boxes in
      LFW's 250x250 frames are about 100 px, so about 0.32 of the box); VGG16 releases:
      Chip("box", 224, margin=0.3) (VGGFace2's "bounding box extended by a factor of 0.3 to include the
      whole head"). A detector whose boxes are tighter or looser than MTCNN's needs its own margin; these
      are starting values, to be calibrated.

Resampling is dlib's (dlib/image_transforms/interpolation.h, extract_image_chips), so chips equal
dlib.get_face_chip's within one grey level: when the chip is much smaller than its rectangle, a
pyramid_down<2> pyramid (5x5 [1 4 6 4 1] filter, integer, every other pixel) of the region around the
rotated rectangle is built first and the chip is read from the level whose rectangle still holds at
least the chip's pixels; then bilinear interpolation in float64, truncated to uint8, black where the
four neighbours leave the region. An unrotated chip of exactly its rectangle's size is a plain copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FeatxError
from ..releases import Chip
from .landmarks import similarity

# dlib's get_face_chip_details: the 5-point model's parts in a unit chip (before padding)
TEMPLATE5 = np.array([[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
                      [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
                      [0.4901123135679, 0.6277975316475]])




@dataclass(frozen=True)
class ChipDetails:
    """dlib's chip_details: a rectangle (left, top, right, bottom, inclusive, fractional) in the photo,
    the angle (radians) it is rotated by about its centre, and the chip's rows and columns."""

    rect: tuple[float, float, float, float]
    angle: float
    rows: int
    cols: int


def face_chip_details(shape5, size: int = 150, padding: float = 0.25) -> ChipDetails:
    """dlib's get_face_chip_details for one face's 5 points (5, 2) (dlib's whole-pixel parts)."""
    pts = np.asarray(shape5, np.float64)
    if pts.shape != (5, 2):
        raise FeatxError(f"a dlib5 chip needs 5 landmarks (x, y), got an array of shape {pts.shape}")
    src = (padding + TEMPLATE5) / (2 * padding + 1) * size
    m, t = similarity(src, pts[None])
    m, t = m[0], t[0]
    angle = float(np.arctan2(m[1, 0], m[0, 0]))
    scale = float(np.sqrt(m[0, 0] ** 2 + m[1, 0] ** 2))
    cx, cy = m @ np.array([size / 2.0, size / 2.0]) + t
    half = (size * scale - 1) / 2  # dlib's centered_drect: width and height size * scale, inclusive
    return ChipDetails((cx - half, cy - half, cx + half, cy + half), angle, size, size)


def box_chip_details(box, size: int, margin: float) -> ChipDetails:
    """A box (left, top, right, bottom, inclusive) grown by margin x its side, squared on its longer side."""
    l, t, r, b = (float(v) for v in np.asarray(box, np.float64).reshape(4))
    w, h = r - l + 1, b - t + 1
    if not (w > 0 and h > 0):
        raise FeatxError(f"face box {[l, t, r, b]} is empty")
    side = max(w, h) * (1 + margin)
    cx, cy = (l + r) / 2, (t + b) / 2
    half = (side - 1) / 2
    return ChipDetails((cx - half, cy - half, cx + half, cy + half), 0.0, size, size)


def lround(x: float) -> int:
    """C's lround: half away from zero (dlib's drectangle -> rectangle)."""
    return int(np.sign(x) * np.floor(abs(x) + 0.5))


def _area(r) -> float:
    l, t, rr, b = r
    return 0.0 if (t > b or l > rr) else (rr - l + 1) * (b - t + 1)


def _rect_down(r):
    """pyramid_down<2>::rect_down: each corner p -> p / 2 - (1.25, 0.75)."""
    l, t, rr, b = r
    return (l / 2 - 1.25, t / 2 - 0.75, rr / 2 - 1.25, b / 2 - 0.75)


def _rotated_corners(r, angle: float) -> np.ndarray:
    """tl, tr, bl, br of r rotated by angle about its centre (dlib's rotate_point), (4, 2)."""
    l, t, rr, b = r
    c = np.array([(l + rr) / 2, (t + b) / 2])
    cos, sin = np.cos(angle), np.sin(angle)
    p = np.array([[l, t], [rr, t], [l, b], [rr, b]]) - c
    return np.stack([cos * p[:, 0] - sin * p[:, 1], sin * p[:, 0] + cos * p[:, 1]], -1) + c


def pyramid_down(img: np.ndarray) -> np.ndarray:
    """dlib's pyramid_down<2> on an HxWxC uint8 image: [1 4 6 4 1] x [1 4 6 4 1] / 256 (floored), at
    every other pixel, ((H - 3) // 2, (W - 3) // 2) out; empty when a side is 8 or less."""
    h, w = img.shape[:2]
    if h <= 8 or w <= 8:
        return np.zeros((0, 0) + img.shape[2:], np.uint8)
    ho, wo = (h - 3) // 2, (w - 3) // 2
    a = img.astype(np.uint16)  # dlib sums in uint16 too: at most 16 * 16 * 255 = 65280
    return (_taps(_taps(a, wo, 1), ho, 0) >> 8).astype(np.uint8)


def _taps(x: np.ndarray, n: int, axis: int) -> np.ndarray:
    """1 4 6 4 1 along `axis`, at n positions two apart (dlib's pyramid filter, one direction)."""
    x = np.moveaxis(x, axis, 0)
    p = [x[j: j + 2 * n: 2] for j in range(5)]
    out = p[0] + p[4]
    out += 4 * (p[1] + p[3])
    out += 6 * p[2]
    return np.moveaxis(out, 0, axis)


def bilinear(src: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dlib's interpolate_bilinear at (x, y) arrays: float64 blend truncated to uint8; 0 where the four
    neighbours are not all inside `src`."""
    h, w = src.shape[:2]
    left, top = np.floor(x), np.floor(y)
    ok = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
    if not ok.any():  # also every src smaller than 2x2
        return np.zeros(x.shape + src.shape[2:], np.uint8)
    at = np.where(ok, top * w + left, 0).astype(np.int64)
    planes = np.ascontiguousarray(np.moveaxis(src.reshape(h * w, -1), 1, 0))  # (channels, h * w)
    lr, tb = x - left, y - top
    ml, mt = 1 - lr, 1 - tb

    def near(step):  # at + step stays inside src: where not ok, at is 0 and src is at least 2x2
        return np.take(planes, at + step, axis=1).astype(np.float64)

    tl, tr, bl, br = near(0), near(1), near(w), near(w + 1)
    v = mt * (ml * tl + lr * tr) + tb * (ml * bl + lr * br)  # dlib's order of operations, in double
    out = np.moveaxis(np.where(ok, v, 0).astype(np.uint8), 0, -1)
    return out.reshape(x.shape + src.shape[2:])


def _plain_copy(img: np.ndarray, d: ChipDetails) -> np.ndarray:
    """dlib's basic_extract_image_chip: the rounded rectangle copied, black outside the photo."""
    l, t, r, b = (lround(v) for v in d.rect)
    out = np.zeros((b - t + 1, r - l + 1) + img.shape[2:], np.uint8)
    h, w = img.shape[:2]
    y0, y1, x0, x1 = max(t, 0), min(b, h - 1), max(l, 0), min(r, w - 1)
    if y0 <= y1 and x0 <= x1:
        out[y0 - t: y1 - t + 1, x0 - l: x1 - l + 1] = img[y0: y1 + 1, x0: x1 + 1]
    return out


def _region(img: np.ndarray, d: ChipDetails) -> tuple[np.ndarray, tuple[int, int]]:
    """The part of the photo dlib reads a chip from (its rotated rectangle grown by the pyramid's border),
    and that part's top-left corner."""
    rect, grow = _rect_down(d.rect), 2.0
    while _area(rect) > d.rows * d.cols:
        rect, grow = _rect_down(rect), grow * 2 + 2
    corners = _rotated_corners(d.rect, d.angle)
    (l, t), (r, b) = corners.min(0) - grow, corners.max(0) + grow
    h, w = img.shape[:2]
    l, t, r, b = lround(max(l, 0)), lround(max(t, 0)), lround(min(r, w - 1)), lround(min(b, h - 1))
    if l > r or t > b:
        return img[:0, :0], (0, 0)
    return img[t: b + 1, l: r + 1], (l, t)


def extract_chip(image: np.ndarray, d: ChipDetails) -> np.ndarray:
    """dlib's extract_image_chip (bilinear, with its pyramid) of an HxWx3 or HxW uint8 photo."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise FeatxError(f"chips are cut from HxWx3 (or HxW) uint8 images, got {img.dtype} {img.shape}")
    if d.rows < 2 or d.cols < 2:
        raise FeatxError(f"a chip of {d.rows}x{d.cols} pixels: at least 2x2")
    l, t, r, b = d.rect
    if d.angle == 0 and d.rows == b - t + 1 and d.cols == r - l + 1:
        return _plain_copy(img, d)
    src, (ox, oy) = _region(img, d)
    rect = (l - ox, t - oy, r - ox, b - oy)
    while _area(_rect_down(rect)) > d.rows * d.cols:
        rect, src = _rect_down(rect), pyramid_down(src)
    tl, tr, bl, _ = _rotated_corners(rect, d.angle)
    ex, ey = (tr - tl) / (d.cols - 1), (bl - tl) / (d.rows - 1)  # chip's x and y steps in `src`
    cols, rows = np.meshgrid(np.arange(d.cols, dtype=np.float64), np.arange(d.rows, dtype=np.float64))
    x = ex[0] * cols + ey[0] * rows + tl[0]
    y = ex[1] * cols + ey[1] * rows + tl[1]
    return bilinear(src, x, y)


def cut(image: np.ndarray, chip: Chip, shape5=None, box=None) -> np.ndarray:
    """A release's chip of one face: dlib5 chips need the face's 5 landmarks, box chips its box."""
    if chip.kind == "dlib5":
        if shape5 is None:
            raise FeatxError("a dlib5 chip needs the face's 5 landmarks")
        return extract_chip(image, face_chip_details(shape5, chip.size, chip.padding))
    if box is None:
        raise FeatxError("a box chip needs the face's box")
    return extract_chip(image, box_chip_details(box, chip.size, chip.margin))
