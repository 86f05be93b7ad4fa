"""CPU int8: static post-training quantization of a backbone's conv stages (PT2E, x86 quantizer).

The flow is PyTorch's own (in torchao since torch 2.10: `pip install featx[int8]`):
    torch.export -> prepare_pt2e(X86InductorQuantizer) -> calibrate on the user's images
    -> convert_pt2e -> lower to oneDNN int8 kernels (torchao's x86 lowering, no code generation;
       `compile=True` lowers through torch.compile/inductor instead, same kernels, minutes of compile).

Weights are quantized per channel (symmetric int8) from the weights alone; activations per tensor
(uint8) with scales observed on the calibration images. Those activation scales (`qparams`) are the
only thing calibration decides: `from_qparams` rebuilds the very same int8 model from them, so a
resumed extraction or `featx predict` reproduces a store's features without its calibration images.

int8 features are a release variant of their own ("vgg16.hed+int8", `variant_release`): they never
share a store with fp32/bf16 features (`check_no_mixing`).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .backbones import tap_features
from .errors import FeatxError

INT8 = "int8"
SUFFIX = "+int8"
CALIB_IMAGES = 256  # "a few hundred of the user's images"


def int8_unavailable() -> str | None:
    """Why int8 cannot run here (one line), or None when it can."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn), which int8 needs"
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"int8 needs an x86-64 CPU, not {platform.machine()}"
    try:
        _pt2e()
    except ImportError:
        return "int8 needs torchao: pip install 'featx[int8]'"
    return None


def _pt2e():
    """torchao's PT2E entry points (torch.ao.quantization's moved there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    return prepare_pt2e, convert_pt2e, lower_pt2e_quantized_to_x86, xiq


class TapModule(nn.Module):
    """x -> tap features of a stage-protocol model, as one module torch.export can trace."""

    def __init__(self, model: nn.Module, tap: str):
        super().__init__()
        self.model, self.tap = model, tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tap_features(self.model, x, self.tap)


@dataclass(frozen=True)
class Int8Options:
    batch_size: int = 32  # the lowered model's fixed batch; calls pad or split to it
    compile: bool = False  # lower through torch.compile (inductor) instead of the eager x86 lowering


# --- quantization ---------------------------------------------------------------------------

def _prepare(model: nn.Module, tap: str, example: torch.Tensor) -> nn.Module:
    """Export with a dynamic batch and insert the x86 quantizer's observers."""
    prepare_pt2e, _, _, xiq = _pt2e()
    wrapped = TapModule(model.eval(), tap).eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(wrapped, (example,), dynamic_shapes={"x": {0: batch}}).module()
        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        return prepare_pt2e(exported, quantizer)


def _is_act_qdq(node) -> bool:
    q = torch.ops.quantized_decomposed
    return node.op == "call_function" and node.target in (q.quantize_per_tensor.default,
                                                          q.dequantize_per_tensor.default)


def read_qparams(converted: nn.Module) -> list[list[float]]:
    """[scale, zero_point] of every per-tensor activation quantize/dequantize node, in graph order."""
    return [[float(n.args[1]), int(n.args[2])] for n in converted.graph.nodes if _is_act_qdq(n)]


def write_qparams(converted: nn.Module, qparams: list[list[float]]) -> None:
    nodes = [n for n in converted.graph.nodes if _is_act_qdq(n)]
    if len(nodes) != len(qparams):
        raise FeatxError(f"saved int8 scales are for another model or tap ({len(qparams)} values, "
                         f"this one has {len(nodes)})")
    for n, (scale, zp) in zip(nodes, qparams):
        n.args = (n.args[0], float(scale), int(zp), *n.args[3:])
    converted.recompile()


def _convert(prepared: nn.Module) -> nn.Module:
    _, convert_pt2e, _, _ = _pt2e()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_pt2e(prepared)


def quantize_int8(model: nn.Module, calib: Iterable[torch.Tensor], tap: str,
                  options: Int8Options = Int8Options()) -> "Int8Features":
    """Calibrate on preprocessed float batches [B, 3, H, W] (as the runner feeds the model); deterministic
    given the same batches in the same order."""
    why = int8_unavailable()
    if why:
        raise FeatxError(why)
    t0 = time.perf_counter()
    it = iter(calib)
    first = next(it, None)
    if first is None:
        raise FeatxError("int8 calibration needs at least one image")
    prepared = _prepare(model, tap, first[:1].expand(2, *first.shape[1:]).float())  # export: batch >= 2
    seen = 0
    with torch.no_grad():
        for x in [first, *it]:
            prepared(x.float())
            seen += len(x)
    converted = _convert(prepared)
    return Int8Features(converted, tap, tuple(first.shape[1:]), options,
                        {"calibration_images": seen, "quantize_s": time.perf_counter() - t0})


