"""Backbone families, registered by the `arch` name that `Release.arch` refers to.

A family is one module in this package. It declares a `Family`: a builder (canonical state dict ->
eval-mode model), its taps as data (`TapInfo`, in the manner of timm's FeatureInfo) and its fine-tune
splits (prefix tap cached -> head-input tap; the stages between them train). It declares `FAMILY` and
its `RELEASES`; the modules named in `BUILTIN` are registered on first use (nothing registers on import).

A family's model runs as a chain of named stages; each stage's output is a tap:
    model.stage_names() -> ("pool1", ..., "pool5", "fc6", "fc7")   in forward order
    model.run_stage(name, x) -> tensor                              that stage alone
    model.stage_module(name) -> nn.Module                           its parameters (fine-tune)
Tap strings: a map tap alone ("pool4": the whole map), pooled ("pool5-gap", -max, -gapmax, -flat),
a vector tap ("fc7", "embedding"), or several joined with "+".
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..errors import FeatxError

POOLS = ("gap", "max", "gapmax", "flat")


@dataclass(frozen=True)
class TapInfo:
    """One place to read features: a stage's output."""

    name: str
    channels: int  # of the full-size release
    reduction: int  # input pixels per map cell; 0 for vectors
    layer: str  # the stage (module) that produces it
    kind: str = "map"  # "map" [C, H, W] or "vector" [D]
    requires: str | None = None  # "fc": only releases with those weights (Release.has_fc)


@dataclass(frozen=True)
class Family:
    arch: str
    build: Callable[[dict[str, torch.Tensor]], nn.Module]  # shapes follow the weights (tiny test models load)
    taps: tuple[TapInfo, ...]  # in forward order
    default_tap: str
    finetune: dict[str, str] = field(default_factory=dict)  # cached prefix tap -> head-input tap
    description: str = ""
    cpu_bf16: bool = True  # False: `auto` runs fp32 on CPUs without AMX (bf16 measured slower there)

    def tap(self, name: str) -> TapInfo:
        for t in self.taps:
            if t.name == name:
                return t
        raise FeatxError(f"{self.arch} has no tap {name!r}; taps: {', '.join(t.name for t in self.taps)}")

    def tap_names(self, has_fc: bool = True) -> tuple[str, ...]:
        """Every accepted tap string (pooled variants spelled out), for help and `weights list`."""
        out = []
        for t in self.taps:
            if t.requires == "fc" and not has_fc:
                continue
            out += [t.name] if t.kind == "vector" else [t.name] + [f"{t.name}-{p}" for p in POOLS]
        return tuple(out)


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    FAMILIES[family.arch] = family
    return family


BUILTIN = ("dlib_resnet", "facenet", "vgg16")  # the family modules, in this order
_loaded = False


def load_builtin() -> None:
    """Register the families of the modules in BUILTIN (each declares FAMILY and its RELEASES)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for name in BUILTIN:
            register_family(importlib.import_module(f"{__name__}.{name}").FAMILY)


def builtin_releases() -> tuple:
    """The releases the BUILTIN family modules declare, in order (featx.releases.RELEASES reads them)."""
    return tuple(r for name in BUILTIN for r in importlib.import_module(f"{__name__}.{name}").RELEASES)


def get_family(arch: str) -> Family:
    if arch not in FAMILIES:
        load_builtin()
    try:
        return FAMILIES[arch]
    except KeyError:
        raise FeatxError(f"unknown backbone family {arch!r}; known: {', '.join(families())}") from None


def families() -> tuple[str, ...]:
    load_builtin()
    return tuple(FAMILIES)


# --- taps -------------------------------------------------------------------------------------

def parse_tap(tap: str, arch: str = "vgg16", has_fc: bool = True) -> list[str]:
    """'pool4-gap+pool5-gap' -> ['pool4-gap', 'pool5-gap'], each part checked against the family."""
    fam = get_family(arch)
    parts = [p.strip() for p in str(tap).split("+") if p.strip()]
    if not parts:
        raise FeatxError(f"empty tap {tap!r}")
    names = {t.name: t for t in fam.taps}
    for p in parts:
        name, _, pool = p.partition("-")
        t = names.get(name)
        if t is None or (pool and (t.kind != "map" or pool not in POOLS)):
            raise FeatxError(f"unknown tap {p!r} for {arch}; use {', '.join(fam.tap_names(has_fc))}, "
                             "or join several with '+'")
        if t.requires == "fc" and not has_fc:
            raise FeatxError(f"this release has no tap {p!r} (no fc weights); use a conv tap")
        if not pool and t.kind == "map" and len(parts) > 1:
            raise FeatxError(f"full-map tap {p!r} cannot be combined with others")
    return parts


def stages_needed(parts: list[str]) -> set[str]:
    return {p.partition("-")[0] for p in parts}


def forward_taps(model: nn.Module, x: torch.Tensor, names: set[str], start: str | None = None) -> dict:
    """Run the model's stages (after `start`, whose output x is) until every stage in `names` ran."""
    out, need, running = {}, set(names), start is None
    for s in model.stage_names():
        if not running:
            running = s == start
            continue
        x = model.run_stage(s, x)
        if s in need:
            out[s] = x
            need.discard(s)
        if not need:
            break
    if need:
        raise FeatxError(f"the model has no stage {sorted(need)[0]!r} after {start!r}")
    return out


def pool(m: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "gap":
        return m.mean((2, 3))
    if kind == "max":
        return m.amax((2, 3))
    if kind == "gapmax":
        return torch.cat([m.mean((2, 3)), m.amax((2, 3))], 1)
    return m.flatten(1)  # flat, C,H,W order


def tap_features(model: nn.Module, x: torch.Tensor, tap: str | list[str], start: str | None = None) -> torch.Tensor:
    """Preprocessed images (or the output of stage `start`) -> features [B, D] (a bare map tap: [B, C, H, W])."""
    parts = tap if isinstance(tap, list) else [p for p in tap.split("+") if p]
    outs = forward_taps(model, x, stages_needed(parts), start)
    feats = []
    for p in parts:
        name, _, kind = p.partition("-")
        f = outs[name]
        feats.append(pool(f, kind) if kind else f)
    return torch.cat(feats, 1) if len(feats) > 1 else feats[0]


def tap_dim(model: nn.Module, tap: str, size: int, device=None) -> tuple[int, ...]:
    """Shape of one image's features for `tap` at input `size` (computed, not guessed)."""
    with torch.inference_mode():
        x = torch.zeros(1, 3, size, size, device=device)
        return tuple(tap_features(model, x, tap).shape[1:])


def deepest(model: nn.Module, parts: list[str]) -> str:
    """The last stage a tap needs."""
    order = list(model.stage_names())
    return max(stages_needed(parts), key=order.index)


def trainable_stages(model: nn.Module, start: str, upto: str) -> list[str]:
    """Stages after `start` up to and including `upto`: what a fine-tune from the `start` cache trains."""
    order = list(model.stage_names())
    if start not in order or upto not in order or order.index(upto) <= order.index(start):
        raise FeatxError(f"cannot fine-tune from {start!r} to {upto!r}")
    return order[order.index(start) + 1: order.index(upto) + 1]
