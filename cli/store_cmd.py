"""`featx store verify|repair`: check a feature store against its checksums; recompute bad shards."""

from __future__ import annotations

from typing import Optional

import typer

from . import checks


def verify(store: str = typer.Argument(..., callback=checks.store_source, help="Feature store path or URL.")) -> None:
    """Re-hash every shard; one line per bad shard; exit 0 when sound, 1 when not."""
    from featx.store import verify as run

    bad = run(store)
    for b in bad:
        typer.echo(f"{store}: shard {b['shard']} (rows {b['rows'][0]}-{b['rows'][1] - 1}) {b['why']}")
    if bad:
        typer.echo(f"{len(bad)} bad shard(s); fix with `featx store repair {store} --data DATA`", err=True)
        raise typer.Exit(1)
    typer.echo(f"{store}: every shard matches its checksum")


def repair(
    store: str = typer.Argument(..., callback=checks.store_source, help="Feature store path or URL."),
    data: str = typer.Option(..., "--data", help="The dataset the store was made from (it may have moved)."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1),
    workers: Optional[int] = typer.Option(None, "--workers", min=0),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Recompute only the shards that do not verify, with the store's own release, tap and precision."""
    from featx.extract import ExtractOptions, repair as run
    from featx.extract.record import summary_line

    s = run(store, data, ExtractOptions(device=device, batch_size=batch_size, workers=workers, progress=not quiet))
    typer.echo(f"repaired {len(s['repaired'])} shard(s)" + (f": {s['repaired'][:20]}" if s["repaired"] else ""))
    if s.get("note"):
        typer.echo(s["note"])
    typer.echo(summary_line(s))
