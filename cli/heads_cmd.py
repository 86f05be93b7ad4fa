"""`featx train-head`, `featx evaluate`, `featx predict`: heads over cached features."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from featx.errors import FeatxError

from . import checks


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def train_head(
    store: str = typer.Option(..., "--store", callback=checks.store_source,
                              help="Feature store (folder or URL) made by `featx extract`."),
    head: str = typer.Option(..., "--head", help="logreg | linear-svm | rbf-svm | mlp | sgd"),
    out: Path = typer.Option(..., "--out", callback=checks.out_dir, help="Folder for the saved head, e.g. heads/gender."),
    select_on: str = typer.Option("val", "--select-on", help="val (the store's val split) or holdout (20% of train)."),
    class_weight: Optional[str] = typer.Option(None, "--class-weight", help="balanced: weight classes by 1/frequency."),
    seed: int = typer.Option(0, "--seed"),
    augment_flip: bool = typer.Option(False, "--augment-flip", help="Also train on mirrored-image features."),
) -> None:
    """Train a head on cached features; hyperparameters are chosen on the validation split."""
    from featx.training import train

    card = train(store, head, out, select_on=select_on, class_weight=class_weight, seed=seed,
                 augment_flip=augment_flip)
    t, sel, vm = card["training"], card["selection"], card["val_metrics"]
    chosen = ", ".join(f"{k}={v}" for k, v in sel.get("chosen", {}).items())
    print(f"trained {card['head']} on {t['n_train']} rows in {t['fit_seconds']:.2f}s; "
          f"chose {chosen} on {sel.get('on')} ({sel.get('metric')})")
    print(f"val: n={vm['n']} accuracy={_fmt(vm['accuracy'])} balanced_accuracy={_fmt(vm['balanced_accuracy'])} "
          f"f1={_fmt(vm['f1'])} roc_auc={_fmt(vm['roc_auc'])}")
    print(f"saved {out} (head.safetensors, head.json)")


def evaluate(
    head: Path = typer.Option(..., "--head", help="A folder written by `featx train-head`."),
    store: str = typer.Option(..., "--store", callback=checks.store_source,
                              help="Feature store of the same release and tap (any collection)."),
    split: str = typer.Option("test", "--split", help="test | val | train | all"),
    by: Optional[str] = typer.Option(None, "--by", help="Manifest columns for per-group metrics, e.g. age,race."),
    report: Optional[Path] = typer.Option(None, "--report", callback=checks.out_dir,
                                          help="Report folder (default <head>/report-<store>-<split>)."),
) -> None:
    """Score a saved head on a feature store; write report.html, metrics.json, predictions.csv, report.md and plots."""
    from featx.report import evaluate as run, summary_table

    metrics = run(head, store, split=split, by=by, report_dir=report)
    ctx = metrics["context"]
    print(f"{ctx['head_type']} head on {ctx['store']} [{split}]")
    print(summary_table(metrics))
    print(f"report: {ctx['report']}/report.html, metrics.json, predictions.csv, report.md, *.png")


def predict(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders of images."),
    head: Path = typer.Option(..., "--head", help="A folder written by `featx train-head`."),
    detect_faces: bool = typer.Option(False, "--detect-faces",
                                      help="Crop the largest face first (needs the extra featx\\[faces])."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines (one object per image, as they come)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    weights: Optional[Path] = typer.Option(None, "--weights",
                                           help="Canonical weights file; must match the head's sha256."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Predict labels for new photos: preprocessing -> backbone -> tap -> head."""
    from featx.predict import iter_predictions

    results = []
    for r in iter_predictions(head, inputs, weights=weights, detect_faces=detect_faces, batch_size=batch_size,
                              device=device, progress=not quiet):
        results.append(r)
        if as_json:  # JSON lines, streamed
            print(json.dumps(r.to_dict()), flush=True)
    ok = [r for r in results if r.error is None]
    if not as_json:
        width = max([len(r.path) for r in ok] + [4])
        for r in ok:
            print(f"{r.path.ljust(width)}  {r.label}  {r.probability:.3f}")
    for r in results:
        if r.error is not None:
            print(f"error: {r.path}: {r.error}", file=sys.stderr)
    if not ok:  # FeatxError: main() prints it and exits 2
        raise FeatxError(f"no image could be predicted ({len(results)} failed)" if results else "no images given")
