"""Benchmark scripts that the tests can run small: the photo decoders and the children's bound."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from featx.data import load
from featx.extract import Extractor


def extractor(weights) -> Extractor:
    return Extractor("vgg16.hed", weights=weights, device="cpu", precision="fp32", dtype="float32", tap="pool5-gap")


def test_benchmark_decoders_read_every_photo(folder_dataset, tiny_weights):
    """They read ImageRows' rows (index, pixels, ok, reason, digest): three broke when the digest came."""
    import extract_speed
    import facenet_crop
    import int8_accuracy

    m = load(folder_dataset)
    ex = extractor(tiny_weights)
    n = ex.preprocess.size
    feats, rate = facenet_crop.features(ex, m.root, m.paths[:5], batch=2)
    assert feats.shape == (5, ex.dim[0]) and rate > 0
    rows = np.array([4, 0, 2])
    u8 = int8_accuracy.decode(m, rows, ex.preprocess, workers=0)
    assert u8.shape == (3, n, n, 3) and u8.dtype == torch.uint8
    assert np.allclose(feats[rows], ex(u8)[0], atol=1e-5)  # the same photos, in the rows asked for
    x = extract_speed.decode_normalized(m, ex, 4, workers=0)
    assert x.shape == (4, 3, n, n) and torch.allclose(x[[0, 2]], ex.normalize(u8[[1, 2]]), atol=1e-6)


