"""The backbone side: a loaded base turning uint8 image batches into store-dtype features.

The device normalises exactly as Preprocess.to_tensor does and runs the model (channels_last, bf16/fp16
autocast where the hardware has it, inference_mode); `use_int8` swaps in the int8 model.
"""

from __future__ import annotations

import numpy as np
import torch

from ..backbones import tap_dim, tap_features
from ..faces.stage import FaceStage
from ..device import autocast, describe_device, resolve_device, resolve_precision
from ..provenance import versions
from ..reader import ImageRows
from ..releases import Preprocess
from ..weights import load_backbone
from .options import ExtractOptions, options


class Extractor:
    """A loaded base ready to turn uint8 image batches [B, H, W, 3] into store-dtype features."""

    def __init__(self, backbone: str, opts: ExtractOptions | None = None, loaded=None, **kw):
        o = options(opts, **kw)
        self.release, model, self.weights_sha256 = loaded or load_backbone(backbone, o.weights)
        self.tap = "+".join(self.release.parse_tap(o.tap))
        self.preprocess: Preprocess = self.release.preprocess
        self.faces = FaceStage(o.faces or self.release.faces, self.release.chip)
        self.device = resolve_device(o.device)
        self.precision = resolve_precision(o.precision, self.device, self.release.family.cpu_bf16)
        self.dtype, self.flip, self.compiled = o.dtype, o.flip_tta, o.compile
        model = model.eval().requires_grad_(False).to(self.device).to(memory_format=torch.channels_last)
        self.model = model
        self.dim = tap_dim(model, self.tap, self.preprocess.size, self.device)
        p = self.preprocess
        self.mean = torch.tensor(p.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(p.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        fn = lambda x: tap_features(model, x, self.tap)  # noqa: E731
        self.forward = torch.compile(fn, dynamic=False) if o.compile else fn
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    @property
    def face_step(self) -> FaceStage | None:
        """The reader's face step (None without a face stage)."""
        return self.faces if self.faces.active else None

    def normalize(self, x_u8: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] RGB -> float32 [B, 3, H, W] channels_last, exactly as Preprocess.to_tensor."""
        p = self.preprocess
        x = x_u8.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if p.channels == "BGR":
            x = x.flip(1)
        x = x * (p.scale / 255.0)
        if p.norm == "per-image":
            mean = x.mean((1, 2, 3), keepdim=True)
            floor = 1.0 / float(x[0].numel()) ** 0.5
            x = (x - mean) / x.std((1, 2, 3), keepdim=True, correction=0).clamp_min(floor)
        else:
            x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, x_u8: torch.Tensor, pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Features (and flipped-image features) as numpy arrays in the store dtype."""
        b = x_u8.shape[0]
        x = self.normalize(x_u8)
        if self.compiled and pad_to and b < pad_to:  # fixed shapes: no recompiles on the last batch
            pad = torch.zeros((pad_to - b, *x.shape[1:]), dtype=x.dtype, device=x.device)
            x = torch.cat([x, pad]).contiguous(memory_format=torch.channels_last)
        n = x.shape[0]
        if self.flip:
            x = torch.cat([x, x.flip(3)])
        with autocast(self.device, self.precision):
            f = self.forward(x)
        f = f.float()
        if self.dtype == "float16":
            f = f.clamp(-65504.0, 65504.0).half()
        f = f.cpu().numpy()
        return (f[:b], f[n:n + b]) if self.flip else (f[:b], None)

    def use_int8(self, rows: ImageRows | None, record: dict | None = None) -> dict:
        """Quantize to int8: rebuild from a store's record, else calibrate on `rows` (a few hundred photos)."""
        from ..quantize import Int8Options, calibration_rows, int8_model

        calib = () if record is not None else self._calibration(rows, calibration_rows(len(rows)))
        self.int8 = int8_model(self.model, self.tap, record=record, calib=calib, options=Int8Options())
        self.forward = self.int8
        return self.int8.record()

    def _calibration(self, rows: ImageRows, picks, batch: int = 32):
        for a in range(0, len(picks), batch):
            x = torch.stack([rows[int(i)][1] for i in picks[a:a + batch]])
            yield self.normalize(x)

    def info(self) -> dict:
        """What this extractor computes, for provenance and for the driver of a distributed run."""
        from ..quantize import variant_release

        return {"release": variant_release(self.release.name, self.precision), "release_info": self.release.to_dict(),
                "weights_sha256": self.weights_sha256, "preprocess": self.preprocess.to_dict(),
                "tap": self.tap, "dim": list(self.dim), "faces": self.faces.identity(), "precision": self.precision,
                "device_type": self.device.type, "device": describe_device(self.device), "versions": versions()}
