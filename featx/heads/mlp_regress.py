"""A small PyTorch MLP regressor: one or two hidden layers, dropout, AdamW, early stopping on val MAE.

It learns the standardised transformed target (featx.heads.regression) with a smooth L1 loss (robust
to the odd wrong label), stops when the validation MAE in the target's units has not improved for
`patience` epochs and keeps the best epoch. Trains on the GPU when there is one; predicts with numpy
from the saved float32 weights (the same layer arrays as the `mlp` classifier, one output).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FeatxError
from .mlp import (HIDDEN_GRID, Stopping, build_net, layer_arrays, layers_from_arrays, mlp_outputs, pick_device,
                  train_early_stopped)
from .registry import register_head
from .regression import TRANSFORMS, RegressionHead, Targets

LOSSES = ("smooth_l1", "l1", "mse")


@register_head
@dataclass(eq=False, repr=False)
class MLPRegressHead(RegressionHead):
    kind = "mlp-regress"
    default_grid = {"hidden": HIDDEN_GRID, "transform": list(TRANSFORMS)}
    loss: str = "smooth_l1"
    beta: float = 0.1  # smooth L1 turns quadratic below beta (standardised units)
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 10
    device: str = "auto"

    def check_params(self) -> None:
        super().check_params()
        if self.loss not in LOSSES:
            raise FeatxError(f"unknown loss {self.loss!r} for {self.kind}; use one of {', '.join(LOSSES)}")

    def _loss_fn(self):
        from torch import nn

        return {"smooth_l1": lambda: nn.SmoothL1Loss(beta=self.beta), "l1": nn.L1Loss, "mse": nn.MSELoss}[self.loss]()

    def _val_mae(self, net, Xv, yv: np.ndarray, targets: Targets) -> float:
        import torch

        with torch.no_grad():
            out = torch.cat([net(Xv[s:s + 8192])[:, 0] for s in range(0, len(Xv), 8192)]).cpu().numpy()
        pred = np.clip(targets.to_units(out), *self.target_range_)
        return float(np.mean(np.abs(pred - yv)))

    def _train_one(self, Z, targets: Targets, Zv, yv, hidden: list[int]) -> tuple[list[np.ndarray], float, int]:
        """Train one network; returns (weights [W0, b0, ...], best val MAE, best epoch)."""
        import torch

        device = pick_device(self.device)
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        net = build_net(Z.shape[1], hidden, 1, self.dropout, device)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        loss_fn = self._loss_fn()
        Xt = torch.from_numpy(Z.astype(np.float32))
        Xt = Xt.to(device) if Z.nbytes < (2 << 30) else Xt  # keep big sets in host memory, move batches
        tt = torch.from_numpy(targets.t.astype(np.float32)).to(Xt.device)
        Xv = torch.from_numpy(Zv.astype(np.float32)).to(device)
        stop = Stopping(self.batch_size, self.max_epochs, self.patience, 1e-6)
        return train_early_stopped(net, opt, Xt, gen, lambda i: loss_fn(net(Xt[i].to(device))[:, 0], tt[i].to(device)),
                                   lambda net: self._val_mae(net, Xv, yv, targets), stop)

    def _fit_point(self, Z, targets, Zv, yv, point):
        weights, _, epoch = self._train_one(Z, targets, Zv, yv, list(point["hidden"]))
        return {"weights_": weights}, mlp_outputs(Zv, weights)[:, 0], {"epochs": epoch}

    def _selection_notes(self) -> dict:
        return {"device": pick_device(self.device), "loss": self.loss}

    def _predict_std(self, Z: np.ndarray) -> np.ndarray:
        return mlp_outputs(Z, self.weights_)[:, 0]

    def _arrays(self) -> dict[str, np.ndarray]:
        return layer_arrays(self.weights_)

    def _load(self, arrays) -> None:
        self.weights_ = layers_from_arrays(arrays)
