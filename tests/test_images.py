"""featx.images: every kind of odd or broken file becomes RGB or a per-file ImageError."""

from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from featx.errors import FeatxError
from featx.images import ImageError, check, open_rgb

from conftest import make_image


def jpeg_bytes(size: int = 32) -> bytes:
    import io

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_plain_jpeg(tmp_path):
    p = make_image(tmp_path / "a.jpg", seed=1)
    img = open_rgb(p)
    assert img.mode == "RGB" and img.size == (32, 32)
    assert check(p) is None


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("noise.jpg", np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes(), "not an image"),
        ("notes.jpg", b"just some text, not a picture\n" * 10, "not an image"),
        ("notes.txt", b"hello\n", "not an image"),
        ("cut.jpg", jpeg_bytes()[: len(jpeg_bytes()) // 2], "truncated"),
    ],
)
def test_broken_files_give_reason(tmp_path, name, content, reason):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ImageError) as e:
        open_rgb(p)
    assert reason in e.value.reason
    assert e.value.path == str(p) and "\n" not in str(e.value)
    assert isinstance(e.value, FeatxError)
    assert reason in check(p)


def test_missing_file_and_folder(tmp_path):
    assert "not found" in check(tmp_path / "nope.jpg")
    assert "not a file" in check(tmp_path)


def test_truncated_jpeg_header_intact_is_caught(tmp_path):
    # cut only the last few bytes: the header parses, so only a full decode notices
    data = jpeg_bytes(64)
    p = tmp_path / "tail.jpg"
    p.write_bytes(data[:-200])
    with Image.open(p) as lazy:
        assert lazy.size == (64, 64)  # PIL's lazy open does not notice
    assert check(p) is not None


def test_png_header_claiming_huge_size(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_claiming(100_000, 100_000))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="too large"):
            open_rgb(p)
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]


@pytest.mark.parametrize("limit", [100, 600])  # 32x32 = 1024 px: over 2x the limit (PIL error) and 1-2x (PIL warning)
def test_pixel_limit_raises_without_warning(tmp_path, monkeypatch, limit):
    p = make_image(tmp_path / "a.jpg", seed=0)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="too large"):
            open_rgb(p)
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert open_rgb(p).size == (32, 32)


def test_cmyk_to_rgb(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    img = open_rgb(p)
    assert img.mode == "RGB"
    r, g, b = np.asarray(img)[8, 8]
    assert r > 200 and g < 60 and b < 60


def test_palette_and_grayscale(tmp_path):
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    assert tuple(np.asarray(open_rgb(tmp_path / "pal.png"))[0, 0]) == (0, 200, 0)

    Image.new("L", (16, 16), 77).save(tmp_path / "gray.png")
    img = open_rgb(tmp_path / "gray.png")
    assert img.mode == "RGB" and tuple(np.asarray(img)[3, 3]) == (77, 77, 77)

    Image.new("1", (16, 16), 1).save(tmp_path / "bw.png")
    assert tuple(np.asarray(open_rgb(tmp_path / "bw.png"))[0, 0]) == (255, 255, 255)


def test_16bit_grayscale_is_scaled(tmp_path):
    a = np.full((8, 8), 65535, dtype=np.uint16)
    a[0, 0] = 0
    Image.fromarray(a).save(tmp_path / "g16.png")
    px = np.asarray(open_rgb(tmp_path / "g16.png"))
    assert tuple(px[1, 1]) == (255, 255, 255) and tuple(px[0, 0]) == (0, 0, 0)


def test_alpha_composited_on_white(tmp_path):
    a = np.zeros((8, 8, 4), dtype=np.uint8)
    a[..., 0] = 255  # red
    a[:4, :, 3] = 255  # top half opaque, bottom fully transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    px = np.asarray(open_rgb(tmp_path / "rgba.png"))
    assert tuple(px[0, 0]) == (255, 0, 0)
    assert tuple(px[7, 0]) == (255, 255, 255)

    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([10, 20, 30] * 256)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "ptrans.png", transparency=0)
    assert tuple(np.asarray(open_rgb(tmp_path / "ptrans.png"))[0, 0]) == (255, 255, 255)


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    a[:, :20] = (255, 0, 0)  # left half red
    a[:, 20:] = (0, 0, 255)  # right half blue
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    p = tmp_path / "rot.jpg"
    img.save(p, quality=95, exif=exif.tobytes())
    out = open_rgb(p)
    assert out.size == (20, 40)  # now tall
    px = np.asarray(out).astype(int)
    assert px[2, 10, 0] > 200 and px[2, 10, 2] < 60  # top is the old left (red)
    assert px[37, 10, 2] > 200 and px[37, 10, 0] < 60  # bottom is the old right (blue)


def test_no_file_left_open_after_error(tmp_path):
    import gc

    p = tmp_path / "noise.jpg"
    p.write_bytes(b"\xff\xd8\xff" + b"\0" * 100)
    gc.collect()  # earlier tests' garbage must not count here
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(3):
            assert check(p) is not None
        gc.collect()
    assert not [w for w in seen if issubclass(w.category, ResourceWarning) and "noise.jpg" in str(w.message)]
