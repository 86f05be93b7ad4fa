"""Honest metrics for a head on a feature store, written as JSON, Markdown and PNG plots.

metrics.json top-level keys: n, accuracy, balanced_accuracy, precision, recall, f1, specificity,
roc_auc, confusion (rows = true class, columns = predicted, in `classes` order), groups
({column: {bucket: metrics}}), plus classes, positive, per_class and context (head, store, split).
Binary tasks score the positive class: the second of the sorted classes (e.g. "male" of female/male).
With more than two classes precision, recall, F1, specificity and ROC AUC are macro averages.
evaluate() also adds intervals, extra_groups, calibration, timing and provenance (featx.report.html.enrich)
and writes report.html and predictions.csv beside metrics.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import FeatxError
from ..metrics import bucket_column, compute_metrics

REQUIRED_KEYS = ("n", "accuracy", "balanced_accuracy", "precision", "recall", "f1", "specificity", "roc_auc",
                 "confusion", "groups")


# ---------- evaluation of a saved head on a store ----------

def parse_by(by) -> list[str]:
    if by is None:
        return []
    if isinstance(by, str):
        by = by.split(",")
    return [b.strip() for b in by if b and b.strip()]


def evaluate(head_dir: str | Path, store, split: str = "test", by=None, report_dir: str | Path | None = None) -> dict:
    """Score the head in `head_dir` on `split` of `store` ("all" = every usable row) and write the report.

    The store may come from another collection (another manifest) of the same release and tap.
    Default report folder: <head_dir>/report-<store name>-<split>. Returns the metrics (as in metrics.json).
    """
    from ..data import check_split
    from ..heads import check_compatible, load_head
    from ..training import open_store, predict_rows, store_label

    head, card = load_head(head_dir)
    given = store if isinstance(store, (str, Path)) else None
    store = open_store(store)
    check_compatible(card, dict(store.attrs))
    check_split(split)
    columns = parse_by(by)
    extras = dict(store.extras)
    for c in columns:
        if c not in extras:
            have = ", ".join(sorted(extras)) or "none"
            raise FeatxError(f"the store has no column {c!r} for --by; columns: {have}")
    idx = store.indices(split)
    if len(idx) == 0:
        raise FeatxError(f"the store has no usable {split} rows")

    head_classes = list(card["classes"])
    store_classes = list(store.classes)
    missing = sorted(set(store_classes) - set(head_classes))
    if missing:
        raise FeatxError(f"the store has classes the head never learned: {', '.join(missing)} "
                         f"(head classes: {', '.join(head_classes)})")
    to_head = np.asarray([head_classes.index(c) for c in store_classes], np.int64)

    t0 = time.perf_counter()
    rows, proba = predict_rows(head, store, idx)
    predict_seconds = time.perf_counter() - t0
    y = to_head[np.asarray(store.labels)[rows]]
    groups = {c: bucket_column(extras[c][rows], c) for c in columns}
    metrics = compute_metrics(y, proba, head_classes, groups)
    metrics["context"] = {
        "head": str(head_dir), "head_type": card["head"], "store": str(getattr(store, "name", given)),
        "split": split, "release": card["provenance"].get("release"), "tap": card["provenance"].get("tap"),
        "same_manifest": card["provenance"].get("manifest_hash") == store.attrs.get("manifest_hash"),
    }
    if report_dir is None:
        report_dir = Path(head_dir) / f"report-{store_label(store, given)}-{split}"
    from .html import EvalRun, enrich, write_page

    run = EvalRun(rows, y, proba, store, card, groups, round(predict_seconds, 4))
    enrich(metrics, run)  # adds intervals, extra_groups, calibration, timing, provenance
    write_report(report_dir, metrics, y_true=y, proba=proba)
    write_page(report_dir, metrics, run)  # report.html, predictions.csv
    metrics["context"]["report"] = str(report_dir)
    return metrics


# ---------- writing ----------

def _fmt(x, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, int):
        return str(x)
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "specificity", "roc_auc")


def summary_table(metrics: dict, max_rows: int = 40) -> str:
    """A compact plain-text table: overall metrics, then one row per group bucket."""
    cols = ["n", "acc", "bal_acc", "prec", "recall", "f1", "spec", "auc"]
    rows = [["all"] + [_fmt(metrics["n"])] + [_fmt(metrics[k]) for k in SUMMARY_KEYS]]
    for col, buckets in metrics.get("groups", {}).items():
        for b, g in buckets.items():
            rows.append([f"{col}={b}"] + [_fmt(g["n"])] + [_fmt(g[k]) for k in SUMMARY_KEYS])
    rows = rows[:max_rows]
    header = ["group"] + cols
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    if metrics.get("positive"):
        out.append(f"positive class: {metrics['positive']}")
    return "\n".join(out)


def markdown(metrics: dict, plots: list[str]) -> str:
    ctx = metrics.get("context", {})
    classes = metrics["classes"]
    lines = ["# Head evaluation", ""]
    if ctx:
        lines += [f"- head: `{ctx.get('head')}` ({ctx.get('head_type')})", f"- store: `{ctx.get('store')}`, "
                  f"split `{ctx.get('split')}`", f"- release `{ctx.get('release')}`, tap `{ctx.get('tap')}`"]
    lines += [f"- images: {metrics['n']}"]
    if metrics.get("positive"):
        lines += [f"- positive class (precision, recall, F1, specificity, ROC AUC): **{metrics['positive']}**"]
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(metrics[k])} |" for k in SUMMARY_KEYS]
    lines += ["", "## Confusion matrix (rows: true, columns: predicted)", "",
              "| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for name, row in zip(classes, metrics["confusion"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "## Per class", "", "| class | support | precision | recall | F1 |", "|---|---|---|---|---|"]
    for name, pc in metrics["per_class"].items():
        cells = [str(pc["support"])] + [_fmt(pc[k]) for k in ("precision", "recall", "f1")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for col, buckets in metrics.get("groups", {}).items():
        lines += ["", f"## By {col}", "", "| " + col + " | n | accuracy | balanced acc. | F1 | ROC AUC | "
                  + " | ".join(classes) + " |", "|---" * (6 + len(classes)) + "|"]
        for b, g in buckets.items():
            counts = " | ".join(str(g["class_counts"][c]) for c in classes)
            lines.append(f"| {b} | {g['n']} | {_fmt(g['accuracy'])} | {_fmt(g['balanced_accuracy'])} | "
                         f"{_fmt(g['f1'])} | {_fmt(g['roc_auc'])} | {counts} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(report_dir: str | Path, metrics: dict, y_true=None, proba=None) -> dict[str, Path]:
    """metrics.json, report.md and PNGs (confusion.png; roc.png when labels and scores are given; groups PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    from ..heads.card import to_json

    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"confusion": _confusion_png(out, metrics)}
    if y_true is not None and proba is not None:
        roc = _roc_png(out, metrics, np.asarray(y_true), np.asarray(proba))
        if roc is not None:
            files["roc"] = roc
    for col, buckets in metrics.get("groups", {}).items():
        files[f"groups_{col}"] = _groups_png(out, col, buckets)
    files["metrics"] = out / "metrics.json"
    files["metrics"].write_text(json.dumps(to_json(metrics), indent=2) + "\n")
    files["markdown"] = out / "report.md"
    plots = [p.name for k, p in files.items() if p.suffix == ".png"]
    files["markdown"].write_text(markdown(metrics, plots))
    return files


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _confusion_png(out: Path, metrics: dict) -> Path:
    import matplotlib.pyplot as plt

    classes = metrics["classes"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(classes), 1.2 + 1.0 * len(classes)))
    cm = np.asarray(metrics["confusion"])
    ax.imshow(cm, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion (n={metrics['n']}, acc={_fmt(metrics['accuracy'])})")
    return _save(fig, out / "confusion.png")


def _roc_png(out: Path, metrics: dict, y_true: np.ndarray, proba: np.ndarray) -> Path | None:
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    classes = metrics["classes"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for k in ([1] if len(classes) == 2 else range(len(classes))):
        pos = y_true == k
        if pos.any() and not pos.all():
            fpr, tpr, _ = roc_curve(pos, proba[:, k])
            auc = metrics["roc_auc"] if len(classes) == 2 else metrics["per_class"][classes[k]]["roc_auc"]
            ax.plot(fpr, tpr, label=f"{classes[k]}" + (f" (AUC {auc:.3f})" if auc is not None else ""))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    return _save(fig, out / "roc.png")


def _groups_png(out: Path, col: str, buckets: dict) -> Path:
    import matplotlib.pyplot as plt

    names = list(buckets)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(names) + 2), 3.5))
    x = np.arange(len(names))
    for off, key in ((-0.2, "accuracy"), (0.2, "balanced_accuracy")):
        vals = [buckets[b][key] if buckets[b][key] is not None else 0.0 for b in names]
        ax.bar(x + off, vals, width=0.4, label=key.replace("_", " "))
    ax.set_xticks(x, [f"{b}\n(n={buckets[b]['n']})" for b in names], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(f"By {col}")
    ax.legend(loc="lower right", fontsize=8)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in col)
    return _save(fig, out / f"groups-{safe}.png")
