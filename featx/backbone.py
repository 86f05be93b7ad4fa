"""VGG16 conv base with named layers (conv1_1 ... conv5_3, fc6, fc7) and feature taps.

Canonical state dict keys: "conv1_1.weight" [out, in, 3, 3], "conv1_1.bias", ...,
"fc6.weight" [4096, C*7*7] flattened in PyTorch C,H,W order, "fc6.bias", "fc7.weight", "fc7.bias".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FeatxError

BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))  # (block, number of convs)
CONV_NAMES = tuple(f"conv{b}_{i}" for b, n in BLOCKS for i in range(1, n + 1))
VGG16_WIDTHS = (64, 128, 256, 512, 512)

TAP_KINDS = {"gap", "max", "gapmax", "flat"}


class VGG16(nn.Module):
    """VGG16 conv base; `widths` and `fc_dim` shrink it for tests."""

    def __init__(self, widths=VGG16_WIDTHS, fc: bool = False, fc_dim: int = 4096):
        super().__init__()
        self.widths, self.fc_dim = tuple(widths), fc_dim
        c_in = 3
        for (b, n), w in zip(BLOCKS, self.widths):
            for i in range(1, n + 1):
                self.add_module(f"conv{b}_{i}", nn.Conv2d(c_in, w, 3, padding=1))
                c_in = w
        self.has_fc = fc
        if fc:
            self.fc6 = nn.Linear(c_in * 7 * 7, fc_dim)
            self.fc7 = nn.Linear(fc_dim, fc_dim)

    def block(self, b: int, x: torch.Tensor) -> torch.Tensor:
        """Run conv block b (1..5) including its max pool."""
        for i in range(1, BLOCKS[b - 1][1] + 1):
            x = F.relu(getattr(self, f"conv{b}_{i}")(x))
        return F.max_pool2d(x, 2, 2)

    def maps(self, x: torch.Tensor, upto: int = 5, start: int = 1) -> dict[str, torch.Tensor]:
        """Pool maps {"pool{b}": tensor} for blocks start..upto; x is the input of block `start`."""
        out = {}
        for b in range(start, upto + 1):
            x = self.block(b, x)
            out[f"pool{b}"] = x
        return out

    def fc(self, pool5: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.has_fc:
            raise FeatxError("this release has no fc6/fc7 weights; use a pool tap")
        x = F.adaptive_avg_pool2d(pool5, 7).flatten(1)
        fc6 = F.relu(self.fc6(x))
        return {"fc6": fc6, "fc7": F.relu(self.fc7(fc6))}

    def load_canonical(self, sd: dict[str, torch.Tensor], strict_fc: bool = False) -> None:
        """Load a canonical state dict; fc weights are loaded when the model has fc layers."""
        want = {k for k in self.state_dict()}
        missing = sorted(want - set(sd))
        if missing:
            raise FeatxError(f"weights lack {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        own = self.state_dict()
        for k in want:
            if tuple(sd[k].shape) != tuple(own[k].shape):
                raise FeatxError(f"weights {k} has shape {tuple(sd[k].shape)}, expected {tuple(own[k].shape)}")
        self.load_state_dict({k: sd[k] for k in want})


def from_state_dict(sd: dict[str, torch.Tensor], fc: bool | None = None) -> VGG16:
    """Build a VGG16 whose widths follow the weights (so tiny test models load too)."""
    widths = tuple(sd[f"conv{b}_1.weight"].shape[0] for b, _ in BLOCKS)
    has_fc = "fc6.weight" in sd and "fc7.weight" in sd
    fc = has_fc if fc is None else (fc and has_fc)
    fc_dim = sd["fc6.weight"].shape[0] if fc else 4096
    m = VGG16(widths, fc=fc, fc_dim=fc_dim)
    m.load_canonical(sd)
    return m.eval()


def parse_tap(tap: str) -> list[str]:
    """'pool4-gap+pool5-gap' -> ['pool4-gap', 'pool5-gap'], each part validated."""
    parts = [p.strip() for p in tap.split("+") if p.strip()]
    if not parts:
        raise FeatxError(f"empty tap {tap!r}")
    for p in parts:
        if p in ("fc6", "fc7", "pool4", "pool5"):
            continue
        pool, _, kind = p.partition("-")
        if pool not in ("pool4", "pool5") or kind not in TAP_KINDS:
            raise FeatxError(
                f"unknown tap {p!r}; use pool4|pool5 with -gap|-max|-gapmax|-flat, fc6, fc7, "
                "or join several with '+'"
            )
    return parts


def tap_deepest(tap: str) -> int:
    """The last conv block a tap needs (4 or 5)."""
    return max(4 if p.startswith("pool4") else 5 for p in parse_tap(tap))


def _pool_feature(m: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "gap":
        return m.mean((2, 3))
    if kind == "max":
        return m.amax((2, 3))
    if kind == "gapmax":
        return torch.cat([m.mean((2, 3)), m.amax((2, 3))], 1)
    return m.flatten(1)  # flat, C,H,W order


def tap_features(model: VGG16, x: torch.Tensor, tap: str) -> torch.Tensor:
    """Images (already preprocessed) -> features [B, D] for `tap`.

    A bare 'pool4' or 'pool5' tap returns the full maps [B, C, H, W] (the fine-tune cache).
    """
    parts = parse_tap(tap)
    maps = model.maps(x, upto=tap_deepest(tap))
    outs = []
    for p in parts:
        if p in ("fc6", "fc7"):
            outs.append(model.fc(maps["pool5"])[p])
        elif p in ("pool4", "pool5"):
            if len(parts) > 1:
                raise FeatxError(f"full-map tap {p!r} cannot be combined with others")
            return maps[p]
        else:
            pool, _, kind = p.partition("-")
            outs.append(_pool_feature(maps[pool], kind))
    return torch.cat(outs, 1) if len(outs) > 1 else outs[0]


def tap_dim(model: VGG16, tap: str, size: int = 224) -> tuple[int, ...]:
    """Shape of one image's features for `tap` at input `size` (computed, not guessed)."""
    with torch.inference_mode():
        return tuple(tap_features(model, torch.zeros(1, 3, size, size), tap).shape[1:])
