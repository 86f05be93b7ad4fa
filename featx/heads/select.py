"""The one hyperparameter search every head uses.

Each grid point is fitted on the training rows only and scored on the validation rows (the store's
val split, or a holdout), so the chosen model is the one that was scored: nothing is refitted on
train + val. It is scikit-learn's GridSearchCV with a PredefinedSplit of one fold (train rows -1,
val rows 0) and refit=False, written as a plain loop because heads need two things GridSearchCV
does not give: a score computed after fitting on the val rows (Platt scaling of SVM decision values)
and fitting from store chunks (sgd streams; it never holds the training set).

Grid points come from sklearn's ParameterGrid (keys in sorted order, the last varying fastest).
The best point has the highest score (classifiers: accuracy or -val_log_loss; regressors: -val_mae);
ties go to the lower val_log_loss (regressors: val_rmse), then to the earliest grid point (grids list
the strongest regularisation first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sklearn.model_selection import ParameterGrid

# point -> (fitted attributes of that candidate, its result row: score, val_log_loss, ...)
FitPoint = Callable[[dict], tuple[dict[str, Any], dict[str, Any]]]


@dataclass
class Search:
    grid: dict[str, list]
    results: list[dict]  # one row per grid point: the point, score, val_log_loss, head extras
    best: dict  # the chosen grid point
    state: dict[str, Any]  # fitted attributes of the chosen candidate


def rank(row: dict, i: int) -> tuple:
    """Sort key of result row i: higher is better. Ties: lower val_log_loss (classifiers) or val_rmse
    (regressors), then the earlier point."""
    return (row["score"], -row.get("val_log_loss", row.get("val_rmse", 0.0)), -i)


def grid_search(grid: dict[str, list], fit_point: FitPoint) -> Search:
    """Fit every grid point; keep only the best candidate's state (bounded memory)."""
    results: list[dict] = []
    best_key, best, state = None, {}, {}
    for i, point in enumerate(ParameterGrid(grid)):
        fitted, row = fit_point(dict(point))
        results.append({**point, **row})
        key = rank(results[-1], i)
        if best_key is None or key > best_key:
            best_key, best, state = key, dict(point), fitted
    return Search(grid, results, best, state)


def best_point(results: list[dict], keys: tuple[str, ...]) -> dict:
    """The grid point (the `keys` values) of the best row, by the same rule as grid_search."""
    i = max(range(len(results)), key=lambda i: rank(results[i], i))
    return {k: results[i][k] for k in keys}
