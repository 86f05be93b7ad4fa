"""`featx fine-tune`: train the last stages plus a head on a cached prefix (VGG16: pool4 or pool3 maps)."""

from __future__ import annotations

from typing import Optional

import typer

from . import checks


def fine_tune(
    backbone: str = typer.Option(..., "--backbone", help="Base release, e.g. vgg16.hed."),
    data: str = typer.Option(..., "--data", help="Class folder, CSV, CelebA/UTKFace root, or a manifest."),
    out: str = typer.Option(..., "--out", callback=checks.out_dir, help="Output folder, e.g. models/NAME: a new release plus its head."),
    from_tap: str = typer.Option("pool4", "--from-tap",
                                 help="Cached prefix tap; the stages after it train (VGG16: pool4 = block 5, "
                                      "pool3 = blocks 4 and 5)."),
    unfreeze: Optional[str] = typer.Option(None, "--unfreeze", help="Old spelling: block5 = --from-tap pool4, "
                                                                    "block4 = --from-tap pool3."),
    lr: float = typer.Option(1e-5, "--lr", help="AdamW learning rate of the last trainable stage."),
    layer_decay: float = typer.Option(0.5, "--layer-decay", help="Each earlier stage trains at this times the next one's rate."),
    head_lr: float = typer.Option(1e-4, "--head-lr", help="AdamW learning rate of the new head (alone, then with the stages)."),
    weight_decay: float = typer.Option(1e-4, "--weight-decay"),
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    warmup: float = typer.Option(1.0, "--warmup", help="Epochs of linear warmup before the cosine decay."),
    label_smoothing: float = typer.Option(0.1, "--label-smoothing"),
    head: str = typer.Option("mlp", "--head", help="mlp (flatten -> hidden -> classes, dropout), "
                                                   "linear (flatten -> classes) or gap (GAP -> classes)."),
    hidden: int = typer.Option(256, "--hidden", min=1, help="Hidden units of the mlp head."),
    dropout: float = typer.Option(0.5, "--dropout", min=0.0, max=1.0),
    augment: str = typer.Option("none", "--augment",
                                help="none, or a comma list: flip (mirror the cached map), shift (translate it "
                                     "by --shift cells), mirror (cache mirrored photos too: 2x prefix cost), "
                                     "pixels (re-run the prefix on mirrored/shifted photos every epoch: "
                                     "a full forward per epoch)."),
    shift: int = typer.Option(1, "--shift", help="Cells of random translation for --augment shift."),
    balance: str = typer.Option("none", "--balance", help="none, weights (class-weighted loss) or sample "
                                                          "(oversample the smaller classes)."),
    patience: int = typer.Option(3, "--patience", min=0, help="Stop after this many epochs without a better val AUC."),
    head_epochs: int = typer.Option(5, "--head-epochs", min=0,
                                    help="Epochs of the head alone on frozen features before the stages train "
                                         "(0: none; one extra forward of the trainable stages)."),
    seed: int = typer.Option(0, "--seed"),
    target: str = typer.Option("label", "--target", help="The target to learn (`featx labels list`); numeric "
                               "targets are regressed under --task auto."),
    task: str = typer.Option("auto", "--task", help="auto, classify or regress."),
    loss: str = typer.Option("smooth_l1", "--loss", help="Regression loss on the standardised target: smooth_l1 "
                             "or l1."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weights file for the base release."),
    cache: Optional[str] = typer.Option(None, "--cache", callback=checks.store_target, help="Prefix store (default: under cache/features)."),
    name: Optional[str] = typer.Option(None, "--name", help="Release name (default: BASE+FOLDER)."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda"),
    precision: str = typer.Option("auto", "--precision", help="auto|bf16|fp16|fp32"),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decode workers for the prefix cache."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fine-tune the last conv stages plus a head; the frozen prefix runs once into a cached store."""
    from featx.finetune import fine_tune as run

    s = run(data, backbone, out, unfreeze=unfreeze, from_tap=from_tap, lr=lr, layer_decay=layer_decay,
            head_lr=head_lr, weight_decay=weight_decay, epochs=epochs, batch_size=batch_size, warmup=warmup,
            label_smoothing=label_smoothing, head=head, hidden=hidden, dropout=dropout, augment=augment,
            shift=shift, balance=balance, patience=patience, head_epochs=head_epochs, seed=seed, target=target,
            task=task, loss=loss, weights=weights,
            cache=cache, name=name, device=device, precision=precision, workers=workers, progress=not quiet)
    t = s.get("test") or {}
    alone = " (0: the head alone)" if s["best_epoch"] == 0 else ""
    key = "mae" if s.get("task") == "regress" else "accuracy"
    typer.echo(f"best epoch {s['best_epoch']} of {s['epochs_run']}{alone}; val {key} {s[f'val_{key}']:.4f}"
               + (f"; test {key} {t[key]:.4f} ({t['n']} images)" if t else "")
               + "".join(f"; {g} {t[f'{key}_{g}']:.4f} ({t[f'n_{g}']})" for g in ("adults", "children")
                         if f"{key}_{g}" in t)
               + f"; {s['wall_seconds']:.0f}s; use it with --backbone {out} or --head {out}")
