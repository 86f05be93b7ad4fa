"""Linear heads: logistic regression and a linear SVM with Platt-scaled probabilities.

scikit-learn fits them; the head keeps coef/intercept and predicts with numpy.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from .base import (Head, Standardiser, best_point, binary_to_two, fit_platt, log_loss, platt_proba, sigmoid,
                   softmax)

# On standardised CNN features the best C is small; liblinear's primal solver also slows
# down sharply for large C (measured: 0.8 s at C=0.001, 150 s at C=10 on 4.7k x 1024).
C_GRID = [1e-4, 1e-3, 1e-2, 0.1, 1.0]
SVM_C_GRID = [1e-4, 1e-3, 1e-2, 0.1]


def linear_decision(Z: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    return Z @ coef.T + intercept


class LogRegHead(Head):
    """Standardised features -> multinomial (binary: sigmoid) logistic regression; C chosen on validation."""

    kind = "logreg"
    default_grid = {"C": C_GRID}
    default_params = {"max_iter": 2000}

    def _model(self, C: float) -> LogisticRegression:
        return LogisticRegression(C=C, max_iter=self.params["max_iter"], class_weight=self.class_weight,
                                  random_state=self.seed)

    def _fit(self, X, y, X_val, y_val) -> None:
        self.scaler = Standardiser.fit(X)
        Z, Zv = self.scaler(X), self.scaler(X_val)
        results, fitted = [], []
        for C in self.grid["C"]:
            m = self._model(C).fit(Z, y)
            self.coef, self.intercept = self._expand(m)
            p = self._proba(Zv)
            results.append({"C": C, "score": self.score(y_val, p.argmax(1)), "val_log_loss": log_loss(y_val, p)})
            fitted.append((self.coef, self.intercept))
        chosen = best_point(results, ("C",))
        self.coef, self.intercept = fitted[self.grid["C"].index(chosen["C"])]
        self.record(results, chosen)

    def _expand(self, m: LogisticRegression) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients in label order 0..K-1; classes absent from training get -inf logits."""
        K, D = self.n_classes, m.coef_.shape[1]
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
        z = linear_decision(Z, self.coef, self.intercept)
        if self.coef.shape[0] == 1:
            return binary_to_two(sigmoid(z[:, 0]))
        return softmax(z)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept}

    def _load(self, arrays) -> None:
        self.coef, self.intercept = arrays["coef"], arrays["intercept"]


class LinearSVMHead(Head):
    """Linear SVM (one-vs-rest for K > 2); C chosen on validation, then Platt scaling fitted on its decision values."""

    kind = "linear-svm"
    default_grid = {"C": SVM_C_GRID}
    default_params = {"max_iter": 5000}

    def _decision_fit(self, Z, y, C) -> tuple[np.ndarray, np.ndarray]:
        cols = [1] if self.n_classes == 2 else range(self.n_classes)
        coef, inter = [], []
        for c in cols:
            t = y == c
            if not t.any():  # class absent from training: never chosen
                coef.append(np.zeros(Z.shape[1]))
                inter.append(-1e9)
                continue
            m = LinearSVC(C=C, max_iter=self.params["max_iter"], class_weight=self.class_weight,
                          random_state=self.seed).fit(Z, t)
            coef.append(m.coef_[0])
            inter.append(m.intercept_[0])
        return np.ascontiguousarray(coef, np.float64), np.asarray(inter, np.float64)

    def _fit(self, X, y, X_val, y_val) -> None:
        self.scaler = Standardiser.fit(X)
        Z, Zv = self.scaler(X), self.scaler(X_val)
        results, fitted = [], []
        for C in self.grid["C"]:
            coef, inter = self._decision_fit(Z, y, C)
            f = linear_decision(Zv, coef, inter)
            a, b = calibrate(f, y_val)
            results.append({"C": C, **svm_scores(self, f, y_val, a, b)})
            fitted.append((coef, inter, a, b))
        chosen = best_point(results, ("C",))
        self.coef, self.intercept, self.platt_a, self.platt_b = fitted[self.grid["C"].index(chosen["C"])]
        self.record(results, chosen)
        self.selection["calibration"] = CALIBRATION

    def _proba(self, Z: np.ndarray) -> np.ndarray:
        return platt_proba(linear_decision(Z, self.coef, self.intercept), self.platt_a, self.platt_b)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept, "platt_a": self.platt_a, "platt_b": self.platt_b}

    def _load(self, arrays) -> None:
        self.coef, self.intercept = arrays["coef"], arrays["intercept"]
        self.platt_a, self.platt_b = arrays["platt_a"], arrays["platt_b"]


CALIBRATION = ("Platt sigmoid fitted on the validation decision values; "
               "ties in the metric go to the lower calibrated val_log_loss")


def svm_scores(head: Head, f: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    """Selection score from the raw decision (sign / argmax) and the log loss after Platt scaling."""
    pred = (f[:, 0] > 0).astype(np.int64) if f.shape[1] == 1 else f.argmax(1)
    return {"score": head.score(y, pred), "val_log_loss": log_loss(y, platt_proba(f, a, b))}


def calibrate(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per decision column Platt (A, B): column 0 vs label 1 for binary, column k vs label k otherwise."""
    if f.shape[1] == 1:
        ab = [fit_platt(f[:, 0], y == 1)]
    else:
        ab = [fit_platt(f[:, k], y == k) for k in range(f.shape[1])]
    a, b = zip(*ab)
    return np.asarray(a, np.float64), np.asarray(b, np.float64)
