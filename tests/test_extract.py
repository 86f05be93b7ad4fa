"""featx extract end to end on tiny images and a tiny VGG: contents, idempotence, refusal, failures,
flip TTA, resume after SIGKILL, bounded memory, bf16 vs fp32, and the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import featx.device
from featx.data import load
from featx.errors import FeatxError
from featx.device import resolve_precision
from featx.extract import Extractor, extract
from featx.extract.record import finish
from featx.extract.units import run_unit
from featx.images import open_rgb
from featx.reader import ImageRows
from featx.store import FeatureStore, StoreWriter, plan_units
from featx_cli.main import main

TINY = dict(workers=0, progress=False, rows_per_shard=8)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def batch_of(data, n=None, preprocess=None):
    m = load(data)
    ds = ImageRows(m.root, m.paths[:n] if n else m.paths, preprocess)
    return torch.stack([ds[i][1] for i in range(len(ds))])


def test_store_contents_and_provenance(csv_dataset, tiny_weights, tmp_path):
    store = tmp_path / "f.zarr"
    s = extract(csv_dataset, "vgg16.hed", store, weights=tiny_weights, precision="fp32", **TINY)
    assert s["computed"] == 40 and s["skipped"] == 0 and not s["already_complete"]
    fs = FeatureStore.open(store)
    m = load(csv_dataset)
    assert fs.n == 40 and fs.dim == (16,) and fs.classes == ["female", "male"]
    np.testing.assert_array_equal(fs.labels, m.label_ids())
    assert list(fs.split) == m.splits and list(fs.paths) == m.paths and list(fs.extras["age"]) == m.extras["age"]
    assert fs.ok.all() and fs.attrs["dtype"] == "float16"
    a = fs.attrs
    assert a["release"] == "vgg16.hed" and a["tap"] == "pool5-gap" and a["dtype"] == "float16"
    assert a["precision"] == "fp32" and a["manifest_hash"] == m.hash()
    from featx.weights import sha256_file
    assert a["weights_sha256"] == sha256_file(tiny_weights)
    assert a["preprocess"]["channels"] == "BGR" and a["preprocess"]["size"] == 224
    assert set(a["versions"]) >= {"featx", "torch", "zarr"} and a["device"].startswith("cpu")
    assert a["timings"]["rows"] == 40 and a["timings"]["images_per_s"] > 0 and a["complete"]
    # the stored rows are the model's features of those images (fp16-rounded)
    ex = Extractor("vgg16.hed", weights=tiny_weights, device="cpu", precision="fp32", dtype="float32")
    want, _ = ex(batch_of(csv_dataset, 8, ex.preprocess))
    np.testing.assert_allclose(fs.features(np.arange(8)), want, rtol=2e-3, atol=1e-5)
    assert np.abs(want).max() > 0


def test_rerun_does_no_work_and_never_loads_the_model(csv_dataset, tiny_weights, tmp_path, monkeypatch, capsys):
    store = tmp_path / "f.zarr"
    args = ["extract", "--backbone", "vgg16.hed", "--weights", str(tiny_weights), "--data", str(csv_dataset),
            "--store", str(store), "--workers", "0", "-q"]
    assert main(args) == 0
    assert "extracted 40 of 40" in capsys.readouterr().out
    before = {p: p.stat().st_mtime_ns for p in (store / "features").rglob("*")}

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded for a finished store")

    monkeypatch.setattr("featx.extract.runner.load_backbone", no_model)
    monkeypatch.setattr("featx.extract.extractor.load_backbone", no_model)
    t = time.perf_counter()
    assert main(args) == 0
    assert time.perf_counter() - t < 2.0
    out = capsys.readouterr().out
    assert "already complete" in out and "nothing to do" in out
    assert {p: p.stat().st_mtime_ns for p in (store / "features").rglob("*")} == before
    s = extract(csv_dataset, "vgg16.hed", store, weights=tiny_weights, workers=0, progress=False)
    assert s["computed"] == 0 and s["already_complete"]


def test_mismatched_store_is_refused_with_exit_2(csv_dataset, folder_dataset, tiny_weights, tmp_path, capsys):
    store = tmp_path / "f.zarr"
    base = ["extract", "--weights", str(tiny_weights), "--store", str(store), "--workers", "0", "-q"]
    assert main(base + ["--backbone", "vgg16.hed", "--data", str(csv_dataset)]) == 0
    capsys.readouterr()
    cases = {
        "tap": ["--backbone", "vgg16.hed", "--data", str(csv_dataset), "--tap", "pool4-gap"],
        "data": ["--backbone", "vgg16.hed", "--data", str(folder_dataset)],
        "release": ["--backbone", "vgg16.imagenet-features", "--data", str(csv_dataset)],
        "dtype": ["--backbone", "vgg16.hed", "--data", str(csv_dataset), "--dtype", "float32"],
    }
    for what, extra in cases.items():
        assert main(base + extra) == 2, what
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "another --store" in err, (what, err)
    assert FeatureStore.open(store).tap == "pool5-gap"  # untouched
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("x")
    assert main(base[:-5] + ["--store", str(notes), "--backbone", "vgg16.hed", "--data", str(csv_dataset)]) == 2
    assert "not a featx store" in capsys.readouterr().err
    assert (notes / "keep.txt").read_text() == "x"


def test_bad_images_are_marked_and_logged_while_the_rest_are_stored(csv_dataset, tiny_weights, tmp_path, capsys):
    img = csv_dataset.parent / "img"
    (img / "003.jpg").write_bytes(b"this is not a jpeg")
    good = (img / "011.jpg").read_bytes()
    (img / "011.jpg").write_bytes(good[: len(good) // 3])  # truncated
    store = tmp_path / "f.zarr"
    assert main(["extract", "--backbone", "vgg16.hed", "--weights", str(tiny_weights), "--data", str(csv_dataset),
                 "--store", str(store), "--workers", "1", "-q", "--rows-per-shard", "8"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2" in out and "img/003.jpg" in out
    fs = FeatureStore.open(store)
    assert list(np.flatnonzero(~fs.ok)) == [3, 11]
    assert fs.reasons[3].startswith("not an image") and fs.reasons[11].startswith("truncated")
    assert (fs.reasons[fs.ok] == "").all()
    f = fs.features()
    assert not f[[3, 11]].any() and (np.abs(f[fs.ok]).sum(1) > 0).all()
    assert fs.attrs["skipped"]["count"] == 2
    assert {d["path"] for d in fs.attrs["skipped"]["first"]} == {"img/003.jpg", "img/011.jpg"}
    assert 3 not in fs.indices("all") and len(fs.indices("all")) == 38


def test_flip_tta_stores_features_of_the_mirrored_image(csv_dataset, tiny_weights, tmp_path):
    store = tmp_path / "f.zarr"
    extract(csv_dataset, "vgg16.hed", store, weights=tiny_weights, flip_tta=True, dtype="float32",
            precision="fp32", **TINY)
    fs = FeatureStore.open(store)
    assert fs.has_flip and fs.features(flip=True).shape == (40, 16)
    ex = Extractor("vgg16.hed", weights=tiny_weights, device="cpu", precision="fp32", dtype="float32")
    x = batch_of(csv_dataset, 8, ex.preprocess)
    mirrored, _ = ex(x.flip(2))  # uint8 [B, H, W, 3]: axis 2 is the width
    np.testing.assert_allclose(fs.features(np.arange(8), flip=True), mirrored, rtol=1e-4, atol=1e-6)
    assert not np.allclose(fs.features(np.arange(8)), mirrored, rtol=1e-3)


def test_device_normalisation_equals_the_release_preprocess(csv_dataset, tiny_weights):
    ex = Extractor("vgg16.hed", weights=tiny_weights, device="cpu", precision="fp32")
    m = load(csv_dataset)
    imgs = [open_rgb(m.abspath(i)) for i in range(4)]
    got = ex.normalize(torch.stack([torch.from_numpy(np.array(ex.preprocess.resize_crop(im))) for im in imgs]))
    want = torch.stack([ex.preprocess(im) for im in imgs])
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-4)


SLOW_RUN = """
import sys, time
import featx.device
import featx.extract as fx
call = fx.Extractor.__call__
def slow(self, x, pad_to=None):
    time.sleep(0.15)
    return call(self, x, pad_to)
