"""`featx fine-tune`: train block 5 plus a head on cached pool4 maps."""

from __future__ import annotations

from typing import Optional

import typer

from . import checks


def fine_tune(
    backbone: str = typer.Option(..., "--backbone", help="Base release, e.g. vgg16.hed."),
    data: str = typer.Option(..., "--data", help="Class folder, CSV, CelebA/UTKFace root, or a manifest."),
    out: str = typer.Option(..., "--out", callback=checks.out_dir, help="Output folder, e.g. models/NAME: a new release plus its head."),
    unfreeze: str = typer.Option("block5", "--unfreeze", help="Trainable part (block5; blocks 1-4 are cached)."),
    lr: float = typer.Option(1e-5, "--lr", help="AdamW learning rate of the pretrained block 5."),
    head_lr: float = typer.Option(1e-3, "--head-lr", help="AdamW learning rate of the new head."),
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    head: str = typer.Option("mlp", "--head", help="mlp (flat pool5 -> 256 -> classes) or linear."),
    hidden: int = typer.Option(256, "--hidden", min=1, help="Hidden units of the mlp head."),
    dropout: float = typer.Option(0.5, "--dropout", min=0.0, max=1.0),
    augment: Optional[str] = typer.Option(None, "--augment", help="flip: also cache and train on mirrored images."),
    patience: int = typer.Option(3, "--patience", min=0, help="Stop after this many epochs without a better val loss."),
    seed: int = typer.Option(0, "--seed"),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weights file for the base release."),
    cache: Optional[str] = typer.Option(None, "--cache", callback=checks.store_target, help="pool4 prefix store (default: under cache/features)."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda"),
    precision: str = typer.Option("auto", "--precision", help="auto|bf16|fp16|fp32"),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decode workers for the prefix cache."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fine-tune the last conv block plus a head; blocks 1-4 run once into a cached pool4 store."""
    from featx.finetune import fine_tune as run

    s = run(data, backbone, out, weights=weights, unfreeze=unfreeze, lr=lr, head_lr=head_lr, epochs=epochs, batch_size=batch_size,
            head=head, hidden=hidden, dropout=dropout, augment=augment, patience=patience, seed=seed,
            device=device, precision=precision, cache=cache, workers=workers, progress=not quiet)
    typer.echo(f"best epoch {s['best_epoch']} of {s['epochs_run']}; val accuracy {s['val_accuracy']:.4f}"
               + (f"; test accuracy {s['test_accuracy']:.4f} ({s['n_test']} images)" if s["test_accuracy"] is not None else "")
               + f"; use it with --backbone {out} or --head {out}")
