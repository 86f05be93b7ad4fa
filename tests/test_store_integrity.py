"""Issue 13, the store: one writer at a time, checksums that catch damage, repair, moved and changed data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from featx.errors import FeatxError
from featx.extract import extract, repair
from featx.store import FeatureStore, lock_path, verify, writer_lock
from featx_cli.main import main

from conftest import make_image

KW = dict(workers=0, progress=False, rows_per_shard=8, device="cpu", precision="fp32", dtype="float32")


def shard_file(store: Path, k: int) -> Path:
    files = sorted((store / "features" / "c").rglob("*"))
    files = [f for f in files if f.is_file()]
    assert len(files) == 5, files  # 40 rows, 8 a shard
    return sorted(files, key=lambda f: int(f.relative_to(store / "features" / "c").parts[0]))[k]


@pytest.fixture
def done_store(csv_dataset, tiny_weights, tmp_path):
    store = tmp_path / "s.zarr"
    extract(csv_dataset, "vgg16.hed", store, weights=tiny_weights, **KW)
    return store


def test_a_sound_store_verifies(done_store, capsys):
    assert verify(done_store) == []
    assert main(["store", "verify", str(done_store)]) == 0
    assert "every shard matches" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damage_is_found_refused_and_repaired(damage, done_store, csv_dataset, tiny_weights, capsys):
    good = FeatureStore.open(done_store).features()
    f = shard_file(done_store, 2)
    raw = bytearray(f.read_bytes())
    if damage == "flip":
        for i in range(len(raw) // 3, len(raw) // 3 + 8):
            raw[i] ^= 0xFF
        f.write_bytes(bytes(raw))
    elif damage == "truncate":
        f.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        f.unlink()
    bad = verify(done_store)
    assert [b["shard"] for b in bad] == [2], bad
    assert main(["store", "verify", str(done_store)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "shard 2 (rows 16-23)" in out[0]
    with pytest.raises(FeatxError, match="shard 2 .*store repair"):
        FeatureStore.open(done_store).features()
    fs = FeatureStore.open(done_store)  # rows of other shards still read
    np.testing.assert_array_equal(fs.features(np.arange(8)), good[:8])
    assert main(["store", "repair", str(done_store), "--data", str(csv_dataset), "-q"]) == 0
    assert "repaired 1 shard(s)" in capsys.readouterr().out
    assert verify(done_store) == []
    np.testing.assert_array_equal(FeatureStore.open(done_store).features(), good)


def test_extract_on_a_damaged_finished_store_repairs_it(done_store, csv_dataset, tiny_weights):
    good = FeatureStore.open(done_store).features()
    shard_file(done_store, 4).unlink()  # a deleted chunk would read back as zeros
    s = extract(csv_dataset, "vgg16.hed", done_store, weights=tiny_weights, **KW)
    assert s["computed"] == 8 and "1 damaged" in s["note"]
    np.testing.assert_array_equal(FeatureStore.open(done_store).features(), good)


def test_missing_metadata_is_one_line(done_store, capsys):
    (done_store / "zarr.json").unlink()
    assert main(["store", "verify", str(done_store)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "zarr.json is missing" in err and "\n" not in err
    with pytest.raises(FeatxError, match="damaged"):
        FeatureStore.open(done_store)


def test_moved_dataset_resumes_from_the_new_place(csv_dataset, tiny_weights, tmp_path):
    store = tmp_path / "m.zarr"
    extract(csv_dataset, "vgg16.hed", store, weights=tiny_weights, **KW)
    ref = FeatureStore.open(store).features()
    from featx.store import StoreWriter

    StoreWriter.open(store).reset_units([1, 3])  # as if the run had been interrupted
    moved = tmp_path / "moved"
    shutil.move(str(csv_dataset.parent), moved)
    s = extract(moved / "labels.csv", "vgg16.hed", store, weights=tiny_weights, **KW)
    fs = FeatureStore.open(store)
    assert s["computed"] == 16 and fs.ok.all()  # nothing marked missing
    np.testing.assert_array_equal(fs.features(), ref)


def test_same_names_other_bytes_are_new_rows(csv_dataset, tiny_weights, tmp_path):
    store = tmp_path / "c.zarr"
    extract(csv_dataset, "vgg16.hed", store, weights=tiny_weights, **KW)
    old = FeatureStore.open(store).features()
    other = tmp_path / "other"
    shutil.copytree(csv_dataset.parent, other)
    make_image(other / "img" / "010.jpg", seed=999, cls=1)  # row 10: new bytes, same name
    shutil.rmtree(csv_dataset.parent)
    s = extract(other / "labels.csv", "vgg16.hed", store, weights=tiny_weights, **KW)
    assert s["computed"] == 1 and "1 of 40 images are new" in s["note"]  # keyed by content: a new row
    fs = FeatureStore.open(store)
    assert fs.tset.rows[10] >= 40 and list(fs.tset.rows[:10]) == list(range(10))
    fresh = tmp_path / "fresh.zarr"
    extract(other / "labels.csv", "vgg16.hed", fresh, weights=tiny_weights, **KW)
    np.testing.assert_array_equal(fs.features(fs.tset.rows), FeatureStore.open(fresh).features())
    np.testing.assert_array_equal(fs.features([10]), old[10:11])  # the old row: still the old bytes' features


HOLD = """
import sys, time
from featx.store import writer_lock
with writer_lock(sys.argv[1], "featx extract"):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_holder(csv_dataset, tiny_weights, tmp_path, capsys):
    store = tmp_path / "l.zarr"
    script = tmp_path / "hold.py"
    script.write_text(textwrap.dedent(HOLD))
    proc = subprocess.Popen([sys.executable, str(script), str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        rc = main(["extract", "--backbone", "vgg16.hed", "--weights", str(tiny_weights), "--data",
                   str(csv_dataset), "--store", str(store), "--tap", "pool4-gap", "-q"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and f"pid {proc.pid}" in err and "one writer per store" in err and "\n" not in err
        assert not store.exists()  # nothing was written
    finally:
        proc.kill()
        proc.wait()
    # the holder died without cleaning up: its lock file stays, but the lock went with it
    assert lock_path(store).exists()
    s = extract(csv_dataset, "vgg16.hed", store, weights=tiny_weights, **KW)
    assert s["computed"] == 40


@pytest.mark.slow
def test_lock_is_held_for_the_whole_run_and_released(tmp_path):
    store = tmp_path / "x.zarr"
    with writer_lock(store) as me:
        assert me["pid"] == os.getpid()
        code = f"from featx.store import writer_lock\nwith writer_lock({str(store)!r}): pass"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode != 0 and "being written by featx extract" in r.stderr
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
