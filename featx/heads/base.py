"""What every head shares: the Head estimator, standardisation, holdout split, Platt scaling.

A head keeps its learned state as plain numpy arrays and predicts from them with numpy,
so a head rebuilt from its saved arrays gives bit-identical predictions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from ..errors import FeatxError
from .select import Search, best_point, grid_search  # noqa: F401  (best_point: kept importable here)


def as_2d(X) -> np.ndarray:
    """Features [n, *dim] -> float64 [n, D]."""
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[:, None]
    return X.reshape(len(X), -1).astype(np.float64, copy=False)


def check_xy(X, y) -> tuple[np.ndarray, np.ndarray]:
    X, y = as_2d(X), np.asarray(y).astype(np.int64)
    if len(X) != len(y):
        raise FeatxError(f"{len(X)} feature rows but {len(y)} labels")
    if len(X) == 0:
        raise FeatxError("no training rows")
    if not np.isfinite(X).all():
        raise FeatxError("features contain NaN or infinity")
    return X, y


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z, dtype=np.float64)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def binary_to_two(p1: np.ndarray) -> np.ndarray:
    return np.stack([1.0 - p1, p1], axis=1)


def ovr_normalise(p: np.ndarray) -> np.ndarray:
    """One-vs-rest probabilities [n, K] -> rows summing to 1."""
    s = p.sum(axis=1, keepdims=True)
    s[s == 0] = 1.0
    return p / s


def holdout_split(y: np.ndarray, frac: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, holdout) index arrays; each class keeps at least one row on each side when it can."""
    rng = np.random.default_rng(seed)
    tr, ho = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * frac))
        k = min(max(k, 1), len(idx) - 1) if len(idx) > 1 else 0
        ho.append(idx[:k])
        tr.append(idx[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(ho))


def class_weights(y: np.ndarray, n_classes: int, mode: str | None) -> np.ndarray:
    """Per-class weights: ones, or 'balanced' = n / (K * count) as in scikit-learn."""
    if mode in (None, "none"):
        return np.ones(n_classes)
    if mode != "balanced":
        raise FeatxError(f"unknown class weight {mode!r}; use 'balanced' or leave it out")
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.ones(n_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def selection_score(y: np.ndarray, pred: np.ndarray, balanced: bool) -> float:
    """Accuracy, or balanced accuracy (mean recall over present classes)."""
    if not balanced:
        return float(np.mean(pred == y))
    recalls = [np.mean(pred[y == c] == c) for c in np.unique(y)]
    return float(np.mean(recalls))


def fit_platt(f: np.ndarray, y: np.ndarray, max_iter: int = 100) -> tuple[float, float]:
    """Platt scaling (Lin, Lin & Weng 2007): P(y=1 | f) = 1 / (1 + exp(A f + B)); y in {0, 1}."""
    f, y = np.asarray(f, np.float64), np.asarray(y).astype(bool)
    n1 = float(y.sum())
    n0 = float(len(y) - n1)
    t = np.where(y, (n1 + 1.0) / (n1 + 2.0), 1.0 / (n0 + 2.0))
    A, B = 0.0, float(np.log((n0 + 1.0) / (n1 + 1.0)))

    def loss(a: float, b: float) -> float:
        z = f * a + b
        return float(np.sum(np.where(z >= 0, t * z + np.log1p(np.exp(-np.abs(z))),
                                     (t - 1.0) * z + np.log1p(np.exp(-np.abs(z))))))

    fv = loss(A, B)
    for _ in range(max_iter):
        z = f * A + B
        p = sigmoid(-z)  # P(y=1)
        d2 = p * (1.0 - p)
        h11, h22, h21 = 1e-12 + np.sum(f * f * d2), 1e-12 + np.sum(d2), np.sum(f * d2)
        d1 = t - p
        g1, g2 = np.sum(f * d1), np.sum(d1)
        if abs(g1) < 1e-5 and abs(g2) < 1e-5:
            break
        det = h11 * h22 - h21 * h21
        dA, dB = -(h22 * g1 - h21 * g2) / det, -(-h21 * g1 + h11 * g2) / det
        gd = g1 * dA + g2 * dB
        step = 1.0
        while step >= 1e-10:
            nA, nB = A + step * dA, B + step * dB
            nf = loss(nA, nB)
            if nf < fv + 1e-4 * step * gd:
                A, B, fv = nA, nB, nf
                break
            step /= 2.0
        else:
            break
    return float(A), float(B)


def platt_proba(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Decision values [n, m] (m = 1 for binary, K for one-vs-rest) -> probabilities [n, K]."""
    p = sigmoid(-(f * a + b))
    if p.shape[1] == 1:
        return binary_to_two(p[:, 0])
    return ovr_normalise(p)


class Standardiser:
    """x -> (x - mean) / scale, with zero-variance columns left unscaled."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray):
        self.mean = np.ascontiguousarray(mean, np.float64)
        self.scale = np.ascontiguousarray(scale, np.float64)

    @classmethod
    def fit(cls, X: np.ndarray) -> "Standardiser":
        var = X.var(axis=0)
        return cls(X.mean(axis=0), safe_scale(var))

    def __call__(self, X) -> np.ndarray:
        X = as_2d(X)
        if X.shape[1] != len(self.mean):
            raise FeatxError(f"features have {X.shape[1]} dims but the head expects {len(self.mean)}")
        return (X - self.mean) / self.scale


def safe_scale(var: np.ndarray) -> np.ndarray:
    s = np.sqrt(np.asarray(var, np.float64))
    s[~(s > 1e-12)] = 1.0
    return s


BASE_PARAMS = ("seed", "class_weight", "grid", "n_classes")


@dataclass(eq=False, repr=False)
class Estimator(BaseEstimator):
    """What classifier and regression heads share: a grid of hyperparameters chosen on validation rows,
    plain constructor parameters, fitted state in trailing-underscore attributes, saved as arrays.

    `task` says what the head learns: "classify" (Head) or "regress" (featx.heads.regression.RegressionHead).
    A subclass sets `kind` and `default_grid` and implements _load (arrays -> fitted state) and _arrays.
    """

    kind: ClassVar[str] = ""
    task: ClassVar[str] = ""
    default_grid: ClassVar[dict[str, list | None]] = {}
    choice_metric: ClassVar[str | None] = None
    base_params: ClassVar[tuple[str, ...]] = ("seed", "grid")

    seed: int = 0
    grid: dict | None = None

    # --- constructor parameters ---
    @classmethod
    def settings(cls) -> list[str]:
        """The kind's own constructor parameters, beyond the base ones (seed, grid, ...)."""
        return [n for n in cls._get_param_names() if n not in cls.base_params]

    def check_params(self) -> None:
        """One-line errors for a bad grid."""
        bad = set(self.grid or {}) - set(self.default_grid)
        if bad:
            raise FeatxError(f"{self.kind} head has no grid for {', '.join(sorted(bad))}; "
                             f"it searches {', '.join(self.default_grid)}")
        if any(v is not None and len(list(v)) == 0 for v in (self.grid or {}).values()):
            raise FeatxError(f"{self.kind} head: every grid needs at least one value")

    def search_grid(self, dim: int) -> dict[str, list]:
        """The grid searched: default_grid with the user's overrides, None entries filled for `dim` features."""
        grid = {**self.default_grid, **(self.grid or {})}
        return self._fill_grid({k: None if v is None else list(v) for k, v in grid.items()}, dim)

    # --- saving and rebuilding ---
    def fitted_params(self) -> dict[str, Any]:
        """JSON-ready fitted choices: the chosen grid point (head.json "fitted")."""
        return dict(self.best_params_)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"scaler_mean": self.scaler_.mean, "scaler_scale": self.scaler_.scale, **self._arrays()}

    @classmethod
    def from_arrays(cls, params: dict, arrays: dict[str, np.ndarray], fitted: dict | None = None) -> "Estimator":
        """A fitted head from constructor params, fitted choices and arrays. Cards before version 2
        kept the fitted choices among the params: with fitted=None they are read from there."""
        names = cls._get_param_names()
        head = cls(**{k: params[k] for k in names if k in params})
        if fitted is None:
            fitted = {k: v for k, v in params.items() if k not in names and k != "kind"}
            fitted["n_classes"] = params.get("n_classes")
        head._restore(fitted, arrays)
        return head

    def _restore(self, fitted: dict, arrays: dict[str, np.ndarray]) -> None:
        self.best_params_ = {k: fitted[k] for k in self.default_grid if k in fitted}
        for k, v in self.best_params_.items():
            setattr(self, f"{k}_", v)
        try:
            self.scaler_ = Standardiser(arrays["scaler_mean"], arrays["scaler_scale"])
            self._load(arrays)
        except KeyError as e:
            raise FeatxError(f"saved {self.kind} head lacks array {e.args[0]!r}") from None
        self._restored(fitted)

    def _restored(self, fitted: dict) -> None:
        """Fitted state beyond the grid point and the arrays (e.g. the number of classes)."""

    # --- the search ---
    def _record(self, search: Search) -> None:
        """Take the chosen candidate's fitted attributes and keep the search for head.json."""
        self.grid_, self.cv_results_, self.best_params_ = search.grid, search.results, dict(search.best)
        for k, v in search.best.items():
            setattr(self, f"{k}_", v)
        for k, v in search.state.items():
            setattr(self, k, v)
        self.selection_ = {"grid": search.grid, "results": search.results, "chosen": dict(search.best),
                           **self._selection_notes()}

    def _selected_on(self, on: str) -> None:
        self.selection_ = {"on": on, "metric": self.choice_metric or self.metric_name, **self.selection_}

    @property
    def metric_name(self) -> str:
        return self.choice_metric or ""

    def _fill_grid(self, grid: dict, dim: int) -> dict[str, list]:
        return grid

    def _selection_notes(self) -> dict[str, Any]:
        """Extra facts for head.json's selection (calibration, device, ...)."""
        return {}

    def _arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _load(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError


@dataclass(eq=False, repr=False)
class Head(ClassifierMixin, Estimator):
    """A scikit-learn style classifier that chooses its own hyperparameters on validation rows.

    Constructor parameters (get_params): seed, grid (overrides of default_grid), class_weight (None or
    "balanced"), n_classes (None: from the labels) and the kind's own settings, as dataclass fields.
    fit() searches the grid with featx.heads.select.grid_search; fitted attributes end in "_":
    scaler_, n_classes_, classes_, best_params_ and one `<key>_` per grid key (C_, gamma_, alpha_,
    hidden_), grid_, cv_results_ (one row per grid point) and selection_ (what head.json records).

    A subclass sets `kind` and `default_grid`, and implements _fit_point (one grid point on the
    training rows -> fitted attributes and a result row), _proba, _arrays and _load. Decorate it
    with @register_head and @dataclass(eq=False, repr=False).
    """

    task: ClassVar[str] = "classify"
    choice_metric: ClassVar[str | None] = None  # None: accuracy (balanced accuracy with class_weight="balanced")
    base_params: ClassVar[tuple[str, ...]] = BASE_PARAMS

    class_weight: str | None = None
    n_classes: int | None = None

    def check_params(self) -> None:
        """One-line errors for a bad class_weight or grid."""
        class_weights(np.zeros(1, np.int64), 1, self.class_weight)  # validates the mode
        super().check_params()

    # --- estimator API ---
    def fit(self, X, y, X_val=None, y_val=None) -> "Head":
        """Choose hyperparameters on (X_val, y_val), or on a 20% holdout of (X, y) when not given;
        the chosen model is the one fitted on (X, y) alone."""
        self.check_params()
        X, y = check_xy(X, y)
        on = "val"
        if X_val is None:
            tr, ho = holdout_split(y, 0.2, self.seed)
            X, X_val, y, y_val = X[tr], X[ho], y[tr], y[ho]
            on = "holdout 20% of the training rows"
        else:
            X_val, y_val = check_xy(X_val, y_val)
        self._set_classes(max(y.max(), y_val.max()) + 1)
        if len(np.unique(y)) < 2:
            raise FeatxError("the training rows hold only one class")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter on tiny grids
            self._fit(X, y, X_val, y_val)
        self._selected_on(on)
        return self

    def predict_proba(self, X) -> np.ndarray:
        if getattr(self, "scaler_", None) is None:
            raise FeatxError(f"{self.kind} head is not fitted")
        return self._proba(self.scaler_(X))

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    # --- saving and rebuilding ---
    def fitted_params(self) -> dict[str, Any]:
        """JSON-ready fitted choices: n_classes and the chosen grid point (head.json "fitted")."""
        return {"n_classes": self.n_classes_, **self.best_params_}

    def _restored(self, fitted: dict) -> None:
        n = fitted.get("n_classes") or self.n_classes
        if n is None:  # not recorded: as many as the head outputs
            n = self._proba(np.zeros((1, len(self.scaler_.mean)))).shape[1]
        self.n_classes_ = int(n)
        self.classes_ = np.arange(self.n_classes_)

    # --- for subclasses ---
    @property
    def metric_name(self) -> str:
        return "balanced_accuracy" if self.class_weight == "balanced" else "accuracy"

    def _score(self, y: np.ndarray, pred: np.ndarray) -> float:
        return selection_score(y, pred, self.class_weight == "balanced")

    def _weight_mode(self) -> str | None:
        """class_weight as scikit-learn takes it."""
        return None if self.class_weight in (None, "none") else self.class_weight

    def _set_classes(self, seen: int) -> None:
        self.n_classes_ = int(self.n_classes or seen)
        if self.n_classes_ < 2:
            raise FeatxError("a head needs at least two classes")
        self.classes_ = np.arange(self.n_classes_)

    def _fit(self, X, y, X_val, y_val) -> None:
        """Standardise on the training rows, then search the grid."""
        self.scaler_ = Standardiser.fit(X)
        Z, Zv = self.scaler_(X), self.scaler_(X_val)
        grid = self.search_grid(Z.shape[1])
        self._record(grid_search(grid, lambda point: self._fit_point(Z, y, Zv, y_val, point)))

    def _fit_point(self, Z, y, Zv, yv, point: dict) -> tuple[dict[str, Any], dict[str, Any]]:
        raise NotImplementedError

    def _proba(self, Z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0))))
