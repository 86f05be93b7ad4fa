"""Device and precision policy without a GPU: CUDA and CPU flags are monkeypatched; compile padding on a tiny model."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from featx.errors import FeatxError
from featx.device import resolve_device, resolve_precision
from featx.extract import Extractor

POLICY = importlib.import_module(resolve_precision.__module__)  # featx.extract today, featx.device maybe later

AVX2 = {"fpu", "sse4_2", "avx", "avx2", "fma"}
AVX512_BF16 = AVX2 | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}
AMX = AVX512_BF16 | {"amx_tile", "amx_bf16", "amx_int8"}
CPU = torch.device("cpu")
GPU = torch.device("cuda")


@pytest.fixture
def machine(monkeypatch):
    """machine(gpu=False, bf16_gpu=True, flags=AVX2): pretend to be that machine."""
    def pretend(gpu: bool = False, bf16_gpu: bool = True, flags=frozenset(AVX2), mkldnn: bool = True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: mkldnn)
        monkeypatch.setattr(POLICY, "cpu_flags", lambda: set(flags))
    return pretend


# --- device ---------------------------------------------------------------------------------

def test_auto_device_is_the_gpu_when_there_is_one(machine):
    machine(gpu=True)
    assert resolve_device("auto") == GPU
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cpu") == CPU  # asked for explicitly


def test_auto_device_is_the_cpu_without_a_gpu(machine):
    machine(gpu=False)
    assert resolve_device("auto") == CPU
    with pytest.raises(FeatxError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(FeatxError, match="unknown device"):
        resolve_device("tpu")


# --- precision: CPUs by their flags ---------------------------------------------------------

@pytest.mark.parametrize("flags, want", [
    (AMX, "bf16"),  # Sapphire Rapids and later: AMX tiles
    (AVX512_BF16, "bf16"),  # Cooper Lake, Zen 4/5 (this project's EPYCs)
    (AVX2, "fp32"),  # no native bf16: emulated bf16 would be slower than fp32
    (AVX2 | {"avx512f", "avx512_vnni"}, "fp32"),  # Cascade Lake: VNNI (int8) but no bf16
    (set(), "fp32"),  # flags unreadable (not Linux)
])
def test_auto_precision_on_cpus(machine, flags, want):
    machine(flags=flags)
    assert POLICY.cpu_has_bf16() is (want == "bf16")
    assert resolve_precision("auto", CPU) == want


def test_no_bf16_without_onednn_even_on_a_bf16_cpu(machine):
    machine(flags=AMX, mkldnn=False)
    assert resolve_precision("auto", CPU) == "fp32"


def test_explicit_cpu_precisions(machine):
    machine(flags=AVX2)
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"  # the user's choice, slow or not
    with pytest.raises(FeatxError, match="fp16 on CPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(FeatxError, match="unknown precision"):
        resolve_precision("fp8", CPU)


# --- precision: GPUs by capability ----------------------------------------------------------

def test_auto_precision_on_gpus(machine):
    machine(gpu=True, bf16_gpu=True)  # Ampere and later
    assert resolve_precision("auto", GPU) == "bf16"
    machine(gpu=True, bf16_gpu=False)  # Volta/Turing: fp16 tensor cores only
    assert resolve_precision("auto", GPU) == "fp16"
    assert resolve_precision("fp16", GPU) == "fp16"
    assert resolve_precision("fp32", GPU) == "fp32"


def test_int8_is_cpu_only(machine):
    assert "int8" in POLICY.PRECISIONS
    machine(flags=AVX512_BF16)
    assert resolve_precision("int8", CPU) == "int8"
    machine(gpu=True)
    with pytest.raises(FeatxError, match="int8"):
        resolve_precision("int8", GPU)


# --- --compile: fixed batch shapes ----------------------------------------------------------

@pytest.fixture
def compiled(monkeypatch, tiny_weights):
    """An Extractor built with compile=True whose 'compiled' forward records the shapes it is called with."""
    shapes: list[tuple[int, ...]] = []

    def fake_compile(fn, **kwargs):
        assert kwargs.get("dynamic") is False  # one graph for the fixed batch shape
        return lambda x: (shapes.append(tuple(x.shape)), fn(x))[1]

    monkeypatch.setattr(torch, "compile", fake_compile)

    def make(flip: bool = False) -> Extractor:
        return Extractor("vgg16.hed", weights=tiny_weights, device="cpu", precision="fp32", dtype="float32",
                         flip_tta=flip, compile=True, tap="pool5-gap")
    return make, shapes


def images(n: int, seed: int = 0, size: int = 224) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_compiled_last_batch_is_padded_to_the_batch_size(compiled, tiny_weights):
    make, shapes = compiled
    ex = make()
    full, last = images(8, seed=1), images(3, seed=2)
    f_full, _ = ex(full, pad_to=8)
    f_last, _ = ex(last, pad_to=8)
    assert [s[0] for s in shapes] == [8, 8]  # no second graph for the short last batch
    assert f_full.shape == (8, 16) and f_last.shape == (3, 16)  # padding rows never come back
    plain = Extractor("vgg16.hed", weights=tiny_weights, device="cpu", precision="fp32", dtype="float32", tap="pool5-gap")
    np.testing.assert_allclose(f_last, plain(last)[0], rtol=1e-5, atol=1e-6)  # padding changes no row


def test_uncompiled_runs_are_never_padded(tiny_weights, monkeypatch):
    ex = Extractor("vgg16.hed", weights=tiny_weights, device="cpu", precision="fp32", dtype="float32", tap="pool5-gap")
    seen = []
    fwd = ex.forward
    monkeypatch.setattr(ex, "forward", lambda x: (seen.append(x.shape[0]), fwd(x))[1])
    ex(images(3), pad_to=8)
    assert seen == [3]


def test_compiled_flip_batches_keep_one_shape(compiled):
    """With --flip-tta every call runs 2 x batch rows (images and mirrors): the last one must too."""
    make, shapes = compiled
    ex = make(flip=True)
    f, ff = ex(images(8, seed=1), pad_to=8)
    g, gg = ex(images(3, seed=2), pad_to=8)
    assert f.shape == ff.shape == (8, 16) and g.shape == gg.shape == (3, 16)
    assert len({s[0] for s in shapes}) == 1, f"batch shapes {shapes} would compile twice"


def test_a_family_may_prefer_fp32_on_cpus_without_amx(monkeypatch):
    """FaceNet measured slower in bf16 than fp32 on an AVX512-BF16 CPU: `auto` runs it in fp32 there."""
    import featx.device as dev
    from featx.backbones import get_family

    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert dev.resolve_precision("auto", cpu, cpu_bf16=False) == "fp32"
    assert dev.resolve_precision("auto", cpu) == "bf16"
    assert dev.resolve_precision("bf16", cpu, cpu_bf16=False) == "bf16"  # an explicit choice stands
    monkeypatch.setattr(dev, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16"})
    assert dev.resolve_precision("auto", cpu, cpu_bf16=False) == "bf16"
    assert get_family("facenet").cpu_bf16 is False and get_family("vgg16").cpu_bf16 is True
