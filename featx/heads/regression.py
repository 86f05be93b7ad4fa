"""What every regression head shares: numeric targets, the target transform, the selection on val MAE.

A regression head is an Estimator with task = "regress": fit(X, y, X_val, y_val) with float targets,
predict(X) -> float64 [n] in the target's own units. The grid of every regression head has a
"transform" key: the model learns t = T(y) standardised ((t - target_mean) / target_scale), and
predict applies the inverse. T is "identity" or "log1p" (log(1 + y), for targets such as age whose
errors grow with the value); the grid search picks it on validation rows like any other
hyperparameter, so the user never guesses it. "log1p" is left out of the grid (and the choice says
so) when a target is <= -1. Predictions are clipped to the training targets' range.

Grid points are scored by the validation MAE in the target's units (score = -val_mae; ties go to the
lower val_rmse). Fitted state: scaler_ (features), transform_, target_mean_, target_scale_,
target_range_ and the kind's own arrays; head.json "fitted" holds the grid point (transform included).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sklearn.base import RegressorMixin

from ..errors import FeatxError
from .base import Estimator, Standardiser, as_2d, safe_scale
from .select import grid_search

TRANSFORMS = ("identity", "log1p")


def forward(transform: str, y: np.ndarray) -> np.ndarray:
    """y -> t, the scale the model learns on."""
    if transform == "identity":
        return np.asarray(y, np.float64)
    if transform == "log1p":
        return np.log1p(np.asarray(y, np.float64))
    raise FeatxError(f"unknown target transform {transform!r}; use one of {', '.join(TRANSFORMS)}")


def inverse(transform: str, t: np.ndarray) -> np.ndarray:
    """t -> y, the target's own units."""
    if transform == "identity":
        return np.asarray(t, np.float64)
    if transform == "log1p":
        with np.errstate(over="ignore"):
            return np.expm1(np.asarray(t, np.float64))
    raise FeatxError(f"unknown target transform {transform!r}; use one of {', '.join(TRANSFORMS)}")