def from_qparams(model: nn.Module, qparams: list[list[float]], tap: str, input_shape: tuple[int, ...],
                 options: Int8Options = Int8Options()) -> "Int8Features":
    """The int8 model that `quantize_int8` made, rebuilt from its `qparams` (no calibration images)."""
    why = int8_unavailable()
    if why:
        raise FeatxError(why)
    t0 = time.perf_counter()
    example = torch.zeros((2, *input_shape))
    prepared = _prepare(model, tap, example)
    with torch.no_grad():
        prepared(example)  # observers need one pass before convert; write_qparams replaces their scales
    converted = _convert(prepared)
    write_qparams(converted, qparams)
    return Int8Features(converted, tap, tuple(input_shape), options,
                        {"calibration_images": 0, "quantize_s": time.perf_counter() - t0})


def int8_model(model: nn.Module, tap: str, *, record: dict | None = None, calib: Iterable[torch.Tensor] = (),
               options: Int8Options = Int8Options()) -> "Int8Features":
    """What the runner calls: rebuild from a store's `record` (resume, dask workers, predict) when there is
    one, else calibrate on `calib` (a new store; save `.record()` in its attrs before any row is written)."""
    if record is None:
        return quantize_int8(model, calib, tap, options)
    if record.get("tap") != tap:
        raise FeatxError(f"the store's int8 scales are for tap {record.get('tap')!r}, not {tap!r}")
    q = from_qparams(model, record["qparams"], tap, tuple(record["input_shape"]), options)
    if q.fingerprint() != record.get("fingerprint"):
        raise FeatxError("the store's int8 record does not match its own scales (edited?); use another --store")
    q.info["calibration_images"] = record.get("calibration_images", 0)
    return q


# --- the lowered model ----------------------------------------------------------------------

class Int8Features:
    """x [B, 3, H, W] float -> float32 features from oneDNN int8 kernels; any B (pads/splits to batch_size)."""

    def __init__(self, converted: nn.Module, tap: str, input_shape: tuple[int, ...], options: Int8Options,
                 info: dict):
        self.tap, self.input_shape, self.options = tap, tuple(input_shape), options
        self.batch_size = options.batch_size
        self.qparams = read_qparams(converted)
        self.info = dict(info, lowering="inductor" if options.compile else "x86-eager")
        self.converted, self.module = converted, None

    def lower(self) -> None:
        """Lower to oneDNN int8 kernels for the fixed batch (done by the first call otherwise)."""
        if self.module is None:
            t0 = time.perf_counter()
            example = torch.zeros((self.batch_size, *self.input_shape)).contiguous(memory_format=torch.channels_last)
            self.module = _lower(self.converted, example, self.options.compile)
            self.info["lower_s"] = time.perf_counter() - t0

    def fingerprint(self) -> str:
        """sha256 of the tap and activation scales: equal fingerprints, identical int8 models (same weights)."""
        text = json.dumps({"tap": self.tap, "qparams": self.qparams}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def record(self) -> dict:
        """What a store keeps to rebuild this model (`from_qparams`): JSON-safe and small."""
        return {"precision": INT8, "tap": self.tap, "input_shape": list(self.input_shape),
                "qparams": self.qparams, "fingerprint": self.fingerprint(),
                "calibration_images": self.info.get("calibration_images", 0)}

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.lower()
        b, n = x.shape[0], self.batch_size
        x = x.float().contiguous(memory_format=torch.channels_last)
        outs = []
        for a in range(0, b, n):
            part = x[a: a + n]
            if len(part) < n:  # the lowered graph has a fixed batch
                pad = torch.zeros((n - len(part), *part.shape[1:]), dtype=part.dtype)
                part = torch.cat([part, pad]).contiguous(memory_format=torch.channels_last)
            outs.append(self.module(part)[: min(n, b - a)].float())
        return torch.cat(outs) if len(outs) > 1 else outs[0]


def _lower(converted: nn.Module, example: torch.Tensor, compile: bool):
    _, _, lower_pt2e_quantized_to_x86, _ = _pt2e()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if not compile:
            return lower_pt2e_quantized_to_x86(converted, (example,))
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            fn = torch.compile(converted, dynamic=False)
            fn(example)  # compile now, under the freezing config
        return fn


# --- store policy: int8 is its own release variant ------------------------------------------

def calibration_rows(n: int, k: int = CALIB_IMAGES, seed: int = 0) -> np.ndarray:
    """Which of a dataset's n rows calibrate int8: k spread over the whole set, sorted, fixed by (n, k, seed)."""
    if n <= 0:
        raise FeatxError("the dataset has no images to calibrate int8 on")
    k = min(k, n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def variant_release(name: str, precision: str) -> str:
    """The release name a store records: 'vgg16.hed+int8' for int8 features, the plain name otherwise."""
    base = base_release(name)
    return base + SUFFIX if precision == INT8 else base


def base_release(name: str) -> str:
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def check_no_mixing(store: str, have: str | None, want: str) -> None:
    """Refuse to add `want`-precision rows to a store holding `have` ones when either is int8."""
    if have is None or have == want or INT8 not in (have, want):
        return
    raise FeatxError(f"store {store} holds {have} features, not {want}; int8 features are a release variant "
                     "of their own and never mix with float ones: use another --store")

