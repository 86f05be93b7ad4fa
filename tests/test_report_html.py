"""report.html on tiny stores: numbers equal metrics.json, intervals hold the point, gallery, provenance."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from featx.training import train
from featx.metrics import INTERVAL_KEYS, bootstrap_intervals, calibration, weighted_metrics
from featx.metrics import bucket_column, compute_metrics
from featx.report import REQUIRED_KEYS, evaluate

from conftest import make_image
from test_heads import FakeStore, separable


def photo_store(tmp_path, n=300, shift=1.2, ids=True) -> FakeStore:
    """A fake store of noisy features (so the head makes mistakes) whose test rows have real tiny photos."""
    X, y = separable(n, 16, 2, seed=4, shift=shift)
    ages = [str(3 + (i * 7) % 80) for i in range(n)]
    store = FakeStore(X, y, ["female", "male"], extras={"age": ages, "race": [str(i % 3) for i in range(n)],
                                                                  "shot": [f"s{i}" for i in range(n)]})
    root = tmp_path / "photos"
    store.attrs["manifest_root"] = str(root)
    if ids:
        store.groups = np.asarray([f"person{i // 12}" if i < 120 else f"solo{i}" for i in range(n)])
    for i in store.indices("test"):
        make_image(root / store.paths[i], seed=int(i), cls=int(y[i]))
    return store


class Page(HTMLParser):
    """Collects data-* attributes with the text inside their element, and every <img>."""

    def __init__(self):
        super().__init__()
        self.stack: list[dict] = []
        self.cells: list[tuple[dict, str]] = []
        self.images: list[dict] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
            return
        self.stack.append({"tag": tag, "attrs": a, "text": []})

    def handle_endtag(self, tag):
        while self.stack:
            el = self.stack.pop()
            text = "".join(el["text"])
            if self.stack:
                self.stack[-1]["text"].append(text)
            if any(k.startswith("data-") for k in el["attrs"]):
                self.cells.append((el["attrs"], text))
            if el["tag"] == tag:
                break

    def handle_data(self, data):
        self.text.append(data)
        if self.stack:
            self.stack[-1]["text"].append(data)


def parse(path) -> Page:
    p = Page()
    p.feed(path.read_text())
    return p


def fmt(x):
    return "n/a" if x is None else (str(x) if isinstance(x, int) else f"{x:.3f}")


def fmt_iv(iv):
    return "n/a" if iv is None else f"[{iv[0]:.3f}, {iv[1]:.3f}]"


@pytest.fixture
def report(tmp_path):
    store = photo_store(tmp_path)
    train(store, "logreg", tmp_path / "h")
    metrics = evaluate(tmp_path / "h", store, split="test", by="age", report_dir=tmp_path / "rep")
    return store, metrics, tmp_path / "rep"


def test_page_numbers_equal_metrics_json(report):
    store, returned, rep = report
    data = json.loads((rep / "metrics.json").read_text())
    assert set(REQUIRED_KEYS) <= set(data)
    assert 0.6 < data["accuracy"] < 1.0  # noisy on purpose: there are mistakes to show
    page = parse(rep / "report.html")
    top = {a["data-metric"]: t for a, t in page.cells if "data-metric" in a}
    assert top["n"] == str(data["n"])
    for key in INTERVAL_KEYS:
        assert top[key] == fmt(data[key]), key
    ivs = {a["data-metric-interval"]: t for a, t in page.cells if "data-metric-interval" in a}
    for key in INTERVAL_KEYS:
        assert ivs[key] == fmt_iv(data["intervals"]["overall"][key])
    cm = {a["data-cell"]: t for a, t in page.cells if "data-cell" in a}
    assert cm == {f"{i},{j}": str(v) for i, row in enumerate(data["confusion"]) for j, v in enumerate(row)}
    # group rows: --by age from "groups", race and identity counts from "extra_groups"
    assert set(data["groups"]) == {"age"}
    assert set(data["extra_groups"]) == {"race", "photos per identity"}
    assert set(data["extra_groups"]["race"]) == {"0", "1", "2"}  # codes stay codes, not age bands
    assert "with --by): shot." in (rep / "report.html").read_text()  # one value per row: not a group
    # identities: 10 people with 12 photos each (rows < 120), everyone else alone
    te = store.indices("test")
    assert data["extra_groups"]["photos per identity"]["10+"]["n"] == int((te < 120).sum())
    assert data["extra_groups"]["photos per identity"]["1"]["n"] == int((te >= 120).sum())
    html_text = (rep / "report.html").read_text()
    for col, buckets in {**data["groups"], **data["extra_groups"]}.items():
        for b, g in buckets.items():
            row = re.search(re.escape(f'<tr data-group="{col}" data-bucket="{b}">') + '(.*?)</tr>', html_text).group(1)
            cells = dict(re.findall(r'data-key="(\w+)">([^<]*)<', row))
            cells_iv = dict(re.findall(r'data-interval="(\w+)">([^<]*)<', row))
            assert cells["n"] == str(g["n"]) and cells["accuracy"] == fmt(g["accuracy"])
            assert cells["roc_auc"] == fmt(g["roc_auc"])
            assert cells_iv["accuracy"] == fmt_iv(data["intervals"]["groups"][col][b]["accuracy"])
            assert cells_iv["balanced_accuracy"] == fmt_iv(data["intervals"]["groups"][col][b]["balanced_accuracy"])


def test_intervals_contain_the_point_estimate(report):
    _, _, rep = report
    data = json.loads((rep / "metrics.json").read_text())
    iv = data["intervals"]
    assert iv["n_boot"] == 1000 and iv["level"] == 0.95 and iv["seed"] == 0
    for key in INTERVAL_KEYS:
        lo, hi = iv["overall"][key]
        assert lo <= data[key] <= hi and hi - lo > 0.01, key
    for col, buckets in data["groups"].items():
        for b, g in buckets.items():
            lo, hi = iv["groups"][col][b]["accuracy"]
            assert lo <= g["accuracy"] <= hi


def test_bootstrap_is_seeded_and_matches_compute_metrics():
    rng = np.random.default_rng(3)
    for k in (2, 3):
        y = rng.integers(0, k, 120)
        p = rng.dirichlet(np.ones(k), 120)
        p[np.arange(120), y] += 0.4
        p = np.round(p / p.sum(1, keepdims=True), 2)  # ties in the scores
        p /= p.sum(1, keepdims=True)
        m = compute_metrics(y, p, [str(i) for i in range(k)])
        w = weighted_metrics(y, p, np.ones((1, 120)))
        for key in INTERVAL_KEYS:
            assert w[key][0] == pytest.approx(m[key]), (k, key)
        a, b = bootstrap_intervals(y, p, n_boot=300), bootstrap_intervals(y, p, n_boot=300)
        assert a == b
        assert bootstrap_intervals(y, p, n_boot=300, seed=1) != a
    # a single class: AUC is undefined in every resample -> None, not NaN
    iv = bootstrap_intervals(np.zeros(10, int), np.tile([0.7, 0.3], (10, 1)), n_boot=50)
    assert iv["roc_auc"] is None and iv["accuracy"] == [1.0, 1.0]


def test_calibration_by_hand():
    y = np.array([0, 1, 1, 1])
    p1 = np.array([0.05, 0.95, 0.92, 0.55])
    cal = calibration(y, np.stack([1 - p1, p1], 1), bins=10)
    assert [(b["low"], b["n"]) for b in cal["bins"]] == [(0.0, 1), (0.5, 1), (0.9, 2)]
    # |0.05 - 0| * 1/4 + |0.55 - 1| * 1/4 + |0.935 - 1| * 2/4
    assert cal["ece"] == pytest.approx(0.0125 + 0.1125 + 0.0325)


def test_gallery_thumbnails_and_missing_images(tmp_path):
    store = photo_store(tmp_path, ids=False)
    train(store, "logreg", tmp_path / "h")
    from featx.heads import load_head

    head, _ = load_head(tmp_path / "h")
    te = store.indices("test")
    wrong = te[head.predict(store.X[te]) != store.labels[te]]
    assert len(wrong) >= 2
    gone = wrong[0]
    (tmp_path / "photos" / store.paths[gone]).unlink()  # an image deleted after extraction
    evaluate(tmp_path / "h", store, report_dir=tmp_path / "rep")
    page = parse(tmp_path / "rep" / "report.html")
    cards = {int(a["data-row"]): (a["data-missing"], t) for a, t in page.cells if "data-row" in a}
    assert cards[int(gone)][0] == "1" and "missing" in cards[int(gone)][1]
    shown = [r for r, (m, _) in cards.items() if m == "0"]
    assert len(shown) >= 12
    # every thumbnail is a real JPEG made from its source photo, inlined
    thumbs = [i for i in page.images if i.get("class") == "thumb"]
    assert len(thumbs) == len(shown)
    for t in thumbs:
        assert t["src"].startswith("data:image/jpeg;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(t["src"].split(",", 1)[1])))
        assert im.size == (32, 32) and t["alt"].startswith("img/")
    # confident mistakes first: mistake cards carry a wrong prediction
    text = (tmp_path / "rep" / "report.html").read_text()
    assert "Most confident mistakes" in text and "Least confident hits" in text


def test_page_is_self_contained_and_traceable(report):
    store, _, rep = report
    text = (rep / "report.html").read_text()
    page = parse(rep / "report.html")
    assert page.images and all(i["src"].startswith("data:image/") for i in page.images)
    assert not re.search(r"(src|href)=\"(?!data:)", text)  # no link to fetch anything
    assert "http://" not in text and "https://" not in text
    prov = {a["data-prov"]: t for a, t in page.cells if "data-prov" in a}
    assert prov["release"] == "vgg16.hed" and prov["tap"] == "pool5-gap"
    assert prov["weights sha256"] == "w" * 64 and prov["manifest hash"] == "m1"
    assert '"kind": "logreg"' in prov["head parameters"] and prov["featx version"]
    assert re.match(r"\d{4}-\d\d-\d\dT", prov["date (UTC)"])
    assert "Feature map" in text and "feature map PCA" in text


def test_predictions_csv_matches_the_metrics(report):
    store, _, rep = report
    data = json.loads((rep / "metrics.json").read_text())
    with open(rep / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == data["n"]
    assert [int(r["row"]) for r in rows] == store.indices("test").tolist()
    assert np.mean([int(r["correct"]) for r in rows]) == pytest.approx(data["accuracy"])
    assert rows[0]["path"] == store.paths[int(rows[0]["row"])]
    assert all(r["correct"] == str(int(r["y"] == r["pred"])) for r in rows)
    assert data["timing"]["predict_seconds"] >= 0 and data["timing"]["fit_seconds"] > 0


def test_numeric_codes_are_not_age_bands_when_named():
    assert bucket_column(["0", "1", "4"], "race").tolist() == ["0", "1", "4"]
    assert bucket_column(["3", "45"], "age").tolist() == ["0-12", "40-59"]
    assert bucket_column(["3", "45"]).tolist() == ["0-12", "40-59"]


def test_cli_report_on_a_real_store_of_photos(csv_dataset, tiny_weights, tmp_path, capsys):
    """extract -> train-head -> evaluate --report on a real Zarr store: thumbnails come from the source photos."""
    from featx.extract import extract
    from featx.store import FeatureStore
    from featx_cli.main import main

    store = tmp_path / "f.zarr"
    extract(csv_dataset, "vgg16.hed", store, weights=tiny_weights, precision="fp32", workers=0, progress=False,
            rows_per_shard=8)
    assert main(["train-head", "--store", str(store), "--head", "logreg", "--out", str(tmp_path / "h")]) == 0
    fs = FeatureStore.open(store)
    te = fs.indices("test")
    (csv_dataset.parent / fs.paths[te[0]]).unlink()  # a photo removed after extraction
    capsys.readouterr()
    assert main(["evaluate", "--head", str(tmp_path / "h"), "--store", str(store), "--by", "age",
                 "--report", str(tmp_path / "rep")]) == 0
    assert f"report: {tmp_path / 'rep'}/report.html" in capsys.readouterr().out
    page = parse(tmp_path / "rep" / "report.html")
    cards = {int(a["data-row"]): a["data-missing"] for a, _ in page.cells if "data-row" in a}
    assert set(cards) == set(te.tolist())  # few rows: every row is a hit or a mistake on show
    assert cards.pop(int(te[0])) == "1" and set(cards.values()) == {"0"}
    data = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    prov = {a["data-prov"]: t for a, t in page.cells if "data-prov" in a}
    assert prov["weights sha256"] == fs.attrs["weights_sha256"] == data["provenance"]["weights_sha256"]
    assert prov["manifest hash"] == fs.attrs["manifest_hash"] and data["n"] == len(te)
