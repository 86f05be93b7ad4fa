"""A small PyTorch MLP: one or two hidden layers, dropout, AdamW, early stopping on validation loss.

Trains on the GPU when there is one; predicts with numpy from the saved float32 weights.
"""

from __future__ import annotations

import numpy as np

from .base import Head, Standardiser, best_point, class_weights, softmax

HIDDEN_GRID = [[256], [512, 256]]


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class MLPHead(Head):
    kind = "mlp"
    default_grid = {"hidden": HIDDEN_GRID}
    default_params = {"dropout": 0.3, "lr": 1e-3, "weight_decay": 1e-2, "batch_size": 256,
                      "max_epochs": 200, "patience": 10, "min_delta": 1e-4, "device": "auto"}
    choice_metric = "val_log_loss"  # score = -val_log_loss

    def _train_one(self, Z, y, Zv, yv, hidden: list[int]) -> tuple[list[np.ndarray], float, int]:
        """Train one network; returns (weights [W0, b0, W1, b1, ...], best val loss, best epoch)."""
        import torch
        from torch import nn

        p = self.params
        device = pick_device(p["device"])
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        layers, d = [], Z.shape[1]
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(p["dropout"])]
            d = h
        layers.append(nn.Linear(d, self.n_classes))
        net = nn.Sequential(*layers).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        w = torch.tensor(class_weights(y, self.n_classes, self.class_weight), dtype=torch.float32, device=device)
        loss_fn = nn.CrossEntropyLoss(weight=w)
        on_device = Z.nbytes < (2 << 30)  # keep big sets in host memory, move batches
        Xt = torch.from_numpy(Z.astype(np.float32))
        Xt = Xt.to(device) if on_device else Xt
        yt = torch.from_numpy(y).to(Xt.device)
        Xv = torch.from_numpy(Zv.astype(np.float32)).to(device)
        yv_t = torch.from_numpy(yv).to(device)
        best, best_epoch, best_state, bad = float("inf"), 0, None, 0
        bs = int(p["batch_size"])
        for epoch in range(1, int(p["max_epochs"]) + 1):
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
            if best_state is None or vloss < best - p["min_delta"]:
                best, best_epoch, bad = vloss, epoch, 0
                best_state = [t.detach().cpu().numpy().copy() for t in net.state_dict().values()]
            else:
                bad += 1
                if bad >= int(p["patience"]):
                    break
        return [np.ascontiguousarray(a, np.float32) for a in best_state], best, best_epoch

    def _fit(self, X, y, X_val, y_val) -> None:
        self.scaler = Standardiser.fit(X)
        Z, Zv = self.scaler(X), self.scaler(X_val)
        results, fitted = [], []
        for hidden in self.grid["hidden"]:
            weights, vloss, epoch = self._train_one(Z, y, Zv, y_val, list(hidden))
            self.weights = weights
            pred = self._proba(Zv).argmax(1)
            # early stopping already minimised val loss; choose the architecture by the same loss
            results.append({"hidden": list(hidden), "score": -vloss, "val_log_loss": vloss, "epochs": epoch,
                            self.metric_name: self.score(y_val, pred)})
            fitted.append(weights)
        chosen = best_point(results, ("hidden",))
        i = [r["hidden"] for r in results].index(chosen["hidden"])
        self.weights = fitted[i]
        self.record(results, chosen)
        self.selection["device"] = pick_device(self.params["device"])

    def _proba(self, Z: np.ndarray) -> np.ndarray:
        h = Z.astype(np.float32)
        n = len(self.weights) // 2
        for k in range(n):
            h = h @ self.weights[2 * k].T + self.weights[2 * k + 1]
            if k < n - 1:
                h = np.maximum(h, 0.0)
        return softmax(h.astype(np.float64))

    def _arrays(self) -> dict[str, np.ndarray]:
        return {f"layer{k // 2}_{'weight' if k % 2 == 0 else 'bias'}": a for k, a in enumerate(self.weights)}

    def _load(self, arrays) -> None:
        n = len(self.chosen.get("hidden", [])) + 1
        self.weights = []
        for k in range(n):
            self.weights += [arrays[f"layer{k}_weight"], arrays[f"layer{k}_bias"]]
