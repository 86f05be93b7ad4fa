"""A small PyTorch MLP: one or two hidden layers, dropout, AdamW, early stopping on validation loss.

Trains on the GPU when there is one; predicts with numpy from the saved float32 weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .base import Head, class_weights, softmax

HIDDEN_GRID = [[256], [512, 256]]


def pick_device(device: str = "auto") -> str:
    from ..device import resolve_device

    return resolve_device(device).type


def mlp_outputs(Z: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """[W0, b0, W1, b1, ...] with ReLU between layers -> the last layer's outputs (float32 math, float64 out)."""
    h = Z.astype(np.float32)
    n = len(weights) // 2
    for k in range(n):
        h = h @ weights[2 * k].T + weights[2 * k + 1]
        if k < n - 1:
            h = np.maximum(h, 0.0)
    return h.astype(np.float64)


def mlp_forward(Z: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """[W0, b0, W1, b1, ...] with ReLU between layers -> class probabilities (float32 math, float64 out)."""
    return softmax(mlp_outputs(Z, weights))


def layer_arrays(weights: list[np.ndarray]) -> dict[str, np.ndarray]:
    """[W0, b0, W1, b1, ...] -> {"layer0_weight": W0, "layer0_bias": b0, ...} (head.safetensors names)."""
    return {f"layer{k // 2}_{'weight' if k % 2 == 0 else 'bias'}": a for k, a in enumerate(weights)}


def layers_from_arrays(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    n = sum(1 for k in arrays if k.startswith("layer") and k.endswith("_weight"))
    weights = []
    for k in range(n):
        weights += [arrays[f"layer{k}_weight"], arrays[f"layer{k}_bias"]]
    return weights


def build_net(d: int, hidden: list[int], out: int, dropout: float, device: str):
    """Linear -> ReLU -> Dropout per hidden layer, then a Linear layer to `out` outputs."""
    from torch import nn

    layers = []
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
        d = h
    layers.append(nn.Linear(d, out))
    return nn.Sequential(*layers).to(device)


@dataclass
class Stopping:
    """Mini-batch epochs with early stopping: at most max_epochs, stop after `patience` epochs without
    a val score below the best - min_delta."""

    batch_size: int
    max_epochs: int
    patience: int
    min_delta: float


def train_early_stopped(net, opt, Xt, gen, loss_of: Callable, val_score: Callable,
                        stop: Stopping) -> tuple[list[np.ndarray], float, int]:
    """Each epoch: shuffled batches of the rows of Xt (loss_of(indices) -> the batch loss), then
    val_score(net) (lower is better). Returns (the best epoch's weights as float32, its score, the epoch)."""
    import torch

    best, best_epoch, best_state, bad = float("inf"), 0, None, 0
    bs = int(stop.batch_size)
    for epoch in range(1, int(stop.max_epochs) + 1):
        net.train()
        order = torch.randperm(len(Xt), generator=gen).to(Xt.device)
        for s in range(0, len(order), bs):
            opt.zero_grad(set_to_none=True)
            loss_of(order[s:s + bs]).backward()
            opt.step()
        net.eval()
        score = val_score(net)
        if best_state is None or score < best - stop.min_delta:
            best, best_epoch, bad = score, epoch, 0
            best_state = [t.detach().cpu().numpy().copy() for t in net.state_dict().values()]
        else:
            bad += 1
            if bad >= int(stop.patience):
                break
    return [np.ascontiguousarray(a, np.float32) for a in best_state], best, best_epoch


@dataclass(eq=False, repr=False)
class MLPHead(Head):
    kind = "mlp"
    default_grid = {"hidden": HIDDEN_GRID}
    choice_metric = "val_log_loss"  # score = -val_log_loss
    dropout: float = 0.3
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 10
    min_delta: float = 1e-4
    device: str = "auto"

    def _train_one(self, Z, y, Zv, yv, hidden: list[int]) -> tuple[list[np.ndarray], float, int]:
        """Train one network; returns (weights [W0, b0, W1, b1, ...], best val loss, best epoch)."""
        import torch
        from torch import nn

        device = pick_device(self.device)
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        net = build_net(Z.shape[1], hidden, self.n_classes_, self.dropout, device)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        w = torch.tensor(class_weights(y, self.n_classes_, self._weight_mode()), dtype=torch.float32, device=device)
        loss_fn = nn.CrossEntropyLoss(weight=w)
        on_device = Z.nbytes < (2 << 30)  # keep big sets in host memory, move batches
        Xt = torch.from_numpy(Z.astype(np.float32))
        Xt = Xt.to(device) if on_device else Xt
        yt = torch.from_numpy(y).to(Xt.device)
        Xv = torch.from_numpy(Zv.astype(np.float32)).to(device)
        yv_t = torch.from_numpy(yv).to(device)

        def val_loss(net) -> float:
            with torch.no_grad():
                return float(sum(loss_fn(net(Xv[s:s + 8192]), yv_t[s:s + 8192]).item() * len(yv_t[s:s + 8192])
                                 for s in range(0, len(Xv), 8192)) / len(Xv))

        stop = Stopping(self.batch_size, self.max_epochs, self.patience, self.min_delta)
        return train_early_stopped(net, opt, Xt, gen, lambda i: loss_fn(net(Xt[i].to(device)), yt[i].to(device)),
                                   val_loss, stop)

    def _fit_point(self, Z, y, Zv, yv, point):
        weights, vloss, epoch = self._train_one(Z, y, Zv, yv, list(point["hidden"]))
        pred = mlp_forward(Zv, weights).argmax(1)
        # early stopping already minimised val loss; choose the architecture by the same loss
        return {"weights_": weights}, {"score": -vloss, "val_log_loss": vloss, "epochs": epoch,
                                       self.metric_name: self._score(yv, pred)}

    def _selection_notes(self) -> dict:
        return {"device": pick_device(self.device)}

    def _proba(self, Z: np.ndarray) -> np.ndarray:
        return mlp_forward(Z, self.weights_)

    def _arrays(self) -> dict[str, np.ndarray]:
        return layer_arrays(self.weights_)

    def _load(self, arrays) -> None:
        self.weights_ = layers_from_arrays(arrays)
