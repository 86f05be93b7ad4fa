"""`featx compare`: one page ranking evaluations that scored the same rows."""

from __future__ import annotations

from pathlib import Path

import typer

from . import checks


def compare(
    reports: list[Path] = typer.Argument(..., help="Report folders written by `featx evaluate` (two or more)."),
    out: Path = typer.Option(Path("compare"), "--out", callback=checks.out_dir,
                             help="Folder for compare.html and compare.json."),
) -> None:
    """Rank heads, backbones or runs on the same test rows: accuracy with intervals, times, paired McNemar tests."""
    from featx.report.compare import compare as run

    summary = run(reports, out)
    for r in summary["runs"]:
        lo, hi = r["accuracy_interval"] or (float("nan"), float("nan"))
        print(f"{r['rank']}. {r['label']}: accuracy {r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]  ({r['folder']})")
    for p in summary["pairs"]:
        print(f"  {p['a']} vs {p['b']}: only-{p['a']} right {p['only_a']}, only-{p['b']} right {p['only_b']}, "
              f"McNemar p={p['p_value']:.4g} (Holm {p['p_holm']:.4g})")
    print(f"page: {summary['page']}")
