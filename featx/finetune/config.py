"""The fine-tune recipe (`FineTuneConfig`) and where it runs (`RunOptions`)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..errors import FeatxError

UNFREEZE = {"block5": "pool4", "block4": "pool3"}  # the old --unfreeze values (VGG16 block names)
BALANCE = ("none", "weights", "sample")


@dataclass(frozen=True)
class FineTuneConfig:
    """The recipe. Defaults are the ones benchmarks/README.md measured."""

    from_tap: str = "pool4"  # cached prefix tap; the stages after it train
    lr: float = 1e-5  # AdamW rate of the last trainable stage
    layer_decay: float = 0.5  # each earlier trainable stage trains at this times the next one's rate
    head_lr: float = 1e-4  # the head's rate, alone first and then with the stages
    weight_decay: float = 1e-4
    epochs: int = 10
    batch_size: int = 64
    warmup: float = 1.0  # epochs of linear warmup, then cosine decay
    label_smoothing: float = 0.1
    head: str = "mlp"  # mlp: flatten -> hidden -> classes; linear: flatten -> classes; gap: GAP -> classes
    hidden: int = 256
    dropout: float = 0.5
    augment: str = "none"  # or a comma list of flip, mirror, shift, pixels (map flips/shifts lost 2-9 points)
    shift: int = 1  # cells of random translation for "shift"
    balance: str = "none"  # none | weights (class-weighted loss) | sample (oversample smaller classes)
    patience: int = 3  # epochs without a better val AUC before stopping
    head_epochs: int = 5  # epochs of the head alone on frozen features before the stages train (0: none)
    seed: int = 0

    def check(self, family) -> None:
        from .data import parse_augment
        from .model import HEADS

        if self.from_tap not in family.finetune:
            raise FeatxError(f"--from-tap {self.from_tap!r} is not a fine-tune split of {family.arch}; "
                             f"use {' or '.join(family.finetune) or 'none (this family cannot fine-tune)'}")
        if self.head not in HEADS:
            raise FeatxError(f"--head {self.head!r} is not supported; use {', '.join(HEADS)}")
        if self.balance not in BALANCE:
            raise FeatxError(f"--balance {self.balance!r} is not supported; use {', '.join(BALANCE)}")
        parse_augment(self.augment)
        for k in ("epochs", "batch_size", "patience"):
            if getattr(self, k) < 1:
                raise FeatxError(f"--{k.replace('_', '-')} must be at least 1")
        if self.head_epochs < 0:
            raise FeatxError("--head-epochs must be 0 or more")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.dropout < 1:
            raise FeatxError("--label-smoothing and --dropout must be in [0, 1)")


@dataclass(frozen=True)
class RunOptions:
    """Where and how a fine-tune runs; none of it changes the result's identity."""

    weights: str | Path | None = None  # weights FILE of the base release
    cache: str | Path | None = None  # the prefix store (default: under $FEATX_HOME/features)
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    name: str | None = None
    block_rows: int = 512  # rows read per shuffled block of the prefix store
    progress: bool = True


def split_options(options: dict, unfreeze: str | None = None) -> tuple[FineTuneConfig, RunOptions]:
    """Keyword options -> (config, run options); unknown names are refused."""
    cf, rf = {f.name for f in fields(FineTuneConfig)}, {f.name for f in fields(RunOptions)}
    bad = sorted(set(options) - cf - rf)
    if bad:
        raise TypeError(f"unknown fine-tune option {bad[0]!r}")
    if options.get("augment") is None and "augment" in options:
        options = {**options, "augment": "none"}
    cfg = FineTuneConfig(**{k: v for k, v in options.items() if k in cf})
    if unfreeze is not None:
        if unfreeze not in UNFREEZE:
            raise FeatxError(f"--unfreeze {unfreeze!r} is not supported; use --from-tap "
                             "(pool4: block5 alone, pool3: blocks 4 and 5)")
        cfg = replace(cfg, from_tap=UNFREEZE[unfreeze])
    return cfg, RunOptions(**{k: v for k, v in options.items() if k in rf})
