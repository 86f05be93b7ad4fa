"""CPU int8 (featx.quantize) on a tiny random VGG: close to fp32, deterministic, rebuildable, never mixed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featx import quantize
from featx.backbones.vgg16 import from_state_dict
from featx.errors import FeatxError

from conftest import tiny_state_dict

if quantize.int8_unavailable():  # tests/skip_allowlist.txt: only a CPU that cannot run int8 may skip here
    pytest.skip(quantize.int8_unavailable(), allow_module_level=True)

SIZE = 64
CAFFE_BGR = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)


def photos(n: int, seed: int) -> torch.Tensor:
    """Photo-like inputs, preprocessed as the runner does (BGR, 0..255, Caffe mean): smooth blobs plus noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 8, 8, generator=g) * 255
    x = torch.nn.functional.interpolate(base, size=SIZE, mode="bilinear", align_corners=False)
    x = (x + 20 * torch.randn(n, 3, SIZE, SIZE, generator=g)).clamp(0, 255)
    return (x - CAFFE_BGR).contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def tiny():
    return from_state_dict(tiny_state_dict(seed=3))


@pytest.fixture(scope="module")
def calib():
    return [photos(16, seed=s) for s in range(4)]


@pytest.fixture(scope="module")
def q8(tiny, calib):
    return quantize.quantize_int8(tiny, calib, "pool4-gap+pool5-gap", quantize.Int8Options(batch_size=8))


def fp32(model, x, tap="pool4-gap+pool5-gap"):
    from featx.backbones import tap_features

    with torch.inference_mode():
        return tap_features(model, x, tap)


def test_int8_features_close_to_fp32_per_row(tiny, q8):
    x = photos(20, seed=99)  # not calibration images; 20 is not a multiple of the batch of 8
    got, want = q8(x), fp32(tiny, x)
    assert got.shape == want.shape == (20, 32) and got.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(got, want, dim=1)
    assert cos.min().item() >= 0.99
    assert not torch.equal(got, want)  # it really ran int8 kernels, not the float model
    assert q8.info["calibration_images"] == 64 and q8.info["lowering"] == "x86-eager"


def test_any_batch_size_gives_the_same_rows(q8):
    x = photos(11, seed=5)
    whole = q8(x)
    pieces = torch.cat([q8(x[:1]), q8(x[1:9]), q8(x[9:])])  # padded, exact, padded
    torch.testing.assert_close(whole, pieces, rtol=0, atol=0)


def test_deterministic_given_the_calibration_set(tiny, calib, q8):
    again = quantize.quantize_int8(tiny, calib, "pool4-gap+pool5-gap", quantize.Int8Options(batch_size=8))
    assert again.fingerprint() == q8.fingerprint()
    x = photos(8, seed=7)
    torch.testing.assert_close(again(x), q8(x), rtol=0, atol=0)
    other = quantize.quantize_int8(tiny, [photos(16, seed=50)], "pool4-gap+pool5-gap",
                                   quantize.Int8Options(batch_size=8))
    assert other.fingerprint() != q8.fingerprint()  # another calibration set, another int8 model


def test_rebuilt_from_recorded_qparams_is_identical(tiny, q8):
    import json

    rec = json.loads(json.dumps(q8.record()))  # as a store's JSON attrs would keep it
    assert rec["precision"] == "int8" and rec["fingerprint"] == q8.fingerprint()
    rebuilt = quantize.from_qparams(tiny, rec["qparams"], rec["tap"], tuple(rec["input_shape"]),
                                    quantize.Int8Options(batch_size=8))
    assert rebuilt.fingerprint() == q8.fingerprint()
    x = photos(8, seed=8)
    torch.testing.assert_close(rebuilt(x), q8(x), rtol=0, atol=0)
    with pytest.raises(FeatxError, match="another model or tap"):
        quantize.from_qparams(tiny, rec["qparams"][:-2], rec["tap"], tuple(rec["input_shape"]))
    resumed = quantize.int8_model(tiny, rec["tap"], record=rec, options=quantize.Int8Options(batch_size=8))
    assert resumed.fingerprint() == q8.fingerprint() and resumed.info["calibration_images"] == 64
    with pytest.raises(FeatxError, match="for tap"):
        quantize.int8_model(tiny, "pool5-gap", record=rec)
    rec["qparams"][0][0] *= 2
    with pytest.raises(FeatxError, match="does not match"):
        quantize.int8_model(tiny, rec["tap"], record=rec)


