"""The one metrics module: the metrics of an evaluation (`compute_metrics`, what metrics.json holds), the
group buckets they are split by, and their error bars and paired tests (bootstrap intervals,
calibration, exact McNemar). Pure arithmetic at the bottom of the stack: imports nothing of featx's
but its errors.

Regression heads get their own
metrics (`regression_metrics`: mae, rmse, r2, within_5, bias, median_ae) and intervals
(`regression_interval_block`). The bootstrap recomputes the
same definitions on resampled rows (binary: the positive class is the second class; more classes:
macro averages over the classes present), so an interval always describes the number it sits beside.
"""

from __future__ import annotations

import bisect
import math
import re

import numpy as np

from .errors import FeatxError

# ---------- group buckets ----------

AGE_BINS = (0, 13, 20, 40, 60)  # whole years: 0-12, 13-19, 20-39, 40-59, 60+
AGE_COLUMNS = ("age",)  # a numeric column of this name (any case) holds ages in whole years
QUANTILES = 5  # other numeric columns: five groups of about equal size
UNKNOWN = "unknown"
_INTERVAL = re.compile(r"^(-?\d+(?:\.\d+)?)(?:-(?:-?\d+(?:\.\d+)?)|\+)$")


def finite_number(v: str) -> float | None:
    """float(v) when it is a finite number, else None."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _edge(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def bin_labels(edges) -> list[str]:
    """Names of the intervals [a, b) between increasing edges, the last one open (60+): a-(b-1) when every
    edge is a whole number (0-12, 13-19: 12.5 years is still 0-12), else a-b."""
    whole = all(float(e).is_integer() for e in edges)
    out = [f"{_edge(a)}-{_edge(b - 1) if whole else _edge(b)}" for a, b in zip(edges[:-1], edges[1:])]
    return out + [f"{_edge(edges[-1])}+"]


def check_bins(edges) -> tuple[float, ...]:
    edges = tuple(float(e) for e in edges)
    if not edges or any(not math.isfinite(e) for e in edges) or list(edges) != sorted(set(edges)):
        raise FeatxError(f"bins must be increasing numbers, not {', '.join(map(_edge, edges)) or 'none'}")
    return edges


def bucket_column(values, bins=None) -> np.ndarray:
    """Group labels for a column: with `bins` (increasing edges), each number goes into its interval
    [edge, next edge) (not a number, or below the first edge: unknown); without, each value is its own
    group (empty: unknown). Which columns get bins is the caller's choice (`bins_for`)."""
    values = np.asarray(values, dtype=str)
    if bins is None:
        return np.asarray([v.strip() or UNKNOWN for v in values], dtype=str)
    edges = check_bins(bins)
    xs = [finite_number(v.strip()) for v in values]
    names = bin_labels(edges)
    out = [UNKNOWN if x is None or x < edges[0] else names[bisect.bisect_right(edges, x) - 1] for x in xs]
    return np.asarray(out, dtype=str)


def bins_for(column: str, kind: str | None, values=None, given: dict | None = None):
    """The edges a group column is bucketed by, or None (each value its own group). Bins given (--bins)
    win; else the column's type (featx.targets: categorical or numeric) decides: categorical by value,
    numeric by age bands when it is an age (AGE_COLUMNS), else by quintiles of `values`."""
    if given and column in given:
        return given[column]
    if kind != "numeric":
        return None
    if column.lower() in AGE_COLUMNS:
        return AGE_BINS
    return quantile_edges(values) if values is not None else None


def group_labels(columns: dict, kinds: dict, given: dict | None = None) -> dict[str, np.ndarray]:
    """{column: group label per row} for the values of the rows scored, each bucketed by `bins_for`
    (its bins given, else its type's: kinds = {column: categorical | numeric})."""
    return {c: bucket_column(v, bins_for(c, kinds.get(c), v, given)) for c, v in columns.items()}


