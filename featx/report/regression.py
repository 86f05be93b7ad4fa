"""The report of a regression head: metrics.json, report.md, predictions.csv and one self-contained report.html.

`regression_report(report_dir, RegressionRun(...))` computes the metrics (featx.metrics.regression_metrics:
n, mae, rmse, r2, within_5, bias, median_ae, groups; bootstrap intervals), writes them, and builds the page:
headline metrics with intervals, predicted against true, error by group (by band of the true value: age
bands for an age, quintiles for other numbers), the largest errors as a thumbnail gallery, provenance. The caller supplies the scored rows, their
true values and the head's predictions, so the same page serves any numeric target.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FeatxError
from ..heads.card import to_json
from ..metrics import (REGRESSION_KEYS, bins_for, bucket_column, group_labels, regression_interval_block,
                       regression_metrics)
from .html import (CSS, EvalRequest, GALLERY, PAGE, PREDICTIONS, column_kinds, esc, extra_group_columns, fmt, fmt_interval, img,
                   provenance_table, run_provenance, source_path)
from .plots import _plt, bucket_bars, png_bytes, thumbnail

TARGET_BAND = "true {target} band"  # the group column made from the target itself


@dataclass
class RegressionRun:
    """What one evaluation of a regression head scored: store rows, true values, predictions, where from."""

    rows: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    store: Any
    card: dict
    target: str
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # the --by columns, bucketed
    predict_seconds: float | None = None
    context: dict = field(default_factory=dict)
    bins: dict = field(default_factory=dict)  # --bins: {column: edges}

    @property
    def error(self) -> np.ndarray:
        return self.pred - self.y


def target_groups(run: RegressionRun) -> dict[str, np.ndarray]:
    """The --by columns, plus bands of the true value by the target's bins (featx.metrics.bins_for: given
    ones, else ages 0-12, 13-19, ... for an age, else quintiles)."""
    groups = dict(run.groups)
    y = run.y.astype(str)
    bins = bins_for(run.target, "numeric", y, run.bins)
    if bins is not None:
        groups[TARGET_BAND.format(target=run.target)] = bucket_column(y, bins)
    return groups


def regression_metrics_json(run: RegressionRun) -> dict:
    """metrics.json of a regression head (existing classification keys are not used)."""
    groups = target_groups(run)
    extra = {c: v for c, v in extra_group_columns(run).items() if c not in groups}
    m = {"task": "regress", "target": run.target, **regression_metrics(run.y, run.pred, groups)}
    m["extra_groups"] = regression_metrics(run.y, run.pred, extra)["groups"] if extra else {}
    m["intervals"] = regression_interval_block(run.y, run.pred, {**groups, **extra})
    m["timing"] = {"predict_seconds": run.predict_seconds, "predict_rows": int(len(run.rows)),
                   "fit_seconds": run.card.get("training", {}).get("fit_seconds")}
    m["context"] = dict(run.context)
    m["provenance"] = run_provenance(m, run)
    return m


# ---------- figures ----------

def predicted_vs_true(y: np.ndarray, pred: np.ndarray, target: str) -> bytes:
    """Scatter of predicted against true (the diagonal is a perfect head), and the error against true."""
    plt = _plt()
    fig, (ax, res) = plt.subplots(1, 2, figsize=(10, 4.4))
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    err = np.abs(pred - y)
    ax.scatter(y, pred, s=9, c=err, cmap="viridis_r", alpha=0.7)
    ax.plot([lo, hi], [lo, hi], "--", color="grey", lw=1, label="predicted = true")
    ax.set(xlabel=f"true {target}", ylabel=f"predicted {target}", title=f"Predicted against true (n={len(y)})")
    ax.legend(loc="upper left", fontsize=8)
    res.scatter(y, pred - y, s=9, alpha=0.5, color="#4c72b0")
    res.axhline(0, color="grey", lw=1, ls="--")
    for band in (-5, 5):
        res.axhline(band, color="#c44", lw=0.8, ls=":")
    res.set(xlabel=f"true {target}", ylabel="predicted - true", title="Error against true (dotted: ±5)")
    fig.tight_layout()
    return png_bytes(fig)


def error_bars(col: str, buckets: dict, intervals: dict) -> bytes:
    """MAE per bucket with its 95% interval as an error bar; n under each bar."""
    return bucket_bars(buckets, intervals, "mae", ("#dd8452", "MAE (95% interval)", f"Error by {col}"))


# ---------- page pieces ----------

def headline(m: dict) -> str:
    iv = m["intervals"]
    names = {"mae": "MAE", "rmse": "RMSE", "r2": "R²", "within_5": "within 5"}
    rows = [f'<tr><th class="l">images</th><td data-metric="n">{m["n"]}</td><td></td></tr>']
    for key in REGRESSION_KEYS:
        rows.append(f'<tr><th class="l">{names[key]}</th><td data-metric="{key}">{fmt(m[key])}</td>'
                    f'<td data-metric-interval="{key}">{fmt_interval(iv["overall"].get(key))}</td></tr>')
    for key, name in (("bias", "bias (mean predicted - true)"), ("median_ae", "median absolute error")):
        rows.append(f'<tr><th class="l">{name}</th><td data-metric="{key}">{fmt(m[key])}</td><td></td></tr>')
    return (f'<table><tr><th class="l">metric</th><th>value</th><th>{int(100 * iv["level"])}% interval</th></tr>'
            + "".join(rows) + f'</table><p class="note">Target <b>{esc(m["target"])}</b>; errors in its units. '
            f'within 5: share of rows with |predicted - true| &le; 5. Intervals: {esc(iv["method"])}, '
            f'{iv["n_boot"]} resamples, seed {iv["seed"]}.</p>')


def group_section(col: str, buckets: dict, intervals: dict) -> str:
    rows = []
    for b, g in buckets.items():
        iv = intervals.get(b) or {}
        rows.append(f'<tr data-group="{esc(col)}" data-bucket="{esc(b)}"><td class="l">{esc(b)}</td>'
                    f'<td data-key="n">{g["n"]}</td><td data-key="mae">{fmt(g["mae"])}</td>'
                    f'<td data-interval="mae">{fmt_interval(iv.get("mae"))}</td><td data-key="rmse">{fmt(g["rmse"])}</td>'
                    f'<td data-key="bias">{fmt(g["bias"])}</td><td data-key="within_5">{fmt(g["within_5"])}</td></tr>')
    table = (f'<table><tr><th class="l">{esc(col)}</th><th>n</th><th>MAE</th><th>interval</th><th>RMSE</th>'
             f'<th>bias</th><th>within 5</th></tr>{"".join(rows)}</table>')
    return f'<h3>By {esc(col)}</h3><div class="row">{img(error_bars(col, buckets, intervals), f"by {col}")}{table}</div>'


def largest_errors(run: RegressionRun, n: int = GALLERY) -> np.ndarray:
    """Positions (into run.rows) of the n largest absolute errors, largest first (ties: row order)."""
    return np.argsort(-np.abs(run.error), kind="stable")[:n]


def gallery_card(run: RegressionRun, i: int, columns: dict[str, np.ndarray]) -> str:
    paths = getattr(run.store, "paths", None)
    path = str(paths[run.rows[i]]) if paths is not None else ""
    thumb = thumbnail(source_path(run.store, path)) if path else None
    picture = img(thumb, path, "image/jpeg", "thumb") if thumb else '<div class="missing">missing</div>'
    groups = ", ".join(f"{c}={v[i]}" for c, v in columns.items())
    return (f'<div class="card" data-row="{int(run.rows[i])}" data-missing="{int(thumb is None)}">{picture}'
            f'<div class="path">{esc(path)}</div><div>true <b>{run.y[i]:g}</b>, predicted <b>{run.pred[i]:.1f}</b> '
            f'(error {run.error[i]:+.1f})</div><div>{esc(groups)}</div></div>')


def gallery_section(run: RegressionRun, columns: dict[str, np.ndarray]) -> str:
    picks = largest_errors(run)
    cards = "".join(gallery_card(run, int(i), columns) for i in picks)
    return (f'<h3>Largest errors ({len(picks)})</h3><div class="gallery">{cards or "<p>none</p>"}</div>'
            '<p class="note">Thumbnails are made from the source images; "missing" marks an image that is gone.</p>')


def page(m: dict, run: RegressionRun) -> str:
    prov = m["provenance"]
    columns = {**target_groups(run), **extra_group_columns(run)}
    groups = {**m["groups"], **m.get("extra_groups", {})}
    iv = m["intervals"]["groups"]
    group_html = "".join(group_section(c, b, iv.get(c, {})) for c, b in groups.items()) or \
        '<p class="note">The data has no group columns.</p>'
    t = m["timing"]
    timing = f"predict {t['predict_seconds']:.3f} s for {t['predict_rows']} rows" if t.get("predict_seconds") else ""
    title = f"featx report: {prov.get('head_type')} ({m['target']}) on {prov.get('store')} [{prov.get('split')}]"
    body = [f"<h1>{esc(title)}</h1><p class=\"note\">{esc(timing)}</p>",
            "<h2>Provenance</h2>", provenance_table(prov),
            "<h2>Headline metrics</h2>", headline(m),
            "<h2>Predicted against true</h2>", img(predicted_vs_true(run.y, run.pred, m["target"]), "predicted against true"),
            "<h2>Error by group</h2>", group_html,
            "<h2>Error gallery</h2>", gallery_section(run, columns)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body>{''.join(body)}</body></html>\n")


def markdown(m: dict) -> str:
    lines = [f"# Regression head: {m['target']}", "", f"- images: {m['n']}", "", "| metric | value | 95% interval |",
             "|---|---|---|"]
    for key in REGRESSION_KEYS:
        lines.append(f"| {key} | {fmt(m[key])} | {fmt_interval(m['intervals']['overall'].get(key))} |")
    lines += [f"| bias | {fmt(m['bias'])} | |", f"| median_ae | {fmt(m['median_ae'])} | |"]
    for col, buckets in {**m["groups"], **m.get("extra_groups", {})}.items():
        lines += ["", f"## By {col}", "", f"| {col} | n | MAE | RMSE | bias | within 5 |", "|---|---|---|---|---|---|"]
        lines += [f"| {b} | {g['n']} | {fmt(g['mae'])} | {fmt(g['rmse'])} | {fmt(g['bias'])} | {fmt(g['within_5'])} |"
                  for b, g in buckets.items()]
    return "\n".join(lines) + "\n"


def write_predictions(path: Path, run: RegressionRun) -> Path:
    """One line per scored row: store row, path, true value, prediction, error (predicted - true)."""
    paths = getattr(run.store, "paths", None)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "path", "y", "pred", "error"])
        for r, t, p in zip(run.rows, run.y, run.pred):
            w.writerow([int(r), str(paths[r]) if paths is not None else "", f"{t:g}", f"{p:.4f}", f"{p - t:.4f}"])
    return path


def regression_report(report_dir: str | Path, run: RegressionRun) -> dict:
    """Write metrics.json, report.md, predictions.csv and report.html to report_dir; returns the metrics."""
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = regression_metrics_json(run)
    (out / "metrics.json").write_text(json.dumps(to_json(m), indent=2) + "\n")
    (out / "report.md").write_text(markdown(m))
    write_predictions(out / PREDICTIONS, run)
    tmp = out / (PAGE + ".tmp")
    tmp.write_text(page(m, run), encoding="utf-8")
    tmp.replace(out / PAGE)
    m["context"]["report"] = str(out)
    return m


# ---------- evaluating a saved regression head on a store ----------

def target_values(store, target: str) -> np.ndarray:
    """float64 values of `target` per store row (NaN where missing): a typed numeric target when the store
    has them, else the manifest column of that name."""
    if hasattr(store, "use"):  # stores with typed targets
        return np.asarray(store.use(target, "regress").values, np.float64)
    extras = dict(getattr(store, "extras", {}) or {})
    if target not in extras:
        raise FeatxError(f"the store has no column {target!r} for this {target} head; columns: "
                         f"{', '.join(sorted(extras)) or 'none'}")
    out = np.full(len(extras[target]), np.nan)
    for i, v in enumerate(extras[target]):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            pass
    out[~np.isfinite(out)] = np.nan
    return out


def evaluate_regression(e: EvalRequest, report_dir: str | Path) -> dict:
    """Score a regression head on e.split of the store (rows without a value are left out, and counted)."""
    import time

    from ..training import mirrored, predict_rows

    target = e.card.get("target") or "target"
    store = e.store.use(target, "regress") if hasattr(e.store, "use") else e.store  # typed targets: this one
    values = target_values(store, target)
    idx = store.indices(e.split)
    idx = idx[np.isfinite(values[idx])]
    if len(idx) == 0:
        raise FeatxError(f"the store has no usable {e.split} rows with a value for {target!r}")
    t0 = time.perf_counter()
    mirror = mirrored(e.card) and bool(getattr(store, "has_flip", False))
    rows, pred = predict_rows(e.head, store, idx, mirror)
    seconds = round(time.perf_counter() - t0, 4)
    cols = {c: np.asarray(store.extras[c])[rows] for c in e.columns}
    groups = group_labels(cols, column_kinds(store, cols), e.bins)
    prov = e.card.get("provenance", {})
    context = {"head": e.head_dir, "head_type": e.card["head"], "store": e.store_name, "split": e.split,
               "release": prov.get("release"), "tap": prov.get("tap"), "target": target,
               "missing_target": int(len(store.indices(e.split)) - len(idx)),
               "same_manifest": prov.get("manifest_hash") == store.attrs.get("manifest_hash"),
               "mirror_average": mirror}
    run = RegressionRun(rows, values[rows], pred, store, e.card, target, groups, seconds, context, e.bins)
    return regression_report(report_dir, run)
