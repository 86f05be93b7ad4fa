"""The feature store on its own: layout, identity checks, shard writes and markers, the reading API."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from featx.data import Manifest
from featx.errors import FeatxError
from featx.store import (CHUNK_BYTES, FORMAT_VERSION, IDENTITY_KEYS, FeatureStore, StoreWriter, create, layout,
                         open_for_extract, plan_units, verify)

N, DIM = 30, (6,)


def manifest(tmp_path, n=N) -> Manifest:
    return Manifest(
        root=tmp_path, paths=[f"img/{i:03d}.jpg" for i in range(n)],
        labels=[["cat", "dog"][i % 2] for i in range(n)],
        splits=[["train", "train", "val", "test"][i % 4] for i in range(n)],
        extras={"age": [str(i) for i in range(n)], "odd name/with slash": ["x"] * n},
    )


def identity(**kw) -> dict:
    d = {"release": "vgg16.hed", "weights_sha256": "w" * 64, "tap": "pool5-gap",
         "preprocess": {"size": 32, "mean": [1.0, 2.0, 3.0]}, "dtype": "float32", "flip": False, "faces": None}
    d.update(kw)
    return d


def rows(start, stop, flip=False):
    """Deterministic fake features for rows [start, stop)."""
    r = np.arange(start, stop, dtype=np.float32)[:, None]
    return r * 10 + np.arange(DIM[0], dtype=np.float32) + (0.5 if flip else 0.0)


def fill(w: StoreWriter, bad=()):
    for a, b in w.plan_units():
        ok = np.array([i not in bad for i in range(a, b)])
        reasons = ["" if k else "corrupt: test" for k in ok]
        w.write_unit(a, b, rows(a, b), ok, reasons, rows(a, b, True) if w.flip else None)


def make(tmp_path, name="s.zarr", flip=False, **kw) -> tuple[str, StoreWriter]:
    path = str(tmp_path / name)
    w = create(path, manifest=manifest(tmp_path), identity=identity(flip=flip), provenance={"precision": "fp32"},
               dim=DIM, **kw)
    return path, w


def test_layout_chunks_are_about_a_megabyte_and_shards_whole_chunks():
    chunk, shard = layout(200_000, (512,), "float16")
    assert chunk * 512 * 2 >= CHUNK_BYTES and shard % chunk == 0 and shard >= chunk
    chunk, shard = layout(200_000, (512, 7, 7), "float16")  # bare pool5 maps for fine-tuning
    assert chunk * 512 * 49 * 2 >= CHUNK_BYTES and shard % chunk == 0
    assert shard * 512 * 49 * 2 <= 64 << 20  # a shard is assembled in memory: bounded
    assert layout(40, (16,), "float32", rows_per_shard=8) == (8, 8)
    assert layout(5, (512,), "float16") == (5, 5)  # never bigger than the data


def test_create_writes_metadata_and_provenance_before_features(tmp_path):
    path, w = make(tmp_path, rows_per_shard=8)
    g = zarr.open_group(path, mode="r")
    assert g.attrs["featx"]["state"] == "ready"
    assert {k: g.attrs["identity"][k] for k in IDENTITY_KEYS} == identity()
    assert g["features"].shape == (N, 6) and g["features"].shards == (8, 6)
    assert g["done"].shape == (4,) and not g["done"][:].any()
    assert w.plan_units() == [(0, 8), (8, 16), (16, 24), (24, 30)]
    assert list(g["targets/s0/columns/0"][:2]) == ["cat", "dog"] and g["targets/s0"].attrs["columns"][0] == [
        "label", "categorical"]
    with pytest.raises(FeatxError, match="unfinished"):
        FeatureStore.open(path)


def test_shard_marker_is_written_with_its_data_and_plan_shrinks(tmp_path):
    path, w = make(tmp_path, rows_per_shard=8)
    w.write_unit(8, 16, rows(8, 16), np.ones(8, bool), [""] * 8)
    assert plan_units(path) == [(0, 8), (16, 24), (24, 30)]
    g = zarr.open_group(path, mode="r")
    np.testing.assert_array_equal(g["features"][8:16], rows(8, 16))
    assert not g["features"][0:8].any()  # untouched shards stay empty
    with pytest.raises(ValueError, match="not a shard"):
        w.write_unit(0, 4, rows(0, 4), np.ones(4, bool), [""] * 4)  # only whole shards: one writer each


def test_identity_mismatch_is_refused_in_one_line(tmp_path):
    path, _ = make(tmp_path)
    assert open_for_extract(path, identity()) is not None
    for key, value in [("tap", "pool4-gap"), ("release", "vggface"),
                       ("weights_sha256", "v" * 64), ("dtype", "float16"), ("flip", True),
                       ("preprocess", {"size": 32, "mean": [1.0, 2.0, 4.0]})]:
        with pytest.raises(FeatxError) as e:
            open_for_extract(path, identity(**{key: value}))
        assert "\n" not in str(e.value) and "another --store" in str(e.value)


def test_non_featx_paths_are_refused_and_empty_folders_accepted(tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("mine")
    with pytest.raises(FeatxError, match="not a featx store"):
        open_for_extract(str(other), identity())
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w")
    with pytest.raises(FeatxError, match="not a featx store"):
        open_for_extract(str(plain), identity())
    (tmp_path / "empty").mkdir()
    assert open_for_extract(str(tmp_path / "empty"), identity()) is None
    assert (other / "a.txt").read_text() == "mine"


def test_interrupted_creation_is_redone_not_trusted(tmp_path):
    path = str(tmp_path / "s.zarr")
    zarr.open_group(path, mode="w", attributes={"featx": {"format": "featx-store", "version": 1,
                                                          "state": "creating"}, "identity": identity()})
    assert open_for_extract(path, identity()) is None  # same identity: create again
    with pytest.raises(FeatxError, match="tap"):
        open_for_extract(path, identity(tap="pool4-gap"))
    with pytest.raises(FeatxError, match="unfinished"):
        FeatureStore.open(path)
    _, w = make(tmp_path)
    assert w.plan_units() == [(0, N)]


def test_feature_store_reading_api(tmp_path):
    path, w = make(tmp_path, flip=True, rows_per_shard=8, rows_per_chunk=4)
    fill(w, bad={3, 17})
    fs = FeatureStore.open(path)
    assert (fs.n, fs.dim, fs.has_flip, fs.release, fs.tap) == (N, DIM, True, "vgg16.hed", "pool5-gap")
    assert fs.classes == ["cat", "dog"] and fs.labels.dtype == np.int64
    assert fs.paths[5] == "img/005.jpg" and fs.split[2] == "val"
    assert set(fs.extras) == {"age", "odd name/with slash"} and fs.extras["age"][7] == "7"
    assert not fs.ok[3] and fs.reasons[3] == "corrupt: test" and fs.reasons[4] == ""
    train = fs.indices("train")
    assert 3 not in fs.indices("all") and 17 not in fs.indices("all") and len(fs.indices("all")) == N - 2
    assert set(train) == {i for i in range(N) if i % 4 in (0, 1) and i not in (3, 17)}
    with pytest.raises(FeatxError, match="split"):
        fs.indices("holdout")
    np.testing.assert_array_equal(fs.features(), rows(0, N))
    idx = np.array([29, 2, 13, 2, 0])  # any order, repeats allowed: output follows idx
    np.testing.assert_array_equal(fs.features(idx), rows(0, N)[idx])
    np.testing.assert_array_equal(fs.features(idx, flip=True), rows(0, N, True)[idx])
    seen = []
    for r, block in fs.iter_chunks(train):
        assert block.dtype == np.float32 and len(set(r // 4)) == 1  # one stored chunk at a time
        np.testing.assert_array_equal(block, rows(0, N)[r])
        seen.extend(r)
    assert seen == sorted(train)
    assert sum(len(r) for r, _ in fs.iter_chunks()) == N
    assert fs.dask_array(flip=True).shape == (N, 6)
    with pytest.raises(IndexError):
        fs.features([N])


V1_STORE = Path(__file__).parent / "data" / "store_v1.zarr"  # format 1 (one manifest, labels in root arrays)


def test_format_1_stores_still_open_and_read_and_newer_ones_are_refused(tmp_path):
    """Format 1: a store made before featx 0.2, bound to one manifest; the oldest have no shard checksums
    and no row digests."""
    path = str(tmp_path / "v1.zarr")
    shutil.copytree(V1_STORE, path)
    g = zarr.open_group(path, mode="r+")
    del g["checksums"], g["row_hash"]
    v1 = {"release": "vgg16.hed", "weights_sha256": "w" * 64, "tap": "pool5-gap", "preprocess": {"size": 32},
          "dtype": "float32", "flip": False}
    fs = FeatureStore.open(path)
    assert fs.version == 1 and not fs.checked and FORMAT_VERSION == 2
    assert fs.kinds == {"label": "categorical", "age": "numeric", "race": "categorical"}  # typed when read
    assert fs.features(fs.indices("all")).shape == (12, 4) and verify(path) == []  # nothing to check it against
    w = StoreWriter.open(path)
    assert w.is_complete() and w.row_hashes() is None and open_for_extract(path, v1) is not None
    with pytest.raises(FeatxError, match="predates checksums and cannot grow"):
        w.grow(["img/new.jpg"], ["d"], "/nonexistent/photos")
    meta = dict(g.attrs["featx"])
    g.attrs["featx"] = {**meta, "version": FORMAT_VERSION + 1}
    newer = f"format {FORMAT_VERSION + 1}; this featx .* reads formats 1 to {FORMAT_VERSION}: upgrade featx"
    for opener in (FeatureStore.open, StoreWriter.open, verify, lambda p: open_for_extract(p, v1)):
        with pytest.raises(FeatxError, match=newer):
            opener(path)


def test_store_without_flip_says_so(tmp_path):
    path, w = make(tmp_path)
    fill(w)
    with pytest.raises(FeatxError, match="flip"):
        FeatureStore.open(path).features(flip=True)


def test_missing_store_is_a_featx_error(tmp_path):
    with pytest.raises(FeatxError, match="no feature store"):
        FeatureStore.open(str(tmp_path / "nothing.zarr"))


def test_stores_work_through_fsspec_urls(tmp_path):
    url = "memory://featx-test/store-url.zarr"
    w = create(url, manifest=manifest(tmp_path), identity=identity(), provenance={}, dim=DIM, rows_per_shard=16)
    fill(w)
    fs = FeatureStore.open(url)
    np.testing.assert_array_equal(fs.features([1, 20]), rows(0, N)[[1, 20]])
    assert plan_units(url) == []
    with pytest.raises(FeatxError, match="tap"):
        open_for_extract(url, identity(tap="fc7"))
