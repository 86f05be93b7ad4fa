"""Logistic regression by SGD over store chunks, so a store larger than memory trains in bounded memory.

Pass 1 streams the training chunks for the mean and variance (Chan's parallel update).
Then, for each alpha of the grid (the shared grid_search), each epoch visits the chunks in a random
order, a few at a time, shuffles those rows together and calls SGDClassifier.partial_fit. The
validation log loss after each epoch drives early stopping and the choice of alpha.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
from sklearn.linear_model import SGDClassifier

from ..errors import FeatxError
from .base import (Head, Standardiser, as_2d, binary_to_two, class_weights, holdout_split, ovr_normalise,
                   safe_scale, sigmoid)
from .select import grid_search

# (row indices, flip) -> iterator of (rows, features); rows index the label array
Reader = Callable[[np.ndarray, bool], Iterable[tuple[np.ndarray, np.ndarray]]]


def array_reader(X: np.ndarray, chunk: int = 1024) -> Reader:
    """An in-memory array served in chunks, like FeatureStore.iter_chunks."""

    def read(idx: np.ndarray, flip: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s in range(0, len(idx), chunk):
            rows = idx[s:s + chunk]
            yield rows, X[rows]

    return read


class RunningStats:
    """Streaming per-column mean and variance (float64)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, X: np.ndarray) -> None:
        nb = len(X)
        if nb == 0:
            return
        mb = X.mean(axis=0)
        m2b = ((X - mb) ** 2).sum(axis=0)
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta ** 2 * (self.n * nb / n)
        self.n = n

    def scaler(self) -> Standardiser:
        return Standardiser(self.mean, safe_scale(self.m2 / self.n))


def first_pass(read: Reader, train_idx: np.ndarray, flips: tuple[bool, ...]) -> tuple[Standardiser, list[np.ndarray]]:
    """Pass 1 over the training chunks: the features' scaler and the training rows of each stored chunk."""
    stats, groups = RunningStats(), []
    for flip in flips:
        for rows, X in read(train_idx, flip):
            X = as_2d(X)
            if not np.isfinite(X).all():
                raise FeatxError("features contain NaN or infinity")
            stats.add(X)
            if not flip:
                groups.append(np.asarray(rows))
    if stats.n == 0:
        raise FeatxError("no training rows")
    return stats.scaler(), groups


