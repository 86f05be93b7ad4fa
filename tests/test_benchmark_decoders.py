"""The benchmark scripts that read photos themselves go through featx's ImageRows; they must keep up
with its rows (index, pixels, ok, reason, digest): three of them broke when the digest was added."""

import sys
from pathlib import Path

import numpy as np
import torch

from featx.data import load
from featx.extract import Extractor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def extractor(weights) -> Extractor:
    return Extractor("vgg16.hed", weights=weights, device="cpu", precision="fp32", dtype="float32", tap="pool5-gap")


def test_benchmark_decoders_read_every_photo(folder_dataset, tiny_weights):
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
