"""Honest metrics for a head on a feature store, written as JSON, Markdown and PNG plots.

metrics.json top-level keys: n, accuracy, balanced_accuracy, precision, recall, f1, specificity,
roc_auc, confusion (rows = true class, columns = predicted, in `classes` order), groups
({column: {bucket: metrics}}), plus classes, positive, per_class and context (head, store, split).
Binary tasks score the positive class: the second of the sorted classes (e.g. "male" of female/male).
With more than two classes precision, recall, F1, specificity and ROC AUC are macro averages.
evaluate() also adds intervals, extra_groups, calibration, timing and provenance (featx.report.html.enrich)
and writes report.html and predictions.csv beside metrics.json. A regression head's card (task "regress")
goes to featx.report.regression instead: metrics.json then holds task, target, n, mae, rmse, r2, within_5,
bias, median_ae, groups, intervals, timing and provenance.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import FeatxError
from ..metrics import check_bins, compute_metrics, group_labels
from .html import EvalRequest

REQUIRED_KEYS = ("n", "accuracy", "balanced_accuracy", "precision", "recall", "f1", "specificity", "roc_auc",
                 "confusion", "groups")


# ---------- evaluation of a saved head on a store ----------

def parse_by(by) -> list[str]:
    if by is None:
        return []
    if isinstance(by, str):
        by = by.split(",")
    return [b.strip() for b in by if b and b.strip()]


def parse_bins(bins) -> dict[str, tuple[float, ...]]:
    """{column: edges} from a dict, or from strings "COLUMN=E1,E2,..." (--bins, repeatable)."""
    if not bins:
        return {}
    if isinstance(bins, str):
        bins = [bins]
    pairs = bins.items() if isinstance(bins, dict) else [str(b).partition("=")[::2] for b in bins]
    out = {}
    for col, edges in pairs:
        if isinstance(edges, str):
            try:
                edges = [float(e) for e in edges.split(",") if e.strip()]
            except ValueError:
                raise FeatxError(f"--bins {col}={edges}: edges must be numbers, e.g. age=0,13,20,40,60") from None
        if not str(col).strip():
            raise FeatxError("--bins needs COLUMN=EDGES, e.g. age=0,13,20,40,60")
        out[str(col).strip()] = check_bins(edges)
    return out


def check_groups(store, columns: list[str], bins) -> dict[str, tuple[float, ...]]:
    """The bins given ({column: edges}), with every --by and --bins column checked against the store's
    columns. How a column without given bins is bucketed is its type's choice (featx.metrics.bins_for)."""
    extras, given = store.extras, parse_bins(bins)  # extras: read column by column, as asked for
    for opt, names in (("--by", columns), ("--bins", given)):
        for c in names:
            if c not in extras:
                have = ", ".join(sorted(extras)) or "none"
                raise FeatxError(f"the store has no column {c!r} for {opt}; columns: {have}")
    return given


def head_set(card: dict, store, targets: str | None = None):
    """The store through target set `targets`, else the set the head was trained on when the store has
    it (by manifest hash), else the store's current set."""
    if targets is None and hasattr(store, "target_sets"):
        want = card.get("provenance", {}).get("manifest_hash")
        same = [s["id"] for s in store.target_sets() if s["manifest_hash"] == want]
        if same and same[0] != store.set_id:
            from ..store import FeatureStore

            store = FeatureStore(store.group, store.name, same[0])
    elif targets is not None and hasattr(store, "target_sets"):
        from ..store import FeatureStore

        store = FeatureStore(store.group, store.name, targets)
    return store


