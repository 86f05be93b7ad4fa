"""RBF-kernel SVM: C and gamma chosen on validation, Platt-scaled probabilities.

The head keeps the support vectors, dual coefficients, intercepts and gamma, and
evaluates the kernel expansion with numpy (one-vs-rest columns for K > 2).
"""

from __future__ import annotations

import numpy as np
from sklearn.svm import SVC

from .base import Head, Standardiser, best_point, holdout_split, platt_proba
from .linear import CALIBRATION, calibrate, svm_scores

C_GRID = [0.1, 1.0, 10.0]
GAMMA_FACTORS = [0.25, 1.0, 4.0]  # times 1 / n_features ("scale" on standardised data)


def rbf_decision(Z: np.ndarray, sv: np.ndarray, dual: np.ndarray, intercept: np.ndarray, gamma: float,
                 block: int = 4096) -> np.ndarray:
    """sum_i dual[c, i] * exp(-gamma * |z - sv_i|^2) + intercept[c]  ->  [n, n_columns]."""
    out = np.empty((len(Z), len(intercept)))
    sv_sq = np.einsum("ij,ij->i", sv, sv)
    for s in range(0, len(Z), block):
        z = Z[s:s + block]
        d = np.einsum("ij,ij->i", z, z)[:, None] + sv_sq[None, :] - 2.0 * (z @ sv.T)
        np.maximum(d, 0.0, out=d)
        out[s:s + block] = np.exp(-gamma * d) @ dual.T + intercept
    return out


class RBFSVMHead(Head):
    kind = "rbf-svm"
    default_grid = {"C": C_GRID, "gamma": None}  # gamma grid is filled in from the feature dimension
    default_params = {"max_train": 20000, "cache_mb": 500}

    def _fit_columns(self, Z, y, C, gamma):
        """One SVC per decision column -> (support row indices, dual [m, n_sv], intercept [m])."""
        cols = [1] if self.n_classes == 2 else range(self.n_classes)
        per_col = []
        for c in cols:
            t = y == c
            if not t.any():
                per_col.append((np.zeros(0, np.int64), np.zeros(0), -1e9))
                continue
            m = SVC(C=C, kernel="rbf", gamma=gamma, class_weight=self.class_weight,
                    cache_size=self.params["cache_mb"], random_state=self.seed).fit(Z, t)
            per_col.append((m.support_, m.dual_coef_[0], float(m.intercept_[0])))
        rows = np.unique(np.concatenate([s for s, _, _ in per_col]))
        dual = np.zeros((len(per_col), len(rows)))
        for k, (s, dc, _) in enumerate(per_col):
            dual[k, np.searchsorted(rows, s)] = dc
        inter = np.asarray([b for _, _, b in per_col], np.float64)
        return np.ascontiguousarray(Z[rows]), dual, inter

    def _fit(self, X, y, X_val, y_val) -> None:
        limit = self.params["max_train"]
        self.subsample = None
        if limit and len(X) > limit:  # kernel SVMs scale ~n^2: train on a stratified subsample
            _, keep = holdout_split(y, limit / len(X), self.seed)
            X, y = X[keep], y[keep]
            self.subsample = int(len(keep))
        self.scaler = Standardiser.fit(X)
        Z, Zv = self.scaler(X), self.scaler(X_val)
        if self.grid.get("gamma") is None:
            self.grid["gamma"] = [f / Z.shape[1] for f in GAMMA_FACTORS]
        results, fitted = [], []
        for C in self.grid["C"]:
            for gamma in self.grid["gamma"]:
                sv, dual, inter = self._fit_columns(Z, y, C, gamma)
                f = rbf_decision(Zv, sv, dual, inter, gamma)
                a, b = calibrate(f, y_val)
                results.append({"C": C, "gamma": gamma, **svm_scores(self, f, y_val, a, b),
                                "n_support": int(len(sv))})
                fitted.append((sv, dual, inter, a, b))
        chosen = best_point(results, ("C", "gamma"))
        i = next(i for i, r in enumerate(results) if r["C"] == chosen["C"] and r["gamma"] == chosen["gamma"])
        self.sv, self.dual, self.intercept, self.platt_a, self.platt_b = fitted[i]
        self.gamma = float(chosen["gamma"])
        self.record(results, chosen)
        self.selection["calibration"] = CALIBRATION
        if self.subsample:
            self.selection["train_subsample"] = self.subsample

    def _decision(self, Z):
        return rbf_decision(Z, self.sv, self.dual, self.intercept, self.gamma)

    def _proba(self, Z: np.ndarray) -> np.ndarray:
        return platt_proba(self._decision(Z), self.platt_a, self.platt_b)

    def get_params(self) -> dict:
        p = super().get_params()
        p["n_support"] = int(len(self.sv))
        return p

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"support_vectors": self.sv, "dual_coef": self.dual, "intercept": self.intercept,
                "gamma": np.asarray([self.gamma]), "platt_a": self.platt_a, "platt_b": self.platt_b}

    def _load(self, arrays) -> None:
        self.sv, self.dual, self.intercept = arrays["support_vectors"], arrays["dual_coef"], arrays["intercept"]
        self.gamma = float(arrays["gamma"][0])
        self.platt_a, self.platt_b = arrays["platt_a"], arrays["platt_b"]
