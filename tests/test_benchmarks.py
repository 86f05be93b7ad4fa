"""Benchmark scripts that the tests can run small: the photo decoders and the children's bound."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from featx.data import load
from featx.extract import Extractor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


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
