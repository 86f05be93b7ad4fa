"""A small PyTorch MLP: one or two hidden layers, dropout, AdamW, early stopping on validation loss.

Trains on the GPU when there is one; predicts with numpy from the saved float32 weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Head, class_weights, softmax

HIDDEN_GRID = [[256], [512, 256]]


def pick_device(device: str = "auto") -> str:
    from ..device import resolve_device

    return resolve_device(device).type


def mlp_forward(Z: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """[W0, b0, W1, b1, ...] with ReLU between layers -> class probabilities (float32 math, float64 out)."""
    h = Z.astype(np.float32)
    n = len(weights) // 2
    for k in range(n):
        h = h @ weights[2 * k].T + weights[2 * k + 1]
        if k < n - 1:
            h = np.maximum(h, 0.0)
    return softmax(h.astype(np.float64))


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

    def _net(self, d: int, hidden: list[int], device: str):
        from torch import nn

        layers = []
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(self.dropout)]
            d = h
        layers.append(nn.Linear(d, self.n_classes_))
        return nn.Sequential(*layers).to(device)

    def _train_one(self, Z, y, Zv, yv, hidden: list[int]) -> tuple[list[np.ndarray], float, int]:
        """Train one network; returns (weights [W0, b0, W1, b1, ...], best val loss, best epoch)."""
        import torch
        from torch import nn

        device = pick_device(self.device)
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        net = self._net(Z.shape[1], hidden, device)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        w = torch.tensor(class_weights(y, self.n_classes_, self._weight_mode()), dtype=torch.float32, device=device)
        loss_fn = nn.CrossEntropyLoss(weight=w)
        on_device = Z.nbytes < (2 << 30)  # keep big sets in host memory, move batches
        Xt = torch.from_numpy(Z.astype(np.float32))
        Xt = Xt.to(device) if on_device else Xt
        yt = torch.from_numpy(y).to(Xt.device)
        Xv = torch.from_numpy(Zv.astype(np.float32)).to(device)
        yv_t = torch.from_numpy(yv).to(device)
        best, best_epoch, best_state, bad = float("inf"), 0, None, 0
        bs = int(self.batch_size)
        for epoch in range(1, int(self.max_epochs) + 1):
            net.train()
            order = torch.randperm(len(Xt), generator=gen).to(Xt.device)
            for s in range(0, len(order), bs):
                i = order[s:s + bs]
                xb, yb = Xt[i].to(device), yt[i].to(device)
                opt.zero_grad(set_to_none=True)
                loss_fn(net(xb), yb).backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                vloss = float(sum(loss_fn(net(Xv[s:s + 8192]), yv_t[s:s + 8192]).item() * len(yv_t[s:s + 8192])
                                  for s in range(0, len(Xv), 8192)) / len(Xv))
            if best_state is None or vloss < best - self.min_delta:
                best, best_epoch, bad = vloss, epoch, 0
                best_state = [t.detach().cpu().numpy().copy() for t in net.state_dict().values()]
            else:
                bad += 1
                if bad >= int(self.patience):
                    break
        return [np.ascontiguousarray(a, np.float32) for a in best_state], best, best_epoch

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
        return {f"layer{k // 2}_{'weight' if k % 2 == 0 else 'bias'}": a for k, a in enumerate(self.weights_)}

    def _load(self, arrays) -> None:
        n = sum(1 for k in arrays if k.startswith("layer") and k.endswith("_weight"))
        self.weights_ = []
        for k in range(n):
            self.weights_ += [arrays[f"layer{k}_weight"], arrays[f"layer{k}_bias"]]
