"""The weights cache: canonical safetensors files plus a JSON provenance record each.

Layout: <weights dir>/<release>.safetensors and <release>.json.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from .backbone import VGG16, from_state_dict
from .errors import FeatxError
from .releases import Release, get_release


def weights_dir() -> Path:
    """$FEATX_WEIGHTS, else $FEATX_HOME/weights, else ./cache/weights."""
    if os.environ.get("FEATX_WEIGHTS"):
        return Path(os.environ["FEATX_WEIGHTS"])
    return Path(os.environ.get("FEATX_HOME", "cache")) / "weights"


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def load_canonical_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a canonical safetensors file (never a pickle)."""
    path = Path(path)
    if not path.is_file():
        raise FeatxError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types
        raise FeatxError(f"cannot read weights {path}: {e}") from None


def load_backbone(backbone: str, weights: str | Path | None = None) -> tuple[Release, VGG16, str]:
    """Release name (+ optional canonical weights file) -> (release, eval-mode model, weights sha256)."""
    release = get_release(backbone)
    path = Path(weights) if weights else weights_dir() / release.filename
    if not path.is_file():
        raise FeatxError(
            f"no weights for {release.name} at {path}; run `featx weights get {release.name}` "
            f"or `featx weights import {release.name} --from FILE`"
        )
    sd = load_canonical_file(path)
    return release, from_state_dict(sd), sha256_file(path)
