"""LuaTorch .t7 models (the original VGG_FACE.t7), parsed by the `torchfile` package.

torchfile is a plain binary parser (Lua functions are kept as bytes, never run). The model is an
nn.Sequential of SpatialConvolution(MM), ReLU, pooling, View/Reshape and Linear; modules carry no
names, so layers are named by order. A Linear after nn.View flattens C,H,W, as PyTorch does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FeatxError
from .common import Layer


def _typename(m) -> str:
    t = m.torch_typename()
    return t.decode("utf8", "replace") if isinstance(t, bytes) else str(t)


def _attr(m, key: str):
    """A module field, or None (torchfile turns an empty table into a list)."""
    obj = getattr(m, "_obj", None)
    return obj.get(key.encode()) if isinstance(obj, dict) else None


def read_layers(path: Path) -> list[Layer]:
    import torchfile

    try:
        model = torchfile.load(str(path))
    except Exception as e:  # the parser raises many kinds on a bad file
        raise FeatxError(f"cannot read {path.name} as a LuaTorch .t7 file: {type(e).__name__}: {e}") from None
    layers: list[Layer] = []

    def walk(m, depth: int = 0) -> None:
        if depth > 50:
            raise FeatxError(f"{path.name}: modules nested too deeply")
        if isinstance(m, list):
            for c in m:
                walk(c, depth + 1)
            return
        if not isinstance(m, torchfile.TorchObject):
            return
        t = _typename(m)
        mods = _attr(m, "modules")
        if isinstance(mods, list):  # a container
            walk(mods, depth + 1)
            return
        w, b = _attr(m, "weight"), _attr(m, "bias")
        if not isinstance(w, np.ndarray) or w.size == 0:
            return
        b = b if isinstance(b, np.ndarray) and b.size else None
        if "Convolution" in t:
            try:
                shape = tuple(int(_attr(m, k)) for k in ("nOutputPlane", "nInputPlane", "kH", "kW"))
            except TypeError:
                raise FeatxError(f"{path.name}: {t} lacks its plane or kernel sizes") from None
            if w.size != np.prod(shape):
                raise FeatxError(f"{path.name}: {t} weight has {w.size} values, expected {shape}")
            w = np.ascontiguousarray(w).reshape(shape)  # SpatialConvolutionMM stores [out, in*kh*kw]
        elif "Linear" in t:
            w = np.ascontiguousarray(w)
        else:
            raise FeatxError(f"{path.name}: unsupported weighted module {t}")
        layers.append(Layer(f"{t}#{len(layers)}", w, b))

    walk(model)
    if not layers:
        raise FeatxError(f"{path.name}: no convolution or linear layers found")
    return layers
