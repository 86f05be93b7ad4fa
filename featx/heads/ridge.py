"""Ridge regression on standardised features; the penalty and the target transform chosen on validation.

One eigendecomposition of the centred Gram matrix F'F serves every penalty of the grid
(w = V diag(1 / (e + a)) V' F'(t - mean t)), so the grid costs one solve. Above `max_primal`
features (e.g. VGG16 pool5-flat, 25,088) scikit-learn's Ridge solves each point instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .regression import TRANSFORMS, LinearRegressionHead
from .registry import register_head

# penalty per training row: the objective is mean squared error + alpha * |w|^2 on standardised features
ALPHA_GRID = [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0]


class RidgePath:
    """Ridge solutions of centred features F [n, m] for named right-hand sides and any penalty.

    Built from the Gram matrix, so F itself need not be kept: gram = F'F (uncentred), col_mean = the
    column means of F, rhs = {name: F't} for targets t that sum to zero (standardised targets do).
    """

    def __init__(self, gram: np.ndarray, col_mean: np.ndarray, n: int, rhs: dict[str, np.ndarray]):
        centred = gram - n * np.outer(col_mean, col_mean)
        self.evals, self.evecs = np.linalg.eigh((centred + centred.T) / 2)
        self.evals = np.maximum(self.evals, 0.0)
        self.col_mean = col_mean
        self.proj = {k: self.evecs.T @ v for k, v in rhs.items()}

    @classmethod
    def of(cls, F: np.ndarray, targets: dict[str, np.ndarray], weight: np.ndarray | None = None) -> "RidgePath":
        """weight (mean 1): row weights of the squared loss, whose weighted sum the targets' zero is."""
        F = np.asarray(F, np.float64)
        Fw = F if weight is None else F * weight[:, None]
        mean = Fw.mean(axis=0)
        return cls(Fw.T @ F, mean, len(F), {k: Fw.T @ t for k, t in targets.items()})

    def solve(self, name: str, penalty: float) -> tuple[np.ndarray, float]:
        """(w, b) minimising |F w + b - t|^2 + penalty |w|^2 for the right-hand side `name`."""
        w = self.evecs @ (self.proj[name] / (self.evals + penalty))
        return w, float(-self.col_mean @ w)


@register_head
@dataclass(eq=False, repr=False)
class RidgeHead(LinearRegressionHead):
    """Standardised features -> linear regression with an L2 penalty; alpha and the transform chosen on val."""

    kind = "ridge"
    default_grid = {"alpha": ALPHA_GRID, "transform": list(TRANSFORMS)}
    takes_weights = True
    max_primal: int = 4096

    def _prepare(self, Z, Zv, grid, targets) -> None:
        self._path = None
        if Z is not None and Z.shape[1] <= self.max_primal:
            weight = next(iter(targets.values())).weight
            self._path = RidgePath.of(Z, {name: tg.t for name, tg in targets.items()}, weight)

    def _fit_point(self, Z, targets, Zv, yv, point):
        penalty = point["alpha"] * len(Z)
        if self._path is not None:
            w, b = self._path.solve(targets.transform, penalty)
        else:
            from sklearn.linear_model import Ridge

            m = Ridge(alpha=penalty).fit(Z, targets.t, sample_weight=targets.weight)
            w, b = np.asarray(m.coef_, np.float64), float(m.intercept_)
        return {"coef_": w, "intercept_": b}, Zv @ w + b, {}
