"""`featx export`: saved heads and their base as one ONNX file, with its card."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer


def export(
    heads: list[Path] = typer.Option(..., "--head", help="A head folder (train-head or fine-tune); repeat for "
                                                         "several heads on one base (the base runs once)."),
    out: Path = typer.Option(..., "--out", help="The ONNX file to write, e.g. models/gender.onnx; its card "
                                                "<name>.json and MODEL_CARD.md go beside it."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="The base's weights file, when not the cached "
                                                                   "release; must match the heads' sha256."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
) -> None:
    """Export heads and their base to one ONNX file: uint8 RGB chips in, each head's answers out. Heads
    trained with --augment-flip answer with the mean over the photo and its mirror image, as predict does."""
    from featx.export import ExportOptions, export_onnx

    say = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    card = export_onnx(heads, out, ExportOptions(weights=weights, progress=say))
    size = Path(out).stat().st_size / 1e6
    names = ", ".join(f"{o['name']} ({o['head']}, " + (f"{len(o['classes'])} classes)" if o["classes"] else
                                                        f"{o['target']})") for o in card["outputs"])
    print(f"wrote {out} ({size:.1f} MB, opset {card['export']['opset']}, sha256 {card['onnx_sha256'][:12]}): "
          f"{card['release']['name']} -> {names}; card {Path(out).with_suffix('.json').name} and MODEL_CARD.md")
