"""`featx data`: dataset -> manifest CSV, with counts per split and class."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from featx.errors import FeatxError

from . import checks


def data(
    data: Path = typer.Option(..., "--data", help="Class folder, CSV (path,label,...), CelebA root, UTKFace folder or a manifest."),
    out: Path = typer.Option(..., "--out", callback=checks.out_file, help="Manifest CSV to write."),
    attribute: str = typer.Option("Male", "--attribute", help="CelebA attribute used as the label, or all: every "
                                  "attribute a target (the label is then Male)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the train/val/test split."),
    val: float = typer.Option(0.1, "--val", help="Validation fraction (ignored when the source has its own split)."),
    test: float = typer.Option(0.1, "--test", help="Test fraction (ignored when the source has its own split)."),
    check: bool = typer.Option(False, "--check", help="Decode every image and leave out unreadable ones (slow)."),
    check_faces: bool = typer.Option(False, "--check-faces", help="Count the faces in every photo (dlib's CNN "
                                     "detector) and list those with none or several, before any extraction."),
) -> None:
    """Build a dataset manifest (path, label, split, group, extras)."""
    from featx import data as fdata
    from featx.images import check as check_image

    ratios = fdata.ratios_from(val, test)
    if out.expanduser().resolve() == data.expanduser().resolve():
        raise FeatxError(f"--out {out} would overwrite the input data")
    console = Console(highlight=False, soft_wrap=True)
    m = fdata.load(data, attribute=attribute, seed=seed, ratios=ratios)
    for path, reason in m.skipped[:5]:
        console.print(f"skipped {path}: {reason}")
    if len(m.skipped) > 5:
        console.print(f"skipped {len(m.skipped) - 5} more files")
    if check:
        m = fdata.drop_unreadable(m, check_image, echo=console.print)
    leaks = fdata.leaked_groups(m)
    if leaks:
        console.print(f"warning: {len(leaks)} groups appear in more than one split, e.g. {', '.join(leaks[:3])}")
    m.write(out)
    _print_counts(console, m, out)
    if check_faces:
        _print_faces(console, m)


def _print_faces(console: Console, m) -> None:
    from featx.faces.stage import survey

    found = survey([Path(m.root) / p for p in m.paths], progress=True)
    console.print(f"faces: {len(found['one'])} photos with one, {len(found['several'])} with several (the largest "
                  f"is kept), {len(found['none'])} with none (skipped as `no face`), "
                  f"{len(found['unreadable'])} unreadable")
    for kind in ("none", "several"):
        for p in found[kind][:5]:
            console.print(f"  {kind}: {p}")
        if len(found[kind]) > 5:
            console.print(f"  ... and {len(found[kind]) - 5} more with {kind}")


def _print_counts(console: Console, m, out: Path) -> None:
    from featx.data import SPLITS

    counts = m.counts()
    console.print(f"{len(m)} images ({m.source}); split: {m.split_by}")
    table = Table()
    table.add_column("class")
    for s in SPLITS:
        table.add_column(s, justify="right")
    table.add_column("total", justify="right")
    for c in m.classes:
        row = [counts[s][c] for s in SPLITS]
        table.add_row(c, *map(str, row), str(sum(row)))
    totals = [sum(counts[s].values()) for s in SPLITS]
    table.add_row("all", *map(str, totals), str(len(m)))
    console.print(table)
    extra = f"; extras: {', '.join(m.extras)}" if m.extras else ""
    groups = f"; {len(set(g for g in m.groups if g))} groups" if m.groups is not None else ""
    console.print(f"wrote {out} (hash {m.hash()[:12]}{groups}{extra})")
