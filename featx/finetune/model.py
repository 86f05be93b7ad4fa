"""The network a fine-tune trains: the family's stages after the cached prefix tap, then a head.

Generic over the backbone registry: it runs `model.run_stage(name, x)` for the trainable stages
(from `featx.backbones.trainable_stages`) and trains their `model.stage_module(name)` parameters.
The head reads the head-input tap either flattened (C*H*W, "mlp" and "linear" heads: spatial layout
matters on aligned faces) or global-average-pooled (C, the "gap" head), standardised by a fixed
per-channel mean and scale measured on a training sample before training.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..backbones import pool

HEADS = {"mlp": "flat", "linear": "flat", "gap": "gap"}  # head -> how the head-input map is pooled


class TuneNet(nn.Module):
    """Trainable stages of a copy of the base model + standardisation + (dropout, [hidden], linear)."""

    def __init__(self, base: nn.Module, stages: list[str], head: str, n_classes: int,
                 hidden: int, dropout: float, sample: torch.Tensor):
        super().__init__()
        self.base = copy.deepcopy(base).float().requires_grad_(False)
        self.stages, self.pool_kind = list(stages), HEADS[head]
        for s in self.stages:
            self.base.stage_module(s).requires_grad_(True)
        with torch.no_grad():
            d = self.features(sample[:1].float()).shape[1]
        sizes = [hidden] if head == "mlp" else []
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        for h in sizes:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, n_classes))
        self.head = nn.Sequential(*layers)
        self.hidden = sizes
        n_in = self.head[1].in_features
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("scale", torch.ones(n_in))
        self.fit_scale(sample)

    def train(self, mode: bool = True) -> "TuneNet":
        """Only the trainable stages and the head change mode; the frozen rest stays in eval."""
        super().train(mode)
        self.base.eval()
        for s in self.stages:
            self.base.stage_module(s).train(mode)
        return self

    def stage_params(self, name: str) -> list[nn.Parameter]:
        return list(self.base.stage_module(name).parameters())

    def head_map(self, x: torch.Tensor) -> torch.Tensor:
        """Prefix-tap maps -> the head-input tap's maps."""
        for s in self.stages:
            x = self.base.run_stage(s, x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.head_map(x)
        return (m if m.ndim == 2 else pool(m, self.pool_kind)).float()  # a vector tap goes in as it is

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """Prefix-tap maps -> the standardised vector the head reads."""
        return (self.features(x) - self.mean) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_input(x))

    @torch.no_grad()
    def fit_scale(self, maps: torch.Tensor) -> None:
        """Per-channel mean/std of the head-input map over a sample, repeated over its grid when flat."""
        was = self.training
        self.eval()
        m = self.head_map(maps.float()).float()
        self.train(was)
        self.vector = m.ndim == 2
        dims = (0,) if self.vector else (0, 2, 3)
        mean, std = m.mean(dims), m.std(dims) if len(m) > 1 else torch.ones(m.shape[1])
        # channels silent in the sample (a quarter of VGG conv5_3's on UTKFace) must not blow up
        # when they do fire: floor their scale at the median channel's
        std = std.clamp_min(max(float(std.median()), 1e-6))
        hw = m.shape[2] * m.shape[3] if self.pool_kind == "flat" and not self.vector else 1
        self.mean.copy_(mean.repeat_interleave(hw))
        self.scale.copy_(std.repeat_interleave(hw))

    def head_tap(self, tap: str) -> str:
        """The featx tap string of the head's input, e.g. "pool5-flat" (a vector tap: its bare name)."""
        return tap if self.vector else f"{tap}-{self.pool_kind}"

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.head if isinstance(m, nn.Linear)]
