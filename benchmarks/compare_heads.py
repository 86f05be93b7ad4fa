"""Train every head on each feature store and compare them on the test split.

    python benchmarks/compare_heads.py --store cache/celeba-hed-pool5.zarr [--store S2 ...] --out bench/heads

Writes DIR/results.csv, DIR/results.md and DIR/results.png: accuracy, balanced accuracy, F1, ROC AUC,
fit seconds, predict microseconds per image (head only, features in memory, best of 3) and the
hyperparameters each head chose on the validation split. Trained heads go to DIR/heads/<store>/<head>,
their `featx evaluate` reports to DIR/reports/<store>/<head>, and DIR/compare.html is the same page as
`featx compare DIR/reports/*/*` (one page per store, DIR/compare-<store>/, when the stores' rows differ).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from featx.errors import FeatxError
from featx.heads import HEADS, load_head
from featx.metrics import compute_metrics
from featx.report import evaluate
from featx.report.compare import compare
from featx.training import open_store, store_label, train

COLUMNS = ["store", "head", "n_train", "n_test", "accuracy", "balanced_accuracy", "f1", "roc_auc", "fit_s",
           "predict_us_per_image", "chosen"]


def time_predict(head, X: np.ndarray, repeats: int = 3) -> tuple[np.ndarray, float]:
    best, proba = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        proba = head.predict_proba(X)
        best = min(best, time.perf_counter() - t0)
    return proba, best * 1e6 / max(len(X), 1)


def run_store(path: str, label: str, heads: list[str], out: Path, split: str, seed: int,
              class_weight: str | None) -> list[dict]:
    store = open_store(path)
    idx = store.indices(split)
    if len(idx) == 0:
        raise FeatxError(f"store {path} has no usable {split} rows")
    X, y = store.features(idx), np.asarray(store.labels)[idx]
    rows = []
    for kind in heads:
        head_dir = out / "heads" / label / kind
        print(f"[{label}] {kind}: training ...", flush=True)
        card = train(store, kind, head_dir, seed=seed, class_weight=class_weight)
        head, _ = load_head(head_dir)
        proba, us = time_predict(head, X)
        m = compute_metrics(y, proba, list(store.classes))
        chosen = card["selection"].get("chosen", {})
        row = {"store": label, "head": kind, "n_train": card["training"]["n_train"], "n_test": int(len(idx)),
               "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "f1": m["f1"],
               "roc_auc": m["roc_auc"], "fit_s": card["training"]["fit_seconds"], "predict_us_per_image": us,
               "chosen": " ".join(f"{k}={v}" for k, v in chosen.items())}
        print(f"[{label}] {kind}: acc={fmt(row['accuracy'])} f1={fmt(row['f1'])} auc={fmt(row['roc_auc'])} "
              f"fit={row['fit_s']:.2f}s predict={us:.2f}us/img {row['chosen']}", flush=True)
        row["report"] = out / "reports" / label / kind
        evaluate(head_dir, store, split=split, report_dir=row["report"])
        rows.append(row)
    return rows


def compare_pages(rows: list[dict], out: Path) -> list[Path]:
    """The `featx compare` page over every report; one page per store when their rows differ."""
    try:
        return [Path(compare([r["report"] for r in rows], out)["page"])]
    except FeatxError as e:
        if "different test rows" not in str(e):
            raise
        print(f"note: {e}; writing one comparison per store", flush=True)
    pages = []
    for label in dict.fromkeys(r["store"] for r in rows):
        reports = [r["report"] for r in rows if r["store"] == label]
        if len(reports) > 1:
            pages.append(Path(compare(reports, out / f"compare-{label}")["page"]))
    return pages


def fmt(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def write_tables(rows: list[dict], out: Path) -> None:
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [fmt(r[k], 2 if k in ("fit_s", "predict_us_per_image") else 4) for k in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "results.md").write_text("# Head comparison\n\n" + "\n".join(lines) + "\n")


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['store']}\n{r['head']}" if len({x['store'] for x in rows}) > 1 else r["head"] for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(max(10, 1.2 * len(rows) + 6), 4))
    for off, key in ((-0.27, "accuracy"), (0.0, "f1"), (0.27, "roc_auc")):
        axes[0].bar(x + off, [r[key] or 0.0 for r in rows], width=0.27, label=key)
    lo = min([r[k] for r in rows for k in ("accuracy", "f1", "roc_auc") if r[k] is not None] + [1.0])
    axes[0].set_ylim(max(0.0, lo - 0.05), 1.0)
    axes[0].set_title("test metrics")
    axes[0].legend(fontsize=8)
    axes[1].bar(x, [max(r["fit_s"], 1e-4) for r in rows])
    axes[1].set_yscale("log")
    axes[1].set_title("fit seconds (incl. grid search)")
    axes[2].bar(x, [max(r["predict_us_per_image"], 1e-3) for r in rows])
    axes[2].set_yscale("log")
    axes[2].set_title("predict µs / image")
    for ax in axes:
        ax.set_xticks(x, names, fontsize=7, rotation=45, ha="right")
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", action="append", required=True, help="feature store (repeat for several)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--heads", default=",".join(HEADS), help=f"comma list (default: {','.join(HEADS)})")
    ap.add_argument("--split", default="test", help="split scored (default test)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--class-weight", default=None)
    args = ap.parse_args(argv)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    labels: list[str] = []
    rows: list[dict] = []
    try:
        for path in args.store:
            label = store_label(None, path)
            label = label if label not in labels else f"{label}-{len(labels)}"
            labels.append(label)
            rows += run_store(path, label, heads, args.out, args.split, args.seed, args.class_weight)
        pages = compare_pages(rows, args.out) if len(rows) > 1 else []
    except FeatxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_tables(rows, args.out)
    plot(rows, args.out)
    print((args.out / "results.md").read_text())
    print(f"wrote {args.out}/results.csv, results.md, results.png" + "".join(f", {p}" for p in pages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
