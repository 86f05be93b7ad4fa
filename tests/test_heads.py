"""Heads: learning, hyperparameter choice, save/load identity, no pickles, refusal, streaming SGD."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from featx.errors import FeatxError
from featx.heads import HEADS, check_compatible, load_head, make_head, read_card, save_head
from featx.training import train
from featx.heads.base import fit_platt
from featx.heads.registry import get_head_class
from featx.targets import infer_kind

CLASSIFIERS = [k for k in HEADS if get_head_class(k).task == "classify"]  # regressors: tests/test_regression.py

FAST = {"mlp": {"grid": {"hidden": [[32], [32, 16]]}, "max_epochs": 40, "patience": 5}}
PREPROCESS = {"size": 224, "resize": 224, "interpolation": "bilinear", "channels": "BGR", "scale": 255.0,
              "mean": [104.0, 116.7, 122.7], "std": [1.0, 1.0, 1.0]}


def separable(n: int = 200, d: int = 16, k: int = 2, seed: int = 0, shift: float = 3.0):
    """n rows of d-dim Gaussian noise; class c is shifted by `shift` along dimension c."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    rng.shuffle(y)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[np.arange(n), y] += shift
    return X, y.astype(np.int64)


class FakeStore:
    """Satisfies the FeatureStore read interface over in-memory arrays, and counts how it is read."""

    def __init__(self, X, y, classes, split=None, extras=None, X_flip=None, chunk=32, name="fake.zarr",
                 release="vgg16.hed", tap="pool5-gap", manifest_hash="m1", weights_sha256="w" * 64,
                 preprocess=None, forbid_features=False):
        n = len(X)
        self.X, self.X_flip = np.asarray(X, np.float32), X_flip
        self.labels = np.asarray(y, np.int64)
        self.classes = list(classes)
        self.n, self.dim = n, tuple(self.X.shape[1:])
        self.split = np.asarray(split if split is not None else
                                np.array(["train", "train", "train", "val", "test"])[np.arange(n) % 5])
        self.ok = np.ones(n, bool)
        self.paths = np.asarray([f"img/{i:04d}.jpg" for i in range(n)])
        self.extras = {k: np.asarray(v, dtype=str) for k, v in (extras or {}).items()}
        self.kinds = {k: infer_kind(k, v) for k, v in self.extras.items()}  # as a target set types them
        self.has_flip = X_flip is not None
        self.release, self.tap, self.name, self.chunk = release, tap, name, chunk
        self.forbid_features = forbid_features
        self.calls = {"features": 0, "iter_chunks": 0, "max_rows": 0}
        self.attrs = {"release": release, "tap": tap, "manifest_hash": manifest_hash,
                      "weights_sha256": weights_sha256, "preprocess": preprocess or PREPROCESS,
                      "dtype": "float16", "precision": "fp32", "classes": self.classes, "dim": list(self.dim),
                      "flip": self.has_flip, "n": n}

    def indices(self, split="all"):
        keep = self.ok if split == "all" else self.ok & (self.split == split)
        return np.flatnonzero(keep).astype(np.int64)

    def _arr(self, flip):
        if flip and not self.has_flip:
            raise FeatxError("no flipped features")
        return self.X_flip if flip else self.X

    def features(self, idx=None, flip=False):
        self.calls["features"] += 1
        if self.forbid_features:
            raise AssertionError("features() must not be called: it loads the whole set")
        idx = np.arange(self.n) if idx is None else np.asarray(idx)
        return self._arr(flip)[idx].astype(np.float32)

    def iter_chunks(self, idx=None, flip=False):
        self.calls["iter_chunks"] += 1
        arr = self._arr(flip)
        idx = np.arange(self.n) if idx is None else np.sort(np.asarray(idx))
        cid = idx // self.chunk
        for seg in np.split(idx, np.flatnonzero(np.diff(cid)) + 1):
            if len(seg):
                self.calls["max_rows"] = max(self.calls["max_rows"], len(seg))
                yield seg, arr[seg].astype(np.float32)


