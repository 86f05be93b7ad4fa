"""Linear heads: logistic regression and a linear SVM with Platt-scaled probabilities.

scikit-learn fits them; the head keeps coef/intercept and predicts with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from .base import Head, binary_to_two, fit_platt, log_loss, platt_proba, sigmoid, softmax

# On standardised CNN features the best C is small; liblinear's primal solver also slows
# down sharply for large C (measured: 0.8 s at C=0.001, 150 s at C=10 on 4.7k x 1024).
C_GRID = [1e-4, 1e-3, 1e-2, 0.1, 1.0]
SVM_C_GRID = [1e-4, 1e-3, 1e-2, 0.1]
CALIBRATION = ("Platt sigmoid fitted on the validation decision values; "
               "ties in the metric go to the lower calibrated val_log_loss")


def linear_decision(Z: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    return Z @ coef.T + intercept


def logistic_proba(Z: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Binary (one coef row): sigmoid; otherwise softmax over the K logits."""
    z = linear_decision(Z, coef, intercept)
    if coef.shape[0] == 1:
        return binary_to_two(sigmoid(z[:, 0]))
    return softmax(z)


@dataclass(eq=False, repr=False)
class LogRegHead(Head):
    """Standardised features -> multinomial (binary: sigmoid) logistic regression; C chosen on validation."""

    kind = "logreg"
    default_grid = {"C": C_GRID}
    max_iter: int = 2000

    def _fit_point(self, Z, y, Zv, yv, point):
        m = LogisticRegression(C=point["C"], max_iter=self.max_iter, class_weight=self._weight_mode(),
                               random_state=self.seed).fit(Z, y)
        coef, intercept = self._expand(m)
        p = logistic_proba(Zv, coef, intercept)
        return ({"coef_": coef, "intercept_": intercept},
                {"score": self._score(yv, p.argmax(1)), "val_log_loss": log_loss(yv, p)})

    def _expand(self, m: LogisticRegression) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients in label order 0..K-1; classes absent from training get -inf logits."""
        K, D = self.n_classes_, m.coef_.shape[1]
        if len(m.classes_) == 2 and K == 2:
            return np.ascontiguousarray(m.coef_, np.float64), np.ascontiguousarray(m.intercept_, np.float64)
        coef = np.zeros((K, D))
        inter = np.full(K, -1e9)
        if len(m.classes_) == 2:  # two of K classes present: logit of class[1] vs class[0]
            coef[m.classes_[1]], inter[m.classes_[0]], inter[m.classes_[1]] = m.coef_[0], 0.0, m.intercept_[0]
        else:
            coef[m.classes_], inter[m.classes_] = m.coef_, m.intercept_
        return coef, inter

    def _proba(self, Z: np.ndarray) -> np.ndarray:
        return logistic_proba(Z, self.coef_, self.intercept_)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_}

    def _load(self, arrays) -> None:
        self.coef_, self.intercept_ = arrays["coef"], arrays["intercept"]


@dataclass(eq=False, repr=False)
class LinearSVMHead(Head):
    """Linear SVM (one-vs-rest for K > 2); C chosen on validation, then Platt scaling fitted on its decision values."""

    kind = "linear-svm"
    default_grid = {"C": SVM_C_GRID}
    max_iter: int = 5000

    def _decision_fit(self, Z, y, C) -> tuple[np.ndarray, np.ndarray]:
        cols = [1] if self.n_classes_ == 2 else range(self.n_classes_)
        coef, inter = [], []
        for c in cols:
            t = y == c
            if not t.any():  # class absent from training: never chosen
                coef.append(np.zeros(Z.shape[1]))
                inter.append(-1e9)
                continue
            m = LinearSVC(C=C, max_iter=self.max_iter, class_weight=self._weight_mode(),
                          random_state=self.seed).fit(Z, t)
            coef.append(m.coef_[0])
            inter.append(m.intercept_[0])
        return np.ascontiguousarray(coef, np.float64), np.asarray(inter, np.float64)

    def _fit_point(self, Z, y, Zv, yv, point):
        coef, inter = self._decision_fit(Z, y, point["C"])
        f = linear_decision(Zv, coef, inter)
        a, b = calibrate(f, yv)
        return {"coef_": coef, "intercept_": inter, "platt_a_": a, "platt_b_": b}, svm_scores(self, f, yv, a, b)

    def _selection_notes(self) -> dict:
        return {"calibration": CALIBRATION}

    def _proba(self, Z: np.ndarray) -> np.ndarray:
        return platt_proba(linear_decision(Z, self.coef_, self.intercept_), self.platt_a_, self.platt_b_)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_, "platt_a": self.platt_a_,
                "platt_b": self.platt_b_}

    def _load(self, arrays) -> None:
        self.coef_, self.intercept_ = arrays["coef"], arrays["intercept"]
        self.platt_a_, self.platt_b_ = arrays["platt_a"], arrays["platt_b"]


def svm_scores(head: Head, f: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    """Selection score from the raw decision (sign / argmax) and the log loss after Platt scaling."""
    pred = (f[:, 0] > 0).astype(np.int64) if f.shape[1] == 1 else f.argmax(1)
    return {"score": head._score(y, pred), "val_log_loss": log_loss(y, platt_proba(f, a, b))}


def calibrate(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per decision column Platt (A, B): column 0 vs label 1 for binary, column k vs label k otherwise."""
    if f.shape[1] == 1:
        ab = [fit_platt(f[:, 0], y == 1)]
    else:
        ab = [fit_platt(f[:, k], y == k) for k in range(f.shape[1])]
    a, b = zip(*ab)
    return np.asarray(a, np.float64), np.asarray(b, np.float64)