def evaluate(head_dir: str | Path, store, split: str = "test", by=None, report_dir: str | Path | None = None,
             targets: str | None = None, bins=None) -> dict:
    """Score the head in `head_dir` on `split` of `store` ("all" = every usable row) and write the report.

    The store may come from another collection (another manifest) of the same release and tap.
    `targets`: the store's target set (default: the head's own when the store has it, else the current).
    `by`: group columns; `bins`: {column: edges} (or "COLUMN=E1,E2,..." strings) to bucket a numeric
    column by, else the column's type decides (featx.metrics.bins_for: ages in 0-12, 13-19, 20-39,
    40-59, 60+; other numbers in quintiles; categorical columns by value).
    Default report folder: <head_dir>/report-<store name>-<split>. Returns the metrics (as in metrics.json).
    """
    from ..data import check_split
    from ..heads import check_compatible, load_head
    from ..heads.card import card_task
    from ..training import open_store, store_label, use_target

    head, card = load_head(head_dir)
    given_store = store if isinstance(store, (str, Path)) else None
    base = head_set(card, open_store(store), targets)
    target = card.get("target")  # cards before targets: the store's label (or the regress report's column)
    regress = card_task(card) == "regress"  # its report reads the target itself (any store, old or new)
    store = use_target(base, target, card_task(card)) if target and not regress else base
    check_compatible(card, dict(store.attrs))
    check_split(split)
    columns = parse_by(by)
    given = check_groups(store, columns, bins)
    if report_dir is None:
        report_dir = Path(head_dir) / f"report-{store_label(store, given_store)}-{split}"
    name = str(getattr(store, "name", given_store))
    if regress:
        from .regression import evaluate_regression

        e = EvalRequest(head, card, str(head_dir), base, split, columns, name, given)
        return evaluate_regression(e, report_dir)
    return evaluate_classifier(EvalRequest(head, card, str(head_dir), store, split, columns, name, given),
                               report_dir)


def evaluate_classifier(e: EvalRequest, report_dir: str | Path) -> dict:
    """Score a classifier head on e.split of the store; metrics.json, report.md, report.html and plots."""
    from ..training import mirrored, predict_rows
    from .html import EvalRun, column_kinds, enrich, write_page

    store, card = e.store, e.card
    idx = store.indices(e.split)
    if len(idx) == 0:
        raise FeatxError(f"the store has no usable {e.split} rows")
    head_classes = list(card["classes"])
    store_classes = list(store.classes)
    missing = sorted(set(store_classes) - set(head_classes))
    if missing:
        raise FeatxError(f"the store has classes the head never learned: {', '.join(missing)} "
                         f"(head classes: {', '.join(head_classes)})")
    to_head = np.asarray([head_classes.index(c) for c in store_classes], np.int64)

    t0 = time.perf_counter()
    mirror = mirrored(card) and bool(getattr(store, "has_flip", False))
    rows, proba = predict_rows(e.head, store, idx, mirror)
    predict_seconds = time.perf_counter() - t0
    y = to_head[np.asarray(store.labels)[rows]]
    values = {c: np.asarray(store.extras[c])[rows] for c in e.columns}
    groups = group_labels(values, column_kinds(store, values), e.bins)
    metrics = compute_metrics(y, proba, head_classes, groups)
    metrics["context"] = {
        "head": e.head_dir, "head_type": card["head"], "store": e.store_name,
        "split": e.split, "release": card["provenance"].get("release"), "tap": card["provenance"].get("tap"),
        "same_manifest": card["provenance"].get("manifest_hash") == store.attrs.get("manifest_hash"),
        "target": card.get("target", "label"), "left_out": store.missing(e.split) if hasattr(store, "missing") else 0,
        "mirror_average": mirror,
    }
    run = EvalRun(rows, y, proba, store, card, groups, round(predict_seconds, 4), e.bins)
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


REGRESSION_SUMMARY = ("mae", "rmse", "r2", "within_5", "bias")


def summary_table(metrics: dict, max_rows: int = 40) -> str:
    """A compact plain-text table: overall metrics, then one row per group bucket (a regression head's
    report: MAE, RMSE, R², within 5, bias)."""
    regress = metrics.get("task") == "regress"
    keys = REGRESSION_SUMMARY if regress else SUMMARY_KEYS
    cols = ["n", *keys] if regress else ["n", "acc", "bal_acc", "prec", "recall", "f1", "spec", "auc"]
    rows = [["all"] + [_fmt(metrics["n"])] + [_fmt(metrics[k]) for k in keys]]
    for col, buckets in metrics.get("groups", {}).items():
        for b, g in buckets.items():
            rows.append([f"{col}={b}"] + [_fmt(g["n"])] + [_fmt(g[k]) for k in keys])
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
