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
