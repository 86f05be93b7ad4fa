"""`featx extract`: run a frozen base once over a dataset into a Zarr feature store."""

from __future__ import annotations

from typing import Optional

import typer

from . import checks


def extract(
    backbone: str = typer.Option(..., "--backbone", help="Release name, e.g. vgg16.hed (see `featx weights list`)."),
    data: str = typer.Option(..., "--data", help="Class folder, CSV, CelebA/UTKFace root, or a manifest."),
    store: str = typer.Option(..., "--store", callback=checks.store_target, help="Zarr store path or URL, e.g. cache/features/utk-vgg16hed.zarr."),
    tap: Optional[str] = typer.Option(None, "--tap", help="Where to read features: a tap of the release's family "
                            "(`featx weights list` shows each release's; default: the family's, pool5-gap for VGG16, "
                            "embedding for the face bases), e.g. pool5-gap, pool4-gap+pool5-gap, "
                            "embedding; map taps take -gap|-max|-gapmax|-flat; join several with '+'."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weights file: canonical safetensors or any "
                                          "`featx weights import` format (default: the cache)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Images per batch (default 32 CPU, 128 GPU)."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda"),
    precision: str = typer.Option("auto", "--precision", help="auto|bf16|fp16|fp32 (auto: bf16 where supported)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="DataLoader decode workers (default: by device)."),
    flip_tta: bool = typer.Option(False, "--flip-tta", help="Also store features of the mirrored image."),
    dtype: str = typer.Option("float16", "--dtype", help="Stored dtype: float16|float32."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the base (pays off on long GPU runs)."),
    rows_per_shard: Optional[int] = typer.Option(None, "--rows-per-shard", min=1, hidden=True),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="Run on a local dask cluster: local:N worker "
                                          "processes (on a GPU machine one per GPU; `local` = all GPUs)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Join a running dask cluster, e.g. "
                                            "tcp://HOST:8786 (the store and images must be on shared storage)."),
    faces: Optional[str] = typer.Option(None, "--faces", help="Face stage before the base: none (the photo as it "
                                        "is), detect (dlib's CNN detector, a box chip), align (detector, 5 landmarks, "
                                        "the release's own chip). Default: the release's. Part of the store's identity."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run a frozen base once over a dataset into a Zarr feature store (idempotent, resumable)."""
    from featx.extract import ExtractOptions, extract as run
    from featx.extract.record import summary_line

    opts = ExtractOptions(tap=tap, weights=weights, batch_size=batch_size, device=device, precision=precision,
                          workers=workers, flip_tta=flip_tta, dtype=dtype, compile=compile, progress=not quiet,
                          rows_per_shard=rows_per_shard, cluster=cluster, scheduler=scheduler, faces=faces)
    s = run(data, backbone, store, opts)
    if s.get("note"):
        typer.echo(s["note"])
    typer.echo(summary_line(s))
    for item in s.get("skipped_first", [])[:10]:
        typer.echo(f"  skipped {item['path']}: {item['reason']}")
    if s.get("skipped", 0) > 10 and s.get("skipped_first"):
        typer.echo(f"  ... and {s['skipped'] - 10} more")