def fake_store(n=200, d=16, k=2, seed=0, **kw) -> FakeStore:
    X, y = separable(n, d, k, seed)
    classes = ["female", "male"] if k == 2 else [f"c{i}" for i in range(k)]
    return FakeStore(X, y, classes, **kw)


def split_xy(X, y):
    tr, va, te = np.arange(0, 120), np.arange(120, 160), np.arange(160, 200)
    return X[tr], y[tr], X[va], y[va], X[te], y[te]


def head_for(kind, **kw):
    return make_head(kind, **{**FAST.get(kind, {}), **kw})


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_each_head_learns_separable_data_and_records_its_choice(kind):
    Xtr, ytr, Xva, yva, Xte, yte = split_xy(*separable())
    head = head_for(kind).fit(Xtr, ytr, Xva, yva)
    proba = head.predict_proba(Xte)
    assert proba.shape == (40, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert (head.predict(Xte) == yte).mean() > 0.9
    sel = head.selection_
    assert sel["on"] == "val"
    n_points = int(np.prod([len(v) for v in sel["grid"].values()]))
    assert len(sel["results"]) == n_points >= 2 and head.cv_results_ == sel["results"]
    assert sel["chosen"] and all(sel["chosen"][k] in sel["grid"][k] for k in sel["chosen"])
    assert head.best_params_ == sel["chosen"]
    assert all(getattr(head, f"{k}_") == v for k, v in sel["chosen"].items())  # e.g. head.C_
    # get_params: constructor parameters only, never the fitted choice
    assert set(head.get_params()) == set(type(head)._get_param_names())
    assert not set(head.get_params()) & set(sel["chosen"])


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_saved_head_reloads_with_identical_predictions_and_no_pickle(kind, tmp_path):
    Xtr, ytr, Xva, yva, Xte, _ = split_xy(*separable(seed=1))
    head = head_for(kind, seed=3).fit(Xtr, ytr, Xva, yva)
    save_head(head, tmp_path / "h", {"classes": ["female", "male"], "provenance": {"release": "r", "tap": "t"}})
    files = sorted(p.name for p in (tmp_path / "h").iterdir())
    assert files == ["head.json", "head.safetensors"]
    for p in (tmp_path / "h").iterdir():
        assert not p.read_bytes().startswith(b"\x80")  # pickle protocol marker
    again, card = load_head(tmp_path / "h")
    assert card["head"] == kind and card["params"]["kind"] == kind
    assert type(again) is type(head)
    assert np.array_equal(again.predict_proba(Xte), head.predict_proba(Xte))
    assert np.array_equal(again.predict(Xte), head.predict(Xte))
    assert again.best_params_ == head.best_params_
    assert again.get_params() == head.get_params()


@pytest.mark.parametrize("kind", ["logreg", "linear-svm", "rbf-svm", "sgd"])
def test_three_classes(kind):
    X, y = separable(300, 16, 3, seed=2)
    head = head_for(kind).fit(X[:200], y[:200], X[200:250], y[200:250])
    proba = head.predict_proba(X[250:])
    assert proba.shape == (50, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert (proba.argmax(1) == y[250:]).mean() > 0.9


def test_numpy_predictions_match_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    X, y = separable(200, 16, 2, seed=4, shift=1.0)  # overlapping, so probabilities are not all 0/1
    Xtr, ytr, Xva, yva, Xte, _ = split_xy(X, y)
    lr = make_head("logreg").fit(Xtr, ytr, Xva, yva)
    ref = LogisticRegression(C=lr.C_, max_iter=2000).fit(lr.scaler_(Xtr), ytr)
    np.testing.assert_allclose(lr.predict_proba(Xte), ref.predict_proba(lr.scaler_(Xte)), atol=1e-9)
    svm = make_head("rbf-svm").fit(Xtr, ytr, Xva, yva)
    ref = SVC(C=svm.C_, gamma=svm.gamma_).fit(svm.scaler_(Xtr), ytr)
    np.testing.assert_allclose(svm._decision(svm.scaler_(Xte))[:, 0], ref.decision_function(svm.scaler_(Xte)),
                               atol=1e-8)
    assert svm.n_support_ == len(ref.support_)


def test_platt_scaling_minimises_its_loss():
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300).astype(bool)
    f = rng.normal(size=300) + 1.5 * (2 * y - 1)
    a, b = fit_platt(f, y)
    n1, n0 = y.sum(), (~y).sum()
    t = np.where(y, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))

    def loss(ab):
        p = 1 / (1 + np.exp(ab[0] * f + ab[1]))
        return -np.sum(t * np.log(p) + (1 - t) * np.log(1 - p))

    ref = minimize(loss, [0.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10})
    assert a < 0  # higher decision value -> more likely positive
    np.testing.assert_allclose([a, b], ref.x, atol=1e-3)
    assert loss([a, b]) <= ref.fun + 1e-6


