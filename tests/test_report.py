"""Metrics against scikit-learn on hand-checkable examples; buckets; the written report; evaluate()."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from featx.errors import FeatxError
from featx.training import train
from featx.metrics import bucket_column, compute_metrics
from featx.report import REQUIRED_KEYS, evaluate, write_report

from test_heads import FakeStore, fake_store, separable

PNG = b"\x89PNG\r\n\x1a\n"


def hand_example():
    """4 female (0), 6 male (1): TN=3 FP=1 FN=2 TP=4."""
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 1, 1, 1, 0, 0])
    p1 = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.7, 0.6, 0.55, 0.4, 0.35])
    assert ((p1 > 0.5) == pred).all()
    return y, pred, np.stack([1 - p1, p1], 1)


def test_binary_metrics_by_hand_and_against_scikit_learn():
    y, pred, proba = hand_example()
    m = compute_metrics(y, proba, ["female", "male"])
    assert m["confusion"] == [[3, 1], [2, 4]]
    assert m["n"] == 10 and m["positive"] == "male"
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["recall"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    # the same numbers from scikit-learn
    assert m["confusion"] == skm.confusion_matrix(y, pred).tolist()
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))
    # AUC by hand: of 24 (pos, neg) pairs, only the positive 0.9 ranks above the negative 0.8
    assert m["roc_auc"] == pytest.approx((4 + 5 * 3) / 24)
    assert m["per_class"]["female"]["support"] == 4 and m["per_class"]["male"]["recall"] == pytest.approx(4 / 6)


def test_multiclass_metrics_are_macro_averages():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    proba = rng.dirichlet(np.ones(3), 60)
    proba[np.arange(60), y] += 0.5
    proba /= proba.sum(1, keepdims=True)
    pred = proba.argmax(1)
    m = compute_metrics(y, proba, ["a", "b", "c"])
    assert m["positive"] is None
    assert m["confusion"] == skm.confusion_matrix(y, pred).tolist()
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def test_undefined_metrics_are_none_not_nan():
    m = compute_metrics([0, 0, 0], np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]]), ["female", "male"])
    assert m["roc_auc"] is None and m["recall"] is None and m["precision"] == 0.0
    json.dumps(m, allow_nan=False)


def test_age_and_string_buckets():
    ages = ["0", "12", "13", "19", "20", "39", "40", "59", "60", "101", ""]
    assert bucket_column(ages).tolist() == ["0-12", "0-12", "13-19", "13-19", "20-39", "20-39", "40-59", "40-59",
                                            "60+", "60+", "unknown"]
    assert bucket_column(["asian", "white", "", "asian"]).tolist() == ["asian", "white", "unknown", "asian"]


def test_group_metrics_by_age_bucket():
    y, _, proba = hand_example()
    ages = bucket_column(["5", "8", "30", "30", "6", "7", "9", "33", "45", "70"])
    m = compute_metrics(y, proba, ["female", "male"], groups={"age": ages})
    g = m["groups"]["age"]
    assert list(g) == ["0-12", "20-39", "40-59", "60+"]
    # children: rows 0, 1, 4, 5, 6 -> all right
    assert g["0-12"]["n"] == 5 and g["0-12"]["accuracy"] == 1.0
    assert g["0-12"]["class_counts"] == {"female": 2, "male": 3}
    # 20-39: rows 2, 3, 7 -> row 3 wrong (female predicted male)
    assert g["20-39"]["n"] == 3 and g["20-39"]["accuracy"] == pytest.approx(2 / 3)
    assert g["20-39"]["confusion"] == [[1, 1], [0, 1]]
    assert g["40-59"]["accuracy"] == 0.0 and g["60+"]["accuracy"] == 0.0
    assert g["60+"]["roc_auc"] is None  # one class only
    assert sum(b["n"] for b in g.values()) == m["n"]


def test_write_report_files(tmp_path):
    y, _, proba = hand_example()
    m = compute_metrics(y, proba, ["female", "male"], groups={"age": bucket_column(["5"] * 5 + ["30"] * 5)})
    files = write_report(tmp_path / "r", m, y_true=y, proba=proba)
    data = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert set(REQUIRED_KEYS) <= set(data)
    assert data["confusion"] == [[3, 1], [2, 4]] and data["positive"] == "male"
    for name in ("roc.png", "confusion.png", "groups-age.png"):
        assert (tmp_path / "r" / name).read_bytes()[:8] == PNG, name
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| female | 3 | 1 |" in md and "## By age" in md and "![roc.png](roc.png)" in md
    assert files["metrics"] == tmp_path / "r" / "metrics.json"


# ---------- evaluate() ----------

def aged_store(seed=0, **kw):
    X, y = separable(200, 16, 2, seed)
    ages = np.where(np.arange(200) % 2 == 0, "8", "35")
    return FakeStore(X, y, ["female", "male"], extras={"age": ages, "race": ["a", "b"] * 100}, **kw)


def test_evaluate_writes_the_report_in_the_default_folder(tmp_path):
    store = aged_store()
    train(store, "logreg", tmp_path / "h")
    m = evaluate(tmp_path / "h", store, split="test", by="age,race")
    out = tmp_path / "h" / "report-fake-test"
    assert m["context"]["report"] == str(out)
    data = json.loads((out / "metrics.json").read_text())
    assert set(REQUIRED_KEYS) <= set(data)
    assert data["n"] == len(store.indices("test")) and data["accuracy"] > 0.9
    assert set(data["groups"]) == {"age", "race"} and set(data["groups"]["age"]) == {"0-12", "20-39"}
    assert sum(g["n"] for g in data["groups"]["age"].values()) == data["n"]
    assert (out / "roc.png").is_file() and (out / "confusion.png").is_file()
    # per-group numbers agree with the rows themselves
    te = store.indices("test")
    from featx.heads import load_head

    head, _ = load_head(tmp_path / "h")
    kids = te[store.extras["age"][te] == "8"]
    assert data["groups"]["age"]["0-12"]["accuracy"] == pytest.approx((head.predict(store.X[kids]) ==
                                                                       store.labels[kids]).mean())


def test_evaluate_on_another_collection_and_split_all(tmp_path):
    train(aged_store(), "sgd", tmp_path / "h")
    # another collection: other images, other manifest, classes stored in the same names
    other = aged_store(seed=9, manifest_hash="other-collection", name="/x/faces-2024.zarr",
                       split=np.full(200, "test"))
    m = evaluate(tmp_path / "h", other, split="all", report_dir=tmp_path / "rep")
    assert m["n"] == 200 and m["accuracy"] > 0.9 and m["context"]["same_manifest"] is False
    assert (tmp_path / "rep" / "metrics.json").is_file()
    m = evaluate(tmp_path / "h", other, split="all")
    assert (tmp_path / "h" / "report-faces-2024-all" / "metrics.json").is_file()


def test_evaluate_maps_classes_by_name(tmp_path):
    train(aged_store(), "logreg", tmp_path / "h")
    X, y = separable(200, 16, 2, 3)
    only_male = FakeStore(X[y == 1], np.zeros((y == 1).sum(), np.int64), ["male"], split=np.full(100, "test"))
    m = evaluate(tmp_path / "h", only_male, split="test", report_dir=tmp_path / "r")
    assert m["confusion"][0] == [0, 0] and sum(m["confusion"][1]) == 100
    assert m["recall"] > 0.9 and m["roc_auc"] is None
    cats = FakeStore(X, y, ["cat", "dog"])
    with pytest.raises(FeatxError, match="never learned: cat, dog"):
        evaluate(tmp_path / "h", cats, report_dir=tmp_path / "r2")


def test_evaluate_refusals(tmp_path):
    train(aged_store(), "logreg", tmp_path / "h")
    with pytest.raises(FeatxError, match="tap"):
        evaluate(tmp_path / "h", aged_store(tap="fc7"))
    with pytest.raises(FeatxError, match="release"):
        evaluate(tmp_path / "h", aged_store(release="vggface"))
    with pytest.raises(FeatxError, match="no column 'gender' for --by; columns: age, race"):
        evaluate(tmp_path / "h", aged_store(), by="gender")
    with pytest.raises(FeatxError, match="unknown split"):
        evaluate(tmp_path / "h", aged_store(), split="holdout")
    assert not (tmp_path / "h" / "report-fake-test").exists()


def test_store_without_test_rows(tmp_path):
    train(aged_store(), "logreg", tmp_path / "h")
    with pytest.raises(FeatxError, match="no usable test rows"):
        evaluate(tmp_path / "h", fake_store(split=np.full(200, "train")))
