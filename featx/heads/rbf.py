"""RBF-kernel SVM: C and gamma chosen on validation, Platt-scaled probabilities.

The head keeps the support vectors, dual coefficients, intercepts and gamma, and
evaluates the kernel expansion with numpy (one-vs-rest columns for K > 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from sklearn.svm import SVC

from .base import Head, holdout_split, platt_proba
from .linear import CALIBRATION, calibrate, svm_scores

C_GRID = [0.1, 1.0, 10.0]
GAMMA_FACTORS = [0.25, 1.0, 4.0]  # times 1 / n_features ("scale" on standardised data)


def rbf_kernel_blocks(A: np.ndarray, B: np.ndarray, gamma: float,
                      block: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
    """(start, exp(-gamma |a - b|^2) [block, len(B)] for the rows A[start:start + block]) per row block."""
    b_sq = np.einsum("ij,ij->i", B, B)
    for s in range(0, len(A), block):
        a = A[s:s + block]
        d = np.einsum("ij,ij->i", a, a)[:, None] + b_sq[None, :] - 2.0 * (a @ B.T)
        np.maximum(d, 0.0, out=d)
        yield s, np.exp(-gamma * d)


def rbf_decision(Z: np.ndarray, sv: np.ndarray, dual: np.ndarray, intercept: np.ndarray, gamma: float,
                 block: int = 4096) -> np.ndarray:
    """sum_i dual[c, i] * exp(-gamma * |z - sv_i|^2) + intercept[c]  ->  [n, n_columns]."""
    out = np.empty((len(Z), len(intercept)))
    for s, k in rbf_kernel_blocks(Z, sv, gamma, block):
        out[s:s + block] = k @ dual.T + intercept
    return out


@dataclass(eq=False, repr=False)
class RBFSVMHead(Head):
    """Kernel SVM (one-vs-rest for K > 2) on a stratified subsample of at most max_train rows."""

    kind = "rbf-svm"
    default_grid = {"C": C_GRID, "gamma": None}  # gamma grid is filled in from the feature dimension
    max_train: int = 20000
    cache_mb: int = 500

    def _fit_columns(self, Z, y, C, gamma):
        """One SVC per decision column -> (support vectors, dual [m, n_sv], intercept [m])."""
        cols = [1] if self.n_classes_ == 2 else range(self.n_classes_)
        per_col = []
        for c in cols:
            t = y == c
            if not t.any():
                per_col.append((np.zeros(0, np.int64), np.zeros(0), -1e9))
                continue
            m = SVC(C=C, kernel="rbf", gamma=gamma, class_weight=self._weight_mode(),
                    cache_size=self.cache_mb, random_state=self.seed).fit(Z, t)
            per_col.append((m.support_, m.dual_coef_[0], float(m.intercept_[0])))
        rows = np.unique(np.concatenate([s for s, _, _ in per_col]))
        dual = np.zeros((len(per_col), len(rows)))
        for k, (s, dc, _) in enumerate(per_col):
            dual[k, np.searchsorted(rows, s)] = dc
        inter = np.asarray([b for _, _, b in per_col], np.float64)
        return np.ascontiguousarray(Z[rows]), dual, inter

    def _fit(self, X, y, X_val, y_val) -> None:
        self.train_subsample_ = None
        if self.max_train and len(X) > self.max_train:  # kernel SVMs scale ~n^2: train on a stratified subsample
            _, keep = holdout_split(y, self.max_train / len(X), self.seed)
            X, y = X[keep], y[keep]
            self.train_subsample_ = int(len(keep))
        super()._fit(X, y, X_val, y_val)

    def _fill_grid(self, grid: dict, dim: int) -> dict:
        if grid.get("gamma") is None:
            grid["gamma"] = [f / dim for f in GAMMA_FACTORS]
        return grid

    def _fit_point(self, Z, y, Zv, yv, point):
        sv, dual, inter = self._fit_columns(Z, y, point["C"], point["gamma"])
        f = rbf_decision(Zv, sv, dual, inter, point["gamma"])
        a, b = calibrate(f, yv)
        state = {"support_vectors_": sv, "dual_coef_": dual, "intercept_": inter, "platt_a_": a, "platt_b_": b}
        return state, {**svm_scores(self, f, yv, a, b), "n_support": int(len(sv))}

    def _selection_notes(self) -> dict:
        notes = {"calibration": CALIBRATION}
        if self.train_subsample_:
            notes["train_subsample"] = self.train_subsample_
        return notes

    @property
    def n_support_(self) -> int:
        return int(len(self.support_vectors_))

    def fitted_params(self) -> dict:
        return {**super().fitted_params(), "n_support": self.n_support_}

    def _decision(self, Z):
        return rbf_decision(Z, self.support_vectors_, self.dual_coef_, self.intercept_, self.gamma_)

    def _proba(self, Z: np.ndarray) -> np.ndarray:
        return platt_proba(self._decision(Z), self.platt_a_, self.platt_b_)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"support_vectors": self.support_vectors_, "dual_coef": self.dual_coef_, "intercept": self.intercept_,
                "gamma": np.asarray([self.gamma_]), "platt_a": self.platt_a_, "platt_b": self.platt_b_}

    def _load(self, arrays) -> None:
        self.support_vectors_, self.dual_coef_ = arrays["support_vectors"], arrays["dual_coef"]
        self.intercept_ = arrays["intercept"]
        self.gamma_ = float(arrays["gamma"][0])
        self.platt_a_, self.platt_b_ = arrays["platt_a"], arrays["platt_b"]