def test_fit_without_validation_holds_out_part_of_train():
    X, y = separable(100, 8, 2)
    head = make_head("logreg").fit(X, y)
    assert "holdout" in head.selection_["on"]
    assert (head.predict(X) == y).mean() > 0.9


def test_unknown_head_and_parameter_are_one_line_errors():
    with pytest.raises(FeatxError, match="unknown head 'tree'"):
        make_head("tree")
    with pytest.raises(FeatxError, match="no parameter"):
        make_head("logreg", hidden=[3])
    with pytest.raises(FeatxError, match="class weight"):
        make_head("logreg", class_weight="heavy")
    with pytest.raises(FeatxError, match="no grid for alpha"):
        make_head("logreg", grid={"alpha": [1.0]})


def test_grid_can_be_overridden_and_is_recorded():
    X, y = separable()
    head = make_head("rbf-svm", grid={"C": [0.5, 2.0]}).fit(X[:120], y[:120], X[120:160], y[120:160])
    assert head.selection_["grid"]["C"] == [0.5, 2.0]
    assert head.selection_["grid"]["gamma"] == [0.25 / 16, 1 / 16, 4 / 16]  # filled in from the dimension
    assert len(head.selection_["results"]) == 6
    assert head.get_params()["grid"] == {"C": [0.5, 2.0]}  # the constructor parameter is left as given


def test_balanced_class_weight_predicts_the_rare_class_more_often():
    rng = np.random.default_rng(0)
    y = (rng.random(600) < 0.15).astype(np.int64)
    X = rng.normal(size=(600, 8))
    X[:, 0] += 1.0 * y  # weak signal: unweighted heads mostly say "0"
    for kind in ("logreg", "sgd"):
        plain = make_head(kind, grid=None).fit(X[:400], y[:400], X[400:500], y[400:500])
        bal = make_head(kind, class_weight="balanced").fit(X[:400], y[:400], X[400:500], y[400:500])
        assert bal.predict(X[500:]).sum() > plain.predict(X[500:]).sum(), kind
        assert bal.get_params()["class_weight"] == "balanced"
    assert make_head("logreg", class_weight="balanced").metric_name == "balanced_accuracy"


# ---------- train() on a store ----------

def test_train_writes_a_card_with_provenance_selection_and_val_metrics(tmp_path):
    store = fake_store()
    card = train(store, "logreg", tmp_path / "h", seed=1)
    assert card == read_card(tmp_path / "h")
    prov = card["provenance"]
    for key in ("release", "tap", "preprocess", "manifest_hash", "weights_sha256"):
        assert prov[key] == store.attrs[key], key
    assert card["head"] == "logreg" and card["classes"] == ["female", "male"] and card["positive"] == "male"
    assert card["selection"]["grid"]["C"] == [1e-4, 1e-3, 1e-2, 0.1, 1.0]
    assert card["selection"]["chosen"]["C"] == card["fitted"]["C"] == card["params"]["C"]
    assert card["params"]["kind"] == "logreg" and card["params"]["n_classes"] == 2  # train() passes it
    assert card["fitted"]["n_classes"] == 2
    assert card["selection"]["on"] == "val split"
    assert card["training"]["n_train"] == len(store.indices("train"))
    assert card["training"]["n_val"] == len(store.indices("val"))
    assert card["val_metrics"]["n"] == len(store.indices("val")) and card["val_metrics"]["accuracy"] > 0.9
    json.dumps(card)  # plain JSON
    head, _ = load_head(tmp_path / "h")
    te = store.indices("test")
    assert (head.predict(store.X[te]) == store.labels[te]).mean() > 0.9


