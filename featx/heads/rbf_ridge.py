"""RBF kernel ridge regression by the Nystroem method; penalty, gamma and target transform chosen on val.

Exact kernel ridge needs the n x n kernel (17k training rows: 2.3 GB and an O(n^3) solve). The
Nystroem approximation (Williams & Seeger 2001) uses m landmark rows, drawn at random from the
training rows (seeded): with C = k(X, L) [n, m] and k(L, L) = U S U', the features phi = C U S^-1/2
turn kernel ridge into ridge regression in m dimensions. One pass builds C'C for each gamma; every
penalty and transform of that gamma is then a cheap solve (featx.heads.ridge.RidgePath). Cost
O(n m d + n m^2) per gamma; memory O(n m).

The fitted head is a kernel expansion over the landmarks, f(x) = sum_i dual_i k(x, l_i) + b, saved as
landmarks [m, d], dual_coef [1, m], intercept [1] and gamma: the arrays an RBF SVM keeps (support
vectors, dual coefficients), evaluated by the same featx.heads.rbf.rbf_decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rbf import GAMMA_FACTORS, rbf_decision, rbf_kernel_blocks
from .registry import register_head
from .regression import TRANSFORMS, RegressionHead
from .ridge import RidgePath

ALPHA_GRID = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]  # penalty per training row (mean squared error + alpha |f|^2)


def rbf_kernel(A: np.ndarray, B: np.ndarray, gamma: float, block: int = 4096) -> np.ndarray:
    """exp(-gamma |a - b|^2) [len(A), len(B)], computed in row blocks."""
    out = np.empty((len(A), len(B)))
    for s, k in rbf_kernel_blocks(A, B, gamma, block):
        out[s:s + block] = k
    return out


@dataclass
class NystroemMap:
    """phi(x) = k(x, L) @ T, and the ridge path of the training rows in that space."""

    T: np.ndarray  # [m, r], r <= m (directions of k(L, L) with eigenvalues above the cut)
    path: RidgePath
    val_phi: np.ndarray  # [n_val, r]


@register_head
@dataclass(eq=False, repr=False)
class RBFRidgeHead(RegressionHead):
    """Kernel ridge regression with an RBF kernel (Nystroem, `n_landmarks` landmark rows)."""

    kind = "rbf-ridge"
    takes_weights = True
    default_grid = {"alpha": ALPHA_GRID, "gamma": None, "transform": list(TRANSFORMS)}  # gamma filled from dim
    n_landmarks: int = 2000
    eig_cut: float = 1e-10  # drop directions of k(L, L) below eig_cut * its largest eigenvalue

    def _fill_grid(self, grid: dict, dim: int) -> dict:
        if grid.get("gamma") is None:
            grid["gamma"] = [f / dim for f in GAMMA_FACTORS]
        return grid

    def _prepare(self, Z, Zv, grid, targets) -> None:
        self._maps: dict[float, NystroemMap] = {}
        self._work = None
        if Z is None:
            return
        m = min(int(self.n_landmarks), len(Z))
        pick = np.sort(np.random.default_rng(self.seed).choice(len(Z), m, replace=False))
        weight = next(iter(targets.values())).weight
        self._work = (np.ascontiguousarray(Z[pick]), Z, Zv, {k: t.t for k, t in targets.items()}, weight)
        self.n_landmarks_ = m

    def _map(self, gamma: float) -> NystroemMap:
        """The Nystroem map and ridge path for one gamma, built once per gamma of the grid."""
        if gamma not in self._maps:
            L, Z, Zv, ts, weight = self._work
            e, U = np.linalg.eigh(rbf_kernel(L, L, gamma))
            keep = e > self.eig_cut * e.max()
            T = U[:, keep] / np.sqrt(e[keep])
            C = rbf_kernel(Z, L, gamma)
            Cw = C if weight is None else C * weight[:, None]
            CtC, c_mean = Cw.T @ C, Cw.mean(axis=0)
            rhs = {k: T.T @ (Cw.T @ t) for k, t in ts.items()}
            del Cw
            del C
            path = RidgePath(T.T @ CtC @ T, c_mean @ T, len(Z), rhs)
            self._maps[gamma] = NystroemMap(T, path, rbf_kernel(Zv, L, gamma) @ T)
        return self._maps[gamma]

    def _fit_point(self, Z, targets, Zv, yv, point):
        nm = self._map(point["gamma"])
        w, b = nm.path.solve(targets.transform, point["alpha"] * len(Z))
        dual = nm.T @ w
        state = {"landmarks_": self._work[0], "dual_coef_": dual, "intercept_": b}
        return state, nm.val_phi @ w + b, {"n_landmarks": int(len(dual)), "rank": int(nm.T.shape[1])}

    def _selection_notes(self) -> dict:
        return {"approximation": f"Nystroem, {self.n_landmarks_} landmark rows drawn from the training rows "
                                 f"(seed {self.seed})"}

    def _predict_std(self, Z: np.ndarray) -> np.ndarray:
        return rbf_decision(Z, self.landmarks_, self.dual_coef_[None, :], np.asarray([self.intercept_]),
                            self.gamma_)[:, 0]

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"landmarks": self.landmarks_, "dual_coef": np.asarray(self.dual_coef_, np.float64)[None, :],
                "intercept": np.asarray([self.intercept_], np.float64), "gamma": np.asarray([self.gamma_])}

    def _load(self, arrays) -> None:
        self.landmarks_ = arrays["landmarks"]
        self.dual_coef_ = np.asarray(arrays["dual_coef"], np.float64)[0]
        self.intercept_ = float(arrays["intercept"][0])
        self.gamma_ = float(arrays["gamma"][0])