def check_targets(X, y) -> tuple[np.ndarray, np.ndarray]:
    """float64 features [n, D] and finite float64 targets [n]; one-line errors otherwise."""
    X = as_2d(X)
    try:
        y = np.asarray(y, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise FeatxError("regression targets must be numbers") from None
    if len(X) != len(y):
        raise FeatxError(f"{len(X)} feature rows but {len(y)} targets")
    if len(X) == 0:
        raise FeatxError("no training rows")
    if not np.isfinite(X).all():
        raise FeatxError("features contain NaN or infinity")
    bad = int((~np.isfinite(y)).sum())
    if bad:
        raise FeatxError(f"{bad} targets are missing or not finite; leave those rows out")
    return X, y


def random_holdout(n: int, frac: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) index arrays: a seeded random 20% held out (at least one row each side)."""
    order = np.random.default_rng(seed).permutation(n)
    k = min(max(int(round(n * frac)), 1), n - 1)
    return np.sort(order[k:]), np.sort(order[:k])


@dataclass
class Targets:
    """Training targets on the scale one transform learns: t = (T(y) - mean) / scale."""

    transform: str
    t: np.ndarray
    mean: float
    scale: float
    weight: np.ndarray | None = None  # per-row weights (mean 1), or None: every row counts once

    @classmethod
    def make(cls, transform: str, y: np.ndarray, weight: np.ndarray | None = None) -> "Targets":
        """Standardised with the (weighted) mean and standard deviation of T(y)."""
        t = forward(transform, y)
        mean = float(np.average(t, weights=weight))
        scale = float(np.sqrt(np.average((t - mean) ** 2, weights=weight)))
        scale = scale if scale > 1e-12 else 1.0
        return cls(transform, (t - mean) / scale, mean, scale, weight)

    def to_units(self, t_std: np.ndarray) -> np.ndarray:
        return inverse(self.transform, np.asarray(t_std, np.float64) * self.scale + self.mean)


def val_scores(y: np.ndarray, pred: np.ndarray, weight: np.ndarray | None = None) -> dict[str, float]:
    """The selection row of one grid point: score = -MAE (weighted when val rows have weights), RMSE for ties."""
    err = np.asarray(pred, np.float64) - np.asarray(y, np.float64)
    mae = float(np.average(np.abs(err), weights=weight))
    return {"score": -mae, "val_mae": mae, "val_rmse": float(np.sqrt(np.average(err ** 2, weights=weight)))}


def check_weights(w, n: int, what: str) -> np.ndarray | None:
    """None, or finite non-negative weights [n] with a positive sum, scaled to mean 1."""
    if w is None:
        return None
    w = np.asarray(w, np.float64).reshape(-1)
    if len(w) != n or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise FeatxError(f"{what} must be {n} finite, non-negative numbers with a positive sum")
    return w * (n / w.sum())


@dataclass(eq=False, repr=False)
class RegressionHead(RegressorMixin, Estimator):
    """A scikit-learn style regressor that chooses its hyperparameters, the target transform among
    them, on validation rows.

    Constructor parameters (get_params): seed, grid (overrides of default_grid, e.g.
    {"transform": ["log1p"]}) and the kind's own settings. After fit: scaler_, transform_,
    target_mean_, target_scale_, target_range_ ([min, max] of the training targets), best_params_,
    one `<key>_` per grid key, grid_, cv_results_ and selection_.

    A subclass sets `kind` and `default_grid` (with "transform": list(TRANSFORMS)) and implements
    _fit_point(Z, targets, Zv, yv, point) -> (fitted attributes, standardised val predictions, extra row
    entries; yv are the val targets in their units, for early stopping), _predict_std(Z) -> standardised
    predictions, _arrays and _load. _prepare(Z, Zv, grid, targets) may precompute what the grid points
    share (a decomposition) before the search; it is called with Nones after it.
    """

    task: ClassVar[str] = "regress"
    choice_metric: ClassVar[str | None] = "mae"  # score = -val_mae
    takes_weights: ClassVar[bool] = False  # fit(..., sample_weight=, val_weight=) supported

    # --- estimator API ---
    def fit(self, X, y, X_val=None, y_val=None, sample_weight=None, val_weight=None) -> "RegressionHead":
        """Choose hyperparameters and the transform on (X_val, y_val), or on a random 20% holdout of
        (X, y); the chosen model is the one fitted on (X, y) alone. sample_weight / val_weight (heads
        with takes_weights): per-row weights of the training loss and of the val MAE that chooses."""
        self.check_params()
        X, y = check_targets(X, y)
        if (sample_weight is not None or val_weight is not None) and not self.takes_weights:
            raise FeatxError(f"{self.kind} head takes no sample weights; use ridge or rbf-ridge")
        w = check_weights(sample_weight, len(y), "sample_weight")
        on = "val"
        if X_val is None:
            if len(y) < 2:
                raise FeatxError("need at least two rows to hold some out for the choice")
            tr, ho = random_holdout(len(y), 0.2, self.seed)
            X, X_val, y, y_val = X[tr], X[ho], y[tr], y[ho]
            w, wv = (None, None) if w is None else (w[tr], w[ho])
            on = "holdout 20% of the training rows"
        else:
            X_val, y_val = check_targets(X_val, y_val)
            wv = check_weights(val_weight, len(y_val), "val_weight")
        self._weights = (w, wv)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence chatter on tiny grids
                self._fit(X, y, X_val, y_val)
        finally:
            del self._weights
        self._selected_on(on)
        if w is not None or wv is not None:
            self.selection_["weighted"] = {"train": w is not None, "val": wv is not None}
        return self

    def predict(self, X) -> np.ndarray:
        """Predictions in the target's units, float64 [n]."""
        if getattr(self, "scaler_", None) is None:
            raise FeatxError(f"{self.kind} head is not fitted")
        return self._to_units(self._predict_std(self.scaler_(X)))

    # --- the search ---
    def _fit(self, X, y, X_val, y_val) -> None:
        w, _ = getattr(self, "_weights", (None, None))
        if w is None:
            self.scaler_ = Standardiser.fit(X)
        else:  # weighted mean and variance: weight k counts as k copies of the row
            mean = np.average(X, axis=0, weights=w)
            self.scaler_ = Standardiser(mean, safe_scale(np.average((X - mean) ** 2, axis=0, weights=w)))
        Z, Zv = self.scaler_(X), self.scaler_(X_val)
        self.target_range_ = np.asarray([y.min(), y.max()], np.float64)
        grid = self._transform_grid(self.search_grid(Z.shape[1]), np.concatenate([y, y_val]))
        targets = {t: Targets.make(t, y, w) for t in grid["transform"]}
        self._prepare(Z, Zv, grid, targets)
        try:
            self._record(grid_search(grid, lambda p: self._score_point(Z, targets[p["transform"]], Zv, y_val, p)))
        finally:
            self._prepare(None, None, None, None)
        self.selection_.update(self._transform_notes)

    def _score_point(self, Z, targets: Targets, Zv, y_val, point: dict) -> tuple[dict, dict]:
        state, val_std, extra = self._fit_point(Z, targets, Zv, y_val, point)
        state = {**state, "target_mean_": targets.mean, "target_scale_": targets.scale}
        pred = np.clip(targets.to_units(val_std), *self.target_range_)
        return state, {**val_scores(y_val, pred, getattr(self, "_weights", (None, None))[1]), **extra}

    def _transform_grid(self, grid: dict, y: np.ndarray) -> dict:
        """Check the transform grid; drop log1p (and say so) when a target is <= -1."""
        grid["transform"] = list(grid.get("transform") or TRANSFORMS)
        for t in grid["transform"]:
            forward(t, np.zeros(1))  # names checked
        self._transform_notes = {}
        if "log1p" in grid["transform"] and y.min() <= -1:
            if grid["transform"] == ["log1p"]:
                raise FeatxError(f"the log1p target transform needs targets above -1; the smallest is {y.min():g}")
            grid["transform"] = [t for t in grid["transform"] if t != "log1p"]
            self._transform_notes = {"transform_note": f"log1p left out: the smallest target is {y.min():g}"}
        return grid

    def _prepare(self, Z, Zv, grid, targets) -> None:
        """Work shared by grid points (e.g. a decomposition), made before the search and dropped after it."""

    def _to_units(self, t_std: np.ndarray) -> np.ndarray:
        y = inverse(self.transform_, np.asarray(t_std, np.float64) * self.target_scale_ + self.target_mean_)
        return np.clip(y, *self.target_range_)

    # --- saving and rebuilding ---
    def arrays(self) -> dict[str, np.ndarray]:
        return {**super().arrays(), "target_mean": np.asarray([self.target_mean_], np.float64),
                "target_scale": np.asarray([self.target_scale_], np.float64),
                "target_range": np.asarray(self.target_range_, np.float64)}

    def _restored(self, fitted: dict) -> None:
        arrays = self._saved_arrays
        self.target_mean_ = float(arrays["target_mean"][0])
        self.target_scale_ = float(arrays["target_scale"][0])
        self.target_range_ = np.asarray(arrays["target_range"], np.float64)
        if getattr(self, "transform_", None) not in TRANSFORMS:
            raise FeatxError(f"saved {self.kind} head has no valid target transform ({fitted.get('transform')!r})")

    def _restore(self, fitted: dict, arrays: dict[str, np.ndarray]) -> None:
        self._saved_arrays = arrays
        try:
            super()._restore(fitted, arrays)
        except KeyError as e:
            raise FeatxError(f"saved {self.kind} head lacks array {e.args[0]!r}") from None
        finally:
            del self._saved_arrays

    # --- for subclasses ---
    def _fit_point(self, Z, targets: Targets, Zv, yv, point: dict) -> tuple[dict[str, Any], np.ndarray, dict]:
        raise NotImplementedError

    def _predict_std(self, Z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LinearRegressionHead(RegressionHead):
    """A regression head whose model is coef_ [D] and intercept_ (a float) on standardised features."""

    def _predict_std(self, Z: np.ndarray) -> np.ndarray:
        return Z @ self.coef_ + self.intercept_

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"coef": np.asarray(self.coef_, np.float64), "intercept": np.asarray([self.intercept_], np.float64)}

    def _load(self, arrays) -> None:
        self.coef_, self.intercept_ = arrays["coef"], float(arrays["intercept"][0])
