"""Features keyed by content, targets beside them: target sets, typing, growth, old stores, `featx labels`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from featx import data
from featx.data import Manifest
from featx.errors import FeatxError
from featx.store import FeatureStore, StoreWriter, attach, create, image_paths, verify
from featx.targets import Target, infer_kind, multiset_match
from featx_cli.main import main

from test_data import make_celeba

DIM = (4,)
V1_STORE = Path(__file__).parent / "data" / "store_v1.zarr"  # written by featx 0.2 (format 1), 12 rows


def manifest(root, n=12, start=0, label=None, extras=None, splits=None) -> Manifest:
    idx = range(start, start + n)
    return Manifest(root=root, paths=[f"img/{i:02d}.jpg" for i in idx],
                    labels=[label(i) if label else ["female", "male"][i % 2] for i in idx],
                    splits=splits or [["train", "train", "val", "test"][i % 4] for i in idx],
                    extras=extras(idx) if extras else {"age": [str(3 + 7 * i) for i in idx]})


def digests(m: Manifest) -> list[str]:
    """Fake content digests: the image number (equal bytes, equal digest)."""
    return [f"digest{p[4:6]}" for p in m.paths]


def feats(a, b):
    return np.arange(a, b, dtype=np.float32)[:, None] * 10 + np.arange(DIM[0], dtype=np.float32)


def fill(w: StoreWriter) -> None:
    for a, b in w.plan_units():
        w.write_unit(a, b, feats(a, b), np.ones(b - a, bool), [""] * (b - a))


IDENTITY = {"release": "vgg16.hed", "weights_sha256": "w" * 64, "tap": "pool5-gap", "preprocess": {"size": 32},
            "dtype": "float32", "flip": False}


def make(tmp_path, m: Manifest, shard=5) -> tuple[str, StoreWriter]:
    path = str(tmp_path / "s.zarr")
    m.origin = "first.csv"  # names its target set
    w = create(path, manifest=m, identity=IDENTITY, provenance={"precision": "fp32"}, dim=DIM,
               rows_per_shard=shard, digests=digests(m))
    fill(w)
    return path, w


def test_another_manifest_over_the_same_images_adds_a_target_set_and_no_row(tmp_path):
    path, w = make(tmp_path, manifest(tmp_path))
    before = w.done().copy(), w.n
    # same photos, other labels, other split, another folder: nothing to compute
    other = manifest(tmp_path / "moved", label=lambda i: ["a", "b", "c"][i % 3],
                     splits=[["test", "val", "train", "train"][i % 4] for i in range(12)])
    got = attach(w, other, digests(other), name="second")
    assert (got["new"], got["kept"]) == (0, 12) and w.n == before[1] and w.plan_units() == []
    np.testing.assert_array_equal(got["rows"], np.arange(12))
    fs = FeatureStore.open(path)  # the newest target set is the current one
    assert fs.tset.name == "second" and fs.classes == ["a", "b", "c"] and fs.split[0] == "test"
    assert str(fs.root) == str(tmp_path / "moved")
    first = FeatureStore.open(path, targets="first")
    assert first.classes == ["female", "male"] and first.split[0] == "train"
    np.testing.assert_array_equal(fs.features(fs.indices("train")), first.features(fs.indices("train")))
    with pytest.raises(FeatxError, match="no target set 'third'.*first, second"):
        FeatureStore.open(path, targets="third")


def test_new_images_grow_a_segment_and_only_they_are_computed(tmp_path):
    path, w = make(tmp_path, manifest(tmp_path, n=12), shard=5)  # shards (0,5) (5,10) (10,12)
    old = zarr.open_group(path)["checksums"][:].copy()
    bigger = manifest(tmp_path, n=16)  # images 12-15 are new
    got = attach(w, bigger, digests(bigger))
    assert (got["new"], got["kept"]) == (4, 12)
    np.testing.assert_array_equal(got["rows"], list(range(12)) + [15, 16, 17, 18])  # the new segment starts on a shard
    assert w.plan_units() == [(15, 19)] and w.segments[1][:2] == (15, 19)
    fill(w)
    assert list(zarr.open_group(path)["checksums"][:3]) == list(old)  # finished shards never rewritten
    assert verify(path) == []
    fs = FeatureStore.open(path)
    assert fs.n == 19 and not fs.ok[12:15].any() and 13 not in fs.indices("all")
    np.testing.assert_array_equal(fs.features([16]), feats(16, 17))
    assert fs.paths[16] == "img/13.jpg" and fs.extras["age"][16] == str(3 + 7 * 13)
    assert w.skipped()[0] == 0  # the gap between segments is no image
    # a smaller manifest leaves the rows in place, out of its target set
    small = manifest(tmp_path, n=6)
    attach(w, small, digests(small), name="small")
    fs = FeatureStore.open(path)
    assert fs.n == 19 and set(fs.indices("all")) == set(range(6)) and fs.split[10] == ""
    assert FeatureStore.open(path, targets=got["set"]).indices("all").size == 16


def test_a_crash_while_growing_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    path, w = make(tmp_path, manifest(tmp_path, n=12))
    bigger = manifest(tmp_path, n=20)
    monkeypatch.setattr(StoreWriter, "update_attrs", lambda self, v: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        attach(w, bigger, digests(bigger))
    monkeypatch.undo()
    fs = FeatureStore.open(path)  # arrays grew, attrs did not: the old store, complete
    assert fs.n == 12 and verify(path) == [] and len(fs.indices("all")) == 12
    w = StoreWriter.open(path)
    got = attach(w, bigger, digests(bigger))  # the next run grows again from the old end
    assert got["new"] == 8 and w.plan_units() == [(15, 20), (20, 23)]
    fill(w)
    assert verify(path) == [] and FeatureStore.open(path).indices("all").size == 20


def test_repeated_images_get_one_row_each_and_unreadable_ones_never_match():
    store = np.array(["a", "b", "a", "", "c"])
    np.testing.assert_array_equal(multiset_match(store, ["a", "a", "a", "", "c", "b"]), [0, 2, -1, -1, 4, 1])


def test_types_are_inferred_and_missing_values_leave_the_rows_out(tmp_path):
    assert infer_kind("label", ["0", "1"] * 20) == "categorical"
    assert infer_kind("age", [str(i) for i in range(30)]) == "numeric"
    assert infer_kind("race", [str(i % 5) for i in range(30)]) == "categorical"
    assert infer_kind("score", ["0.5", "1", ""]) == "numeric"  # a fraction: a quantity
    assert infer_kind("Smiling", ["smiling", "not_smiling"]) == "categorical"
    t = Target("age", "numeric", np.array(["3", "", "NaN", "40.5"]))
    np.testing.assert_array_equal(t.present(), [True, False, False, True])
    assert t.describe()["min"] == 3 and t.describe()["missing"] == 2
    ages = lambda idx: {"age": ["" if i % 6 == 0 else str(20 + 3 * i) for i in idx], "race": [str(i % 3) for i in idx]}
    path, _ = make(tmp_path, manifest(tmp_path, n=24, extras=ages))
    fs = FeatureStore.open(path).use("age")
    assert fs.task == "regress" and fs.classes == [] and np.isnan(fs.values[0]) and fs.values[1] == 23
    assert 0 not in fs.indices("train") and fs.missing() == 4 and fs.missing("train") == 2
    assert len(FeatureStore.open(path).indices("all")) == 24  # other targets keep their rows
    with pytest.raises(FeatxError, match="regressed"):
        fs.labels
    race = fs.use("race")
    assert race.task == "classify" and race.classes == ["0", "1", "2"] and race.labels[4] == 1


def test_task_and_target_mistakes_are_one_line(tmp_path):
    path, _ = make(tmp_path, manifest(tmp_path, n=12,
                                      extras=lambda idx: {"age": [str((i % 4) * 1.5) for i in idx]}))
    fs = FeatureStore.open(path)
    with pytest.raises(FeatxError, match="no target 'bmi'.*label, age"):
        fs.use("bmi")
    with pytest.raises(FeatxError, match="categorical.*regression needs a numeric target"):
        fs.use("label", "regress")
    assert fs.use("age").task == "regress"  # fractions: numeric
    assert fs.use("age", "classify").classes == ["0", "1.5", "3", "4.5"]  # few values: classes, sorted by value
    big = manifest(tmp_path, n=80, extras=lambda idx: {"age": [str(i) for i in idx]})
    path2 = str(tmp_path / "big.zarr")
    create(path2, manifest=big, identity=IDENTITY, provenance={}, dim=DIM, digests=digests(big))
    with pytest.raises(FeatxError, match="80 distinct values.*--task regress"):
        FeatureStore.open(path2, complete=False).use("age", "classify")  # one row per value


def test_format_1_stores_read_as_one_target_set_and_upgrade_in_place(tmp_path):
    path = tmp_path / "old.zarr"
    shutil.copytree(V1_STORE, path)
    fs = FeatureStore.open(path)
    assert fs.version == 1 and fs.tset.name == "manifest" and fs.classes == ["female", "male"]
    assert fs.tset.kinds == {"label": "categorical", "age": "numeric", "race": "categorical"}
    np.testing.assert_array_equal(fs.features([11]), feats(11, 12))
    assert list(fs.labels[:3]) == [0, 1, 0] and fs.split[2] == "val" and fs.use("age").values[1] == 10
    # another manifest over the same photos (digests 00-11) and two new ones: upgraded, grown
    w = StoreWriter.open(path)
    m = manifest(tmp_path, n=14, label=lambda i: "x" if i % 3 else "y")
    got = attach(w, m, digests(m))
    assert w.version == 2 and got["new"] == 2 and got["kept"] == 12
    fill(w)
    fs = FeatureStore.open(path)
    assert fs.version == 2 and fs.classes == ["x", "y"] and fs.indices("all").size == 14
    old = FeatureStore.open(path, targets="manifest")
    assert old.classes == ["female", "male"] and verify(path) == []
    np.testing.assert_array_equal(old.features(old.indices("all")), feats(0, 12))


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main([*map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def write_csv(path: Path, header: str, rows) -> Path:
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def test_labels_list_add_and_type(tmp_path, capsys):
    path, _ = make(tmp_path, manifest(tmp_path, n=12))
    rc, out, _ = run(capsys, "labels", "list", path)
    assert rc == 0 and "target set 'first' (12 rows" in out and "train 6, val 3, test 3" in out
    assert "label   categorical  12" in out and "female 6, male 6" in out and "age     numeric" in out
    csv = write_csv(tmp_path / "more.csv", "path,bmi,mood,age",
                    [f"img/{i:02d}.jpg,{20 + i * 0.5},{['sad', 'glad'][i % 2]},{3 + 7 * i}" for i in range(10)])
    rc, out, _ = run(capsys, "labels", "add", path, "--data", csv)
    assert rc == 0 and "bmi (numeric, 2 missing), mood (categorical, 2 missing)" in out, out
    assert "10 of its 12 rows given (10 by path)" in out and "same values: age" in out
    fs = FeatureStore.open(path)
    assert fs.tset.targets == ["label", "age", "bmi", "mood"] and fs.use("bmi").missing() == 2
    assert fs.use("mood").classes == ["glad", "sad"]
    rc, out, _ = run(capsys, "labels", "type", path, "mood", "numeric")
    assert rc == 2
    rc, out, _ = run(capsys, "labels", "type", path, "age", "categorical")
    assert rc == 0 and "now categorical (was numeric)" in out
    assert FeatureStore.open(path).use("age").task == "classify"


def test_labels_add_refuses_rows_it_lacks_and_changes_nothing(tmp_path, capsys):
    path, _ = make(tmp_path, manifest(tmp_path, n=12))
    files = {p: p.read_bytes() for p in Path(path).rglob("*") if p.is_file()}
    bad = write_csv(tmp_path / "bad.csv", "path,bmi", ["img/00.jpg,20", "img/98.jpg,21", "img/99.jpg,22"])
    rc, _, err = run(capsys, "labels", "add", path, "--data", bad)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "2 of 3 rows of" in err and "img/98.jpg, img/99.jpg" in err and "nothing changed" in err
    clash = write_csv(tmp_path / "clash.csv", "path,age", ["img/00.jpg,99"])
    rc, _, err = run(capsys, "labels", "add", path, "--data", clash)
    assert rc == 2 and "'age' is already in target set" in err
    split = write_csv(tmp_path / "split.csv", "path,split", ["img/00.jpg,test"])
    assert run(capsys, "labels", "add", path, "--data", split)[0] == 2
    assert {p: p.read_bytes() for p in Path(path).rglob("*") if p.is_file()} == files


def test_labels_add_finds_moved_photos_by_content(tmp_path, capsys):
    from featx.reader import file_digest

    photos = tmp_path / "photos"
    (photos / "img").mkdir(parents=True)
    m = manifest(photos, n=6)
    for i, p in enumerate(m.paths):
        (photos / p).write_bytes(bytes([i]) * 64)
    path = str(tmp_path / "s.zarr")
    create(path, manifest=m, identity=IDENTITY, provenance={}, dim=DIM,
           digests=[file_digest(m.abspath(i)) for i in range(6)])
    moved = tmp_path / "elsewhere"
    shutil.copytree(photos, moved)
    csv = write_csv(moved / "extra.csv", "path,glasses", [f"img/{i:02d}.jpg,{'yes' if i % 2 else 'no'}" for i in range(6)])
    rc, out, _ = run(capsys, "labels", "add", path, "--data", csv)
    assert rc == 0 and "6 by content" in out
    fs = FeatureStore.open(path, complete=False).use("glasses")
    assert list(fs.labels[:2]) == [0, 1]


def test_labels_add_upgrades_a_format_1_store(tmp_path, capsys):
    path = tmp_path / "old.zarr"
    shutil.copytree(V1_STORE, path)
    csv = write_csv(tmp_path / "bmi.csv", "path,bmi", [f"img/{i:02d}.jpg,{20 + i * 0.25}" for i in range(12)])
    # paths are joined under the store's own manifest root
    root = json.loads((path / "zarr.json").read_text())["attributes"]["manifest_root"]
    assert root == "/nonexistent/photos"
    rc, _, err = run(capsys, "labels", "add", path, "--data", csv)
    assert rc == 2 and "12 of 12 rows" in err  # another folder: not these photos
    fs = FeatureStore.open(path)
    assert fs.version == 1


def test_celeba_all_attributes_are_targets(tmp_path, capsys):
    root = make_celeba(tmp_path / "celeba")
    m = data.load(root, attribute="all")
    assert m.classes == ["female", "male"] and list(m.extras) == ["Eyeglasses", "Male", "Smiling"]
    assert m.extras["Smiling"][0] == "smiling" and m.extras["Eyeglasses"][1] == "not_eyeglasses"
    assert m.extras["Male"] == m.labels
    out = tmp_path / "all.csv"
    rc, _, _ = run(capsys, "data", "--data", root, "--attribute", "all", "--out", out)
    assert rc == 0 and out.read_text().splitlines()[0] == "path,label,split,group,Eyeglasses,Male,Smiling"
    again = data.load(out)
    path = str(tmp_path / "c.zarr")
    create(path, manifest=again, identity=IDENTITY, provenance={}, dim=DIM, digests=[str(i) for i in range(30)])
    fs = FeatureStore.open(path, complete=False)
    assert all(fs.tset.kinds[a] == "categorical" for a in ("Eyeglasses", "Male", "Smiling"))


def test_utkface_keeps_age_numeric_and_race_categorical(tmp_path):
    from conftest import make_image

    for i in range(6):
        make_image(tmp_path / "utk" / f"{20 + i}_{i % 2}_{i % 5}_2017.jpg", seed=i, size=8)
    m = data.load(tmp_path / "utk")
    assert m.types == {"age": "numeric", "race": "categorical"}
    path = str(tmp_path / "u.zarr")
    create(path, manifest=m, identity=IDENTITY, provenance={}, dim=DIM, digests=[str(i) for i in range(6)])
    fs = FeatureStore.open(path, complete=False)
    assert fs.use("age").task == "regress" and fs.use("race").task == "classify"


def test_image_paths_follow_the_manifest_given_now(tmp_path):
    path, w = make(tmp_path, manifest(tmp_path / "a", n=6))
    b = manifest(tmp_path / "b", n=8)
    got = attach(w, b, digests(b))
    paths = image_paths(w)
    assert paths[0] == str(tmp_path / "a" / "img" / "00.jpg") and paths[got["rows"][7]] == str(tmp_path / "b/img/07.jpg")
    now = image_paths(w, b, got["rows"])
    assert now[0] == str(tmp_path / "b" / "img" / "00.jpg")


def test_columns_are_read_only_when_asked_for(tmp_path):
    many = lambda idx: {f"attr{k}": [["yes", "no"][(i + k) % 2] for i in idx] for k in range(40)}  # noqa: E731
    path, _ = make(tmp_path, manifest(tmp_path, n=12, extras=many))
    fs = FeatureStore.open(path)
    assert set(fs.tset.columns._got) == {"label"}  # opening reads the label only
    assert fs.use("attr7").classes == ["no", "yes"] and set(fs.tset.columns._got) == {"label", "attr7"}
    assert fs.extras["attr3"][0] == "no" and len(fs.extras) == 40
