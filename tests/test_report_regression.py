"""report.html for a regression head: headline with intervals, predicted against true, error by age band,
the largest errors as a gallery (missing photos marked), metrics.json keys, predictions.csv."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from featx.errors import FeatxError
from featx.heads import make_head
from featx.report.regression import RegressionRun, largest_errors, regression_report


class Store:
    def __init__(self, root, n: int = 60, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.paths = np.asarray([f"img/{i:02d}.jpg" for i in range(n)])
        self.attrs = {"manifest_root": str(root), "release": "dlib.resnet", "tap": "embedding",
                      "weights_sha256": "w" * 64, "manifest_hash": "m1"}
        self.extras = {"race": rng.integers(0, 3, n).astype(str), "source": np.array(["a"] * n)}
        self.groups = None


def run_for(tmp_path, n: int = 60):
    rng = np.random.default_rng(1)
    store = Store(tmp_path, n)
    (tmp_path / "img").mkdir()
    for i in range(n - 1):  # the last photo is gone
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / store.paths[i])
    X = rng.normal(size=(n, 4))
    y = np.clip(30 + 15 * X[:, 0], 1, 90).round()
    head = make_head("ridge").fit(X, y)
    pred = head.predict(X)
    pred[n - 1] = y[n - 1] + 40  # the largest error: a missing photo
    pred[3] = y[3] - 25  # the second largest
    card = {"head": "ridge", "training": {"fit_seconds": 0.5}, "provenance": {"manifest_hash": "m1"}, "params": {}}
    return RegressionRun(np.arange(n), y, pred, store, card, "age", {"race": store.extras["race"]}, 0.01,
                         {"head": "heads/age", "store": "fake.zarr", "split": "test"})


def test_regression_report_page_and_files(tmp_path):
    run = run_for(tmp_path)
    m = regression_report(tmp_path / "rep", run)
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert saved["task"] == "regress" and saved["target"] == "age"
    for key in ("mae", "rmse", "r2", "within_5", "n", "groups", "intervals", "provenance"):
        assert key in saved
    assert "accuracy" not in saved  # classification keys keep their meaning: absent here
    assert abs(saved["mae"] - np.mean(np.abs(run.pred - run.y))) < 1e-9
    assert set(saved["groups"]) == {"race", "true age band"}
    bands = saved["groups"]["true age band"]
    assert sum(g["n"] for g in bands.values()) == 60 and "20-39" in bands and "40-59" in bands
    html = (tmp_path / "rep" / "report.html").read_text()
    assert re.search(r'data-metric="mae">' + f"{m['mae']:.3f}", html)
    lo, hi = m["intervals"]["overall"]["mae"]
    assert f'data-metric-interval="mae">[{lo:.3f}, {hi:.3f}]' in html
    assert 'data-group="true age band"' in html and 'data-group="race"' in html
    assert html.count("data:image/png;base64,") >= 3  # predicted vs true, two group plots
    assert "http://" not in html and "https://" not in html  # self-contained
    cards = re.findall(r'<div class="card" data-row="(\d+)" data-missing="(\d)"', html)
    assert [int(r) for r, _ in cards[:2]] == [59, 3] and cards[0][1] == "1" and cards[1][1] == "0"
    assert "error +40.0" in html and "error -25.0" in html
    rows = list(csv.DictReader(open(tmp_path / "rep" / "predictions.csv")))
    assert len(rows) == 60 and float(rows[3]["error"]) == -25.0 and rows[3]["path"] == "img/03.jpg"
    assert "| mae |" in (tmp_path / "rep" / "report.md").read_text()


def test_largest_errors_are_ordered_by_absolute_error(tmp_path):
    run = run_for(tmp_path, n=20)
    picks = largest_errors(run, 5)
    errs = np.abs(run.error)[picks]
    assert list(picks[:2]) == [19, 3] and np.all(np.diff(errs) <= 0)
    assert errs[-1] >= np.sort(np.abs(run.error))[-5]


def test_evaluate_regression_scores_rows_with_a_value_and_counts_the_rest(tmp_path):
    from test_heads import FakeStore

    from featx.report.html import EvalRequest
    from featx.report.regression import evaluate_regression, target_values

    rng = np.random.default_rng(2)
    X = rng.normal(size=(100, 5)).astype(np.float32)
    age = np.clip(30 + 12 * X[:, 0], 1, 80).round()
    ages = age.astype(str)
    ages[[4, 9]] = ["", "n/a"]  # two test rows without a value
    store = FakeStore(X, np.zeros(100, np.int64), ["a", "b"], extras={"age": ages, "race": rng.integers(0, 2, 100)})
    tr = store.indices("train")
    head = make_head("ridge").fit(X[tr], age[tr])
    card = {"head": "ridge", "target": "age", "provenance": {"release": "vgg16.hed", "manifest_hash": "m1"}}
    m = evaluate_regression(EvalRequest(head, card, "heads/age", store, "test", ["race"], "fake.zarr"),
                            tmp_path / "rep")
    test = store.indices("test")
    keep = test[~np.isin(test, [4, 9])]
    assert m["n"] == len(keep) and m["context"]["missing_target"] == 2
    assert abs(m["mae"] - np.mean(np.abs(head.predict(X[keep]) - age[keep]))) < 1e-9
    assert set(m["groups"]) == {"race", "true age band"} and store.calls["iter_chunks"] == 1
    assert (tmp_path / "rep" / "report.html").is_file()
    with pytest.raises(FeatxError, match="no column 'height'"):
        target_values(store, "height")


def test_featx_evaluate_sends_a_regression_head_to_its_report(tmp_path):
    from test_heads import FakeStore

    from featx.heads import save_head
    from featx.provenance import provenance
    from featx.report import evaluate, summary_table

    rng = np.random.default_rng(4)
    X = rng.normal(size=(150, 6)).astype(np.float32)
    age = np.clip(40 + 15 * X[:, 1], 1, 90).round()
    store = FakeStore(X, np.zeros(150, np.int64), ["a", "b"], extras={"age": age.astype(str)})
    tr, va = store.indices("train"), store.indices("val")
    head = make_head("ridge").fit(X[tr], age[tr], X[va], age[va])
    save_head(head, tmp_path / "age", {"target": "age", "provenance": provenance(store)})
    m = evaluate(tmp_path / "age", store, split="test", by="age")
    out = tmp_path / "age" / "report-fake-test"
    assert m["task"] == "regress" and m["context"]["report"] == str(out) and (out / "report.html").is_file()
    assert json.loads((out / "metrics.json").read_text())["mae"] == pytest.approx(m["mae"])
    table = summary_table(m)
    assert table.splitlines()[0].split() == ["group", "n", "mae", "rmse", "r2", "within_5", "bias"]
    assert "age=20-39" in table
