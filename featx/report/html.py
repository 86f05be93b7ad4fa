"""report.html: one self-contained page per evaluation (every image inlined, no network), plus predictions.csv.

Called by featx.report.evaluate. `enrich` adds keys to the metrics before metrics.json is written
(intervals, extra_groups, calibration, timing, provenance); `write_page` writes report.html and
predictions.csv from the same numbers, so the page and metrics.json always agree.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..provenance import provenance
from ..targets import infer_kind
from . import plots
from ..metrics import INTERVAL_KEYS, calibration, compute_metrics, group_labels, interval_block

MAX_BUCKETS = 20  # an extra column with more distinct values is not a group column
MAX_EXTRA = 8  # group columns shown beyond --by (name more with --by)
GALLERY = 12  # thumbnails per gallery row
MAP_POINTS = 3000  # rows drawn in the feature map
IDENTITY_COLUMN = "photos per identity"
PREDICTIONS = "predictions.csv"
PAGE = "report.html"


@dataclass
class EvalRequest:
    """What evaluating a head needs (classifier or regression): the head and its card, the store (seen
    through the head's target for a classifier), the split, the --by columns and the --bins given."""

    head: Any
    card: dict
    head_dir: str
    store: Any
    split: str
    columns: list[str]
    store_name: str
    bins: dict = field(default_factory=dict)  # --bins: {column: edges}


@dataclass
class EvalRun:
    """What one evaluation scored: store rows, labels (head class indices), probabilities and where they came from."""

    rows: np.ndarray
    y: np.ndarray
    proba: np.ndarray
    store: Any
    card: dict
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # the --by columns, bucketed
    predict_seconds: float | None = None
    bins: dict[str, tuple[float, ...]] = field(default_factory=dict)  # --bins: {column: edges}

    @property
    def pred(self) -> np.ndarray:
        return self.proba.argmax(axis=1)


# ---------- numbers (go into metrics.json) ----------

def identity_buckets(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each of `rows`, how many photos of its identity the whole store holds: 1, 2-4, 5-9 or 10+."""
    ids = np.asarray(ids, dtype=str)
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    per_row = counts[inverse][rows]
    return np.select([per_row == 1, per_row < 5, per_row < 10], ["1", "2-4", "5-9"], "10+").astype(str)


def column_kinds(store, columns: dict) -> dict[str, str]:
    """{column: categorical | numeric}: each column's type in the store's target set (featx.targets),
    inferred from `columns` {name: values} for a store that has none."""
    kinds = getattr(store, "kinds", None) or {}
    return {c: kinds.get(c) or infer_kind(c, v) for c, v in columns.items()}


def extra_group_columns(run: EvalRun) -> dict[str, np.ndarray]:
    """Group columns the store has beyond --by: the first MAX_EXTRA extras with 2 to MAX_BUCKETS buckets,
    and identity counts when the store has identities."""
    out = {}
    extras = getattr(run.store, "extras", None) or {}  # read column by column (a store may hold 40)
    for col in extras:
        if col in run.groups or len(out) >= MAX_EXTRA:
            continue
        values = {col: np.asarray(extras[col])[run.rows]}
        labels = group_labels(values, column_kinds(run.store, values), run.bins)[col]
        if 1 < len(set(labels.tolist())) <= MAX_BUCKETS:
            out[col] = labels
    ids = getattr(run.store, "groups", None)
    if ids is not None and IDENTITY_COLUMN not in run.groups:
        out[IDENTITY_COLUMN] = identity_buckets(ids, run.rows)
    return out


def run_provenance(metrics: dict, run: EvalRun) -> dict:
    """Enough to trace the page to the exact run: the store's provenance, the head and its parameters, featx, date."""
    store = provenance(run.store)
    ctx = metrics.get("context", {})
    return {"store": ctx.get("store"), "split": ctx.get("split"), "release": store["release"],
            "tap": store["tap"], "weights_sha256": store["weights_sha256"],
            "manifest_hash": store["manifest_hash"],
            "head_manifest_hash": run.card.get("provenance", {}).get("manifest_hash"),
            "head": ctx.get("head"), "head_type": run.card.get("head"), "head_params": run.card.get("params", {}),
            "featx_version": __version__,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def enrich(metrics: dict, run: EvalRun) -> dict:
    """Add the report's extra keys to `metrics` in place (existing keys are left alone); returns it."""
    extra = extra_group_columns(run)
    classes = metrics["classes"]
    metrics["extra_groups"] = compute_metrics(run.y, run.proba, classes, extra)["groups"] if extra else {}
    metrics["intervals"] = interval_block(run.y, run.proba, {**run.groups, **extra})
    metrics["calibration"] = calibration(run.y, run.proba)
    metrics["timing"] = {"predict_seconds": run.predict_seconds, "predict_rows": int(len(run.rows)),
                         "fit_seconds": run.card.get("training", {}).get("fit_seconds")}
    metrics["provenance"] = run_provenance(metrics, run)
    return metrics


def write_predictions(path: Path, run: EvalRun, classes: list[str]) -> Path:
    """One line per scored row: store row, path, true and predicted class, P(predicted), correct, P(each class)."""
    paths = np.asarray(getattr(run.store, "paths", [""] * (int(run.rows.max()) + 1 if len(run.rows) else 0)))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "path", "y", "pred", "proba", "correct"] + [f"p_{c}" for c in classes])
        for r, t, p, pr in zip(run.rows, run.y, run.pred, run.proba):
            w.writerow([int(r), str(paths[r]), classes[t], classes[p], f"{pr[p]:.6f}", int(t == p)]
                       + [f"{v:.6f}" for v in pr])
    return path


# ---------- HTML pieces ----------

def esc(x) -> str:
    return html.escape(str(x), quote=True)


def fmt(x) -> str:
    return "n/a" if x is None else (str(x) if isinstance(x, int) else f"{x:.3f}")


def fmt_interval(iv) -> str:
    return "n/a" if not iv else f"[{iv[0]:.3f}, {iv[1]:.3f}]"


def img(data: bytes, alt: str, mime: str = "image/png", cls: str = "plot") -> str:
    return f'<img class="{cls}" alt="{esc(alt)}" src="{plots.data_uri(data, mime)}">'


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1180px;padding:16px 24px;
color:#222}
h1{font-size:1.5em;margin-bottom:4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.prov td{text-align:left;font-family:monospace;font-size:.85em}
.plot{max-width:100%;height:auto}.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.card{width:136px;font-size:.72em;border:1px solid #ddd;padding:4px}
.path{word-break:break-all;color:#555}.card img,.missing{width:128px;height:128px;object-fit:contain;background:#eee}
.missing{display:flex;align-items:center;justify-content:center;color:#a00;font-weight:bold}
.note{color:#555;font-size:.9em}
"""


def provenance_table(prov: dict) -> str:
    rows = [("store", prov.get("store")), ("split", prov.get("split")), ("release", prov.get("release")),
            ("tap", prov.get("tap")), ("weights sha256", prov.get("weights_sha256")),
            ("manifest hash", prov.get("manifest_hash")), ("head", f"{prov.get('head')} ({prov.get('head_type')})"),
            ("head manifest hash", prov.get("head_manifest_hash")),
            ("head parameters", json.dumps(prov.get("head_params", {}), sort_keys=True)),
            ("featx version", prov.get("featx_version")), ("date (UTC)", prov.get("date"))]
    body = "".join(f'<tr><th class="l">{esc(k)}</th><td data-prov="{esc(k)}">{esc(v)}</td></tr>' for k, v in rows)
    return f'<table class="prov">{body}</table>'


def headline_table(metrics: dict) -> str:
    iv = metrics["intervals"]
    rows = [f'<tr><th class="l">images</th><td data-metric="n">{metrics["n"]}</td><td></td></tr>']
    for key in INTERVAL_KEYS:
        rows.append(f'<tr><th class="l">{esc(key.replace("_", " "))}</th><td data-metric="{key}">{fmt(metrics[key])}'
                    f'</td><td data-metric-interval="{key}">{fmt_interval(iv["overall"].get(key))}</td></tr>')
    what = f"positive class: <b>{esc(metrics['positive'])}</b>" if metrics.get("positive") else \
        "macro averages over classes"
    return (f'<table><tr><th class="l">metric</th><th>value</th><th>{int(100 * iv["level"])}% interval</th></tr>'
            + "".join(rows) + f'</table><p class="note">{what}. Intervals: {esc(iv["method"])}, '
            f'{iv["n_boot"]} resamples, seed {iv["seed"]}.</p>')


def confusion_table(metrics: dict) -> str:
    classes, cm = metrics["classes"], np.asarray(metrics["confusion"])
    top = max(int(cm.max()), 1)
    head = "".join(f"<th>{esc(c)}</th>" for c in classes)
    rows = []
    for i, name in enumerate(classes):
        cells = "".join(f'<td data-cell="{i},{j}" style="background:rgba(49,130,189,{0.1 + 0.8 * cm[i, j] / top:.2f})">'
                        f"{cm[i, j]}</td>" for j in range(len(classes)))
        rows.append(f'<tr><th class="l">{esc(name)}</th>{cells}</tr>')
    return (f'<table class="confusion"><tr><th class="l">true \\ predicted</th>{head}</tr>{"".join(rows)}</table>')


def group_section(col: str, buckets: dict, intervals: dict, classes: list[str]) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in classes)
    rows = []
    for b, g in buckets.items():
        iv = intervals.get(b) or {}
        counts = "".join(f"<td>{g['class_counts'][c]}</td>" for c in classes)
        rows.append(f'<tr data-group="{esc(col)}" data-bucket="{esc(b)}"><td class="l">{esc(b)}</td>'
                    f'<td data-key="n">{g["n"]}</td><td data-key="accuracy">{fmt(g["accuracy"])}</td>'
                    f'<td data-interval="accuracy">{fmt_interval(iv.get("accuracy"))}</td>'
                    f'<td data-key="balanced_accuracy">{fmt(g["balanced_accuracy"])}</td>'
                    f'<td data-interval="balanced_accuracy">{fmt_interval(iv.get("balanced_accuracy"))}</td>'
                    f'<td data-key="roc_auc">{fmt(g["roc_auc"])}</td>{counts}</tr>')
    table = (f'<table><tr><th class="l">{esc(col)}</th><th>n</th><th>accuracy</th><th>interval</th>'
             f'<th>balanced acc.</th><th>interval</th><th>ROC AUC</th>{head}</tr>{"".join(rows)}</table>')
    return (f"<h3>By {esc(col)}</h3><div class=\"row\">{img(plots.group_bars(col, buckets, intervals), f'by {col}')}"
            f"{table}</div>")


# ---------- error gallery and feature map ----------

def source_path(store, path: str) -> Path:
    """Store paths are relative to the manifest root (attrs["manifest_root"]); absolute ones stay as they are."""
    root = dict(getattr(store, "attrs", {}) or {}).get("manifest_root")
    return Path(root) / path if root else Path(path)


def gallery_picks(run: EvalRun, n: int = GALLERY) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into run.rows) of the most confident mistakes and the least confident hits."""
    conf = run.proba.max(axis=1)
    right = run.pred == run.y
    wrong_pos, right_pos = np.flatnonzero(~right), np.flatnonzero(right)
    worst = wrong_pos[np.argsort(-conf[wrong_pos], kind="stable")][:n]
    shaky = right_pos[np.argsort(conf[right_pos], kind="stable")][:n]
    return worst, shaky


def gallery_card(run: EvalRun, i: int, classes: list[str], columns: dict[str, np.ndarray]) -> str:
    paths = getattr(run.store, "paths", None)
    path = str(paths[run.rows[i]]) if paths is not None else ""
    thumb = plots.thumbnail(source_path(run.store, path)) if path else None
    picture = img(thumb, path, "image/jpeg", "thumb") if thumb else '<div class="missing">missing</div>'
    groups = ", ".join(f"{c}={v[i]}" for c, v in columns.items())
    p = run.pred[i]
    return (f'<div class="card" data-row="{int(run.rows[i])}" data-missing="{int(thumb is None)}">{picture}'
            f'<div class="path">{esc(path)}</div><div>true <b>{esc(classes[run.y[i]])}</b>, predicted '
            f"<b>{esc(classes[p])}</b> ({run.proba[i, p]:.3f})</div><div>{esc(groups)}</div></div>")


def gallery_section(run: EvalRun, classes: list[str], columns: dict[str, np.ndarray]) -> str:
    worst, shaky = gallery_picks(run)
    out = []
    for title, picks in (("Most confident mistakes", worst), ("Least confident hits", shaky)):
        cards = "".join(gallery_card(run, int(i), classes, columns) for i in picks)
        out.append(f"<h3>{title} ({len(picks)})</h3><div class=\"gallery\">{cards or '<p>none</p>'}</div>")
    return "".join(out) + ('<p class="note">Score: the probability the head gave its predicted class. '
                           'Thumbnails are made from the source images; "missing" marks an image that is gone.</p>')


def embed_2d(X: np.ndarray, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """PCA always; UMAP too when umap-learn is installed."""
    from sklearn.decomposition import PCA

    X = X.reshape(len(X), -1).astype(np.float32)
    out = [("PCA", PCA(n_components=2, random_state=seed).fit_transform(X))]
    try:
        import umap  # optional
    except ImportError:
        return out
    out.append(("UMAP", umap.UMAP(n_components=2, random_state=seed).fit_transform(X)))
    return out


def map_section(run: EvalRun, classes: list[str], seed: int = 0) -> str:
    if len(run.rows) < 3 or not hasattr(run.store, "features"):
        return '<p class="note">Too few rows for a feature map.</p>'
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(run.rows), min(MAP_POINTS, len(run.rows)), replace=False))
    X = run.store.features(run.rows[pick])
    wrong = run.pred[pick] != run.y[pick]
    figs = [img(plots.feature_map(xy, run.y[pick], wrong, classes, method), f"feature map {method}")
            for method, xy in embed_2d(X, seed)]
    return (f'<div class="row">{"".join(figs)}</div><p class="note">{len(pick)} of {len(run.rows)} rows '
            "(random, seeded), coloured by true label; crosses mark mistakes.</p>")


# ---------- the page ----------

def page(metrics: dict, run: EvalRun) -> str:
    classes = metrics["classes"]
    prov, iv = metrics["provenance"], metrics["intervals"]["groups"]
    columns = {**run.groups, **extra_group_columns(run)}
    groups = {**metrics.get("groups", {}), **metrics.get("extra_groups", {})}
    group_html = "".join(group_section(c, b, iv.get(c, {}), classes) for c, b in groups.items()) or \
        '<p class="note">The data has no group columns.</p>'
    unshown = [c for c in (getattr(run.store, "extras", {}) or {}) if c not in groups]
    if unshown:
        group_html += (f'<p class="note">Not shown (too many values, or past the first {MAX_EXTRA}; name them '
                       f"with --by): {esc(', '.join(unshown))}.</p>")
    t = metrics.get("timing", {})
    timing = (f"predict {t['predict_seconds']:.3f} s for {t['predict_rows']} rows" if t.get("predict_seconds")
              is not None else "")
    title = f"featx report: {prov.get('head_type')} on {prov.get('store')} [{prov.get('split')}]"
    body = [f"<h1>{esc(title)}</h1><p class=\"note\">{esc(timing)}</p>",
            "<h2>Provenance</h2>", provenance_table(prov),
            "<h2>Headline metrics</h2>", headline_table(metrics),
            "<h2>ROC and precision-recall</h2>", img(plots.roc_pr(run.y, run.proba, metrics), "ROC and PR curves"),
            "<h2>Confusion matrix and calibration</h2>",
            f'<div class="row">{confusion_table(metrics)}'
            f'{img(plots.reliability(metrics["calibration"]), "reliability curve")}</div>',
            "<h2>Groups</h2>", group_html,
            "<h2>Error gallery</h2>", gallery_section(run, classes, columns),
            "<h2>Feature map</h2>", map_section(run, classes)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body>{''.join(body)}</body></html>\n")


def write_page(report_dir: str | Path, metrics: dict, run: EvalRun) -> dict[str, Path]:
    """report.html and predictions.csv in report_dir (metrics must have been through `enrich`)."""
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"predictions": write_predictions(out / PREDICTIONS, run, metrics["classes"])}
    files["html"] = out / PAGE
    tmp = out / (PAGE + ".tmp")
    tmp.write_text(page(metrics, run), encoding="utf-8")
    tmp.replace(files["html"])
    return files
