"""Compare evaluations that scored the same rows: ranking with intervals, timings, paired McNemar tests.

    compare(["heads/logreg/report-utk-test", "heads/mlp/report-utk-test"], "compare-out")

Each folder is one written by `featx evaluate` (metrics.json + predictions.csv). Writes compare.html
(self-contained) and compare.json to the out folder. Reports on different rows are refused.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from ..errors import FeatxError
from ..metrics import bootstrap_intervals, mcnemar_exact

PAGE = "compare.html"
SUMMARY = "compare.json"
ALPHA = 0.05


@dataclass
class Run:
    """One report folder: its metrics and its per-row predictions."""

    folder: Path
    metrics: dict
    rows: np.ndarray
    paths: list[str]
    y: list[str]
    correct: np.ndarray

    @property
    def label(self) -> str:
        ctx = self.metrics.get("context", {})
        store = Path(str(ctx.get("store", "")).rstrip("/")).name.removesuffix(".zarr")
        return f"{ctx.get('head_type', '?')} on {store or '?'}"


def load_run(folder: str | Path) -> Run:
    folder = Path(folder)
    mpath, ppath = folder / "metrics.json", folder / "predictions.csv"
    if not mpath.is_file():
        raise FeatxError(f"{folder} is not a report folder (no metrics.json); make one with `featx evaluate --report`")
    if not ppath.is_file():
        raise FeatxError(f"{folder} has no predictions.csv; rerun `featx evaluate` with this featx to pair rows")
    try:
        metrics = json.loads(mpath.read_text())
        with open(ppath, newline="") as f:
            lines = list(csv.DictReader(f))
        rows = np.asarray([int(r["row"]) for r in lines], np.int64)
        correct = np.asarray([r["correct"] == "1" for r in lines], bool)
    except (OSError, ValueError, KeyError) as e:
        raise FeatxError(f"cannot read the report in {folder}: {e}") from None
    return Run(folder, metrics, rows, [r["path"] for r in lines], [r["y"] for r in lines], correct)


def check_same_rows(runs: list[Run]) -> None:
    """One-line FeatxError unless every run scored the same rows (row index, path and label) in the same order."""
    first = runs[0]
    for run in runs[1:]:
        why = None
        if len(run.rows) != len(first.rows):
            why = f"{len(first.rows)} vs {len(run.rows)} rows"
        elif not np.array_equal(run.rows, first.rows) or run.paths != first.paths:
            k = int(np.flatnonzero((run.rows != first.rows) | (np.asarray(run.paths) != np.asarray(first.paths)))[0])
            why = f"row {k} is {first.paths[k]!r} in one and {run.paths[k]!r} in the other"
        elif run.y != first.y:
            why = "the same rows carry different labels"
        if why:
            raise FeatxError(f"reports {first.folder} and {run.folder} were scored on different test rows ({why}); "
                             "compare needs reports on the same rows")


def accuracy_interval(run: Run) -> list[float] | None:
    iv = run.metrics.get("intervals", {}).get("overall", {}).get("accuracy")
    if iv is not None:
        return iv
    y = run.correct.astype(np.int64)  # older reports: bootstrap the accuracy from the rows
    return bootstrap_intervals(y, np.stack([1.0 - y, y.astype(float)], 1))["accuracy"]


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment for several pairwise tests."""
    order = np.argsort(pvalues, kind="stable")
    m, out, running = len(pvalues), [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def summarise(runs: list[Run]) -> dict:
    """Ranking (best accuracy first) and one exact McNemar test per pair, as plain JSON."""
    ranked = sorted(runs, key=lambda r: -(r.metrics.get("accuracy") or 0.0))
    plain = [r.label for r in ranked]
    labels = [f"{x} [{r.folder}]" if plain.count(x) > 1 else x for x, r in zip(plain, ranked)]
    table = []
    for rank, run in enumerate(ranked, 1):
        m, t = run.metrics, run.metrics.get("timing", {})
        table.append({"rank": rank, "label": labels[rank - 1], "folder": str(run.folder), "n": int(len(run.rows)),
                      "accuracy": m.get("accuracy"), "accuracy_interval": accuracy_interval(run),
                      "balanced_accuracy": m.get("balanced_accuracy"), "roc_auc": m.get("roc_auc"),
                      "fit_seconds": t.get("fit_seconds"), "predict_seconds": t.get("predict_seconds"),
                      "provenance": m.get("provenance", {})})
    pairs = []
    for (i, a), (j, b) in combinations(enumerate(ranked, 1), 2):
        test = mcnemar_exact(a.correct, b.correct)
        pairs.append({"a": i, "b": j, "a_label": labels[i - 1], "b_label": labels[j - 1], **test})
    for p, adj in zip(pairs, holm([p["p_value"] for p in pairs])):
        p["p_holm"] = adj
    from .. import __version__

    return {"runs": table, "pairs": pairs, "alpha": ALPHA, "featx_version": __version__,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "test": "exact two-sided McNemar (binomial on discordant pairs), Holm-adjusted across pairs"}


def compare(report_dirs, out_dir: str | Path) -> dict:
    """Load, check the rows agree, rank, test each pair; write compare.html and compare.json. Returns the summary."""
    dirs = [Path(d) for d in report_dirs]
    if len(dirs) < 2:
        raise FeatxError("compare needs at least two report folders")
    runs = [load_run(d) for d in dirs]
    check_same_rows(runs)
    summary = summarise(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    (out / PAGE).write_text(page(summary), encoding="utf-8")
    summary["page"] = str(out / PAGE)
    return summary


# ---------- the page ----------

def accuracy_plot(runs: list[dict]) -> bytes:
    """Accuracy of each run with its interval, best at the top."""
    from .plots import _plt, png_bytes

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(runs) + 1.4))
    y = np.arange(len(runs))[::-1]
    acc = np.array([r["accuracy"] or 0.0 for r in runs])
    iv = np.array([r["accuracy_interval"] or [a, a] for r, a in zip(runs, acc)])
    ax.errorbar(acc, y, xerr=[np.clip(acc - iv[:, 0], 0, None), np.clip(iv[:, 1] - acc, 0, None)], fmt="o",
                capsize=4)
    ax.set_yticks(y, [f"{r['rank']}. {r['label']}" for r in runs], fontsize=8)
    ax.set_xlabel("accuracy (95% bootstrap interval)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


def seconds(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def ranking_table(runs: list[dict]) -> str:
    from .html import esc, fmt, fmt_interval

    head = ("<tr><th>rank</th><th class=\"l\">run</th><th>n</th><th>accuracy</th><th>95% interval</th>"
            "<th>balanced acc.</th><th>ROC AUC</th><th>fit s</th><th>predict s</th><th class=\"l\">report</th></tr>")
    rows = []
    for r in runs:
        rows.append(f'<tr data-rank="{r["rank"]}"><td>{r["rank"]}</td><td class="l">{esc(r["label"])}</td>'
                    f'<td>{r["n"]}</td><td data-key="accuracy">{fmt(r["accuracy"])}</td>'
                    f'<td data-key="interval">{fmt_interval(r["accuracy_interval"])}</td>'
                    f'<td>{fmt(r["balanced_accuracy"])}</td><td>{fmt(r["roc_auc"])}</td>'
                    f'<td data-key="fit">{seconds(r["fit_seconds"])}</td><td data-key="predict">'
                    f'{seconds(r["predict_seconds"])}</td><td class="l">{esc(r["folder"])}</td></tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def pairs_table(summary: dict) -> str:
    from .html import esc

    head = ("<tr><th class=\"l\">A</th><th class=\"l\">B</th><th>only A right</th><th>only B right</th>"
            "<th>both right</th><th>both wrong</th><th>p (exact)</th><th>p (Holm)</th>"
            "<th class=\"l\">verdict</th></tr>")
    rows = []
    for p in summary["pairs"]:
        verdict = (f"differ at {summary['alpha']:g}" if p["p_holm"] < summary["alpha"]
                   else "no evidence of a difference")
        rows.append(f'<tr data-pair="{p["a"]},{p["b"]}"><td class="l">{p["a"]}. {esc(p["a_label"])}</td>'
                    f'<td class="l">{p["b"]}. {esc(p["b_label"])}</td><td>{p["only_a"]}</td><td>{p["only_b"]}</td>'
                    f'<td>{p["both"]}</td><td>{p["neither"]}</td><td data-key="p">{p["p_value"]:.4g}</td>'
                    f'<td data-key="p_holm">{p["p_holm"]:.4g}</td><td class="l">{verdict}</td></tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def provenance_rows(runs: list[dict]) -> str:
    from .html import esc

    keys = ("store", "release", "tap", "weights_sha256", "manifest_hash", "head_params", "featx_version", "date")
    head = "<tr><th>rank</th>" + "".join(f'<th class="l">{k.replace("_", " ")}</th>' for k in keys) + "</tr>"
    rows = []
    for r in runs:
        prov = r["provenance"]
        cells = "".join(f"<td>{esc(json.dumps(prov.get(k), sort_keys=True) if k == 'head_params' else prov.get(k))}"
                        "</td>" for k in keys)
        rows.append(f"<tr><td>{r['rank']}</td>{cells}</tr>")
    return f'<table class="prov">{head}{"".join(rows)}</table>'


def page(summary: dict) -> str:
    from .html import CSS, esc, img

    runs = summary["runs"]
    title = f"featx compare: {len(runs)} runs on the same {runs[0]['n']} rows"
    body = [f"<h1>{esc(title)}</h1>",
            f'<p class="note">featx {esc(summary["featx_version"])}, {esc(summary["date"])}. '
            f"{esc(summary['test'])}.</p>",
            "<h2>Ranking</h2>", img(accuracy_plot(runs), "accuracy with intervals"), ranking_table(runs),
            '<p class="note">fit s: training with the hyperparameter search (head.json); predict s: the head '
            "over the scored rows' cached features.</p>",
            "<h2>Paired tests</h2>", pairs_table(summary),
            "<h2>Provenance</h2>", provenance_rows(runs)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body>{''.join(body)}</body></html>\n")
