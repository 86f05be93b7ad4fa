"""Fine-tune conv block 5 plus a head on cached pool4 maps.

Blocks 1-4 are frozen, so their output (pool4, 512x14x14 per image at 224) is computed once
into a feature store by the same machinery as `extract`. Each epoch then streams those maps in
shuffled blocks through the trainable block 5 and a head on the flattened pool5 maps.

The result is a folder that is a backbone release of its own (release.json + weights.safetensors,
usable with `--backbone FOLDER`) and a saved head on tap pool5-flat (head.json + head arrays).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .backbones.vgg16 import VGG16
from .errors import FeatxError
from .releases import Release

HEAD_TAP = "pool5-flat"
STATE_FILE, STATE_JSON = "checkpoint.safetensors", "checkpoint.json"


class Block5Net(nn.Module):
    """conv5_1..conv5_3 + pool, then dropout -> [hidden -> ReLU -> dropout] -> classes on flat pool5."""

    def __init__(self, base: VGG16, n_classes: int, hidden: list[int], dropout: float):
        super().__init__()
        self.convs = nn.ModuleList(copy.deepcopy(getattr(base, f"conv5_{i}")) for i in (1, 2, 3))
        d = base.widths[4] * 7 * 7
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, n_classes))
        self.head = nn.Sequential(*layers)
        # fixed standardisation of the flat pool5 features (per channel, measured before training)
        self.register_buffer("mean", torch.zeros(base.widths[4] * 7 * 7))
        self.register_buffer("scale", torch.ones(base.widths[4] * 7 * 7))

    def pool5(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        return F.max_pool2d(x, 2, 2)

    def forward(self, pool4: torch.Tensor) -> torch.Tensor:
        return self.head((self.pool5(pool4).flatten(1).float() - self.mean) / self.scale)

    @torch.no_grad()
    def fit_scale(self, maps: torch.Tensor) -> None:
        """Per-channel mean/std of pool5 over a sample of pool4 maps, repeated over the 7x7 grid."""
        p5 = self.pool5(maps.float())
        hw = p5.shape[2] * p5.shape[3]
        mean = p5.mean((0, 2, 3))
        std = p5.std((0, 2, 3))
        # channels silent in the sample (a quarter of conv5_3's on UTKFace) must not blow up
        # when they do fire: floor their scale at the median channel's
        std = std.clamp_min(max(float(std.median()), 1e-6))
        self.mean.copy_(mean.repeat_interleave(hw))
        self.scale.copy_(std.repeat_interleave(hw))


def autocast_dtype(device: str, precision: str) -> torch.dtype | None:
    """The autocast dtype of extract's precision policy (None for fp32)."""
    from .extract import AUTOCAST, resolve_precision

    return AUTOCAST.get(resolve_precision(precision, torch.device(device)))


def stream_blocks(store, idx: np.ndarray, block_rows: int, rng: np.random.Generator | None,
                  flip: bool = False):
    """Yield (rows, maps float32 [k, C, H, W]) per block of whole chunks.

    With rng the block order and the rows within each block are shuffled; memory stays at one block.
    With flip and rng each row takes its mirrored maps with probability 1/2.
    """
    cr = int(store.attrs["rows_per_chunk"])
    block = max(cr, block_rows // cr * cr)
    wanted = np.zeros(store.n, bool)
    wanted[idx] = True
    starts = [s for s in range(0, store.n, block) if wanted[s:s + block].any()]
    if rng is not None:
        starts = list(rng.permutation(starts))
    for s in starts:
        e = min(s + block, store.n)
        rows = s + np.flatnonzero(wanted[s:e])
        if rng is not None:
            rows = rng.permutation(rows)
        x = store.features(rows)
        if flip and rng is not None:
            use = rng.random(len(rows)) < 0.5
            if use.any():
                x[use] = store.features(rows[use], flip=True)
        yield rows, x


def _batches(store, idx, batch_size, block_rows, rng, flip):
    for rows, x in stream_blocks(store, idx, block_rows, rng, flip):
        for b in range(0, len(rows), batch_size):
            yield rows[b:b + batch_size], x[b:b + batch_size]


def run_epoch(net, store, idx, labels, *, train: bool, opt=None, batch_size=64, block_rows=512,
              rng=None, flip=False, device="cpu", amp=None, weight=None) -> dict:
    """One pass; returns {"loss", "accuracy"} (and the probabilities when not training)."""
    net.train(train)
    total, correct, seen, probs = 0.0, 0, 0, []
    ctx = torch.enable_grad() if train else torch.inference_mode()
    with ctx:
        for rows, x in _batches(store, idx, batch_size, block_rows, rng if train else None, flip and train):
            xb = torch.from_numpy(x).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            yb = torch.from_numpy(labels[rows]).to(device)
            with torch.autocast(device_type=device, dtype=amp, enabled=amp is not None):
                logits = net(xb)
            loss = F.cross_entropy(logits.float(), yb, weight=weight)
            if train:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:
                probs.append((rows, torch.softmax(logits.float(), 1).cpu().numpy()))
            total += loss.item() * len(rows)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(rows)
    out = {"loss": total / max(seen, 1), "accuracy": correct / max(seen, 1)}
    if not train:
        order = np.concatenate([r for r, _ in probs]) if probs else np.zeros(0, np.int64)
        p = np.concatenate([q for _, q in probs]) if probs else np.zeros((0, 2))
        out["rows"], out["proba"] = order, p
    return out


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from .weights import atomic_write

    atomic_write(path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp)))


