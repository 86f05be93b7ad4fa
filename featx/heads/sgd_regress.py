"""Linear regression by SGD over store chunks: a store larger than memory trains in bounded memory.

The regression twin of the `sgd` classifier and the same stream: pass 1 reads the training chunks
for the features' mean and variance; then, for each grid point (alpha, transform), each epoch
visits the chunks in a random order, `mix_chunks` at a time, shuffles those rows together and calls
SGDRegressor.partial_fit on the standardised transformed target. The validation MAE in the target's
units after each epoch drives early stopping and the choice. Only the targets ([n] floats) are held.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import SGDRegressor

from ..errors import FeatxError
from .registry import register_head
from .regression import TRANSFORMS, LinearRegressionHead, Targets, random_holdout, val_scores
from .select import grid_search
from .sgd import Mixer, Reader, array_reader, first_pass

LOSSES = ("squared_error", "huber", "epsilon_insensitive")


@dataclass
class RegStream:
    """What one streamed fit reads: the chunk reader, targets per row, the training batches, val rows."""

    read: Reader
    y: np.ndarray  # targets in their units, indexed by row
    mixer: Mixer
    train_idx: np.ndarray
    val_idx: np.ndarray


@register_head
@dataclass(eq=False, repr=False)
class SGDRegressHead(LinearRegressionHead):
    kind = "sgd-regress"
    default_grid = {"alpha": [1e-5, 1e-4, 1e-3], "transform": list(TRANSFORMS)}
    loss: str = "squared_error"
    epochs: int = 10
    patience: int = 3
    mix_chunks: int = 8

    def check_params(self) -> None:
        super().check_params()
        if self.loss not in LOSSES:
            raise FeatxError(f"unknown loss {self.loss!r} for {self.kind}; use one of {', '.join(LOSSES)}")

    def _fit(self, X, y, X_val, y_val) -> None:
        yall = np.concatenate([y, y_val])
        tr, va = np.arange(len(X)), np.arange(len(X), len(yall))
        self._fit_stream(array_reader(np.concatenate([X, X_val])), yall, tr, va, (False,))

    def fit_stream(self, read: Reader, targets: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray | None = None,
                   flips: tuple[bool, ...] = (False,), on: str = "val") -> "SGDRegressHead":
        """Fit from chunks: `read(idx, flip)` yields (rows, X); targets[rows] are the values to learn."""
        self.check_params()
        targets = np.asarray(targets, np.float64)
        train_idx = np.sort(np.asarray(train_idx))
        if val_idx is None or len(val_idx) == 0:
            if len(train_idx) < 2:
                raise FeatxError("need at least two rows to hold some out for the choice")
            tr, ho = random_holdout(len(train_idx), 0.2, self.seed)
            train_idx, val_idx, on = train_idx[tr], train_idx[ho], "holdout 20% of the training rows"
        val_idx = np.sort(np.asarray(val_idx))
        if len(train_idx) == 0:
            raise FeatxError("no training rows")
        bad = int((~np.isfinite(targets[np.concatenate([train_idx, val_idx])])).sum())
        if bad:
            raise FeatxError(f"{bad} targets are missing or not finite; leave those rows out")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._fit_stream(read, targets, train_idx, val_idx, tuple(flips))
        self._selected_on(on)
        return self

    def _fit_stream(self, read: Reader, y, train_idx, val_idx, flips) -> None:
        self.scaler_, groups = first_pass(read, train_idx, flips)
        y_tr = y[train_idx]
        self.target_range_ = np.asarray([y_tr.min(), y_tr.max()], np.float64)
        grid = self._transform_grid(self.search_grid(len(self.scaler_.mean)), y[np.concatenate([train_idx, val_idx])])
        s = RegStream(read, y, Mixer(read, groups, flips, self.scaler_, self.mix_chunks), train_idx, val_idx)
        fitted = {}
        for name in grid["transform"]:
            tg = Targets.make(name, y_tr)
            full = np.full(len(y), np.nan)
            full[train_idx] = tg.t
            fitted[name] = (tg, full)
        self._record(grid_search(grid, lambda p: self._fit_point_stream(s, *fitted[p["transform"]], p)))
        self.selection_.update(self._transform_notes)
        self.selection_["streamed"] = {"chunks": len(groups), "flips": list(flips)}

    def _fit_point_stream(self, s: RegStream, tg: Targets, t_full: np.ndarray, point: dict) -> tuple[dict, dict]:
        """Epochs of partial_fit with early stopping on the val MAE; the best epoch's weights."""
        rng = np.random.default_rng(self.seed)
        reg = SGDRegressor(loss=self.loss, alpha=point["alpha"], random_state=self.seed)
        best, best_epoch, bad, snap = None, 0, 0, None
        for epoch in range(1, int(self.epochs) + 1):
            for Xb, tb in s.mixer.epoch(t_full, rng):
                reg.partial_fit(Xb, tb)
            coef, intercept = np.asarray(reg.coef_, np.float64).copy(), float(reg.intercept_[0])
            row = self._val_row(s, tg, coef, intercept)
            if best is None or row["val_mae"] < best["val_mae"] - 1e-9:
                best, best_epoch, bad, snap = row, epoch, 0, (coef, intercept)
            else:
                bad += 1
                if bad >= int(self.patience):
                    break
        state = {"coef_": snap[0], "intercept_": snap[1], "target_mean_": tg.mean, "target_scale_": tg.scale}
        return state, {**best, "epochs": best_epoch}

    def _val_row(self, s: RegStream, tg: Targets, coef: np.ndarray, intercept: float) -> dict:
        preds, truth = [], []
        for rows, X in s.read(s.val_idx, False):
            preds.append(np.clip(tg.to_units(self.scaler_(X) @ coef + intercept), *self.target_range_))
            truth.append(s.y[np.asarray(rows)])
        return val_scores(np.concatenate(truth), np.concatenate(preds))