def test_select_on_holdout_and_missing_val_split(tmp_path):
    split = np.where(np.arange(200) % 5 == 4, "test", "train")
    store = fake_store(split=split)
    with pytest.raises(FeatxError, match="no usable val rows"):
        train(store, "logreg", tmp_path / "a")
    card = train(store, "logreg", tmp_path / "b", select_on="holdout")
    assert "holdout" in card["selection"]["on"]
    assert card["training"]["n_train"] + card["training"]["n_val"] == 160
    with pytest.raises(FeatxError, match="select-on"):
        train(store, "logreg", tmp_path / "c", select_on="test")


def test_augment_flip_uses_flipped_features(tmp_path):
    X, y = separable()
    store = FakeStore(X, y, ["female", "male"], X_flip=X + 0.01)
    card = train(store, "sgd", tmp_path / "h", augment_flip=True)
    assert card["training"]["augment_flip"] is True
    assert card["training"]["n_train"] == 2 * len(store.indices("train"))
    assert card["selection"]["streamed"]["flips"] == [False, True]
    card = train(store, "logreg", tmp_path / "h2", augment_flip=True)
    assert card["training"]["n_train"] == 2 * len(store.indices("train"))
    with pytest.raises(FeatxError, match="flip"):
        train(fake_store(), "logreg", tmp_path / "h3", augment_flip=True)


