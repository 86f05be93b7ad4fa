"""Regression heads: learning y = Xw + noise, the target transform chosen on val, save/load identity,
streaming in bounded memory, bad input; regression metrics and their intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featx.errors import FeatxError
from featx.heads import HEADS, load_head, make_head, save_head
from featx.heads.card import card_task
from featx.heads.regression import Targets, forward, inverse, val_scores
from featx.heads.sgd import array_reader
from featx.metrics import regression_interval_block, regression_intervals, regression_metrics, weighted_regression

REGRESSORS = ("ridge", "rbf-ridge", "mlp-regress", "sgd-regress")
FAST = {"mlp-regress": {"grid": {"hidden": [[32]]}, "max_epochs": 30, "patience": 5, "lr": 3e-3, "batch_size": 64},
        "rbf-ridge": {"n_landmarks": 200}}


def linear_data(n: int = 400, d: int = 8, noise: float = 0.5, seed: int = 0):
    """y = 40 + X w + noise, with |w| scaled so the targets spread ~10 units (a range like ages)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    w *= 10 / np.linalg.norm(w)
    return X.astype(np.float32), 40 + X @ w + rng.normal(scale=noise, size=n)


def lognormal_data(n: int = 400, d: int = 8, seed: int = 1):
    """log(1 + y) linear in X: y is log-normal, from ~1 to several hundred."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    w *= 1.2 / np.linalg.norm(w)
    return X.astype(np.float32), np.expm1(2.5 + X @ w + rng.normal(scale=0.05, size=n))


def split(X, y, a: int = 250, b: int = 325):
    return (X[:a], y[:a]), (X[a:b], y[a:b]), (X[b:], y[b:])


def test_every_head_declares_its_task_and_the_regressors_are_registered():
    for kind in HEADS:
        head = make_head(kind)
        assert head.task in ("classify", "regress")
        assert (head.task == "regress") == (kind in REGRESSORS)
    assert set(REGRESSORS) <= set(HEADS)


@pytest.mark.parametrize("kind", REGRESSORS)
def test_regressor_learns_a_noisy_linear_target(kind):
    X, y = linear_data()
    (Xt, yt), (Xv, yv), (Xs, ys) = split(X, y)
    head = make_head(kind, **FAST.get(kind, {})).fit(Xt, yt, Xv, yv)
    pred = head.predict(Xs)
    mae = np.mean(np.abs(pred - ys))
    baseline = np.mean(np.abs(ys - yt.mean()))  # predicting the mean: ~8 units
    assert pred.dtype == np.float64 and pred.shape == ys.shape
    assert mae < 0.25 * baseline, (kind, mae, baseline)
    assert head.selection_["metric"] == "mae" and head.selection_["on"] == "val"
    assert all("val_mae" in r and r["score"] == -r["val_mae"] for r in head.cv_results_)
    chosen = min(head.cv_results_, key=lambda r: r["val_mae"])
    assert {k: chosen[k] for k in head.best_params_} == head.best_params_


@pytest.mark.parametrize("kind", ["ridge", "sgd-regress", "rbf-ridge"])
def test_transform_is_chosen_on_val_log_for_lognormal_identity_for_linear(kind):
    X, y = lognormal_data()
    (Xt, yt), (Xv, yv), _ = split(X, y)
    head = make_head(kind, **FAST.get(kind, {})).fit(Xt, yt, Xv, yv)
    assert head.transform_ == "log1p"
    by_t = {t: min(r["val_mae"] for r in head.cv_results_ if r["transform"] == t) for t in ("identity", "log1p")}
    assert by_t["log1p"] < 0.7 * by_t["identity"]
    X, y = linear_data(noise=0.2)
    y = y - y.min() + 0.5  # from 0.5 to ~50: log1p bends the line, identity is right
    (Xt, yt), (Xv, yv), _ = split(X, y)
    assert make_head(kind, **FAST.get(kind, {})).fit(Xt, yt, Xv, yv).transform_ == "identity"


def test_mlp_regressor_chooses_log_for_lognormal_targets():
    X, y = lognormal_data()
    (Xt, yt), (Xv, yv), _ = split(X, y)
    assert make_head("mlp-regress", **FAST["mlp-regress"]).fit(Xt, yt, Xv, yv).transform_ == "log1p"


def test_log1p_is_left_out_when_a_target_is_at_or_below_minus_one():
    X, y = linear_data()
    y = y - 45  # some targets below -1
    head = make_head("ridge").fit(X[:300], y[:300], X[300:], y[300:])
    assert head.selection_["grid"]["transform"] == ["identity"] and "log1p left out" in head.selection_["transform_note"]
    with pytest.raises(FeatxError, match="needs targets above -1"):
        make_head("ridge", grid={"transform": ["log1p"]}).fit(X[:300], y[:300], X[300:], y[300:])


def test_predictions_stay_inside_the_training_range():
    X, y = linear_data()
    head = make_head("ridge").fit(X[:300], y[:300], X[300:], y[300:])
    far = head.predict(np.vstack([X[:5] * 50, -X[:5] * 50]))
    assert far.min() >= y[:300].min() and far.max() <= y[:300].max()
    assert np.isclose(far, y[:300].min()).any() and np.isclose(far, y[:300].max()).any()


def test_transforms_round_trip_and_targets_are_standardised():
    y = np.array([0.0, 1.0, 30.0, 90.0])
    for t in ("identity", "log1p"):
        assert np.allclose(inverse(t, forward(t, y)), y)
        tg = Targets.make(t, y)
        assert abs(tg.t.mean()) < 1e-12 and abs(tg.t.std() - 1) < 1e-12
        assert np.allclose(tg.to_units(tg.t), y)
    with pytest.raises(FeatxError, match="unknown target transform"):
        forward("sqrt", y)


@pytest.mark.parametrize("kind", REGRESSORS)
def test_saved_regressor_reloads_with_identical_predictions(kind, tmp_path):
    X, y = linear_data(n=200)
    head = make_head(kind, **FAST.get(kind, {})).fit(X[:120], y[:120], X[120:160], y[120:160])
    save_head(head, tmp_path / "h", {"target": "y"})
    loaded, card = load_head(tmp_path / "h")
    assert type(loaded) is type(head) and card["task"] == "regress" and card_task(card) == "regress"
    assert card["fitted"]["transform"] == head.transform_ and loaded.transform_ == head.transform_
    assert np.array_equal(loaded.predict(X[160:]), head.predict(X[160:]))
    assert not any(p.suffix in (".pkl", ".pickle") for p in (tmp_path / "h").iterdir())


def test_a_damaged_regression_head_is_refused(tmp_path):
    X, y = linear_data(n=200)
    save_head(make_head("ridge").fit(X[:150], y[:150], X[150:], y[150:]), tmp_path / "h", {})
    card = json.loads((tmp_path / "h" / "head.json").read_text())
    card["fitted"]["transform"] = "log1p" if card["fitted"]["transform"] == "identity" else "identity"
    (tmp_path / "h" / "head.json").write_text(json.dumps(card))
    with pytest.raises(FeatxError, match="modified or damaged"):
        load_head(tmp_path / "h")


def test_classifier_cards_say_classify(tmp_path):
    X, y = linear_data(n=200)
    labels = (y > np.median(y)).astype(np.int64)
    save_head(make_head("logreg").fit(X[:150], labels[:150], X[150:], labels[150:]), tmp_path / "c", {})
    _, card = load_head(tmp_path / "c")
    assert card["task"] == "classify" and card_task({}) == "classify"


def test_holdout_is_used_when_no_val_rows_are_given():
    X, y = linear_data()
    head = make_head("ridge").fit(X, y)
    assert head.selection_["on"].startswith("holdout")
    assert np.mean(np.abs(head.predict(X) - y)) < 1.0


@pytest.mark.parametrize("bad, match", [(np.nan, "missing or not finite"), (np.inf, "missing or not finite")])
def test_missing_targets_are_refused_in_one_line(bad, match):
    X, y = linear_data(n=50)
    y[3] = bad
    with pytest.raises(FeatxError, match=match):
        make_head("ridge").fit(X, y)


def test_non_numeric_targets_and_bad_settings_are_refused():
    X, _ = linear_data(n=20)
    with pytest.raises(FeatxError, match="must be numbers"):
        make_head("ridge").fit(X, np.array(["a"] * 20))
    with pytest.raises(FeatxError, match="unknown loss"):
        make_head("sgd-regress", loss="hinge")
    with pytest.raises(FeatxError, match="has no grid for C"):
        make_head("ridge", grid={"C": [1.0]})


def test_ridge_large_dimension_path_matches_the_eigen_path():
    X, y = linear_data(n=300, d=20)
    a = make_head("ridge").fit(X[:200], y[:200], X[200:250], y[200:250])
    b = make_head("ridge", max_primal=5).fit(X[:200], y[:200], X[200:250], y[200:250])  # scikit-learn's Ridge
    assert a.best_params_ == b.best_params_
    assert np.allclose(a.predict(X[250:]), b.predict(X[250:]), atol=1e-6)


def test_rbf_ridge_fits_a_nonlinear_target_a_line_cannot():
    rng = np.random.default_rng(3)
    X = rng.uniform(-2, 2, size=(500, 2))
    y = 20 + 8 * np.sin(2 * X[:, 0]) * np.cos(X[:, 1])
    (Xt, yt), (Xv, yv), (Xs, ys) = split(X, y, 350, 425)
    kernel = make_head("rbf-ridge", n_landmarks=150, grid={"gamma": [0.5, 2.0]}).fit(Xt, yt, Xv, yv)
    line = make_head("ridge").fit(Xt, yt, Xv, yv)
    k_mae, l_mae = np.mean(np.abs(kernel.predict(Xs) - ys)), np.mean(np.abs(line.predict(Xs) - ys))
    assert k_mae < 0.3 * l_mae, (k_mae, l_mae)
    assert kernel.landmarks_.shape == (150, 2) and "Nystroem" in kernel.selection_["approximation"]


def test_sgd_regressor_streams_chunks_and_never_reads_everything_at_once():
    X, y = linear_data(n=600)
    seen = {"max": 0}
    inner = array_reader(X, chunk=50)

    def read(idx, flip=False):
        for rows, chunk in inner(idx, flip):
            seen["max"] = max(seen["max"], len(rows))
            yield rows, chunk

    head = make_head("sgd-regress", mix_chunks=2).fit_stream(read, y, np.arange(450), np.arange(450, 550))
    assert seen["max"] <= 100  # mix_chunks=2 chunks of 50 rows
    assert np.mean(np.abs(head.predict(X[550:]) - y[550:])) < 1.5
    assert head.selection_["streamed"]["chunks"] == 9
    y2 = y.copy()
    y2[7] = np.nan
    with pytest.raises(FeatxError, match="missing or not finite"):
        make_head("sgd-regress").fit_stream(read, y2, np.arange(450), np.arange(450, 550))


# ---------- metrics ----------

def test_regression_metrics_known_values_and_groups():
    y = np.array([1.0, 2.0, 3.0, 10.0])
    pred = np.array([1.0, 2.0, 8.5, 10.0])
    m = regression_metrics(y, pred, {"band": np.array(["a", "a", "b", "b"])})
    assert m["n"] == 4 and m["mae"] == pytest.approx(5.5 / 4) and m["rmse"] == pytest.approx(np.sqrt(5.5 ** 2 / 4))
    assert m["r2"] == pytest.approx(1 - 30.25 / 50) and m["within_5"] == 0.75
    assert m["bias"] == pytest.approx(5.5 / 4) and m["median_ae"] == 0.0
    assert m["groups"]["band"]["a"] == {"n": 2, "mae": 0.0, "rmse": 0.0, "r2": 1.0, "within_5": 1.0, "bias": 0.0,
                                        "median_ae": 0.0}
    assert m["groups"]["band"]["b"]["mae"] == pytest.approx(2.75)
    same = regression_metrics(np.array([5.0, 5.0]), np.array([4.0, 6.0]))
    assert same["r2"] is None and same["mae"] == 1.0  # r2 of a constant truth is undefined


def test_within_5_counts_an_error_of_exactly_5():
    m = regression_metrics(np.array([10.0, 10.0, 10.0]), np.array([15.0, 5.0, 15.5]))
    assert m["within_5"] == pytest.approx(2 / 3)


def test_regression_intervals_bracket_the_value_and_shrink_with_n():
    rng = np.random.default_rng(0)
    y = rng.uniform(1, 80, 2000)
    pred = y + rng.normal(scale=6, size=2000)
    m = regression_metrics(y, pred)
    small, big = regression_intervals(y[:100], pred[:100]), regression_intervals(y, pred)
    for key in ("mae", "rmse", "r2", "within_5"):
        lo, hi = big[key]
        assert lo <= m[key] <= hi
        assert (hi - lo) < (small[key][1] - small[key][0])
    assert regression_intervals(y, pred) == big  # seeded
    block = regression_interval_block(y, pred, {"g": np.where(y < 13, "child", "adult")})
    assert set(block["groups"]["g"]) == {"child", "adult"} and block["n_boot"] == 1000


def test_weighted_regression_with_unit_weights_equals_the_plain_metrics():
    rng = np.random.default_rng(1)
    y, pred = rng.normal(size=50), rng.normal(size=50)
    w = weighted_regression(y, pred, np.ones((1, 50)))
    m = regression_metrics(y, pred)
    assert all(w[k][0] == pytest.approx(m[k]) for k in ("mae", "rmse", "r2", "within_5"))
    with pytest.raises(FeatxError, match="3 targets but 2 predictions"):
        regression_metrics(np.zeros(3), np.zeros(2))


def test_ties_in_val_mae_go_to_the_lower_rmse():
    from featx.heads.select import grid_search

    rows = {1: {"score": -2.0, "val_mae": 2.0, "val_rmse": 3.0}, 2: {"score": -2.0, "val_mae": 2.0, "val_rmse": 2.5}}
    assert grid_search({"a": [1, 2]}, lambda p: ({}, rows[p["a"]])).best == {"a": 2}


@pytest.mark.parametrize("max_primal", [4096, 5])  # the eigen path and scikit-learn's Ridge
def test_ridge_sample_weights_equal_repeated_rows(max_primal):
    X, y = linear_data(n=300, noise=2.0)
    grid = {"alpha": [0.1], "transform": ["identity"]}
    w = np.ones(200)
    w[:50] = 2.0
    weighted = make_head("ridge", grid=grid, max_primal=max_primal).fit(X[:200], y[:200], X[200:250], y[200:250],
                                                                        sample_weight=w)
    rep = np.concatenate([np.arange(200), np.arange(50)])
    repeated = make_head("ridge", grid=grid, max_primal=max_primal).fit(X[rep], y[rep], X[200:250], y[200:250])
    plain = make_head("ridge", grid=grid, max_primal=max_primal).fit(X[:200], y[:200], X[200:250], y[200:250])
    assert np.allclose(weighted.predict(X[250:]), repeated.predict(X[250:]), atol=1e-8)
    assert not np.allclose(weighted.predict(X[250:]), plain.predict(X[250:]), atol=1e-3)
    assert weighted.selection_["weighted"] == {"train": True, "val": False}


def test_rbf_ridge_weights_move_the_fit_toward_the_weighted_rows():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 3))
    group = X[:, 0] > 0
    y = np.where(group, 60.0, 20.0) + 5 * X[:, 1]
    y_biased = np.where(group, y + 10, y)  # the two groups disagree: weights decide which one the fit follows
    w = np.where(group, 10.0, 1.0)
    kw = {"n_landmarks": 100, "grid": {"alpha": [1.0], "gamma": [0.05], "transform": ["identity"]}}
    a = make_head("rbf-ridge", **kw).fit(X[:200], y_biased[:200], X[200:], y_biased[200:], sample_weight=w[:200])
    b = make_head("rbf-ridge", **kw).fit(X[:200], y_biased[:200], X[200:], y_biased[200:])
    heavy = group[200:]
    assert np.mean(np.abs(a.predict(X[200:])[heavy] - y_biased[200:][heavy])) < \
        np.mean(np.abs(b.predict(X[200:])[heavy] - y_biased[200:][heavy]))


def test_weights_are_refused_where_not_supported_or_malformed():
    X, y = linear_data(n=60)
    with pytest.raises(FeatxError, match="takes no sample weights"):
        make_head("sgd-regress").fit(X, y, sample_weight=np.ones(60))
    with pytest.raises(FeatxError, match="sample_weight must be 60 finite"):
        make_head("ridge").fit(X, y, sample_weight=-np.ones(60))
    v = val_scores(np.array([0.0, 0.0]), np.array([1.0, 3.0]), np.array([3.0, 1.0]))
    assert v["val_mae"] == pytest.approx(1.5) and v["score"] == -v["val_mae"]
