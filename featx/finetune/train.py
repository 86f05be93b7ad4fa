"""The fine-tune trainer: AdamW with layer-wise rates, warmup + cosine, label smoothing, early stopping
on validation AUC, the best checkpoint kept, and a checkpoint after every epoch (resume bit-identical
on CPU: every epoch's randomness comes from (seed, epoch), never from what ran before).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..errors import FeatxError

STATE_JSON, BEST_FILE = "checkpoint.json", "best.safetensors"  # + checkpoint-EPOCH.safetensors


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from ..paths import atomic_write

    atomic_write(path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp)))


def save_json(obj, path: Path) -> None:
    from ..paths import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=str)))


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Optimiser:
    """One AdamW, one parameter group per trainable stage and one for the head.

    The last stage trains at `lr`, each earlier stage at `layer_decay` times the next one's, the
    head at `head_lr`. (AdamW at 1e-4 moved VGG conv5 weights by about their own size within an
    epoch and lost the pretrained features; plain SGD diverged on Caffe-scale activations.)"""

    def __init__(self, net, cfg, steps_per_epoch: int):
        groups, rate = [], cfg.lr
        for s in reversed(net.stages):
            if rate > 0:
                groups.append({"params": net.stage_params(s), "lr": rate})
            else:  # --lr 0: the stage stays frozen (no backward through it): the frozen baseline
                net.base.stage_module(s).requires_grad_(False)
            rate *= cfg.layer_decay
        groups.append({"params": list(net.head.parameters()), "lr": cfg.head_lr})
        self.base_lrs = [g["lr"] for g in groups]
        self.opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        self.total = max(1, cfg.epochs * steps_per_epoch)
        self.warmup = int(round(cfg.warmup * steps_per_epoch))
        self.step_count = 0

    def step(self, loss: torch.Tensor) -> None:
        f = lr_factor(self.step_count, self.total, self.warmup)
        for g, base in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = base * f
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step_count += 1

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Optimiser state as flat tensors (no pickles) plus scalars."""
        tensors, scalars = {}, {"step_count": self.step_count}
        for pid, st in self.opt.state_dict()["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v) and v.ndim > 0:
                    tensors[f"opt.{pid}.{k}"] = v
                else:
                    scalars[f"opt.{pid}.{k}"] = float(v)
        return tensors, scalars

    def load(self, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
        sd = self.opt.state_dict()
        state: dict[int, dict] = {}
        for key, v in tensors.items():
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
        for key, x in scalars.items():
            if key.startswith("opt."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = torch.tensor(x, dtype=torch.float32)
        sd["state"] = state
        self.opt.load_state_dict(sd)
        self.step_count = int(scalars["step_count"])


def auc_of(y: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    try:
        if proba.shape[1] == 2:
            return float(roc_auc_score(y, proba[:, 1]))
        return float(roc_auc_score(y, proba, multi_class="ovr"))
    except ValueError:  # one class only
        return float("nan")


@dataclass
class Loop:
    """What one pass needs besides the network: labels, device, precision, loss options."""

    labels: np.ndarray
    device: str = "cpu"
    amp: torch.dtype | None = None
    smoothing: float = 0.0
    weight: torch.Tensor | None = None
    progress: bool = False  # a bar per pass on a terminal, status lines in a log

    def on_device(self, batches, rows, rng, label: str):
        """One pass: (rows, maps on the device, channels_last) per batch, with the pass's progress bar."""
        from ..progress import progress_bar

        with progress_bar(self.progress, len(rows), 0, label=label, transient=True) as advance:
            for r, x in batches(rows, rng):
                yield r, x.to(self.device).contiguous(memory_format=torch.channels_last)
                advance(len(r))

    def autocast(self):
        return torch.autocast(self.device, dtype=self.amp, enabled=self.amp is not None)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
        w = self.weight.to(logits.device) if self.weight is not None else None
        return F.cross_entropy(logits.float(), y, weight=w, label_smoothing=smoothing)

    def train(self, net, batches, rows, opt: Optimiser, rng, label: str = "train") -> float:
        """One training epoch; returns the mean train loss."""
        net.train(True)
        total, seen = 0.0, 0
        for r, x in self.on_device(batches, rows, rng, label):
            y = torch.from_numpy(self.labels[r]).to(self.device)
            with self.autocast():
                logits = net(x)
            loss = self.loss(logits, y, self.smoothing)
            opt.step(loss)
            total += loss.item() * len(r)
            seen += len(r)
        return total / max(seen, 1)

    @torch.inference_mode()
    def evaluate(self, net, batches, rows, label: str = "score") -> dict:
        """loss (no smoothing), accuracy, AUC and the probabilities of `rows` (sorted)."""
        net.eval()
        out_rows, probs, total = [], [], 0.0
        for r, x in self.on_device(batches, rows, None, label):
            with self.autocast():
                logits = net(x).float()
            y = torch.from_numpy(self.labels[r]).to(self.device)
            total += F.cross_entropy(logits, y, reduction="sum").item()
            out_rows.append(np.asarray(r))
            probs.append(torch.softmax(logits, 1).cpu().numpy())
        r, p = np.concatenate(out_rows), np.concatenate(probs)
        order = np.argsort(r, kind="stable")
        r, p = r[order], p[order]
        y = self.labels[r]
        return {"loss": total / max(len(r), 1), "accuracy": float((p.argmax(1) == y).mean()),
                "auc": auc_of(y, p), "rows": r, "proba": p}


@dataclass
class Progress:
    """The trainer's resumable state."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_score: list | None = None  # [val AUC, -val loss] of the best epoch
    best_epoch: int = 0
    bad: int = 0
    seconds: float = 0.0  # training wall time over all sessions
    probe: dict | None = None  # the head-only phase's record (`head_probe`)

    def improves(self, rec: dict) -> bool:
        """Better val AUC (accuracy where AUC is undefined); equal AUC with a lower val loss breaks ties."""
        auc = rec["val_auc"] if np.isfinite(rec["val_auc"]) else rec["val_accuracy"]
        s = [auc, -rec["val_loss"]]
        if self.best_score is not None and not (s[0] > self.best_score[0] + 1e-9 or
                                                (abs(s[0] - self.best_score[0]) <= 1e-9 and s[1] > self.best_score[1])):
            return False
        self.best_score = s
        return True


class Trainer:
    """Epochs with a checkpoint after each; early stopping on validation AUC; `best.safetensors` kept."""

    def __init__(self, net, cfg, out: Path, loop: Loop, batches, eval_batches, log=print):
        self.net, self.cfg, self.out, self.loop, self.log = net, cfg, Path(out), loop, log
        self.batches, self.eval_batches = batches, eval_batches

    def resume(self, opt: Optimiser, identity: dict) -> Progress:
        sj = self.out / STATE_JSON
        if not sj.is_file():
            return Progress()
        st = json.loads(sj.read_text())
        if st["config"] != identity:
            raise FeatxError(f"{self.out} holds an unfinished fine-tune with other settings; use another --out")
        tensors = load_file(str(self.out / st["file"]))
        self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        opt.load({k: v for k, v in tensors.items() if k.startswith("opt.")}, st["opt"])
        self.log(f"resuming {self.out} after epoch {st['progress']['epoch']}")
        return Progress(**st["progress"])

    def net_tensors(self) -> dict[str, torch.Tensor]:
        return {f"net.{k}": v for k, v in self.net.state_dict().items()}

    def checkpoint(self, opt: Optimiser, pr: Progress, identity: dict, best: bool) -> None:
        """Tensors to a new file per epoch, then the JSON that points at it, then the old file goes:
        a kill at any point leaves a consistent pair."""
        net_t = self.net_tensors()
        if best:
            save_tensors(net_t, self.out / BEST_FILE)
        opt_t, scalars = opt.tensors()
        name = f"checkpoint-{pr.epoch:04d}.safetensors"
        save_tensors({**net_t, **opt_t}, self.out / name)
        save_json({"config": identity, "progress": pr.__dict__, "opt": scalars, "file": name}, self.out / STATE_JSON)
        self.clean(keep=name)

    def epoch(self, opt: Optimiser, pr: Progress, train_rows, val_rows) -> dict:
        cfg, e = self.cfg, pr.epoch + 1
        torch.manual_seed(cfg.seed * 1000 + e)
        rng = np.random.default_rng(cfg.seed * 1000 + e)
        t0 = time.perf_counter()
        from .data import epoch_rows

        rows = epoch_rows(train_rows, self.loop.labels, cfg.balance, rng)
        loss = self.loop.train(self.net, self.batches, rows, opt, rng, label=f"epoch {e}/{cfg.epochs} train")
        va = self.loop.evaluate(self.net, self.eval_batches, val_rows, label=f"epoch {e}/{cfg.epochs} val")
        dt = time.perf_counter() - t0
        rec = {"epoch": e, "train_loss": loss, "val_loss": va["loss"], "val_accuracy": va["accuracy"],
               "val_auc": va["auc"], "seconds": round(dt, 2)}
        self.log(f"epoch {e}/{cfg.epochs}: train loss {loss:.4f} | val loss {va['loss']:.4f} "
                 f"acc {va['accuracy']:.4f} auc {va['auc']:.4f} | {dt:.1f}s")
        return rec

    def fit(self, opt: Optimiser, identity: dict, train_rows, val_rows) -> Progress:
        pr = self.resume(opt, identity)
        if pr.epoch == 0 and self.cfg.head_epochs > 0:
            pr.probe = head_probe(self.net, self.loop, self.eval_batches, (train_rows, val_rows), self.cfg, self.log)
            pr.seconds += pr.probe["seconds"]
            pr.improves(pr.probe)  # "epoch 0": the head alone is the first candidate for the best checkpoint
            save_tensors(self.net_tensors(), self.out / BEST_FILE)
        while pr.epoch < self.cfg.epochs and pr.bad < self.cfg.patience:
            rec = self.epoch(opt, pr, train_rows, val_rows)
            pr.epoch, pr.seconds = rec["epoch"], pr.seconds + rec["seconds"]
            pr.history.append(rec)
            better = pr.improves(rec)
            if better:
                pr.best_epoch, pr.bad = rec["epoch"], 0
            else:
                pr.bad += 1
            self.checkpoint(opt, pr, identity, better)
        if not pr.history:
            raise FeatxError("no epoch ran; use --epochs 1 or more")
        best = load_file(str(self.out / BEST_FILE))
        self.net.load_state_dict({k[4:]: v for k, v in best.items()})
        return pr

    def clean(self, keep: str | None = None) -> None:
        """Remove epoch checkpoints but `keep` (all of them and the JSON when None)."""
        if keep is None:
            (self.out / STATE_JSON).unlink(missing_ok=True)
        for p in self.out.glob("checkpoint-*.safetensors"):
            if p.name != keep:
                p.unlink(missing_ok=True)


@torch.inference_mode()
def frozen_features(net, loop: Loop, batches, rows, label: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows sorted, standardised head inputs float16) through the stages as they are now."""
    net.eval()
    out_rows, feats = [], []
    for r, x in loop.on_device(batches, rows, None, label):
        with loop.autocast():
            f = net.head_input(x)
        feats.append(f.half().cpu().numpy())
        out_rows.append(np.asarray(r))
    r = np.concatenate(out_rows)
    order = np.argsort(r, kind="stable")
    return r[order], np.concatenate(feats)[order]


def head_probe(net, loop: Loop, batches, rows: tuple, cfg, log) -> dict:
    """Train the head alone on the frozen stages' features for `cfg.head_epochs`, before they unfreeze.

    Linear probing, then fine-tuning: a random head's gradients otherwise move the pretrained stages
    before the head knows anything (on 19k faces the un-probed VGG run fell to val accuracy 0.47).
    One forward of the trainable stages; the head epochs then cost next to nothing."""
    t0 = time.perf_counter()
    tr, feats = frozen_features(net, loop, batches, rows[0], "head alone: train features")
    va, vfeats = frozen_features(net, loop, batches, rows[1], "head alone: val features")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(net.head.parameters(), lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    steps = cfg.head_epochs * -(-len(tr) // cfg.batch_size)
    from .data import epoch_rows

    k, pos = 0, np.arange(len(tr))
    for _ in range(cfg.head_epochs):
        net.head.train()
        order = rng.permutation(epoch_rows(pos, loop.labels[tr], cfg.balance, rng))
        for b in range(0, len(order), cfg.batch_size):
            i = order[b:b + cfg.batch_size]
            for g in opt.param_groups:
                g["lr"] = cfg.head_lr * lr_factor(k, steps, 0)
            x = torch.from_numpy(feats[i]).float().to(loop.device)
            loss = loop.loss(net.head(x), torch.from_numpy(loop.labels[tr[i]]).to(loop.device), loop.smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            k += 1
    net.head.eval()
    y = loop.labels[va]
    with torch.no_grad():
        logits = net.head(torch.from_numpy(vfeats).float().to(loop.device)).cpu()
    loss = F.cross_entropy(logits, torch.from_numpy(y)).item()
    p = torch.softmax(logits, 1).numpy()
    rec = {"epoch": 0, "epochs": cfg.head_epochs, "val_loss": loss, "val_accuracy": float((p.argmax(1) == y).mean()),
           "val_auc": auc_of(y, p), "seconds": round(time.perf_counter() - t0, 2)}
    log(f"head alone, {cfg.head_epochs} epochs on frozen features: val acc {rec['val_accuracy']:.4f} "
        f"auc {rec['val_auc']:.4f} | {rec['seconds']:.1f}s")
    return rec