def _atomic_json(obj, path: Path) -> None:
    from .weights import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=str)))


class Optimisers:
    """AdamW for pretrained block 5 at a low rate and for the new head at its own; stepped together.

    (Plain SGD at 1e-4 diverged to NaN on Caffe-scale activations; AdamW at 1e-4 moved conv5
    weights by about their own size within an epoch and lost the pretrained features.)"""

    def __init__(self, net: "Block5Net", lr: float, head_lr: float):
        self.parts = [torch.optim.AdamW(net.convs.parameters(), lr=lr, weight_decay=1e-4),
                      torch.optim.AdamW(net.head.parameters(), lr=head_lr, weight_decay=1e-4)]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.parts:
            o.step()

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Optimiser state as flat tensors (no pickles) plus scalar step counts."""
        tensors, scalars = {}, {}
        for i, o in enumerate(self.parts):
            for pid, st in o.state_dict()["state"].items():
                for k, v in st.items():
                    if torch.is_tensor(v) and v.ndim > 0:
                        tensors[f"opt{i}.{pid}.{k}"] = v
                    else:
                        scalars[f"opt{i}.{pid}.{k}"] = float(v)
        return tensors, scalars

    def load(self, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
        for i, o in enumerate(self.parts):
            sd = o.state_dict()
            state: dict[int, dict] = {}
            for key, v in [*tensors.items(), *((k, torch.tensor(x)) for k, x in scalars.items())]:
                part, pid, name = key.split(".", 2)
                if part == f"opt{i}":
                    state.setdefault(int(pid), {})[name] = v
            sd["state"] = state
            o.load_state_dict(sd)


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.plot(ep, [h["train_accuracy"] for h in history], "o-", label="train")
    b.plot(ep, [h["val_accuracy"] for h in history], "o-", label="val")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def prefix_store_for(manifest, release_name: str, weights_sha: str, flip: bool) -> Path:
    """Default pool4 cache: shared by fine-tunes of the same data and base weights."""
    home = Path(os.environ.get("FEATX_HOME", "cache"))
    tag = f"{manifest.hash()[:12]}-{weights_sha[:8]}{'-flip' if flip else ''}"
    return home / "features" / f"prefix-{release_name}-{tag}-pool4.zarr"


def fine_tune(data, backbone: str, out: str | Path, *, weights=None, unfreeze: str = "block5",
              lr: float = 1e-5, head_lr: float = 1e-3, epochs: int = 10, batch_size: int = 64,
              head: str = "mlp", hidden: int = 256, dropout: float = 0.5, augment: str | None = None,
              patience: int = 3, seed: int = 0, device: str = "auto", precision: str = "auto",
              cache: str | Path | None = None, workers: int | None = None, name: str | None = None,
              block_rows: int = 512, progress: bool = True, log=print) -> dict:
    """Fine-tune block 5 + a head; returns a summary. Resumes from the last finished epoch."""
    from .extract import extract
    from .heads import make_head, save_head
    from .store import FeatureStore
    from .weights import load_backbone, register_finetuned, sha256_file

    if unfreeze != "block5":
        raise FeatxError(f"--unfreeze {unfreeze!r} is not supported; only block5 (pool4 maps are cached)")
    if head not in ("mlp", "linear"):
        raise FeatxError(f"--head {head!r} is not supported; use mlp or linear")
    if augment not in (None, "none", "flip"):
        raise FeatxError(f"--augment {augment!r} is not supported; use flip")
    flip = augment == "flip"
    out = Path(out)
    from .extract import resolve_device

    device = resolve_device(device).type
    amp = autocast_dtype(device, precision)
    base_release, base, base_sha = load_backbone(backbone, weights)
    if base.widths[3] != base.widths[4]:
        raise FeatxError("block 5 must take the pool4 maps it is given")
    from .data import Manifest, load

    manifest = data if isinstance(data, Manifest) else load(data)
    config = {"backbone": base_release.name, "manifest_hash": manifest.hash(), "weights_sha256": base_sha, "unfreeze": unfreeze, "lr": lr,
              "head_lr": head_lr, "epochs": epochs, "batch_size": batch_size, "head": head,
              "hidden": hidden if head == "mlp" else 0, "dropout": dropout, "augment": augment or "none",
              "patience": patience, "seed": seed}

    if (out / "release.json").is_file():
        done = json.loads((out / "release.json").read_text())
        if done.get("lineage", {}).get("config") == config:
            log(f"{out} is already fine-tuned with these settings; nothing to do")
            return done["lineage"]["summary"]
        raise FeatxError(f"{out} holds a model fine-tuned with other settings; use another --out")
    out.mkdir(parents=True, exist_ok=True)

    # 1. the frozen prefix, once (resumable, protected, same store machinery as extract)
    prefix = Path(cache) if cache else prefix_store_for(manifest, base_release.name, base_sha, flip)
    extract(manifest, backbone, prefix, tap="pool4", weights=weights, batch_size=32, device=device,
            precision=precision, workers=workers, flip_tta=flip, dtype="float16", progress=progress)
    store = FeatureStore.open(prefix)
    train_idx, val_idx, test_idx = (store.indices(s) for s in ("train", "val", "test"))
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise FeatxError("fine-tuning needs train and val rows; the data has none in one of them")
    labels = store.labels
    n_classes = len(store.classes)

    # 2. model, optimiser, and the checkpoint if there is one
    torch.manual_seed(seed)
    net = Block5Net(base, n_classes, [hidden] if head == "mlp" else [], dropout)
    sample = np.sort(np.random.default_rng(seed).choice(train_idx, min(len(train_idx), 256), replace=False))
    net.fit_scale(torch.from_numpy(store.features(sample)))
    net = net.to(device).to(memory_format=torch.channels_last)
    opt = Optimisers(net, lr, config["head_lr"])
    history, best_loss, best_epoch, bad, start = [], math.inf, 0, 0, 1
    state_path, state_json = out / STATE_FILE, out / STATE_JSON
    if state_json.is_file() and state_path.is_file():
        st = json.loads(state_json.read_text())
        if st["config"] != config:
            raise FeatxError(f"{out} holds an unfinished fine-tune with other settings; use another --out")
        tensors = load_file(str(state_path))
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        opt.load({k: v for k, v in tensors.items() if k.startswith("opt")}, st["opt_steps"])
        history, best_loss, best_epoch, bad = st["history"], st["best_loss"], st["best_epoch"], st["bad"]
        start = st["epoch"] + 1
        log(f"resuming {out} after epoch {st['epoch']}")

    # 3. epochs, streamed from the cache
    t_all = time.perf_counter()
    for epoch in range(start, epochs + 1):
        if bad >= patience:
            break
        torch.manual_seed(seed * 1000 + epoch)
        rng = np.random.default_rng(seed * 1000 + epoch)
        t0 = time.perf_counter()
        tr = run_epoch(net, store, train_idx, labels, train=True, opt=opt, batch_size=batch_size,
                       block_rows=block_rows, rng=rng, flip=flip, device=device, amp=amp)
        va = run_epoch(net, store, val_idx, labels, train=False, batch_size=256, block_rows=block_rows,
                       device=device, amp=amp)
        dt = time.perf_counter() - t0
        history.append({"epoch": epoch, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
                        "val_loss": va["loss"], "val_accuracy": va["accuracy"], "seconds": round(dt, 2)})
        log(f"epoch {epoch}/{epochs}: train loss {tr['loss']:.4f} acc {tr['accuracy']:.4f} | "
            f"val loss {va['loss']:.4f} acc {va['accuracy']:.4f} | {dt:.1f}s")
        tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
        if va["loss"] < best_loss - 1e-6:
            best_loss, best_epoch, bad = va["loss"], epoch, 0
            _atomic_save({k: v for k, v in tensors.items()}, out / "best.safetensors")
        else:
            bad += 1
        opt_t, steps = opt.tensors()
        _atomic_save({**tensors, **opt_t}, state_path)
        _atomic_json({"config": config, "epoch": epoch, "history": history, "best_loss": best_loss,
                      "best_epoch": best_epoch, "bad": bad, "opt_steps": steps}, state_json)
    if not history:
        raise FeatxError("no epoch ran; use --epochs 1 or more")

    # 4. the best checkpoint becomes a release + a saved head
    best = load_file(str(out / "best.safetensors"))
    net.load_state_dict({k[4:]: v for k, v in best.items()})
    net.eval()
    sd = {k: v.detach().clone().contiguous() for k, v in base.state_dict().items() if not k.startswith("fc")}
    for i, conv in enumerate(net.convs, 1):
        sd[f"conv5_{i}.weight"] = conv.weight.detach().float().cpu().contiguous()
        sd[f"conv5_{i}.bias"] = conv.bias.detach().float().cpu().contiguous()
    _atomic_save(sd, out / "weights.safetensors")
    wsha = sha256_file(out / "weights.safetensors")

    va = run_epoch(net, store, val_idx, labels, train=False, batch_size=256, block_rows=block_rows,
                   device=device, amp=amp)
    te = (run_epoch(net, store, test_idx, labels, train=False, batch_size=256, block_rows=block_rows,
                    device=device, amp=amp) if len(test_idx) else None)
    summary = {"best_epoch": best_epoch, "epochs_run": len(history), "val_loss": va["loss"],
               "val_accuracy": va["accuracy"], "test_accuracy": te["accuracy"] if te else None,
               "n_test": int(len(test_idx)), "train_seconds": round(time.perf_counter() - t_all, 1),
               "epoch_seconds": [h["seconds"] for h in history]}
    name = name or f"{base_release.name}+{out.name}"
    release = Release(
        name=name, description=f"{base_release.name} with block 5 fine-tuned by featx on {out.name}",
        source=f"featx fine-tune of {base_release.name}", license=base_release.license,
        source_file="weights.safetensors", preprocess=base_release.preprocess, sha256=wsha,
        size=(out / "weights.safetensors").stat().st_size, arch=base_release.arch, has_fc=False,
        lineage={"base": base_release.name, "base_weights_sha256": base_sha, "config": config,
                 "summary": summary, "featx": __version__, "head_tap": HEAD_TAP,
                 "date": time.strftime("%Y-%m-%dT%H:%M:%S")})

    # the head as a featx MLP head on pool5-flat (dropout is identity at inference)
    lin = [m for m in net.head if isinstance(m, nn.Linear)]
    arrays = {"scaler_mean": net.mean.double().cpu().numpy(), "scaler_scale": net.scale.double().cpu().numpy()}
    for k, m in enumerate(lin):
        arrays[f"layer{k}_weight"] = m.weight.detach().float().cpu().numpy()
        arrays[f"layer{k}_bias"] = m.bias.detach().float().cpu().numpy()
    head_obj = type(make_head("mlp")).from_arrays(
        {"kind": "mlp", "seed": seed, "n_classes": n_classes, "hidden": [hidden] if head == "mlp" else [],
         "dropout": dropout}, arrays)
    card = {"classes": list(store.classes),
            "positive": store.classes[1] if n_classes == 2 else None,
            "provenance": {"release": name, "tap": HEAD_TAP, "weights_sha256": wsha,
                           "preprocess": base_release.preprocess.to_dict(),
                           "manifest_hash": store.attrs["manifest_hash"], "dim": [lin[0].in_features],
                           "store": str(prefix)},
            "fine_tune": config,
            "val_metrics": {"accuracy": va["accuracy"], "log_loss": va["loss"]}}
    save_head(head_obj, out, card)
    plot_curves(history, out / "curves.png")
    _atomic_json(history, out / "history.json")
    _atomic_json(release.to_dict(), out / "release.json")  # last: marks the fine-tune finished
    for p in (state_path, state_json):
        p.unlink(missing_ok=True)
    register_finetuned(out)
    log(f"fine-tuned {name}: best epoch {best_epoch}, val acc {va['accuracy']:.4f}"
        + (f", test acc {te['accuracy']:.4f} on {len(test_idx)} images" if te else ""))
    return summary
