"""PyTorch state dicts: torchvision VGG16 (features.N / classifier.N) and pytorch-mcn vgg_face_dag (conv1_1 ...).

Loaded with torch.load(weights_only=True): tensors and plain containers only, never arbitrary pickles.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from ..backbones.vgg16 import CONV_NAMES
from ..errors import FeatxError
from .common import Layer

# torchvision vgg16: index in `features` of each conv, and the two usable classifier layers.
TORCHVISION_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TORCHVISION_FC = {"classifier.0": "fc6", "classifier.3": "fc7"}


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise FeatxError(
            f"{path.name} holds Python objects, not just tensors; featx never unpickles them "
            "(save a plain state dict with torch.save(model.state_dict(), ...))"
        ) from None
    except Exception as e:
        raise FeatxError(f"cannot read {path.name} as a PyTorch file: {str(e).splitlines()[0]}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FeatxError(f"{path.name} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def layout(sd: dict[str, torch.Tensor]) -> str:
    """'torchvision' (features.0.weight ...) or 'mcn-pth' (conv1_1.weight ...)."""
    if "features.0.weight" in sd:
        return "torchvision"
    if "conv1_1.weight" in sd:
        return "mcn-pth"
    some = ", ".join(list(sd)[:4])
    raise FeatxError(f"unrecognised state dict layout (keys {some} ...); expected torchvision or conv1_1-style keys")


def layers_from_state_dict(sd: dict[str, torch.Tensor]) -> tuple[list[Layer], str]:
    kind = layout(sd)
    if kind == "torchvision":
        pairs = [(f"features.{i}", name) for i, name in zip(TORCHVISION_CONVS, CONV_NAMES)]
        pairs += list(TORCHVISION_FC.items())
    else:
        prefixes = sorted({k.rsplit(".", 1)[0] for k in sd if k.endswith(".weight")}, key=_natural)
        pairs = [(p, p) for p in prefixes]
    layers = []
    for prefix, name in pairs:
        w = sd.get(f"{prefix}.weight")
        if w is None:
            continue
        b = sd.get(f"{prefix}.bias")
        layers.append(Layer(name, w.float().numpy(), None if b is None else b.float().numpy()))
    return layers, kind


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
