"""What every head shares: standardisation, grid selection, holdout split, Platt scaling.

A head keeps its learned state as plain numpy arrays and predicts from them with numpy,
so a head rebuilt from its saved arrays gives bit-identical predictions.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import FeatxError


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


class Head:
    """Base class; subclasses set `kind`, `default_grid`, and implement _fit, _proba, arrays, from_arrays."""

    kind = ""
    default_grid: dict[str, list] = {}
    default_params: dict[str, Any] = {}
    choice_metric: str | None = None  # None: accuracy (balanced accuracy with class_weight="balanced")

    def __init__(self, seed: int = 0, class_weight: str | None = None, grid: dict | None = None,
                 n_classes: int | None = None, **params):
        unknown = set(params) - set(self.default_params)
        if unknown:
            raise FeatxError(f"{self.kind} head has no parameter {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(self.default_params)) or 'none'}")
        class_weights(np.zeros(1, np.int64), 1, class_weight)  # validates the mode
        self.seed = int(seed)
        self.class_weight = None if class_weight in (None, "none") else class_weight
        bad = set(grid or {}) - set(self.default_grid)
        if bad:
            raise FeatxError(f"{self.kind} head has no grid for {', '.join(sorted(bad))}; "
                             f"it searches {', '.join(self.default_grid)}")
        grid = {**self.default_grid, **(grid or {})}
        self.grid = {k: None if v is None else list(v) for k, v in grid.items()}
        if any(v is not None and not v for v in self.grid.values()):
            raise FeatxError(f"{self.kind} head: every grid needs at least one value")
        self.params = {**self.default_params, **params}
        self.n_classes = n_classes
        self.chosen: dict[str, Any] = {}
        self.selection: dict[str, Any] = {}
        self.scaler: Standardiser | None = None

    # --- the public estimator API ---
    def fit(self, X, y, X_val=None, y_val=None) -> "Head":
        X, y = check_xy(X, y)
        on = "val"
        if X_val is None:
            tr, ho = holdout_split(y, 0.2, self.seed)
            X, X_val, y, y_val = X[tr], X[ho], y[tr], y[ho]
            on = "holdout 20% of the training rows"
        else:
            X_val, y_val = check_xy(X_val, y_val)
        self.n_classes = int(self.n_classes or max(y.max(), y_val.max()) + 1)
        if self.n_classes < 2:
            raise FeatxError("a head needs at least two classes")
        if len(np.unique(y)) < 2:
            raise FeatxError("the training rows hold only one class")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter on tiny grids
            self._fit(X, y, X_val, y_val)
        self.selection = {"on": on, "metric": self.choice_metric or self.metric_name, **self.selection}
        return self

    def predict_proba(self, X) -> np.ndarray:
        if self.scaler is None:
            raise FeatxError(f"{self.kind} head is not fitted")
        return self._proba(self.scaler(X))

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    def get_params(self) -> dict[str, Any]:
        """JSON-ready hyperparameters: fixed ones, the chosen grid point, and what rebuilding needs."""
        return {"kind": self.kind, "seed": self.seed, "class_weight": self.class_weight,
                "n_classes": self.n_classes, "grid": self.grid, **self.params, **self.chosen}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"scaler_mean": self.scaler.mean, "scaler_scale": self.scaler.scale, **self._arrays()}

    @classmethod
    def from_arrays(cls, params: dict, arrays: dict[str, np.ndarray]) -> "Head":
        p = dict(params)
        fixed = {k: p[k] for k in cls.default_params if k in p}
        head = cls(seed=p.get("seed", 0), class_weight=p.get("class_weight"), grid=p.get("grid"),
                   n_classes=p.get("n_classes"), **fixed)
        head.chosen = {k: p[k] for k in head.grid if k in p}
        try:
            head.scaler = Standardiser(arrays["scaler_mean"], arrays["scaler_scale"])
            head._load(arrays)
        except KeyError as e:
            raise FeatxError(f"saved {cls.kind} head lacks array {e.args[0]!r}") from None
        return head

    # --- helpers for subclasses ---
    @property
    def metric_name(self) -> str:
        return "balanced_accuracy" if self.class_weight == "balanced" else "accuracy"

    def score(self, y: np.ndarray, pred: np.ndarray) -> float:
        return selection_score(y, pred, self.class_weight == "balanced")

    def record(self, results: list[dict], chosen: dict) -> None:
        self.chosen = dict(chosen)
        self.selection = {"grid": self.grid, "results": results, "chosen": dict(chosen)}

    def _fit(self, X, y, X_val, y_val) -> None:
        raise NotImplementedError

    def _proba(self, Z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _load(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError


def best_point(results: list[dict], keys: tuple[str, ...]) -> dict:
    """Highest score; ties go to the lower val_log_loss when recorded, then to the earliest grid point
    (grids list the strongest regularisation first). Returns the grid point (the `keys` values)."""
    best = max(range(len(results)),
               key=lambda i: (results[i]["score"], -results[i].get("val_log_loss", 0.0), -i))
    return {k: results[best][k] for k in keys}


def log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0))))
