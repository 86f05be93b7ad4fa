"""The one device and precision policy: extraction, fine-tuning and heads all ask here."""

from __future__ import annotations

import contextlib
import os
import platform

import torch

from .errors import FeatxError

PRECISIONS = ("auto", "bf16", "fp16", "fp32", "int8")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise FeatxError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatxError("--device cuda asked for, but torch sees no CUDA GPU")
    return torch.device(device)


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """Native bf16 matmul on this CPU (AVX512-BF16 or AMX); emulated bf16 would be slower than fp32."""
    flags = cpu_flags()
    return torch.backends.mkldnn.is_available() and bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_precision(precision: str, device: torch.device, cpu_bf16: bool = True) -> str:
    """auto: bf16 where the hardware has it, else fp16 on GPUs, else fp32. int8 (CPU) is opt-in only.
    cpu_bf16=False: the backbone family measured slower in bf16 than fp32 on CPUs without AMX."""
    if precision not in PRECISIONS:
        raise FeatxError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "int8":
        if device.type != "cpu":
            raise FeatxError("--precision int8 is CPU-only; use bf16 or fp16 on a GPU")
        from .quantize import int8_unavailable

        why = int8_unavailable()
        if why:
            raise FeatxError(why)
        return "int8"
    if precision != "auto":
        if device.type == "cpu" and precision == "fp16":
            raise FeatxError("fp16 on CPU is slow and lossy; use --precision bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if not cpu_bf16 and "amx_bf16" not in cpu_flags():
        return "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision (a no-op at fp32)."""
    if precision in AUTOCAST:
        return torch.autocast(device.type, dtype=AUTOCAST[precision])
    return contextlib.nullcontext()


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    return name


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_name()}, {os.cpu_count()} cores)"