fx.Extractor.__call__ = slow
data, weights, store = sys.argv[1:4]
fx.extract(data, "vgg16.hed", store, weights=weights, device="cpu", precision="fp32", dtype="float32",
           batch_size=4, workers=0, progress=False, rows_per_shard=8)
print("finished")
"""


def done_markers(store: Path) -> np.ndarray | None:
    try:
        return zarr.open_group(str(store), mode="r")["done"][:]
    except Exception:
        return None


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(csv_dataset, tiny_weights, tmp_path):
    store = tmp_path / "killed.zarr"
    script = tmp_path / "slow_run.py"
    script.write_text(textwrap.dedent(SLOW_RUN))
    proc = subprocess.Popen([sys.executable, str(script), str(csv_dataset), str(tiny_weights), str(store)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            d = done_markers(store)
            if d is not None and d.any():
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = done_markers(store)
    assert 0 < done.sum() < len(done) == 5, done  # really killed mid-run
    with pytest.raises(FeatxError):
        FeatureStore.open(store)
    with pytest.raises(FeatxError, match="precision"):  # never mix precisions in one store
        extract(csv_dataset, "vgg16.hed", store, weights=tiny_weights, precision="bf16", dtype="float32", **TINY)

    kw = dict(weights=tiny_weights, device="cpu", precision="fp32", dtype="float32", batch_size=4, **TINY)
    s = extract(csv_dataset, "vgg16.hed", store, **kw)
    assert s["computed"] == 40 - 8 * int(done.sum())
    ref = tmp_path / "uninterrupted.zarr"
    extract(csv_dataset, "vgg16.hed", ref, **kw)
    a, b = zarr.open_group(str(store), mode="r"), zarr.open_group(str(ref), mode="r")
    for name in ("features", "ok", "reason", "done", "labels", "paths", "split"):
        assert np.array_equal(a[name][:], b[name][:]), name
    assert a["features"][:].any()
    assert a.attrs["identity"] == b.attrs["identity"]


def test_memory_is_bounded_by_a_shard(csv_dataset, tiny_weights, tmp_path, monkeypatch):
    writes = []
    real = StoreWriter.write_unit

    def spy(self, start, stop, features, *a, **k):
        writes.append((start, stop, features.shape[0]))
        return real(self, start, stop, features, *a, **k)

    monkeypatch.setattr(StoreWriter, "write_unit", spy)
    s = extract(csv_dataset, "vgg16.hed", tmp_path / "f.zarr", weights=tiny_weights, batch_size=3, **TINY)
    # one write per shard, each holding just that shard's rows; at most 1 shard buffered at a time
    assert writes == [(0, 8, 8), (8, 16, 8), (16, 24, 8), (24, 32, 8), (32, 40, 8)]
    assert s["peak_shard_buffers"] == 1


def test_units_api_for_a_distributed_runner(csv_dataset, tiny_weights, tmp_path):
    """What issue 7 does per dask task: plan shards, run each with its own writer, then finish."""
    store = tmp_path / "f.zarr"
    ex = Extractor("vgg16.hed", weights=tiny_weights, device="cpu", precision="fp32", dtype="float32")
    m = load(csv_dataset)
    from featx.store import create
    ident = {"manifest_hash": m.hash(), "release": "vgg16.hed", "weights_sha256": ex.weights_sha256,
             "tap": "pool5-gap", "preprocess": ex.preprocess.to_dict(), "dtype": "float32", "flip": False}
    create(store, manifest=m, identity=ident, provenance={"precision": "fp32"}, dim=ex.dim, rows_per_shard=16)
    units = plan_units(store)
    assert units == [(0, 16), (16, 32), (32, 40)]
    for a, b in reversed(units):  # any order, each shard independent
        assert run_unit(str(store), a, b, extractor=ex)["rows"] == b - a
    finish(store)
    ref = tmp_path / "ref.zarr"
    extract(m, "vgg16.hed", ref, weights=tiny_weights, precision="fp32", dtype="float32", **TINY)
    np.testing.assert_array_equal(FeatureStore.open(store).features(), FeatureStore.open(ref).features())
    wrong = Extractor("vgg16.hed", weights=tiny_weights, device="cpu", precision="fp32", dtype="float32", tap="pool4-gap")
    with pytest.raises(FeatxError, match="tap"):
        run_unit(store, 0, 16, extractor=wrong)


def test_bf16_matches_fp32_on_the_tiny_model(csv_dataset, tiny_weights):
    e32 = Extractor("vgg16.hed", weights=tiny_weights, device="cpu", precision="fp32", dtype="float32")
    e16 = Extractor("vgg16.hed", weights=tiny_weights, device="cpu", precision="bf16", dtype="float32")
    x = batch_of(csv_dataset, 16, e32.preprocess)
    a, _ = e32(x)
    b, _ = e16(x)
    assert not np.array_equal(a, b)  # bf16 really ran
    assert cosine_rows(a, b).min() >= 0.998


def test_bf16_matches_fp32_on_real_photos_with_real_weights(shared_utkface, real_hed_weights):
    path = real_hed_weights
    e32 = Extractor("vgg16.hed", weights=path, device="cpu", precision="fp32", dtype="float32")
    e16 = Extractor("vgg16.hed", weights=path, device="cpu", precision="bf16", dtype="float32")
    m = load(shared_utkface)
    pick = np.linspace(0, len(m) - 1, 32).astype(int)
    ds = ImageRows(m.root, [m.paths[i] for i in pick], e32.preprocess)
    x = torch.stack([ds[i][1] for i in range(len(ds))])
    a, _ = e32(x)
    b, _ = e16(x)
    assert cosine_rows(a, b).min() >= 0.999


def test_precision_auto_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(featx.device, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(featx.device, "cpu_flags", lambda: {"avx512f", "avx2"})
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(FeatxError, match="CPU-only"):
        resolve_precision("int8", torch.device("meta"))


def test_bad_options_are_one_line_errors(csv_dataset, tiny_weights, tmp_path, capsys):
    base = ["extract", "--backbone", "vgg16.hed", "--weights", str(tiny_weights), "--data", str(csv_dataset),
            "--store", str(tmp_path / "f.zarr"), "-q"]
    for extra, word in [(["--tap", "fc7"], "no tap"), (["--tap", "pool9"], "unknown tap"),
                        (["--dtype", "int8"], "dtype"), (["--precision", "fp8"], "precision")]:
        assert main(base + extra) == 2
        assert word in capsys.readouterr().err
    assert not (tmp_path / "f.zarr").exists()


def test_map_taps_store_full_maps_chunked_by_rows(csv_dataset, tiny_weights, tmp_path):
    store = tmp_path / "maps.zarr"
    extract(csv_dataset, "vgg16.hed", store, weights=tiny_weights, tap="pool5", flip_tta=True, **TINY)
    fs = FeatureStore.open(store)
    assert fs.dim == (16, 7, 7) and fs.dask_array().shape == (40, 16, 7, 7)
    assert fs.dask_array().chunks[1:] == ((16,), (7,), (7,))  # whole rows per chunk
    assert fs.features([0, 39], flip=True).shape == (2, 16, 7, 7)
    assert sum(len(r) for r, _ in fs.iter_chunks()) == 40


def test_a_written_manifest_is_the_same_data(csv_dataset, tiny_weights, tmp_path):
    store = tmp_path / "f.zarr"
    extract(csv_dataset, "vgg16.hed", store, weights=tiny_weights, **TINY)
    written = load(csv_dataset).write(tmp_path / "elsewhere" / "manifest.csv")
    s = extract(written, "vgg16.hed", store, weights=tiny_weights, **TINY)
    assert s["already_complete"] and s["computed"] == 0