def quantile_edges(values, k: int = QUANTILES) -> tuple[float, ...] | None:
    """Edges splitting the numbers in `values` into k groups of about equal size (whole numbers stay whole,
    others are rounded to 3 significant digits); None when there are fewer than two distinct numbers."""
    xs = np.asarray([x for x in (finite_number(str(v).strip()) for v in values) if x is not None])
    if np.unique(xs).size < 2:
        return None
    q = np.quantile(xs, np.arange(k) / k)
    whole = bool(np.all(xs == np.round(xs)))
    edges = np.round(q) if whole else np.asarray([float(f"{e:.3g}") for e in q])
    edges[0] = min(edges[0], xs.min())
    return check_bins(np.unique(edges))


def ordered_buckets(labels: np.ndarray) -> list[str]:
    """Group order: intervals by their lower bound when every group is one, else sorted; unknown last."""
    present = set(labels.tolist()) - {UNKNOWN}
    lows = {b: _INTERVAL.match(b) for b in present}
    if present and all(lows.values()):
        groups = sorted(present, key=lambda b: float(lows[b].group(1)))
    else:
        groups = sorted(present)
    return groups + ([UNKNOWN] if UNKNOWN in set(labels.tolist()) else [])


INTERVAL_KEYS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "specificity", "roc_auc")
REGRESSION_KEYS = ("mae", "rmse", "r2", "within_5")  # metrics.json keys of a regression head, with intervals
WITHIN = 5.0  # within_5: the share of rows with |prediction - truth| <= 5 units
N_BOOT = 1000
SEED = 0
LEVEL = 0.95


# ---------- weighted metrics: one row of weights per bootstrap resample ----------

def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def weighted_confusion(y: np.ndarray, pred: np.ndarray, k: int, w: np.ndarray) -> np.ndarray:
    """[B, k, k] confusion matrices (rows true, columns predicted) under row weights w [B, n]."""
    onehot = np.zeros((len(y), k * k))
    onehot[np.arange(len(y)), y * k + pred] = 1.0
    return (w @ onehot).reshape(-1, k, k)


