"""Decode one image file to RGB, safely: every failure is an ImageError with a one-line reason.

EXIF orientation is applied; grayscale, palette, CMYK, 16-bit and alpha images become RGB
(alpha composited on white). Images over PIL's pixel limit (Image.MAX_IMAGE_PIXELS, read at
call time) raise ImageError instead of PIL's DecompressionBombWarning.
"""

from __future__ import annotations

import os
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import FeatxError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)

# warnings.catch_warnings is process-global; serialise our (header-only) opens around it.
_open_lock = threading.Lock()


class ImageError(FeatxError):
    """An image that cannot be used; `path` and `reason` are kept separately for per-file reports."""

    def __init__(self, path: str | Path, reason: str | None = None):
        if reason is None:  # ImageError("message") also works
            path, reason = "", str(path)
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _too_big(path: Path, size: tuple[int, int], limit: int | None) -> None:
    if limit is not None and size[0] * size[1] > limit:
        raise ImageError(
            path, f"too large: {size[0]}x{size[1]} pixels exceeds the limit of {limit} (possible decompression bomb)"
        )


def _open_header(f, path: Path) -> Image.Image:
    """Image.open (reads the header only) with PIL's bomb warning turned into ImageError."""
    with _open_lock, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(f)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise ImageError(path, f"too large: {_one_line(e)}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("I", "F") or mode.startswith("I;16"):
        a = np.asarray(img, dtype=np.float64)
        if mode == "F":
            a = a * 255.0 if a.size and a.max() <= 1.0 else a
        elif a.size and a.max() > 255:
            a = a / 257.0  # 16-bit range
        img = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "L")
        mode = "L"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Fully decode `path` to an RGB PIL image with EXIF orientation applied; ImageError on any failure."""
    path = Path(path)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except OSError as e:
        raise ImageError(path, f"cannot read: {_one_line(e)}") from None
    if not path.is_file():
        raise ImageError(path, "not a file")
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with open(path, "rb") as f:
            img = _open_header(f, path)
            _too_big(path, img.size, limit)
            img.load()  # decode everything now so truncation is caught here
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(path, f"too large: {_one_line(e)}") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, struct.error, IndexError, TypeError) as e:
        msg = _one_line(e)
        kind = "truncated" if "truncated" in msg.lower() else "corrupt"
        raise ImageError(path, f"{kind}: {msg}") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF: keep the pixels as stored
        pass
    try:
        return _to_rgb(img)
    except Exception as e:
        raise ImageError(path, f"cannot convert {img.mode} to RGB: {_one_line(e)}") from None


def check(path: str | Path) -> str | None:
    """The reason `path` cannot be used as an image, or None when it decodes."""
    try:
        open_rgb(path)
    except ImageError as e:
        return e.reason
    return None
