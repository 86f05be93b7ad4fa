"""One extraction, every question: extract keyed by content, heads per target (--target, --task, all),
several heads in one predict and one evaluate; on tiny images and a tiny VGG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from featx.extract import extract
from featx.store import FeatureStore
from featx_cli.main import main

from conftest import make_image

TINY = dict(workers=0, progress=False, rows_per_shard=16, precision="fp32")


def write_csv(path: Path, header: str, rows) -> Path:
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def moods(csv_dataset: Path, n: int = 40, name: str = "moods.csv") -> Path:
    """Another manifest over the first n photos of csv_dataset: other labels, other columns."""
    return write_csv(csv_dataset.parent / name, "path,label,mood",
                     [f"img/{i:03d}.jpg,{['glad', 'sad', 'calm'][i % 3]},{['a', 'b'][i % 2]}" for i in range(n)])


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main([*map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def store(csv_dataset, tiny_weights, tmp_path) -> Path:
    path = tmp_path / "f.zarr"
    extract(csv_dataset, "vgg16.hed", path, weights=tiny_weights, **TINY)
    return path


def test_another_manifest_over_the_same_photos_computes_nothing(store, csv_dataset, tiny_weights, monkeypatch,
                                                                 capsys):
    import featx.extract.runner as runner

    before = FeatureStore.open(store)
    feats = before.features()

    def no_model(*a, **k):
        raise AssertionError("nothing to compute: the model must not be loaded")

    monkeypatch.setattr(runner, "load_backbone", no_model)
    rc, out, err = run(capsys, "extract", "--backbone", "vgg16.hed", "--weights", tiny_weights, "--data",
                       moods(csv_dataset), "--store", store, "--workers", "0", "-q")
    assert rc == 0, err
    assert len(out.strip().splitlines()) == 1 and "nothing to do" in out and "all 40 images" in out, out
    fs = FeatureStore.open(store)
    assert fs.tset.name == "moods" and fs.classes == ["calm", "glad", "sad"] and fs.n == 40
    np.testing.assert_array_equal(fs.features(), feats)
    assert FeatureStore.open(store, targets="csvdata-labels").classes == ["female", "male"]


def test_new_photos_are_the_only_rows_computed(store, csv_dataset, tiny_weights, tmp_path):
    old = FeatureStore.open(store).features()
    for i in range(40, 46):
        make_image(csv_dataset.parent / "img" / f"{i:03d}.jpg", seed=i, cls=i % 2)
    more = moods(csv_dataset, n=46, name="more.csv")
    s = extract(more, "vgg16.hed", store, weights=tiny_weights, **TINY)
    assert s["computed"] == 6 and "6 of 46 images are new" in s["note"]
    fs = FeatureStore.open(store)
    rows = np.flatnonzero(fs.in_set)
    assert fs.n == 54 and len(rows) == 46 and list(rows[40:]) == list(range(48, 54))  # a shard-aligned segment
    np.testing.assert_array_equal(fs.features(np.arange(40)), old)  # finished rows untouched
    fresh = tmp_path / "fresh.zarr"
    extract(more, "vgg16.hed", fresh, weights=tiny_weights, **TINY)
    np.testing.assert_allclose(fs.features(rows[40:]), FeatureStore.open(fresh).features(np.arange(40, 46)),
                               rtol=1e-3, atol=1e-4)
    # a manifest that drops photos: nothing computed, the rows stay, out of its target set
    s = extract(moods(csv_dataset, n=10, name="few.csv"), "vgg16.hed", store, weights=tiny_weights, **TINY)
    assert s["computed"] == 0 and s["already_complete"]
    fs = FeatureStore.open(store)
    assert fs.n == 54 and fs.tset.name == "few" and len(fs.indices("all")) == 10


def test_train_head_on_any_target(store, csv_dataset, tmp_path, capsys):
    extra = write_csv(csv_dataset.parent / "extra.csv", "path,mood,bmi",
                      [f"img/{i:03d}.jpg,{['glad', 'sad'][(i // 2) % 2]},{'' if i % 8 == 0 else 20 + i * 0.5}"
                       for i in range(40)])
    assert run(capsys, "labels", "add", store, "--data", extra)[0] == 0
    rc, out, err = run(capsys, "train-head", "--store", store, "--head", "logreg", "--target", "mood",
                       "--out", tmp_path / "mood")
    assert rc == 0, err
    assert "target mood: categorical, 2 classes (glad, sad); classifying" in out
    card = json.loads((tmp_path / "mood" / "head.json").read_text())
    assert card["target"] == "mood" and card["task"] == "classify" and card["classes"] == ["glad", "sad"]
    rc, _, err = run(capsys, "train-head", "--store", store, "--head", "logreg", "--target", "shoe",
                     "--out", tmp_path / "x")
    assert rc == 2 and err.count("\n") == 1 and "targets: label, age, mood, bmi" in err
    rc, _, err = run(capsys, "train-head", "--store", store, "--head", "logreg", "--target", "mood",
                     "--task", "regress", "--out", tmp_path / "x")
    assert rc == 2 and err.count("\n") == 1 and "regression needs a numeric target" in err
    rc, _, err = run(capsys, "train-head", "--store", store, "--head", "logreg", "--target", "age",
                     "--task", "classify", "--out", tmp_path / "x")
    assert rc == 2 and err.count("\n") == 1 and "40 distinct values" in err and "--task regress" in err
    assert not (tmp_path / "x").exists()


def regression_heads():
    from featx.heads import HEADS

    if "ridge" not in HEADS:
        pytest.skip("no regression heads in this tree")


def test_regression_target_leaves_out_rows_without_a_value(store, csv_dataset, tmp_path, capsys):
    regression_heads()
    extra = write_csv(csv_dataset.parent / "bmi.csv", "path,bmi",
                      [f"img/{i:03d}.jpg,{'' if i % 8 == 0 else 20 + i * 0.5}" for i in range(40)])
    assert run(capsys, "labels", "add", store, "--data", extra)[0] == 0
    rc, out, err = run(capsys, "train-head", "--store", store, "--head", "ridge", "--target", "bmi",
                       "--out", tmp_path / "bmi")
    assert rc == 0, err
    assert "target bmi: numeric" in out and "regressing" in out
    assert "left out 5 rows without a bmi value" in out
    card = json.loads((tmp_path / "bmi" / "head.json").read_text())
    from featx.data import load

    splits = load(csv_dataset).splits  # rows 0, 8, 16, 24, 32 have no bmi
    want = {k: sum(splits[i] == k for i in range(0, 40, 8)) for k in ("train", "val", "test")}
    assert card["task"] == "regress" and card["training"]["left_out"] == want
    assert {"mae", "rmse", "r2", "within_5"} <= set(card["val_metrics"])
    rc, _, err = run(capsys, "train-head", "--store", store, "--head", "ridge", "--target", "mood",
                     "--out", tmp_path / "x")
    assert rc == 2 and err.count("\n") == 1


def test_target_all_trains_one_head_per_target(store, csv_dataset, tmp_path, capsys):
    extra = write_csv(csv_dataset.parent / "extra.csv", "path,mood",
                      [f"img/{i:03d}.jpg,{['glad', 'sad'][(i // 2) % 2]}" for i in range(40)])
    assert run(capsys, "labels", "add", store, "--data", extra, "--categorical", "mood")[0] == 0
    rc, out, err = run(capsys, "train-head", "--store", store, "--head", "logreg", "--target", "all",
                       "--task", "classify", "--out", tmp_path / "all")
    assert rc == 2 and "age" in err  # age is numeric with 40 values: no classifier for it
    from featx.heads import HEADS

    heads = "logreg,ridge" if "ridge" in HEADS else "logreg"
    args = ["train-head", "--store", store, "--head", heads, "--target", "all", "--out", tmp_path / "all"]
    if "ridge" not in HEADS:
        assert run(capsys, *args)[0] == 2
        return
    rc, out, err = run(capsys, *args)
    assert rc == 0, err
    table = [line.split() for line in out.splitlines() if line.split()[:1] in (["label"], ["age"], ["mood"])]
    assert [r[:3] for r in table] == [["label", "classify", "logreg"], ["age", "regress", "ridge"],
                                      ["mood", "classify", "logreg"]]
    assert all((tmp_path / "all" / t / "head.json").is_file() for t in ("label", "age", "mood"))


def test_one_predict_and_one_evaluate_for_several_heads(store, csv_dataset, tiny_weights, tmp_path, capsys,
                                                        monkeypatch):
    from featx.extract.extractor import Extractor

    moods_csv = moods(csv_dataset)
    extract(moods_csv, "vgg16.hed", store, weights=tiny_weights, **TINY)
    for name, target_set in (("gender", "csvdata-labels"), ("mood", "moods")):
        rc, _, err = run(capsys, "train-head", "--store", store, "--set", target_set, "--head", "logreg",
                         "--out", tmp_path / name)
        assert rc == 0, err
    calls = []
    real = Extractor.__call__
    monkeypatch.setattr(Extractor, "__call__", lambda self, x, **k: calls.append(len(x)) or real(self, x, **k))
    photos = [csv_dataset.parent / "img" / f"{i:03d}.jpg" for i in range(3)]
    rc, out, err = run(capsys, "predict", "--head", tmp_path / "gender", "--head", tmp_path / "mood", *photos,
                       "--weights", tiny_weights, "--json", "-q")
    assert rc == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [o["path"] for o in lines] == [str(p) for p in photos]
    assert all(set(o["heads"]) == {"gender", "mood"} for o in lines)
    assert lines[0]["heads"]["gender"]["label"] in ("female", "male")
    assert lines[0]["heads"]["mood"]["label"] in ("calm", "glad", "sad")
    assert sum(calls) == 3  # the base ran once per photo, not once per head
    rc, out, err = run(capsys, "evaluate", "--head", tmp_path / "gender", "--head", tmp_path / "mood",
                       "--store", store)
    assert rc == 0, err
    assert out.count("logreg head on") == 2
    for name in ("gender", "mood"):
        assert json.loads((tmp_path / name / "report-f-test" / "metrics.json").read_text())["n"] > 0


@pytest.fixture
def ft_env(tmp_path, monkeypatch, csv_dataset):
    """He-initialised tiny weights (colour survives to pool5) and photos whose `score` follows colour."""
    from safetensors.torch import save_file

    from test_finetune import signal_preserving_state_dict

    monkeypatch.setenv("FEATX_HOME", str(tmp_path / "home"))
    weights = tmp_path / "tiny-he.safetensors"
    save_file(signal_preserving_state_dict(), str(weights))
    data = write_csv(csv_dataset.parent / "scored.csv", "path,label,score,split",
                     [f"img/{i:03d}.jpg,{['female', 'male'][i % 2]},{10 + 30 * (i % 2) + (i % 7) * 0.5},"
                      f"{['train', 'train', 'train', 'val', 'test'][i % 5]}" for i in range(40)])
    return data, weights


FT = dict(epochs=2, batch_size=8, precision="fp32", workers=0, progress=False, block_rows=16, head_epochs=2)


@pytest.mark.slow
def test_fine_tune_regresses_a_numeric_target_and_shares_the_prefix_cache(ft_env, tmp_path):
    from featx.finetune import fine_tune
    from featx.heads import load_head

    regression_heads()
    data, weights = ft_env
    lines = []
    s = fine_tune(data, "vgg16.hed", tmp_path / "score", weights=weights, target="score", loss="l1",
                  log=lines.append, **FT)
    assert s["task"] == "regress" and s["val_mae"] < 15 and s["test"]["n"] > 0 and "mae" in s["test"]
    assert any(" mae " in m for m in lines) and not any(" auc " in m for m in lines)
    head, card = load_head(tmp_path / "score")
    assert card["task"] == "regress" and card["target"] == "score" and head.task == "regress"
    caches = list((tmp_path / "home" / "features").glob("prefix-*.zarr"))
    assert len(caches) == 1 and s["prefix_seconds"] > 0
    # the label of the same photos: the prefix cache is reused, nothing extracted again
    g = fine_tune(data, "vgg16.hed", tmp_path / "gender", weights=weights, **FT)
    assert g["task"] == "classify" and "test_accuracy" in g
    assert list((tmp_path / "home" / "features").glob("prefix-*.zarr")) == caches
    from featx.store import FeatureStore

    runs = FeatureStore.open(caches[0]).attrs["runs"]
    assert sum(r["rows"] for r in runs) == 40  # every photo computed once, for both targets


def test_fine_tune_target_mistakes_cost_nothing(ft_env, tmp_path):
    from featx.errors import FeatxError
    from featx.finetune import fine_tune

    data, weights = ft_env
    with pytest.raises(FeatxError, match="no target 'bmi'.*label, score"):
        fine_tune(data, "vgg16.hed", tmp_path / "x", weights=weights, target="bmi", **FT)
    with pytest.raises(FeatxError, match="regression needs a numeric target"):
        fine_tune(data, "vgg16.hed", tmp_path / "x", weights=weights, task="regress", **FT)
    with pytest.raises(FeatxError, match="--balance is for classes"):
        fine_tune(data, "vgg16.hed", tmp_path / "x", weights=weights, target="score", balance="weights", **FT)
    assert not (tmp_path / "home" / "features").exists()  # refused before the prefix cache


def test_store_upgrade_turns_a_format_1_store_into_format_2(tmp_path, capsys):
    import shutil

    path = tmp_path / "old.zarr"
    shutil.copytree(Path(__file__).parent / "data" / "store_v1.zarr", path)
    before = FeatureStore.open(path)
    rc, out, _ = run(capsys, "store", "upgrade", path)
    assert rc == 0 and "format 1 -> 2" in out
    after = FeatureStore.open(path)
    assert after.version == 2 and after.tset.name == before.tset.name and after.classes == before.classes
    np.testing.assert_array_equal(after.features(), before.features())
    np.testing.assert_array_equal(after.labels, before.labels)
    assert run(capsys, "store", "verify", path)[0] == 0
    rc, out, _ = run(capsys, "store", "upgrade", path)
    assert rc == 0 and "nothing to do" in out