def _class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision/recall/f1/specificity [B, k] from confusion matrices [B, k, k]."""
    n = cm.sum(axis=(1, 2))[:, None]
    tp = np.diagonal(cm, axis1=1, axis2=2)
    fp, fn = cm.sum(axis=1) - tp, cm.sum(axis=2) - tp
    precision, recall = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn)
    with np.errstate(invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.where(precision + recall > 0,
                                                                                 precision + recall, 1), 0.0)
    f1 = np.where(np.isnan(precision) | np.isnan(recall), np.nan, f1)
    return {"precision": precision, "recall": recall, "f1": f1, "specificity": _safe_div(n - tp - fp - fn, n - tp - fn),
            "support": tp + fn}


def _nanmean_rows(a: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    a = np.where(keep, a, np.nan) if keep is not None else a
    count = (~np.isnan(a)).sum(axis=1)
    return np.where(count > 0, np.nansum(a, axis=1) / np.maximum(count, 1), np.nan)


def weighted_auc(pos: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC AUC [B] of `score` for the boolean `pos` under row weights w [B, n]; ties count one half."""
    order = np.argsort(score, kind="stable")
    s, p = score[order], pos[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of tied scores
    wp = np.add.reduceat(w[:, order] * p, starts, axis=1)
    wn = np.add.reduceat(w[:, order] * ~p, starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each score
    num = (wp * (below + 0.5 * wn)).sum(axis=1)
    return _safe_div(num, wp.sum(axis=1) * wn.sum(axis=1))


def weighted_metrics(y, proba, w: np.ndarray) -> dict[str, np.ndarray]:
    """The INTERVAL_KEYS metrics [B] under row weights w [B, n] (NaN where undefined)."""
    y = np.asarray(y, np.int64)
    proba = np.asarray(proba, np.float64)
    k = proba.shape[1]
    cm = weighted_confusion(y, proba.argmax(axis=1), k, w)
    n = cm.sum(axis=(1, 2))
    pc = _class_scores(cm)
    out = {"accuracy": _safe_div(np.trace(cm, axis1=1, axis2=2), n),
           "balanced_accuracy": _nanmean_rows(pc["recall"])}
    if k == 2:
        out.update({key: pc[key][:, 1] for key in ("precision", "recall", "f1", "specificity")})
        out["roc_auc"] = weighted_auc(y == 1, proba[:, 1], w)
    else:
        present = pc["support"] > 0
        out.update({key: _nanmean_rows(pc[key], present) for key in ("precision", "recall", "f1", "specificity")})
        aucs = np.stack([weighted_auc(y == c, proba[:, c], w) for c in range(k)], axis=1)
        out["roc_auc"] = _nanmean_rows(aucs)
    return out


def _bootstrap(n: int, metrics_of, keys, n_boot: int, seed: int, level: float,
               chunk: int) -> dict[str, list[float] | None]:
    """Percentile bootstrap over n rows: metrics_of(w) with w the [B, n] resampling counts -> {key: [B]}."""
    draws = {key: [] for key in keys}
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:  # chunks bound the [B, n] weight matrix
        b = min(chunk, n_boot - done)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)
        for key, vals in metrics_of(w).items():
            draws[key].append(vals)
        done += b
    tail = 100 * (1 - level) / 2
    out = {}
    for key in keys:
        vals = np.concatenate(draws[key])
        vals = vals[~np.isnan(vals)]
        out[key] = [float(v) for v in np.percentile(vals, [tail, 100 - tail])] if vals.size else None
    return out


def bootstrap_intervals(y, proba, n_boot: int = N_BOOT, seed: int = SEED, level: float = LEVEL,
                        chunk: int = 200) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals {metric: [low, high]} (None when never defined), seeded."""
    y = np.asarray(y, np.int64)
    if len(y) == 0:
        return {key: None for key in INTERVAL_KEYS}
    return _bootstrap(len(y), lambda w: weighted_metrics(y, proba, w), INTERVAL_KEYS, n_boot, seed, level, chunk)


def interval_block(y, proba, groups: dict[str, np.ndarray] | None = None, n_boot: int = N_BOOT,
                   seed: int = SEED, level: float = LEVEL) -> dict:
    """metrics.json "intervals": overall and per group bucket, with the method spelled out."""
    y = np.asarray(y, np.int64)
    proba = np.asarray(proba, np.float64)
    block = {"method": "percentile bootstrap over rows", "n_boot": n_boot, "seed": seed, "level": level,
             "overall": bootstrap_intervals(y, proba, n_boot, seed, level), "groups": {}}
    for col, labels in (groups or {}).items():
        labels = np.asarray(labels, dtype=str)
        block["groups"][col] = {str(b): bootstrap_intervals(y[labels == b], proba[labels == b], n_boot, seed,
                                                            level) for b in dict.fromkeys(labels.tolist())}
    return block


# ---------- calibration ----------

def calibration(y, proba, bins: int = 10) -> dict:
    """Reliability curve. Two classes: P(positive) against the positive rate; more: confidence against
    accuracy. Equal-width bins; ece = sum over bins of (rows in bin / n) * |mean score - observed rate|."""
    y = np.asarray(y, np.int64)
    proba = np.asarray(proba, np.float64)
    if proba.shape[1] == 2:
        score, hit, kind = proba[:, 1], (y == 1).astype(float), "positive class"
    else:
        score, hit, kind = proba.max(axis=1), (proba.argmax(axis=1) == y).astype(float), "top label"
    which = np.clip((score * bins).astype(int), 0, bins - 1)
    rows = []
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            mean_score, rate = float(score[sel].mean()), float(hit[sel].mean())
            ece += sel.sum() / len(y) * abs(mean_score - rate)
            rows.append({"low": b / bins, "high": (b + 1) / bins, "n": int(sel.sum()), "mean_score": mean_score,
                         "observed": rate})
    return {"kind": kind, "bins": rows, "ece": float(ece) if len(y) else None}


# ---------- paired test ----------

def mcnemar_exact(a_right, b_right) -> dict:
    """Exact two-sided McNemar test on paired correctness: a binomial(b + c, 1/2) test of the discordant pairs.

    b = rows only A got right, c = rows only B got right; p = min(1, 2 * P(X <= min(b, c))).
    """
    a_right = np.asarray(a_right, bool)
    b_right = np.asarray(b_right, bool)
    if a_right.shape != b_right.shape:
        raise ValueError("paired results must have the same length")
    b = int((a_right & ~b_right).sum())
    c = int((~a_right & b_right).sum())
    return {"only_a": b, "only_b": c, "both": int((a_right & b_right).sum()),
            "neither": int((~a_right & ~b_right).sum()), "p_value": binomial_two_sided(b, c)}


def binomial_two_sided(b: int, c: int) -> float:
    """Exact two-sided p of b vs c successes under p = 1/2 (integer arithmetic, no rounding until the end)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)


