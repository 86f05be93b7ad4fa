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
    head: Optional[str] = typer.Option(None, "--head", help="logreg | linear-svm | rbf-svm | mlp | sgd to classify, "
                                       "ridge | rbf-ridge | mlp-regress | sgd-regress to regress; a comma list gives "
                                       "one per task (default logreg,ridge)."),
    out: Path = typer.Option(..., "--out", callback=checks.out_dir, help="Folder for the saved head, e.g. heads/gender "
                             "(with --target all: one subfolder per target)."),
    target: str = typer.Option("label", "--target", help="The target to learn: a column of the data (`featx labels "
                               "list`), or all: one head per target."),
    task: str = typer.Option("auto", "--task", help="auto (numeric targets regress, others classify), classify, "
                             "regress."),
    targets: Optional[str] = typer.Option(None, "--set", help="Target set of the store (default: the current one)."),
    select_on: str = typer.Option("val", "--select-on", help="val (the store's val split) or holdout (20% of train)."),
    class_weight: Optional[str] = typer.Option(None, "--class-weight", help="balanced: weight classes by 1/frequency."),
    seed: int = typer.Option(0, "--seed"),
    augment_flip: bool = typer.Option(False, "--augment-flip", help="Also train on mirrored-image features."),
) -> None:
    """Train a head on cached features for any target; hyperparameters are chosen on the validation split."""
    from featx.training import TrainOptions, choice_line, fit_and_save, open_store, pick_head, train_all, use_target

    kinds = [k.strip() for k in (head or "").split(",") if k.strip()]
    opts = TrainOptions(select_on, class_weight, seed, augment_flip)
    if target == "all":
        rows = []
        cards = train_all(store, kinds, out, opts, task, targets, on_done=lambda c: rows.append(table_row(c)))
        print_table(rows)
        print(f"saved {len(cards)} heads under {out}/<target>")
        return
    if len(kinds) > 1:
        raise FeatxError("several --head kinds are for --target all; name one")
    view = use_target(open_store(store, targets), target, task)
    print(choice_line(view) + f" (--task {task})")
    card = fit_and_save(view, pick_head(kinds, view), out, opts)
    print_trained(card)
    print(f"saved {out} (head.safetensors, head.json)")


def print_trained(card: dict) -> None:
    t, sel, vm = card["training"], card["selection"], card["val_metrics"]
    left = t.get("left_out") or {}
    if sum(left.values()):
        print(f"left out {sum(left.values())} rows without a {card['target']} value ("
              + ", ".join(f"{k} {v}" for k, v in left.items()) + ")")
    chosen = ", ".join(f"{k}={v}" for k, v in sel.get("chosen", {}).items())
    print(f"trained {card['head']} on {t['n_train']} rows in {t['fit_seconds']:.2f}s; "
          f"chose {chosen} on {sel.get('on')} ({sel.get('metric')})")
    if card.get("task") == "regress":
        print(f"val: n={vm['n']} mae={_fmt(vm['mae'])} rmse={_fmt(vm['rmse'])} r2={_fmt(vm['r2'])} "
              f"within_5={_fmt(vm['within_5'])}")
    else:
        print(f"val: n={vm['n']} accuracy={_fmt(vm['accuracy'])} balanced_accuracy={_fmt(vm['balanced_accuracy'])} "
              f"f1={_fmt(vm['f1'])} roc_auc={_fmt(vm['roc_auc'])}")


def table_row(card: dict) -> list[str]:
    t, vm = card["training"], card["val_metrics"]
    score = f"mae {_fmt(vm['mae'])}" if card.get("task") == "regress" else f"accuracy {_fmt(vm['accuracy'])}"
    return [card["target"], card.get("task", "classify"), card["head"], str(t["n_train"]),
            str(sum((t.get("left_out") or {}).values())), score, f"{t['fit_seconds']:.2f}"]