def test_map_tap_and_empty_calibration(tiny):
    q = quantize.quantize_int8(tiny, [photos(4, seed=1)], "pool3", quantize.Int8Options(batch_size=4))
    x = photos(3, seed=2)
    got, want = q(x), fp32(tiny, x, "pool3")
    assert got.shape == want.shape == (3, 8, 8, 8)
    assert torch.nn.functional.cosine_similarity(got.flatten(1), want.flatten(1)).min() >= 0.99
    with pytest.raises(FeatxError, match="at least one image"):
        quantize.quantize_int8(tiny, [], "pool5-gap")


def test_calibration_rows_are_fixed_and_spread():
    a = quantize.calibration_rows(10_000, 256, seed=0)
    assert len(a) == 256 and len(set(a.tolist())) == 256 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, quantize.calibration_rows(10_000, 256, seed=0))
    assert a.min() < 500 and a.max() > 9_500  # the whole set, not its first rows
    np.testing.assert_array_equal(quantize.calibration_rows(5, 256), np.arange(5))
    with pytest.raises(FeatxError):
        quantize.calibration_rows(0)


def test_int8_is_its_own_release_variant_and_never_mixes():
    assert quantize.variant_release("vgg16.hed", "int8") == "vgg16.hed+int8"
    assert quantize.variant_release("vgg16.hed+int8", "int8") == "vgg16.hed+int8"
    assert quantize.variant_release("vgg16.hed", "bf16") == "vgg16.hed"
    assert quantize.base_release("vgg16.hed+int8") == "vgg16.hed"
    quantize.check_no_mixing("s.zarr", None, "int8")
    quantize.check_no_mixing("s.zarr", "int8", "int8")
    quantize.check_no_mixing("s.zarr", "bf16", "fp32")  # float precisions: the runner's own policy
    for have, want in (("fp32", "int8"), ("int8", "bf16"), ("int8", "fp32")):
        with pytest.raises(FeatxError, match="never mix"):
            quantize.check_no_mixing("s.zarr", have, want)


# --- through the runner ---------------------------------------------------------------------

def test_runner_int8_store_is_close_to_fp32_and_never_mixes(csv_dataset, tiny_weights, tmp_path):
    import zarr

    from featx.extract import extract

    kw = dict(weights=tiny_weights, device="cpu", dtype="float32", workers=0, progress=False, rows_per_shard=8)
    extract(csv_dataset, "vgg16.hed", tmp_path / "f32.zarr", precision="fp32", **kw)
    extract(csv_dataset, "vgg16.hed", tmp_path / "i8.zarr", precision="int8", **kw)
    a = zarr.open_group(str(tmp_path / "f32.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "i8.zarr"), mode="r")
    assert b.attrs["identity"]["release"] == "vgg16.hed+int8"
    fa, fb = a["features"][:].astype(np.float64), b["features"][:].astype(np.float64)
    cos = (fa * fb).sum(1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))
    assert cos.min() >= 0.99
    with pytest.raises(FeatxError):  # int8 rows into a float store
        extract(csv_dataset, "vgg16.hed", tmp_path / "f32.zarr", precision="int8", **kw)
    for p in ("fp32", "bf16", "auto"):  # float rows into an int8 store, "auto" included
        with pytest.raises(FeatxError):
            extract(csv_dataset, "vgg16.hed", tmp_path / "i8.zarr", precision=p, **kw)