def test_sgd_trains_from_chunks_and_never_loads_the_full_set(tmp_path):
    store = fake_store(n=600, chunk=20, forbid_features=True)
    card = train(store, "sgd", tmp_path / "h")
    assert store.calls["features"] == 0
    assert store.calls["iter_chunks"] > 10  # stats pass, epochs, validation passes
    assert store.calls["max_rows"] <= 20  # never more than one stored chunk per read
    assert card["val_metrics"]["accuracy"] > 0.9
    assert card["selection"]["streamed"]["chunks"] == len(np.unique(store.indices("train") // 20))
    head, _ = load_head(tmp_path / "h")
    te = store.indices("test")
    assert (head.predict(store.X[te]) == store.labels[te]).mean() > 0.9


def test_streaming_mean_and_variance_match_numpy():
    from featx.heads.sgd import RunningStats

    X = np.random.default_rng(0).normal(3.0, 2.0, size=(1000, 5))
    s = RunningStats()
    for a in range(0, 1000, 77):
        s.add(X[a:a + 77])
    sc = s.scaler()
    np.testing.assert_allclose(sc.mean, X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sc.scale, X.std(0), rtol=1e-12)


# ---------- compatibility ----------

def test_refuses_another_release_or_tap_but_not_another_manifest(tmp_path):
    card = train(fake_store(), "logreg", tmp_path / "h")
    other = fake_store(seed=5, manifest_hash="another-collection").attrs
    check_compatible(card, other)  # another collection of the same release and tap is the point
    with pytest.raises(FeatxError, match="release 'vgg16.hed'.*'vggface'"):
        check_compatible(card, {**other, "release": "vggface"})
    with pytest.raises(FeatxError, match="tap 'pool5-gap'.*'fc7'"):
        check_compatible(card, {**other, "tap": "fc7"})
    with pytest.raises(FeatxError, match="weights"):
        check_compatible(card, {**other, "weights_sha256": "0" * 64})
    with pytest.raises(FeatxError, match="shape"):
        check_compatible(card, {**other, "dim": [32]})


def test_load_head_errors_are_one_line(tmp_path):
    with pytest.raises(FeatxError, match="no saved head"):
        load_head(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "head.json").write_text('{"format": "featx-head", "version": 1, "head": "tree"}')
    with pytest.raises(FeatxError, match="unknown head 'tree'"):
        load_head(tmp_path / "bad")
    (tmp_path / "bad" / "head.json").write_text('{"format": "featx-head", "version": 1, "head": "logreg"}')
    with pytest.raises(FeatxError, match="no head.safetensors"):
        load_head(tmp_path / "bad")


# ---------- estimators, the shared search, the registry ----------

def test_heads_are_scikit_learn_estimators():
    from sklearn.base import clone
    from sklearn.utils.validation import check_is_fitted

    Xtr, ytr, Xva, yva, Xte, yte = split_xy(*separable())
    head = make_head("linear-svm", seed=2, grid={"C": [1e-3, 1e-2]})
    with pytest.raises(FeatxError, match="not fitted"):
        head.predict(Xte)
    head.fit(Xtr, ytr, Xva, yva)
    check_is_fitted(head)
    twin = clone(head)  # same constructor parameters, nothing fitted
    assert twin.get_params() == head.get_params() and not hasattr(twin, "C_")
    assert np.array_equal(twin.fit(Xtr, ytr, Xva, yva).predict_proba(Xte), head.predict_proba(Xte))
    assert head.score(Xte, yte) == (head.predict(Xte) == yte).mean()  # ClassifierMixin
    assert list(head.classes_) == [0, 1] and head.n_classes_ == 2 and head.n_classes is None
    head.set_params(seed=5)
    assert head.get_params()["seed"] == 5


def test_grid_search_breaks_ties_by_log_loss_then_grid_order():
    from featx.heads.select import best_point, grid_search

    rows = {1: (0.90, 0.1), 2: (0.95, 0.3), 3: (0.95, 0.2), 4: (0.95, 0.2)}
    search = grid_search({"C": [1, 2, 3, 4]}, lambda p: ({"w_": p["C"] * 10},
                                                         {"score": rows[p["C"]][0], "val_log_loss": rows[p["C"]][1]}))
    assert search.best == {"C": 3} and search.state == {"w_": 30}  # the fitted candidate, not a refit
    assert [r["C"] for r in search.results] == [1, 2, 3, 4]
    assert best_point(search.results, ("C",)) == {"C": 3}
    two = grid_search({"gamma": [0.1, 0.2], "C": [1, 2]}, lambda p: ({}, {"score": 0.5}))
    assert [(r["C"], r["gamma"]) for r in two.results] == [(1, 0.1), (1, 0.2), (2, 0.1), (2, 0.2)]
    assert two.best == {"C": 1, "gamma": 0.1}


@pytest.fixture
def centroid_head():
    """A whole new head kind in a few lines: the registry, train(), save and load take it as is."""
    from dataclasses import dataclass

    from featx.heads import Head, register_head, unregister_head
    from featx.heads.base import log_loss, softmax

    @register_head
    @dataclass(eq=False, repr=False)
    class CentroidHead(Head):
        kind = "toy-centroid"
        default_grid = {"shrink": [0.0, 1.0, 9.0]}
        temperature: float = 1.0

        def _fit_point(self, Z, y, Zv, yv, point):
            cent = np.stack([Z[y == c].mean(0) for c in range(self.n_classes_)]) / (1 + point["shrink"])
            p = softmax(-((Zv[:, None] - cent) ** 2).sum(-1) / self.temperature)
            return {"centroids_": cent}, {"score": self._score(yv, p.argmax(1)), "val_log_loss": log_loss(yv, p)}

        def _proba(self, Z):
            return softmax(-((Z[:, None] - self.centroids_) ** 2).sum(-1) / self.temperature)

        def _arrays(self):
            return {"centroids": self.centroids_}

        def _load(self, arrays):
            self.centroids_ = arrays["centroids"]

    yield CentroidHead
    unregister_head("toy-centroid")


def test_a_new_head_kind_is_one_registration(centroid_head, tmp_path):
    from featx.heads import get_head_class, register_head

    assert "toy-centroid" in HEADS and get_head_class("toy-centroid") is centroid_head
    store = fake_store()
    card = train(store, "toy-centroid", tmp_path / "h", params={"temperature": 2.0})
    assert card["head"] == "toy-centroid" and card["params"]["temperature"] == 2.0
    assert len(card["selection"]["results"]) == 3 and card["val_metrics"]["accuracy"] > 0.9
    head, _ = load_head(tmp_path / "h")
    te = store.indices("test")
    assert head.shrink_ == card["fitted"]["shrink"] and (head.predict(store.X[te]) == store.labels[te]).mean() > 0.9
    with pytest.raises(FeatxError, match="toy-centroid head has no parameter alpha; known: temperature"):
        make_head("toy-centroid", alpha=1)
    with pytest.raises(ValueError, match="already registered"):
        register_head(type("Other", (centroid_head,), {"kind": "logreg"}))


# ---------- saved heads: compatibility, digests, permissions ----------

V1 = sorted((Path(__file__).parent / "data" / "heads_v1").iterdir())


@pytest.mark.parametrize("folder", V1, ids=[p.name for p in V1])
def test_heads_saved_before_card_version_2_still_load(folder):
    """Written by featx before heads became estimators: flat params, no digests."""
    k = 2 if folder.name.startswith("bin") else 3
    X, _ = separable(300, 16, k, seed=0 if k == 2 else 2, shift=1.2)
    head, card = load_head(folder)
    assert card["version"] == 1 and "card_sha256" not in card
    assert head.best_params_ == card["selection"]["chosen"] and head.n_classes_ == k
    want = np.asarray(json.loads((folder / "expected_proba.json").read_text()))
    # the same probabilities; only the last bits may differ, as BLAS kernels differ between CPUs (the MLP's
    # matmuls differed by 1e-8 on an AVX512 EPYC from the machine that wrote the file)
    np.testing.assert_allclose(head.predict_proba(X[np.arange(300) % 5 == 4]), want, rtol=0, atol=1e-6)


def test_card_records_digests_and_loading_refuses_tampering(tmp_path):
    import hashlib

    train(fake_store(), "logreg", tmp_path / "h")
    arrays, card_file = tmp_path / "h" / "head.safetensors", tmp_path / "h" / "head.json"
    card = json.loads(card_file.read_text())
    assert card["version"] == 2
    assert card["arrays_sha256"] == hashlib.sha256(arrays.read_bytes()).hexdigest()
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert card["card_sha256"] == hashlib.sha256(canon).hexdigest()

    good = arrays.read_bytes()
    arrays.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one bit of a coefficient
    with pytest.raises(FeatxError) as e:
        load_head(tmp_path / "h")
    msg = str(e.value)
    assert msg.startswith(f"{arrays} does not match its card (sha256 ") and "\n" not in msg
    assert msg.endswith("the head was modified or damaged")
    arrays.write_bytes(good)
    load_head(tmp_path / "h")

    for edit in (lambda c: c["fitted"].update(C=123.0), lambda c: c["classes"].reverse(),
                 lambda c: c.pop("card_sha256")):
        bad = json.loads(json.dumps(card))
        edit(bad)
        card_file.write_text(json.dumps(bad, indent=2))
        with pytest.raises(FeatxError, match=r"head.json does not match its digest .*modified or damaged"):
            load_head(tmp_path / "h")
    card_file.write_text(json.dumps(card, indent=1))  # layout is free: the digest covers the content
    load_head(tmp_path / "h")


def test_saved_files_are_0644_whatever_the_umask(tmp_path):
    import os
    import stat

    head = head_for("logreg").fit(*split_xy(*separable())[:4])
    old = os.umask(0o077)
    try:
        save_head(head, tmp_path / "h", {"classes": ["female", "male"]})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "h").iterdir()}
    assert modes == {"head.json": 0o644, "head.safetensors": 0o644}