def print_table(rows: list[list[str]]) -> None:
    header = ["target", "task", "head", "train", "left_out", "val", "fit_s"]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def evaluate(
    head: list[Path] = typer.Option(..., "--head", help="A folder written by `featx train-head`; repeat the option "
                                    "to score several heads in one command."),
    store: str = typer.Option(..., "--store", callback=checks.store_source,
                              help="Feature store of the same release and tap (any collection)."),
    split: str = typer.Option("test", "--split", help="test | val | train | all"),
    by: Optional[str] = typer.Option(None, "--by", help="Manifest columns for per-group metrics, e.g. age,race."),
    bins: Optional[list[str]] = typer.Option(None, "--bins",
                                             help="COLUMN=E1,E2,...: bucket a numeric column into [E1, E2), ... "
                                                  "(repeatable). Default by the column's type: a numeric age in "
                                                  "0-12, 13-19, 20-39, 40-59, 60+, other numbers in quintiles, "
                                                  "categorical columns by value."),
    report: Optional[Path] = typer.Option(None, "--report", callback=checks.out_dir,
                                          help="Report folder (default <head>/report-<store>-<split>; with several "
                                               "heads, one subfolder per head)."),
    targets: Optional[str] = typer.Option(None, "--set", help="Target set of the store (default: the one the head "
                                          "was trained on, when the store has it; else the current one)."),
) -> None:
    """Score saved heads on a feature store; write report.html, metrics.json, predictions.csv, report.md and plots."""
    from featx.report import evaluate as run, summary_table

    for h in head:
        rep = report / h.name if report is not None and len(head) > 1 else report
        metrics = run(h, store, split=split, by=by, report_dir=rep, targets=targets, bins=bins)
        ctx = metrics["context"]
        print(f"{ctx['head_type']} head on {ctx['store']} [{split}], target {ctx.get('target', 'label')}")
        print(summary_table(metrics))
        print(f"report: {ctx['report']}/report.html, metrics.json, predictions.csv, report.md, *.png")


def predict(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders of images."),
    head: Optional[list[Path]] = typer.Option(None, "--head", help="A folder written by `featx train-head`; repeat it "
                                              "for several heads (one forward of each base per photo, every answer "
                                              "on one line)."),
    model: Optional[Path] = typer.Option(None, "--model", help="An ONNX file written by `featx export` "
                                                               "(run with onnxruntime; its card must match)."),
    output: Optional[str] = typer.Option(None, "--output", help="With --model: which head of a several-head file."),
    detect_faces: bool = typer.Option(False, "--detect-faces", help="Find every face first (dlib's CNN detector, "
                                      "5 landmarks, the release's chip): one answer per face, with its box. Heads "
                                      "trained on a --faces store use that stage without this flag."),
    faces: Optional[str] = typer.Option(None, "--faces", help="The face step by name: none | detect | align, or "
                                        "haar (fallback: OpenCV's Haar cascade, largest face + margin; featx[faces])."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines (one object per image, as they come)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    precision: str = typer.Option("auto", "--precision", help="With --head: auto | bf16 | fp32 (an exported "
                                                              "file computes in fp32: give fp32 for its answers)."),
    weights: Optional[Path] = typer.Option(None, "--weights",
                                           help="Canonical weights file; must match the head's sha256."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Predict labels (or values) for new photos: preprocessing -> backbone -> tap -> heads (--head), or an
    exported file (--model)."""
    if bool(head) == (model is not None):
        raise FeatxError("give exactly one of --head DIR (repeatable) or --model FILE.onnx")
    if model is not None:
        from featx.export import iter_model_predictions

        preds = iter_model_predictions(model, inputs, output=output, detect_faces=faces or detect_faces,
                                       batch_size=batch_size, device=device, progress=not quiet)
    else:
        from featx.predict import iter_predictions

        preds = iter_predictions(head if len(head) > 1 else head[0], inputs, weights=weights,
                                 detect_faces=faces or detect_faces, batch_size=batch_size,
                                 device=device, progress=not quiet, precision=precision)
    results = []
    for r in preds:
        results.append(r)
        if as_json:  # JSON lines, streamed
            print(json.dumps(r.to_dict()), flush=True)
    ok = [r for r in results if r.error is None]
    if not as_json:
        width = max([len(r.path) for r in ok] + [4])
        for r in ok:
            print(f"{r.path.ljust(width)}  {answer_text(r)}" + (f"  face {r.face}" if r.face else ""))
    for r in results:
        if r.error is not None:
            print(f"error: {r.path}: {r.error}", file=sys.stderr)
    if not ok:  # FeatxError: main() prints it and exits 2
        raise FeatxError(f"no image could be predicted ({len(results)} failed)" if results else "no images given")


def answer_text(r) -> str:
    def one(a: dict) -> str:
        return f"{a['value']:.2f}" if a.get("value") is not None else f"{a['label']}  {a['probability']:.3f}"

    if r.heads is not None:
        return "  ".join(f"{name}: {one(a)}" for name, a in r.heads.items())
    return one({"value": r.value, "label": r.label, "probability": r.probability})
