"""featx.extract.dask on real dask LocalClusters of worker processes: the store equals a single-process one,
a worker killed mid-run loses nothing, finished shards are never recomputed, the model loads once
per worker, remote (file://, memory://) stores, GPU-pinned workers, and features as dask arrays."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import cloudpickle
import numpy as np
import pytest
import zarr

import featx.extract.dask as fc
from featx.extract.command import extract_on_cluster
from featx.extract.dask import LocalSpec, feature_array, gpu_resources, parse_cluster
from featx.errors import FeatxError
from featx.extract import extract
from featx.store import FeatureStore, StoreWriter

pytestmark = pytest.mark.cluster

distributed = pytest.importorskip("distributed")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ship this module's helpers to workers

# fp32 end to end, so a cluster store must equal a single-process one bit for bit; 10 shards of 4 rows
KW = dict(precision="fp32", dtype="float32", rows_per_shard=4, progress=False)
ARRAYS = ("features", "ok", "reason", "done", "row_hash", "paths", "targets/s0/rows", "targets/s0/split",
          "targets/s0/columns/0")


def reference(data, weights, path):
    extract(data, "vgg16.hed", path, weights=weights, workers=0, **KW)
    return FeatureStore.open(path)


def assert_same_store(a: FeatureStore, b: FeatureStore) -> None:
    for name in ARRAYS:
        x, y = a.group[name][:], b.group[name][:]
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    for key in ("identity", "n", "dim", "rows_per_shard", "classes", "precision", "release_info"):
        assert a.attrs[key] == b.attrs[key], key
    assert np.abs(a.features()).max() > 0


def start_cluster(n=2, processes=True, **kw):
    with fc.kept_environ(fc.THREAD_VARS):  # LocalCluster would set OMP_NUM_THREADS=1 for every later test
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=processes,
                                           dashboard_address=":0", silence_logs=40, **kw)
    return cluster, distributed.Client(cluster, set_as_default=False)


@pytest.fixture(scope="module")
def client2():
    """A LocalCluster of 2 single-threaded worker processes, shared by several tests."""
    cluster, client = start_cluster(2)
    yield client
    client.close()
    cluster.close()


def slow_units(seconds: float) -> None:
    """On a worker: make each shard take `seconds` longer, so a kill lands mid-run."""
    import featx.extract.units as fx

    orig = getattr(fx, "_orig_run_units", fx.run_units)
    fx._orig_run_units = orig

    def slow(*a, **k):
        time.sleep(seconds)
        return orig(*a, **k)

    fx.run_units = slow if seconds else orig


# --- no cluster needed ---------------------------------------------------------------------

def test_parse_cluster():
    assert parse_cluster("local:2") == LocalSpec(2) and parse_cluster(" local:16 ") == LocalSpec(16)
    assert parse_cluster("local") == LocalSpec(None)
    assert parse_cluster(None) is None and parse_cluster("") is None
    for bad in ("local:0", "local:-1", "local:x", "local:", "yarn:3", "tcp://h:1", "2"):
        with pytest.raises(FeatxError, match="cluster"):
            parse_cluster(bad)


def test_gpu_resources_follow_what_workers_declare():
    gpu = {"a": {"resources": {"GPU": 1}}, "b": {"resources": {}}}
    cpu = {"a": {"resources": {}}, "b": {}}
    assert gpu_resources(gpu) == {"GPU": 1} and gpu_resources(gpu, "cuda") == {"GPU": 1}
    assert gpu_resources(gpu, "cpu") is None and gpu_resources(cpu) is None


def test_extractor_cache_loads_once_per_process(tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setattr(fc, "_EXTRACTORS", {})
    monkeypatch.setattr(fc, "_STATS", fc.Counter())
    spec = {"backbone": "vgg16.hed", "weights": str(tiny_weights), "weights_sha256": None, "tap": "pool5-gap",
            "device": "cpu", "precision": "auto", "dtype": "float16", "flip": False, "compile": False,
            "faces": None}
    ex = fc.get_extractor(spec)  # what the probe asks: precision and sha not yet known
    resolved = {**spec, "precision": ex.precision, "weights_sha256": ex.weights_sha256}
    assert fc.get_extractor(resolved) is ex and fc.get_extractor(spec) is ex  # what every later task asks
    assert fc.worker_stats()["loads"] == 1
    other = fc.get_extractor({**resolved, "tap": "pool4-gap"})  # another setting: a new model, the old one freed
    assert other is not ex and fc.worker_stats()["loads"] == 2 and len(fc._EXTRACTORS) == 1
    with pytest.raises(FeatxError, match="same --weights"):
        fc.get_extractor({**resolved, "tap": "pool5-max", "weights_sha256": "0" * 64})


def test_bad_arguments_fail_before_any_cluster_starts(folder_dataset, tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setattr(fc, "start_local", lambda *a, **k: pytest.fail("no cluster may start"))
    store = tmp_path / "s.zarr"
    with pytest.raises(FeatxError, match="not both"):
        extract_on_cluster(folder_dataset, "vgg16.hed", store, cluster="local:2", scheduler="tcp://h:1")
    with pytest.raises(FeatxError, match="cluster"):
        extract_on_cluster(folder_dataset, "vgg16.hed", store, cluster="local:zero", weights=tiny_weights)
    with pytest.raises(FeatxError, match="dtype"):
        extract_on_cluster(folder_dataset, "vgg16.hed", store, cluster="local:2", weights=tiny_weights,
                           dtype="int8")
    with pytest.raises(FeatxError, match="tap"):
        extract_on_cluster(folder_dataset, "vgg16.hed", store, cluster="local:2", weights=tiny_weights,
                           tap="conv9")
    assert not store.exists()


def test_unreachable_scheduler_is_one_line(folder_dataset, tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setattr(fc, "CONNECT_TIMEOUT_S", 2)
    t = time.perf_counter()
    with pytest.raises(FeatxError, match="cannot reach the dask scheduler at tcp://127.0.0.1:9"):
        extract_on_cluster(folder_dataset, "vgg16.hed", tmp_path / "s.zarr", scheduler="tcp://127.0.0.1:9",
                           weights=tiny_weights, **KW)
    assert time.perf_counter() - t < 20


# --- on clusters ---------------------------------------------------------------------------

def test_local2_store_equals_single_process(folder_dataset, tiny_weights, tmp_path, monkeypatch):
    ref = reference(folder_dataset, tiny_weights, tmp_path / "ref.zarr")
    store = tmp_path / "cluster.zarr"
    s = extract_on_cluster(folder_dataset, "vgg16.hed", store, cluster="local:2", weights=tiny_weights, **KW)
    assert s["computed"] == 40 and s["units"] == 10 and s["n_workers"] == 2 and not s["already_complete"]
    assert_same_store(ref, FeatureStore.open(store))
    # the model loaded exactly once in each worker process, though each ran several shards
    per = s["per_worker"]
    assert len(per) == 2 and sum(w["units"] for w in per.values()) == 10
    assert all(w["loads"] == 1 and w["units"] >= 1 for w in per.values()), per
    a = FeatureStore.open(store).attrs
    assert a["cluster"]["n_workers"] == 2 and a["runs"][-1]["cluster"]["units"] == 10
    assert a["complete"] and a["timings"]["rows"] == 40 and a["device"].startswith("cpu")
    # a finished store: nothing to do, and no cluster is even started
    monkeypatch.setattr(fc, "start_local", lambda *a, **k: pytest.fail("no cluster for a finished store"))
    again = extract_on_cluster(folder_dataset, "vgg16.hed", store, cluster="local:2", weights=tiny_weights, **KW)
    assert again["already_complete"] and again["computed"] == 0


def test_killed_worker_loses_nothing(client2, folder_dataset, tiny_weights, tmp_path):
    client2.wait_for_workers(2, timeout=60)
    ref = reference(folder_dataset, tiny_weights, tmp_path / "ref.zarr")
    url = f"file://{tmp_path / 'cluster.zarr'}"
    pids = client2.run(os.getpid)
    client2.run(slow_units, 0.4)
    out: dict = {}

    def run():
        try:
            out["summary"] = extract_on_cluster(folder_dataset, "vgg16.hed", url, client=client2,
                                                weights=tiny_weights, **KW)
        except BaseException as e:  # handed to the test thread
            out["error"] = e

    th = threading.Thread(target=run)
    th.start()
    killed, deadline = None, time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and th.is_alive():
        time.sleep(0.05)
        try:
            done = zarr.open_group(url, mode="r")["done"][:]
        except Exception:  # not created yet
            continue
        if done.sum() < 2:
            continue
        busy = [a for a, keys in client2.processing().items() if any(str(k).startswith("featx-shard") for k in keys)]
        if busy:
            killed = pids[busy[0]]
            os.kill(killed, signal.SIGKILL)
    th.join(120)
    assert killed is not None, "the run finished before a worker could be killed"
    assert "error" not in out, out.get("error")
    s = out["summary"]
    assert_same_store(ref, FeatureStore.open(url))
    # every shard was finished by exactly one completed task; none was computed twice by finished tasks
    assert s["units"] + s["units_already_done"] == 10 and s["computed"] == 4 * s["units"] <= 40
    client2.wait_for_workers(2, timeout=60)
    assert killed not in client2.run(os.getpid).values()  # the nanny replaced the killed process
    client2.run(slow_units, 0)


def test_rerun_computes_only_unfinished_shards_via_scheduler(client2, folder_dataset, tiny_weights, tmp_path):
    client2.wait_for_workers(2, timeout=60)
    ref = reference(folder_dataset, tiny_weights, tmp_path / "ref.zarr")
    store = tmp_path / "cluster.zarr"
    address = client2.scheduler.address
    first = extract_on_cluster(folder_dataset, "vgg16.hed", store, scheduler=address, weights=tiny_weights, **KW)
    assert first["units"] == 10 and first["scheduler"] == address
    # forget shards 1 and 7 (rows 4-7, 28-31) and wipe their rows: only those may be computed again
    w = StoreWriter.open(store)
    for k in (1, 7):
        w.group["done"][k] = False
        w.group["features"][4 * k:4 * k + 4] = 0
    before = {a: s["units"] for a, s in client2.run(fc.worker_stats).items()}
    loads = sum(s["loads"] for s in client2.run(fc.worker_stats).values())
    s = extract_on_cluster(folder_dataset, "vgg16.hed", store, scheduler=address, weights=tiny_weights, **KW)
    assert s["computed"] == 8 and s["units"] == 2 and not s["already_complete"]
    after = client2.run(fc.worker_stats)
    assert sum(after[a]["units"] - before.get(a, 0) for a in after) == 2
    assert sum(v["loads"] for v in after.values()) == loads  # the workers kept their model: no new load
    assert_same_store(ref, FeatureStore.open(store))
    assert [r["rows"] for r in FeatureStore.open(store).attrs["runs"]] == [40, 8]


def test_memory_store_needs_an_in_process_cluster(client2, folder_dataset, tiny_weights, tmp_path):
    ref = reference(folder_dataset, tiny_weights, tmp_path / "ref.zarr")
    url = f"memory://featx-cluster-test/{tmp_path.name}.zarr"
    with pytest.raises(FeatxError, match="memory://"):
        extract_on_cluster(folder_dataset, "vgg16.hed", url, client=client2, weights=tiny_weights, **KW)
    cluster, client = start_cluster(2, processes=False)
    try:
        s = extract_on_cluster(folder_dataset, "vgg16.hed", url, client=client, weights=tiny_weights, **KW)
    finally:
        client.close()
        cluster.close()
    assert s["computed"] == 40
    assert_same_store(ref, FeatureStore.open(url))


def test_local_gpu_cluster_pins_one_worker_per_device(folder_dataset, tiny_weights, tmp_path, monkeypatch):
    """Pretend this machine has GPUs 0 and 1: `local` starts one worker each, CUDA_VISIBLE_DEVICES pinned,
    resource GPU=1, non-daemonic so shards decode in DataLoader processes. Torch finds no GPU: cpu."""
    monkeypatch.setattr(fc, "local_gpus", lambda device="auto": [] if device == "cpu" else ["0", "1"])
    with pytest.raises(FeatxError, match="2 GPU"):
        fc.start_local(LocalSpec(3))
    ref = reference(folder_dataset, tiny_weights, tmp_path / "ref.zarr")
    s = extract_on_cluster(folder_dataset, "vgg16.hed", tmp_path / "g.zarr", cluster="local", workers=2,
                           weights=tiny_weights, **KW)
    assert s["n_workers"] == 2 and s["units"] == 10
    per = list(s["per_worker"].values())
    assert sorted(w["cuda_visible_devices"] for w in per) == ["0", "1"]
    assert all(w["resources"] == {"GPU": 1} and w["loads"] == 1 for w in per)
    assert max(w["decode_processes"] for w in per) == 2
    assert_same_store(ref, FeatureStore.open(tmp_path / "g.zarr"))


def test_feature_array_is_a_lazy_dask_view(folder_dataset, tiny_weights, tmp_path):
    path = tmp_path / "f.zarr"
    extract(folder_dataset, "vgg16.hed", path, weights=tiny_weights, workers=0, progress=False, rows_per_shard=8,
            rows_per_chunk=4)
    fs = FeatureStore.open(path)
    x = feature_array(path)
    assert x.shape == (40, *fs.dim) and x.dtype == np.float32 and x.chunks[0] == (4,) * 10
    np.testing.assert_array_equal(x.compute(), fs.features())
    idx = fs.indices("train")
    np.testing.assert_allclose(x[idx].mean(axis=0).compute(), fs.features(idx).mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(feature_array(fs).compute(), fs.features())
    with pytest.raises(FeatxError, match="flip"):
        feature_array(path, flip=True)


def test_a_local_cluster_leaves_the_thread_environment_alone(folder_dataset, tiny_weights, tmp_path, monkeypatch):
    """dask's LocalCluster sets OMP_NUM_THREADS=1 in this process's environment; later subprocesses
    (decode workers, other runs) must not inherit that from a finished cluster run."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    extract_on_cluster(folder_dataset, "vgg16.hed", tmp_path / "e.zarr", cluster="local:1", weights=tiny_weights, **KW)
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["MKL_NUM_THREADS"] == "2"
