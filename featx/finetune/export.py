"""A finished fine-tune as a release: a self-contained folder that `--backbone DIR` and `--head DIR` take.

    release.json          the new release (arch, preprocessing, sha256) and its lineage
    weights.safetensors   the whole canonical state dict, trained stages included
    head.json + arrays    a featx MLP head on the head-input tap ("pool5-flat" or "pool5-gap")
    history.json, curves.png

The head card names its backbone as `release_dir: "."` (relative to the card), so the folder
still works after `mv`: nothing refers to it by an absolute path or a registered name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


from .. import __version__
from .train import save_json, save_tensors
from ..releases import Release


@dataclass
class Lineage:
    """Where a fine-tuned release came from."""

    base: Release
    base_sha: str
    prefix_tap: str
    head_tap: str
    manifest_hash: str
    config: dict
    store: str


def export_release(net, lin: Lineage, out: Path, name: str, summary: dict) -> Release:
    """weights.safetensors (checked by rebuilding it with the family's builder) + the Release object."""
    from ..weights import sha256_file

    sd = {k: v.detach().float().cpu().contiguous() for k, v in net.base.state_dict().items()}
    lin.base.family.build(sd)  # the family must load what it will be asked to load
    save_tensors(sd, out / "weights.safetensors")
    wsha = sha256_file(out / "weights.safetensors")
    b = lin.base
    return Release(
        name=name, description=f"{b.name} with {', '.join(net.stages)} fine-tuned by featx on {out.name}",
        source=f"featx fine-tune of {b.name}", license=b.license, source_file="weights.safetensors",
        preprocess=b.preprocess, sha256=wsha, size=(out / "weights.safetensors").stat().st_size,
        arch=b.arch, has_fc=b.has_fc,
        lineage={"base": b.name, "base_weights_sha256": lin.base_sha, "prefix_tap": lin.prefix_tap,
                 "trained": list(net.stages), "head_tap": lin.head_tap, "manifest_hash": lin.manifest_hash,
                 "config": lin.config, "summary": summary, "featx": __version__,
                 "date": time.strftime("%Y-%m-%dT%H:%M:%S")})


def export_head(net, release: Release, lin: Lineage, out: Path, card_extra: dict) -> None:
    """The network's head as a featx MLP head (dropout is identity at inference) with its card."""
    from ..heads import make_head, save_head

    layers = net.linears()
    arrays = {"scaler_mean": net.mean.double().cpu().numpy(), "scaler_scale": net.scale.double().cpu().numpy()}
    for k, m in enumerate(layers):
        arrays[f"layer{k}_weight"] = m.weight.detach().float().cpu().numpy()
        arrays[f"layer{k}_bias"] = m.bias.detach().float().cpu().numpy()
    n_classes = layers[-1].out_features
    head = type(make_head("mlp")).from_arrays(
        {"kind": "mlp", "seed": lin.config.get("seed", 0), "n_classes": n_classes, "hidden": net.hidden,
         "dropout": float(net.head[0].p)}, arrays)
    card = {"provenance": {"release": release.name, "release_dir": ".", "tap": lin.head_tap,
                           "weights_sha256": release.sha256, "preprocess": release.preprocess.to_dict(),
                           "manifest_hash": lin.manifest_hash, "dim": [layers[0].in_features],
                           "store": lin.store},
            "fine_tune": lin.config, **card_extra}
    save_head(head, out, card)


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.plot(ep, [h["val_accuracy"] for h in history], "o-", label="val accuracy")
    b.plot(ep, [h["val_auc"] for h in history], "o-", label="val AUC")
    b.set(xlabel="epoch", title="validation")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_record(out: Path, release: Release, history: list[dict]) -> None:
    """history.json, curves.png, then release.json last: its presence marks the fine-tune finished."""
    plot_curves(history, out / "curves.png")
    save_json(history, out / "history.json")
    save_json(release.to_dict(), out / "release.json")


__all__ = ["Lineage", "export_release", "export_head", "write_record"]
