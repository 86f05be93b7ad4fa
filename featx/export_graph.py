"""featx's prediction path as one torch module: uint8 RGB chips -> preprocessing -> base -> taps -> heads.

It is what `featx export` hands to torch's ONNX exporter. Each piece follows the featx code it
mirrors: `Normalise` is Extractor.normalize, the taps are featx.backbones.forward_taps + pool (at full
precision, as predict computes them), each head module computes its kind's `_proba` (in float64, as
featx's numpy heads do; the MLP in float32 as mlp_forward does), and mirror averaging is predict's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .backbones import forward_taps, pool, stages_needed
from .errors import FeatxError
from .releases import Preprocess


def const(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64, copy=True))


class Normalise(nn.Module):
    """uint8 [B, H, W, 3] RGB -> float32 [B, 3, H, W], exactly as featx's Extractor.normalize."""

    def __init__(self, p: Preprocess):
        super().__init__()
        self.bgr, self.per_image = p.channels == "BGR", p.norm == "per-image"
        self.factor = float(p.scale / 255.0)
        self.floor = 1.0 / float(3 * p.size * p.size) ** 0.5
        self.register_buffer("mean", torch.tensor(p.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(p.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x_u8: torch.Tensor) -> torch.Tensor:
        x = x_u8.permute(0, 3, 1, 2).float()
        if self.bgr:
            x = x.flip(1)
        x = x * self.factor
        if self.per_image:
            mean = x.mean((1, 2, 3), keepdim=True)
            std = ((x - mean) ** 2).mean((1, 2, 3), keepdim=True).sqrt()
            return (x - mean) / std.clamp_min(self.floor)
        return (x - self.mean) / self.std


class Standardise(nn.Module):
    def __init__(self, mean, scale):
        super().__init__()
        self.register_buffer("mean", const(mean))
        self.register_buffer("scale", const(scale))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return (f.double() - self.mean) / self.scale


def two_columns(p1: torch.Tensor) -> torch.Tensor:
    return torch.stack([1.0 - p1, p1], 1)


def ovr_normalise(p: torch.Tensor) -> torch.Tensor:
    s = p.sum(1, keepdim=True)
    return p / torch.where(s == 0, torch.ones_like(s), s)


class Linear(nn.Module):
    """Z @ coef.T + intercept."""

    def __init__(self, coef, intercept):
        super().__init__()
        self.register_buffer("coef_t", const(np.asarray(coef).T))
        self.register_buffer("intercept", const(intercept))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.coef_t + self.intercept


class RBF(nn.Module):
    """sum_i dual[c, i] exp(-gamma |z - sv_i|^2) + intercept[c], as featx.heads.rbf.rbf_decision."""

    def __init__(self, sv, dual, intercept, gamma: float):
        super().__init__()
        sv = np.asarray(sv, np.float64)
        self.register_buffer("sv_t", const(sv.T))
        self.register_buffer("sv_sq", const(np.einsum("ij,ij->i", sv, sv)))
        self.register_buffer("dual_t", const(np.asarray(dual).T))
        self.register_buffer("intercept", const(intercept))
        self.gamma = float(gamma)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        d = (z * z).sum(1, keepdim=True) + self.sv_sq - 2.0 * (z @ self.sv_t)
        return torch.exp(-self.gamma * d.clamp_min(0.0)) @ self.dual_t + self.intercept


class Proba(nn.Module):
    """Decision values -> class probabilities. link: logistic (sigmoid for one column, else softmax),
    ovr (sigmoid per column, rows normalised) or platt (P = sigmoid(-(a f + b)), then as ovr)."""

    def __init__(self, decision: nn.Module, link: str, platt_a=None, platt_b=None):
        super().__init__()
        self.decision, self.link = decision, link
        if link == "platt":
            self.register_buffer("a", const(platt_a))
            self.register_buffer("b", const(platt_b))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        f = self.decision(z)
        if self.link == "platt":
            f = -(f * self.a + self.b)
        if f.shape[1] == 1:
            return two_columns(torch.sigmoid(f[:, 0]))
        return torch.softmax(f, 1) if self.link == "logistic" else ovr_normalise(torch.sigmoid(f))


class MLP(nn.Module):
    """float32 layers with ReLU between them, softmax in float64 (featx.heads.mlp.mlp_forward)."""

    def __init__(self, weights: list[np.ndarray]):
        super().__init__()
        self.n = len(weights) // 2
        for k in range(self.n):
            self.register_buffer(f"w{k}", torch.from_numpy(np.array(weights[2 * k], np.float32).T.copy()))
            self.register_buffer(f"b{k}", torch.from_numpy(np.array(weights[2 * k + 1], np.float32)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z.float()
        for k in range(self.n):
            h = h @ getattr(self, f"w{k}") + getattr(self, f"b{k}")
            if k < self.n - 1:
                h = torch.relu(h)
        return torch.softmax(h.double(), 1)


def logreg(h) -> nn.Module:
    return Proba(Linear(h.coef_, h.intercept_), "logistic")


def linear_svm(h) -> nn.Module:
    return Proba(Linear(h.coef_, h.intercept_), "platt", h.platt_a_, h.platt_b_)


def rbf_svm(h) -> nn.Module:
    return Proba(RBF(h.support_vectors_, h.dual_coef_, h.intercept_, h.gamma_), "platt", h.platt_a_, h.platt_b_)


def mlp(h) -> nn.Module:
    return MLP(list(h.weights_))


def sgd(h) -> nn.Module:
    return Proba(Linear(h.coef_, h.intercept_), "ovr")


class Value(nn.Module):
    """Standardised model output -> the target's units: inverse transform of t * scale + mean, clipped to
    the training targets' range (featx.heads.regression.RegressionHead._to_units)."""

    def __init__(self, model: nn.Module, h):
        super().__init__()
        self.model, self.log1p = model, h.transform_ == "log1p"
        self.mean, self.scale = float(h.target_mean_), float(h.target_scale_)
        self.lo, self.hi = (float(v) for v in h.target_range_)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        t = self.model(z)[:, 0] * self.scale + self.mean
        return (torch.expm1(t) if self.log1p else t).clamp(self.lo, self.hi)


class Raw(nn.Module):
    """The MLP's last layer (float32 layers), as float64: featx.heads.mlp.mlp_outputs."""

    def __init__(self, weights: list[np.ndarray]):
        super().__init__()
        self.mlp = MLP(weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z.float()
        for k in range(self.mlp.n):
            h = h @ getattr(self.mlp, f"w{k}") + getattr(self.mlp, f"b{k}")
            if k < self.mlp.n - 1:
                h = torch.relu(h)
        return h.double()


def ridge(h) -> nn.Module:  # ridge and sgd-regress: Z @ coef + intercept
    return Value(Linear(np.asarray(h.coef_)[None, :], [h.intercept_]), h)


def rbf_ridge(h) -> nn.Module:
    return Value(RBF(h.landmarks_, np.asarray(h.dual_coef_)[None, :], [h.intercept_], h.gamma_), h)


def mlp_regress(h) -> nn.Module:
    return Value(Raw(list(h.weights_)), h)


# head kind -> standardised features (float64) -> probabilities [B, K] (classifiers) or values [B] (regressors)
HEAD_MODULES = {"logreg": logreg, "linear-svm": linear_svm, "rbf-svm": rbf_svm, "mlp": mlp, "sgd": sgd,
                "ridge": ridge, "sgd-regress": ridge, "rbf-ridge": rbf_ridge, "mlp-regress": mlp_regress}


def head_module(head) -> nn.Module:
    build = HEAD_MODULES.get(head.kind)
    if build is None:
        raise FeatxError(f"head kind {head.kind!r} has no ONNX form; exportable kinds: {', '.join(HEAD_MODULES)}")
    return nn.Sequential(Standardise(head.scaler_.mean, head.scaler_.scale), build(head))


@dataclass
class HeadPart:
    """One head of the graph: its tap parts (e.g. ["pool4-gap", "pool5-gap"]) and module; `mirror`: the
    head was trained with mirrored-image features and answers with the mean over the photo and its mirror."""

    parts: list[str]
    mirror: bool
    module: nn.Module


class Pipeline(nn.Module):
    """Chips in, one output per head: the base runs once for all heads (on the photos and their mirror
    images together when a head averages both)."""

    def __init__(self, base: nn.Module, preprocess: Preprocess, heads: list[HeadPart]):
        super().__init__()
        self.normalise, self.base = Normalise(preprocess), base.eval().requires_grad_(False)
        self.parts = [h.parts for h in heads]
        self.mirrors = [h.mirror for h in heads]
        self.heads = nn.ModuleList(h.module for h in heads)
        self.stages = set().union(*(stages_needed(p) for p in self.parts))
        self.mirror = any(self.mirrors)

    def forward(self, x_u8: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.normalise(x_u8)
        n = x.shape[0]
        if self.mirror:
            x = torch.cat([x, x.flip(3)])
        outs = forward_taps(self.base, x, self.stages)
        results = []
        for parts, mirror, head in zip(self.parts, self.mirrors, self.heads):
            f = torch.cat([tap_part(outs, p) for p in parts], 1).flatten(1).float()
            if not mirror:
                results.append(head(f[:n]).float())
                continue
            y = head(f)  # the mean of the photo's and the mirror image's answers
            results.append(((y[:n] + y[n:]) / 2).float())
        return tuple(results)


def tap_part(outs: dict, part: str) -> torch.Tensor:
    name, _, kind = part.partition("-")
    f = outs[name]
    return pool(f, kind) if kind else f.flatten(1)


__all__ = ["Normalise", "Pipeline", "HeadPart", "head_module", "HEAD_MODULES"]
