"""Matplotlib (Agg) figures for report.html, returned as PNG bytes to inline as data: URIs."""

from __future__ import annotations

import base64
import io

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    _plt().close(fig)
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _curve_classes(classes: list[str]) -> list[int]:
    return [1] if len(classes) == 2 else list(range(len(classes)))


def roc_pr(y, proba, metrics: dict) -> bytes:
    """ROC and precision-recall curves side by side; the operating point (argmax) is a dot on each."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _plt()
    classes = metrics["classes"]
    y, proba = np.asarray(y), np.asarray(proba)
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(9, 4.2))
    for k in _curve_classes(classes):
        pos = y == k
        if not pos.any() or pos.all():
            continue
        point = metrics if len(classes) == 2 else metrics["per_class"][classes[k]]
        fpr, tpr, _ = roc_curve(pos, proba[:, k])
        line = roc_ax.plot(fpr, tpr, label=classes[k])[0]
        prec, rec, _ = precision_recall_curve(pos, proba[:, k])
        pr_ax.plot(rec, prec, color=line.get_color(), label=classes[k])
        if point.get("specificity") is not None and point.get("recall") is not None:
            roc_ax.plot([1 - point["specificity"]], [point["recall"]], "o", color=line.get_color(), ms=8,
                        mec="black")
        if point.get("precision") is not None and point.get("recall") is not None:
            pr_ax.plot([point["recall"]], [point["precision"]], "o", color=line.get_color(), ms=8, mec="black")
    roc_ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (dot: operating point)")
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (dot: operating point)",
              xlim=(0, 1.01), ylim=(0, 1.01))
    for ax in (roc_ax, pr_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left" if ax is pr_ax else "lower right", fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def reliability(cal: dict) -> bytes:
    """Observed rate against mean score per bin, with the diagonal, and how many rows each bin holds."""
    plt = _plt()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.6, 5.2), height_ratios=(3, 1), sharex=True)
    bins = cal["bins"]
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfectly calibrated")
    ax.plot([b["mean_score"] for b in bins], [b["observed"] for b in bins], "o-", label="this head")
    what = "P(positive)" if cal["kind"] == "positive class" else "confidence of the predicted class"
    ax.set(ylabel="observed rate" if cal["kind"] == "positive class" else "accuracy",
           title=f"Reliability (ECE {cal['ece']:.3f})" if cal["ece"] is not None else "Reliability")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["n"] for b in bins],
             width=[b["high"] - b["low"] for b in bins], color="#8aa", edgecolor="white")
    hist.set(xlabel=what, ylabel="rows", xlim=(0, 1))
    fig.tight_layout()
    return png_bytes(fig)


def group_bars(col: str, buckets: dict, intervals: dict) -> bytes:
    """Accuracy per bucket with its 95% interval as an error bar; n under each bar."""
    return bucket_bars(buckets, intervals, "accuracy", ("#4c72b0", "accuracy (95% interval)", f"By {col}"), (0, 1.05))


def bucket_bars(buckets: dict, intervals: dict, key: str, look: tuple[str, str, str], ylim=None) -> bytes:
    """`key` per bucket with its 95% interval as an error bar, n under each bar; look: colour, y label, title."""
    plt = _plt()
    names = list(buckets)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.75 * len(names) + 2), 3.4))
    x = np.arange(len(names))
    val = np.array([np.nan if buckets[b][key] is None else buckets[b][key] for b in names])
    bounds = np.array([(intervals.get(b) or {}).get(key) or [np.nan, np.nan] for b in names]).reshape(-1, 2)
    err = np.vstack([np.clip(val - bounds[:, 0], 0, None), np.clip(bounds[:, 1] - val, 0, None)])
    color, ylabel, title = look
    ax.bar(x, np.nan_to_num(val), color=color, yerr=np.nan_to_num(err), capsize=4, ecolor="black")
    ax.set_xticks(x, [f"{b}\n(n={buckets[b]['n']})" for b in names], fontsize=8)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return png_bytes(fig)


def feature_map(xy: np.ndarray, y: np.ndarray, wrong: np.ndarray, classes: list[str], method: str) -> bytes:
    """2-D map coloured by true label; mistakes drawn as black crosses on top."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    for k, name in enumerate(classes):
        sel = y == k
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, alpha=0.6, label=f"{name} (n={int(sel.sum())})")
    if wrong.any():
        ax.scatter(xy[wrong, 0], xy[wrong, 1], s=22, marker="x", color="black", lw=0.9,
                   label=f"mistakes (n={int(wrong.sum())})")
    ax.set(title=f"Features, {method}", xticks=[], yticks=[])
    ax.legend(fontsize=8, loc="best", markerscale=1.5)
    fig.tight_layout()
    return png_bytes(fig)


def thumbnail(path, size: int = 112) -> bytes | None:
    """A JPEG thumbnail of the source image, or None when it is gone or unreadable."""
    from ..images import open_rgb

    try:
        img = open_rgb(path)
    except Exception:  # ImageError, or anything odd in a file we only want to show
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