def ceiling_row(monkeypatch, capsys, children_signal: float) -> list[str]:
    """children_ceiling.py on a fake store: 300 rows, 40% children whose label shows in feature 0
    with `children_signal` strength; the adults' label is plain in feature 1."""
    import children_ceiling

    from test_heads import FakeStore

    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 2, n)
    age = np.where(np.arange(n) // 5 % 5 < 2, 6, 40)  # rows come in fives: train, train, train, val, test
    X = rng.normal(size=(n, 4)).astype(np.float32)
    X[:, 0] += children_signal * (2 * y - 1) * (age < 13)
    X[:, 1] += 5 * (2 * y - 1) * (age >= 13)
    store = FakeStore(X, y, ["female", "male"], extras={"age": age})
    monkeypatch.setattr(children_ceiling, "open_store", lambda s: store)
    monkeypatch.setattr(sys, "argv", ["children_ceiling.py", "--store", "s.zarr", "--adults", "0.9"])
    children_ceiling.main()
    row = capsys.readouterr().out.splitlines()[-1]
    return [c.strip() for c in row.strip("|").split("|")]


def test_children_ceiling_bounds_the_test_split(monkeypatch, capsys):
    cells = ceiling_row(monkeypatch, capsys, children_signal=10.0)
    assert cells[0] == "s.zarr" and cells[3] == "72/24/24"  # children per split (FakeStore's 3:1:1 split)
    assert float(cells[4].split()[0]) > 0.97 and float(cells[6]) > 0.97  # separable children: no cap
    cells = ceiling_row(monkeypatch, capsys, children_signal=0.0)
    acc = float(cells[4].split()[0])
    assert 0.3 < acc < 0.7  # no signal: a coin
    n_test, n_children = 60, 24
    assert float(cells[6]) == pytest.approx((n_test - n_children + acc * n_children) / n_test, abs=1e-3)
    assert float(cells[7]) == pytest.approx((0.9 * (n_test - n_children) + acc * n_children) / n_test, abs=1e-3)


# --- benchmarks/common.py ------------------------------------------------------------------------------

def test_adults_and_children_are_cut_at_13():
    import common

    r = common.by_age([True, False, True, True, False], [5, 12, 13, 40, 70])
    assert r == {"accuracy": 0.6, "adults": 0.6667, "children": 0.5, "n_adults": 3, "n_children": 2}
    groups = {"0-12": {"accuracy": 0.5, "n": 2}, "13-19": {"accuracy": 1.0, "n": 1}, "60+": {"accuracy": 0.5, "n": 2}}
    assert common.by_age_groups(groups) == {"accuracy": 0.6, "adults": 0.6667, "children": 0.5,
                                            "n_adults": 3, "n_children": 2}


def test_sample_is_seeded_sorted_and_never_more_than_there_is():
    import common

    rows = np.arange(100, 200)
    a = common.sample(rows, 10, seed=0)
    assert np.array_equal(a, common.sample(rows, 10, seed=0)) and not np.array_equal(a, common.sample(rows, 10, seed=1))
    assert len(set(a)) == 10 and set(a) <= set(rows) and np.all(np.diff(a) > 0)
    # the draw the README's subsets were made with (facenet_crop.py, face_subset.py, finetune_speed.py)
    assert np.array_equal(a, np.sort(np.random.default_rng(0).choice(rows, 10, replace=False)))
    assert np.array_equal(common.sample(rows[::-1], None), rows) and len(common.sample(rows, 500)) == 100


def test_machine_names_the_cpu_its_flags_and_the_gpu(monkeypatch):
    import common

    monkeypatch.setattr(common, "cpu_info", lambda: {"model": "Test CPU 9000", "flags": {"avx2", "avx512_bf16", "sse"}})
    monkeypatch.setattr(common, "gpu_name", lambda: None)
    line = common.machine()
    assert line.startswith("Test CPU 9000, ") and "flags: avx2 avx512_bf16;" in line and "GPU: none" in line
    assert common.cpu_info()["model"]  # this machine's, read from /proc/cpuinfo


@pytest.mark.parametrize("ref, size, big_crop", [("dlib_reference.npz", 150, 0.75), ("facenet_reference.npz", 160, 0.8)])
def test_reference_scripts_feed_the_committed_pixels(shared_utkface, ref, size, big_crop):
    """dlib_reference.py and facenet_reference.py build their inputs with common.reference_inputs: the same
    names, crops and pixels as the committed reference files were made from."""
    import common

    rows = common.reference_inputs(shared_utkface.parents[1], size, big_crop)
    npz = np.load(Path(__file__).parent / "data" / ref)
    assert [r[0] for r in rows] == list(npz["name"]) and [r[1] for r in rows] == list(npz["kind"])
    assert np.allclose([r[2] for r in rows], npz["crop"])
    import hashlib

    assert [hashlib.sha256(np.ascontiguousarray(r[3]).tobytes()).hexdigest() for r in rows] == list(npz["pixels_sha256"])


@pytest.mark.slow
def test_compute_peak_counts_the_model_s_flops_and_runs_small(folder_dataset, tiny_weights, monkeypatch, capsys):
    """compute_peak.py on a tiny VGG: FLOPs per image are 2 x the convolutions' multiply-adds, and one
    table row per precision comes out (extract_speed.py passed its weights where the options go, once)."""
    import compute_peak

    from conftest import TINY_WIDTHS
    from featx.backbones import tap_features

    ex = extractor(tiny_weights)
    x = torch.zeros(2, 3, 224, 224)
    widths, size, c_in, macs = [w for w, n in zip(TINY_WIDTHS, (2, 2, 3, 3, 3)) for _ in range(n)], 224, 3, 0
    for i, w in enumerate(widths):
        macs += size * size * c_in * w * 9
        c_in = w
        size //= 2 if i in (1, 3, 6, 9) else 1
    gflops = compute_peak.gflops_per_image(lambda t: tap_features(ex.model, t, "pool5-gap"), x)
    assert gflops == pytest.approx(2 * macs / 1e9, rel=1e-6)
    assert compute_peak.matmul_tflops(64, "fp32", 0.01) > 0
    monkeypatch.setattr(sys, "argv", ["compute_peak.py", "--data", str(folder_dataset), "--weights", str(tiny_weights),
                                      "--n", "4", "--batch", "2", "--matrix", "64", "--min-s", "0.01"])
    compute_peak.main()
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| fp32") or ln.startswith("| bf16")]
    assert len(rows) == 2 and all(float(r.split("|")[3]) > 0 for r in rows)


def test_face_subset_keeps_every_test_row_and_draws_train(csv_dataset, tmp_path, monkeypatch, capsys):
    import face_subset

    src = load(csv_dataset)
    for keep_val, val_rows in ((False, 0), (True, 4)):
        out = tmp_path / f"sub-{keep_val}.csv"
        argv = ["face_subset.py", "--src", str(csv_dataset), "--train", "10", "--out", str(out)]
        monkeypatch.setattr(sys, "argv", argv + (["--keep-val"] if keep_val else []))
        face_subset.main()
        sub = load(out)
        assert [sub.splits.count(k) for k in ("train", "val", "test")] == [10, val_rows, 4]
        test = {str(src.abspath(i)) for i, s in enumerate(src.splits) if s == "test"}
        assert test == {str(sub.abspath(i)) for i, s in enumerate(sub.splits) if s == "test"}
        assert set(sub.extras) == set(src.extras)  # Manifest.subset keeps every column (age here)
    assert "hash" in capsys.readouterr().out


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem not in ("common", "dlib_reference", "dlib_chips"))


@pytest.mark.parametrize("name", SCRIPTS)  # dlib_reference, dlib_chips need dlib (scratch venvs)
def test_every_benchmark_script_imports(name):
    """A moved module breaks a script nobody runs for weeks; importing each one catches it."""
    import importlib

    assert callable(importlib.import_module(name).main)