# --- the metrics of one evaluation (metrics.json) ---------------------------------------------

def _div(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def _binary_scores(tp, fp, fn, tn) -> dict:
    precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "specificity": _div(tn, tn + fp)}


def _auc(y_pos: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present."""
    if y_pos.all() or not y_pos.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y_pos, score))


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def compute_metrics(y_true, proba, classes: list[str], groups: dict[str, np.ndarray] | None = None) -> dict:
    """Metrics for integer labels `y_true` (indices into classes) and probabilities [n, K].

    groups: {column: bucket label per row}; each bucket gets the same metrics (without per_class).
    Undefined values (e.g. recall with no positives, AUC with one class) are None.
    """
    y = np.asarray(y_true).astype(np.int64)
    proba = np.asarray(proba, np.float64)
    K = len(classes)
    if proba.ndim != 2 or proba.shape[1] != K:
        raise FeatxError(f"probabilities have shape {proba.shape}, expected [n, {K}]")
    if len(y) != len(proba):
        raise FeatxError(f"{len(y)} labels but {len(proba)} predictions")
    pred = proba.argmax(axis=1)
    cm = np.zeros((K, K), np.int64)
    np.add.at(cm, (y, pred), 1)
    n = int(len(y))
    support = cm.sum(axis=1)
    per_class = {}
    for k, name in enumerate(classes):
        tp = cm[k, k]
        fp, fn = cm[:, k].sum() - tp, cm[k, :].sum() - tp
        s = _binary_scores(tp, fp, fn, n - tp - fp - fn)
        per_class[name] = {**s, "roc_auc": _auc(y == k, proba[:, k]), "support": int(support[k])}
    m = {
        "n": n,
        "accuracy": _div(np.trace(cm), n),
        "balanced_accuracy": _mean([per_class[c]["recall"] for c in classes]),
    }
    if K == 2:
        m.update(_binary_scores(cm[1, 1], cm[0, 1], cm[1, 0], cm[0, 0]))
        m["roc_auc"] = _auc(y == 1, proba[:, 1])
        m["positive"] = classes[1]
    else:
        for key in ("precision", "recall", "f1", "specificity"):
            m[key] = _mean([per_class[c][key] for c in classes if per_class[c]["support"]])
        m["roc_auc"] = _mean([per_class[c]["roc_auc"] for c in classes])
        m["positive"] = None
        m["averaging"] = "macro over classes present"
    m["confusion"] = cm.tolist()
    m["classes"] = list(classes)
    m["per_class"] = per_class
    m["groups"] = {}
    for col, labels in (groups or {}).items():
        labels = np.asarray(labels, dtype=str)
        m["groups"][col] = {}
        for b in ordered_buckets(labels):
            sel = labels == b
            g = compute_metrics(y[sel], proba[sel], classes)
            for key in ("groups", "per_class", "classes", "positive", "averaging"):
                g.pop(key, None)
            g["class_counts"] = {c: int(v) for c, v in zip(classes, np.bincount(y[sel], minlength=K))}
            m["groups"][col][b] = g
    return m


# ---------- regression ----------

def _as_pair(y, pred) -> tuple[np.ndarray, np.ndarray]:
    y, pred = np.asarray(y, np.float64).reshape(-1), np.asarray(pred, np.float64).reshape(-1)
    if len(y) != len(pred):
        raise FeatxError(f"{len(y)} targets but {len(pred)} predictions")
    if not (np.isfinite(y).all() and np.isfinite(pred).all()):
        raise FeatxError("targets and predictions must be finite numbers")
    return y, pred


def weighted_regression(y, pred, w: np.ndarray) -> dict[str, np.ndarray]:
    """The REGRESSION_KEYS metrics [B] under row weights w [B, n] (NaN where undefined: r2 of a constant)."""
    y, pred = _as_pair(y, pred)
    err = pred - y
    n = w.sum(axis=1)
    mse = _safe_div(w @ err ** 2, n)
    y_mean = _safe_div(w @ y, n)
    total = w @ y ** 2 - n * y_mean ** 2  # weighted sum of squares about the weighted mean
    total = np.where(total > 1e-12 * np.maximum(w @ y ** 2, 1e-300), total, 0.0)
    return {"mae": _safe_div(w @ np.abs(err), n), "rmse": np.sqrt(mse),
            "r2": np.where(total > 0, 1.0 - _safe_div(w @ err ** 2, total), np.nan),
            "within_5": _safe_div(w @ (np.abs(err) <= WITHIN).astype(np.float64), n)}


def regression_metrics(y, pred, groups: dict[str, np.ndarray] | None = None) -> dict:
    """n, mae, rmse, r2, within_5, bias (mean of prediction - truth), median_ae, and the same per group bucket.

    groups: {column: bucket label per row}. Undefined values (r2 when the truth is constant, anything on
    no rows) are None.
    """
    y, pred = _as_pair(y, pred)
    m = _regression_scores(y, pred)
    m["groups"] = {}
    for col, labels in (groups or {}).items():
        labels = np.asarray(labels, dtype=str)
        m["groups"][col] = {b: _regression_scores(y[labels == b], pred[labels == b]) for b in ordered_buckets(labels)}
    return m


def _regression_scores(y: np.ndarray, pred: np.ndarray) -> dict:
    n = int(len(y))
    if n == 0:
        return {"n": 0, **{k: None for k in REGRESSION_KEYS}, "bias": None, "median_ae": None}
    vals = weighted_regression(y, pred, np.ones((1, n)))
    out = {"n": n, **{k: _finite(v[0]) for k, v in vals.items()}}
    err = pred - y
    out.update({"bias": float(err.mean()), "median_ae": float(np.median(np.abs(err)))})
    return out


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def regression_intervals(y, pred, n_boot: int = N_BOOT, seed: int = SEED, level: float = LEVEL,
                         chunk: int = 200) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals {mae, rmse, r2, within_5: [low, high]} (None when never defined), seeded."""
    y, pred = _as_pair(y, pred)
    if len(y) == 0:
        return {key: None for key in REGRESSION_KEYS}
    return _bootstrap(len(y), lambda w: weighted_regression(y, pred, w), REGRESSION_KEYS, n_boot, seed, level,
                      chunk)


def regression_interval_block(y, pred, groups: dict[str, np.ndarray] | None = None, n_boot: int = N_BOOT,
                              seed: int = SEED, level: float = LEVEL) -> dict:
    """metrics.json "intervals" for a regression head: overall and per group bucket, method spelled out."""
    y, pred = _as_pair(y, pred)
    block = {"method": "percentile bootstrap over rows", "n_boot": n_boot, "seed": seed, "level": level,
             "overall": regression_intervals(y, pred, n_boot, seed, level), "groups": {}}
    for col, labels in (groups or {}).items():
        labels = np.asarray(labels, dtype=str)
        block["groups"][col] = {str(b): regression_intervals(y[labels == b], pred[labels == b], n_boot, seed, level)
                                for b in dict.fromkeys(labels.tolist())}
    return block