@dataclass
class Mixer:
    """One epoch's batches: the training chunks in a random order, `mix` at a time, rows shuffled within each mix."""

    read: Reader
    groups: list[np.ndarray]  # training rows of each stored chunk
    flips: tuple[bool, ...]
    scaler: Standardiser
    mix: int

    def epoch(self, values: np.ndarray, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(standardised X, values[rows]) per mix, shuffled; values are indexed by row."""
        units = [(g, f) for f in self.flips for g in range(len(self.groups))]
        order = rng.permutation(len(units))
        mix = max(1, int(self.mix))
        for start in range(0, len(order), mix):
            Xb, vb = [], []
            for flip in self.flips:
                sel = [self.groups[units[u][0]] for u in order[start:start + mix] if units[u][1] == flip]
                if not sel:
                    continue
                for rows, X in self.read(np.sort(np.concatenate(sel)), flip):
                    Xb.append(self.scaler(X))
                    vb.append(values[np.asarray(rows)])
            Xb, vb = np.concatenate(Xb), np.concatenate(vb)
            p = rng.permutation(len(vb))
            yield Xb[p], vb[p]


def sgd_proba(Z: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """One-vs-rest logistic outputs (SGDClassifier's log_loss), rows normalised to sum to 1."""
    z = Z @ coef.T + intercept
    if z.shape[1] == 1:
        return binary_to_two(sigmoid(z[:, 0]))
    return ovr_normalise(sigmoid(z))


@dataclass
class Stream:
    """What one SGD fit reads: the chunk reader, labels, the training batches and the val rows."""

    read: Reader
    labels: np.ndarray
    mixer: Mixer
    val_idx: np.ndarray
    weights: np.ndarray  # per-class sample weights


@dataclass(eq=False, repr=False)
class SGDHead(Head):
    kind = "sgd"
    default_grid = {"alpha": [1e-5, 1e-4, 1e-3]}
    choice_metric = "val_log_loss"  # score = -val_log_loss
    epochs: int = 10
    patience: int = 3
    mix_chunks: int = 8

    def _fit(self, X, y, X_val, y_val) -> None:
        Xall = np.concatenate([X, X_val])
        yall = np.concatenate([y, y_val])
        tr, va = np.arange(len(X)), np.arange(len(X), len(Xall))
        self._fit_stream(array_reader(Xall), yall, tr, va, (False,))

    def fit_stream(self, read: Reader, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray | None = None,
                   flips: tuple[bool, ...] = (False,), on: str = "val") -> "SGDHead":
        """Fit from chunks: `read(idx, flip)` yields (rows, X); labels[rows] are the targets."""
        self.check_params()
        labels = np.asarray(labels).astype(np.int64)
        train_idx = np.asarray(train_idx)
        if val_idx is None or len(val_idx) == 0:
            tr, ho = holdout_split(labels[train_idx], 0.2, self.seed)
            train_idx, val_idx, on = train_idx[tr], train_idx[ho], "holdout 20% of the training rows"
        if len(train_idx) == 0:
            raise FeatxError("no training rows")
        if len(np.unique(labels[train_idx])) < 2:
            raise FeatxError("the training rows hold only one class")
        self._set_classes(max(labels[train_idx].max(), labels[val_idx].max()) + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._fit_stream(read, labels, np.sort(train_idx), np.sort(val_idx), tuple(flips))
        self._selected_on(on)
        return self

    def _fit_stream(self, read: Reader, labels, train_idx, val_idx, flips) -> None:
        self.scaler_, groups = first_pass(read, train_idx, flips)
        weights = class_weights(labels[train_idx], self.n_classes_, self._weight_mode())
        s = Stream(read, labels, Mixer(read, groups, flips, self.scaler_, self.mix_chunks), val_idx, weights)
        self._record(grid_search(self.search_grid(len(self.scaler_.mean)), lambda p: self._fit_alpha(s, p)))
        self.selection_["streamed"] = {"chunks": len(groups), "flips": list(flips)}

    def _fit_alpha(self, s: Stream, point: dict) -> tuple[dict, dict]:
        """Epochs of partial_fit with early stopping on the val log loss; the best epoch's weights."""
        rng = np.random.default_rng(self.seed)
        clf = SGDClassifier(loss="log_loss", alpha=point["alpha"], random_state=self.seed)
        best, best_epoch, bad, snap = float("inf"), 0, 0, None
        for epoch in range(1, int(self.epochs) + 1):
            for Xb, yb in s.mixer.epoch(s.labels, rng):
                clf.partial_fit(Xb, yb, classes=np.arange(self.n_classes_), sample_weight=s.weights[yb])
            coef = np.ascontiguousarray(clf.coef_, np.float64)
            intercept = np.ascontiguousarray(clf.intercept_, np.float64)
            loss, acc = self._val_loss(s, coef, intercept)
            if snap is None or loss < best - 1e-6:
                best, best_epoch, bad, snap = loss, epoch, 0, (coef.copy(), intercept.copy(), acc)
            else:
                bad += 1
                if bad >= int(self.patience):
                    break
        return ({"coef_": snap[0], "intercept_": snap[1]},
                {"score": -best, "val_log_loss": best, "epochs": best_epoch, "val_accuracy": snap[2]})

    def _val_loss(self, s: Stream, coef: np.ndarray, intercept: np.ndarray) -> tuple[float, float]:
        total, right, n = 0.0, 0, 0
        for rows, X in s.read(s.val_idx, False):
            y = s.labels[np.asarray(rows)]
            p = sgd_proba(self.scaler_(X), coef, intercept)
            total -= float(np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1.0)).sum())
            right += int((p.argmax(1) == y).sum())
            n += len(y)
        return total / max(n, 1), right / max(n, 1)

    def _proba(self, Z: np.ndarray) -> np.ndarray:
        return sgd_proba(Z, self.coef_, self.intercept_)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_}

    def _load(self, arrays) -> None:
        self.coef_, self.intercept_ = arrays["coef"], arrays["intercept"]
