"""featx.data: every layout to a manifest; splits, hash, and bad input."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featx import data
from featx.errors import FeatxError

from conftest import make_image

CELEBA_ATTRS = ["Eyeglasses", "Male", "Smiling"]


def make_celeba(root: Path, n: int = 30, identity: bool = True) -> Path:
    """A tiny CelebA root: attribute, partition and identity lists plus img_align_celeba/."""
    attr = [str(n), " ".join(CELEBA_ATTRS)]
    part, ident = [], []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        male = 1 if i % 3 else -1
        make_image(root / "img_align_celeba" / name, seed=i, size=8, cls=int(male > 0))
        attr.append(f"{name} {-1 if i % 2 else 1:2d} {male:2d} {1 if i % 5 == 0 else -1:2d}")
        part.append(f"{name} {0 if i < 20 else (1 if i < 25 else 2)}")
        ident.append(f"{name} {i // 3}")
    (root / "list_attr_celeba.txt").write_text("\n".join(attr) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(part) + "\n")
    if identity:
        (root / "identity_CelebA.txt").write_text("\n".join(ident) + "\n")
    return root


UTK_NAMES = [
    "25_0_0_20170116174525125.jpg.chip.jpg",
    "3_1_2_20161219140623097.jpg.chip.jpg",
    "61_1_4_20170109142408075.jpg.chip.jpg",
    "40_0_1_20170104165618000.jpg",
    "8_0_3_20170110183726390.jpg.chip.jpg",
    "33_1_0_20170103233459275.jpg.chip.jpg",
]
UTK_BAD = ["39_1_20170116174525125.jpg.chip.jpg", "61_3_1_20170109142408075.jpg.chip.jpg"]


def make_utkface(root: Path, copies: int = 3) -> Path:
    for k in range(copies):
        for j, name in enumerate(UTK_NAMES):
            age, rest = name.split("_", 1)
            make_image(root / f"{int(age) + 100 * k}_{rest}", seed=10 * k + j, size=8)
    for j, name in enumerate(UTK_BAD):
        make_image(root / name, seed=99 + j, size=8)
    (root / "readme.txt").write_text("not an image\n")
    return root


def write_csv(path: Path, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def grouped_csv(root: Path, column: str = "group", n_groups: int = 30) -> Path:
    rows = [f"path,label,{column},age"]
    k = 0
    for g in range(n_groups):
        for _ in range(1 + g % 4):
            make_image(root / f"{k:03d}.jpg", seed=k, size=8)
            rows.append(f"{k:03d}.jpg,{['female', 'male'][g % 2]},id{g},{20 + g}")
            k += 1
    return write_csv(root / "labels.csv", rows)


# ---------------------------------------------------------------- layouts


def test_class_folder(folder_dataset):
    m = data.load(folder_dataset)
    assert m.source == "folder" and len(m) == 40 and m.classes == ["female", "male"]
    assert m.root == folder_dataset.resolve()
    assert all(p.split("/")[0] == lab for p, lab in zip(m.paths, m.labels))
    assert m.abspath(0).is_file()
    assert m.groups is None and m.extras == {}
    assert m.counts() == {s: {"female": k, "male": k} for s, k in [("train", 16), ("val", 2), ("test", 2)]}
    assert list(m.label_ids()[:3]) == [0, 0, 0] and m.label_ids().dtype == np.int64
    assert set(m.indices("val")) == {i for i, s in enumerate(m.splits) if s == "val"}
    assert len(m.indices("all")) == 40


def test_class_folder_ignores_hidden_and_non_images_and_reports_loose_files(folder_dataset):
    (folder_dataset / "male" / ".DS_Store").write_bytes(b"x")
    (folder_dataset / "male" / "notes.txt").write_text("x")
    make_image(folder_dataset / "loose.jpg", seed=1)
    make_image(folder_dataset / "female" / "deeper" / "x.png", seed=2)
    m = data.load(folder_dataset)
    assert len(m) == 41 and "female/deeper/x.png" in m.paths
    assert m.skipped == [("loose.jpg", "not in a class folder")]


def test_manifest_lists_files_without_decoding(folder_dataset):
    (folder_dataset / "male" / "broken.jpg").write_bytes(b"not a jpeg")
    (folder_dataset / "male" / "empty.jpg").write_bytes(b"")
    m = data.load(folder_dataset)
    assert "male/broken.jpg" in m.paths and "male/empty.jpg" in m.paths


def test_csv_keeps_extras_and_relative_paths(csv_dataset):
    m = data.load(csv_dataset)
    assert m.source == "csv" and len(m) == 40 and m.root == csv_dataset.parent.resolve()
    assert m.paths[0] == "img/000.jpg"
    assert m.extras == {"age": [str(5 + i) for i in range(40)]}
    assert m.abspath(5) == (csv_dataset.parent / "img" / "005.jpg").resolve()


def test_csv_own_split_column_wins(csv_dataset):
    names = ["train", "validation", "test", "train"]
    rows = ["Path,Label,Split,age"] + [f"img/{i:03d}.jpg,{['female', 'male'][i % 2]},{names[i % 4]},{i}" for i in range(40)]
    p = write_csv(csv_dataset.parent / "split.csv", rows)
    for seed in (0, 1):
        m = data.load(p, seed=seed)
        assert m.splits[:4] == ["train", "val", "test", "train"]
        assert m.extras == {"age": [str(i) for i in range(40)]}
        assert m.split_by == "the source's split column"


def test_csv_absolute_path_inside_root_and_dot_paths(tmp_path):
    root = tmp_path / "d"
    a = make_image(root / "a.jpg", seed=0)
    make_image(root / "sub" / "b.jpg", seed=1)
    p = write_csv(root / "l.csv", ["path,label", f"{a.resolve()},x", "./sub/../sub/b.jpg,y"])
    m = data.load(p)
    assert m.paths == ["a.jpg", "sub/b.jpg"]


def test_celeba(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    m = data.load(root)
    assert m.source == "celeba" and len(m) == 30
    assert m.paths[0] == "img_align_celeba/000001.jpg"
    assert m.labels[:3] == ["female", "male", "male"]
    assert Counter(m.splits) == {"train": 20, "val": 5, "test": 5}
    assert m.splits[19:21] == ["train", "val"]
    assert m.groups[:4] == ["0", "0", "0", "1"]
    # another attribute, case-insensitive, and the attribute file given directly
    s = data.load(root / "list_attr_celeba.txt", attribute="smiling")
    assert s.classes == ["not_smiling", "smiling"] and s.labels[0] == "smiling" and s.labels[1] == "not_smiling"
    assert data.load(make_celeba(tmp_path / "noid", identity=False)).groups is None


def test_celeba_unknown_attribute(tmp_path):
    root = make_celeba(tmp_path / "celeba", n=6)
    with pytest.raises(FeatxError, match="unknown CelebA attribute 'Beard'.*Male"):
        data.load(root, attribute="Beard")


def test_celeba_bad_files(tmp_path):
    root = make_celeba(tmp_path / "celeba", n=6)
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    (root / "list_attr_celeba.txt").write_text("\n".join(lines[:3] + [lines[3] + " 1"] + lines[4:]) + "\n")
    with pytest.raises(FeatxError, match="line 4: 5 columns, expected 4"):
        data.load(root)
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    with pytest.raises(FeatxError, match="5 images .* no entry in list_eval_partition"):
        data.load(root)
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(FeatxError, match="no list_eval_partition.txt"):
        data.load(root)


def test_utkface_folder(tmp_path):
    root = make_utkface(tmp_path / "utk")
    m = data.load(root)
    assert m.source == "utkface" and len(m) == 18
    assert sorted(p for p, _ in m.skipped) == sorted(UTK_BAD)
    assert all("AGE_GENDER_RACE" in r for _, r in m.skipped)
    i = m.paths.index("25_0_0_20170116174525125.jpg.chip.jpg")
    assert (m.labels[i], m.extras["age"][i], m.extras["race"][i]) == ("male", "25", "0")
    i = m.paths.index("3_1_2_20161219140623097.jpg.chip.jpg")
    assert (m.labels[i], m.extras["age"][i], m.extras["race"][i]) == ("female", "3", "2")
    assert "40_0_1_20170104165618000.jpg" in m.paths


def test_utkface_same_hash_as_equivalent_csv(tmp_path):
    root = make_utkface(tmp_path / "data" / "images")
    m = data.load(root)
    rows = ["path,label,age,race"] + [
        f"images/{p},{lab},{a},{r}" for p, lab, a, r in zip(m.paths, m.labels, m.extras["age"], m.extras["race"])
    ]
    c = data.load(write_csv(tmp_path / "data" / "labels.csv", rows))
    assert c.splits == m.splits
    assert c.hash() == m.hash()


# ---------------------------------------------------------------- written manifests and hash


def test_write_and_reload_from_elsewhere(csv_dataset, tmp_path):
    m = data.load(csv_dataset, seed=3)
    out = m.write(tmp_path / "elsewhere" / "deep" / "m.csv")
    text = out.read_text().splitlines()
    assert text[0] == "path,label,split,age"
    assert text[1].startswith("../../csvdata/img/")
    r = data.load(out, seed=99)  # its split column wins over the seed
    assert r.splits == m.splits and r.labels == m.labels and r.extras == m.extras
    assert [r.abspath(i) for i in range(len(r))] == [m.abspath(i) for i in range(len(m))]
    assert r.hash() == m.hash()
    # written next to the data, and rewritten from the reloaded manifest
    assert data.load(m.write(csv_dataset.parent / "m.csv")).hash() == m.hash()
    assert data.load(r.write(tmp_path / "again.csv")).hash() == m.hash()


def test_hash_with_groups_survives_write(tmp_path):
    p = grouped_csv(tmp_path / "g", column="identity")
    m = data.load(p)
    r = data.load(m.write(tmp_path / "out" / "m.csv"))
    assert r.groups == m.groups and r.extras == m.extras == {"age": m.extras["age"]}
    assert r.hash() == m.hash()


def test_hash_stable_when_dataset_moves(folder_dataset, tmp_path):
    h = data.load(folder_dataset).hash()
    moved = shutil.copytree(folder_dataset, tmp_path / "moved" / "copy")
    assert data.load(moved).hash() == h


def test_hash_changes_with_content(csv_dataset):
    h = data.load(csv_dataset).hash()
    assert data.load(csv_dataset, seed=1).hash() != h
    text = csv_dataset.read_text()
    csv_dataset.write_text(text.replace("img/003.jpg,male", "img/003.jpg,female"))
    assert data.load(csv_dataset).hash() != h
    csv_dataset.write_text(text.replace("img/003.jpg,male,8", "img/003.jpg,male,9"))
    assert data.load(csv_dataset).hash() != h
    csv_dataset.write_text(text)
    assert data.load(csv_dataset).hash() == h


# ---------------------------------------------------------------- splits


def test_split_determinism(folder_dataset):
    a, b = data.load(folder_dataset, seed=0), data.load(folder_dataset, seed=0)
    assert a.splits == b.splits
    assert data.load(folder_dataset, seed=1).splits != a.splits


def test_split_ratios_and_stratification():
    rng = np.random.default_rng(0)
    labels = list(rng.choice(["a", "b", "c"], p=[0.7, 0.2, 0.1], size=2000))
    splits = data.assign_splits(labels, seed=5, ratios=(0.6, 0.25, 0.15))
    for c in "abc":
        n = labels.count(c)
        got = Counter(s for s, lab in zip(splits, labels) if lab == c)
        for s, r in zip(data.SPLITS, (0.6, 0.25, 0.15)):
            assert abs(got[s] - r * n) <= 1, (c, s, got, n)


def test_zero_ratio_split_is_empty():
    labels = ["a", "b"] * 50
    assert "val" not in data.assign_splits(labels, seed=0, ratios=(0.9, 0.0, 0.1))
    groups = [str(i // 3) for i in range(100)]
    assert "val" not in data.assign_splits(labels, groups, seed=0, ratios=(0.9, 0.0, 0.1))


def test_group_column_gives_disjoint_stratified_splits(tmp_path):
    m = data.load(grouped_csv(tmp_path / "g", n_groups=60))
    assert m.extras == {"age": m.extras["age"]} and m.groups[0] == "id0"
    assert data.leaked_groups(m) == []
    c = m.counts()
    assert c["val"]["female"] > 0 and c["test"]["male"] > 0 and c["train"]["male"] > c["val"]["male"]
    assert "group-disjoint" in m.split_by


def test_leaked_groups_reported_for_own_split(tmp_path):
    make_image(tmp_path / "a.jpg", seed=0)
    make_image(tmp_path / "b.jpg", seed=1)
    make_image(tmp_path / "c.jpg", seed=2)
    p = write_csv(tmp_path / "l.csv", ["path,label,split,group", "a.jpg,x,train,g1", "b.jpg,y,test,g1", "c.jpg,y,val,g2"])
    assert data.leaked_groups(data.load(p)) == ["g1"]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 12), st.sampled_from(["a", "b", "c"])), min_size=1, max_size=120),
    seed=st.integers(0, 2**32 - 1),
    val=st.sampled_from([0.0, 0.1, 0.2]),
    test=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_group_splits_are_disjoint_property(rows, seed, val, test):
    groups = [("" if g == 0 else f"g{g}") for g, _ in rows]  # "" = no group: a group of its own
    labels = [lab for _, lab in rows]
    ratios = (1 - val - test, val, test)
    splits = data.assign_splits(labels, groups, seed=seed, ratios=ratios)
    assert len(splits) == len(rows) and set(splits) <= set(data.SPLITS)
    where: dict[str, set[str]] = {}
    for g, s in zip(groups, splits):
        if g:
            where.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in where.values())
    for s, r in zip(data.SPLITS, ratios):
        if r == 0:
            assert s not in splits
    assert data.assign_splits(labels, groups, seed=seed, ratios=ratios) == splits


def test_many_small_groups_roughly_follow_ratios():
    rng = np.random.default_rng(1)
    groups = [f"p{i}" for i in range(400) for _ in range(int(rng.integers(1, 6)))]
    labels = ["f" if int(g[1:]) % 3 else "m" for g in groups]
    splits = data.assign_splits(labels, groups, seed=0)
    for c in "fm":
        n = labels.count(c)
        got = Counter(s for s, lab in zip(splits, labels) if lab == c)
        assert abs(got["train"] / n - 0.8) < 0.03 and abs(got["val"] / n - 0.1) < 0.03, got


# ---------------------------------------------------------------- bad input


def test_bad_ratios():
    with pytest.raises(FeatxError, match="ratios"):
        data.assign_splits(["a", "b"], ratios=(0.5, 0.6, -0.1))


@pytest.mark.parametrize(
    "rows,match",
    [
        (["file,label", "a.jpg,x"], "needs columns path,label"),
        (["path,label", "a.jpg,x", "../x.jpg,y"], "escapes the dataset root"),
        (["path,label", "a.jpg,x", "/etc/hosts,y"], "escapes the dataset root"),
        (["path,label", "a.jpg,x", "a.jpg,y", "b.jpg,y"], "1 duplicate paths.*a.jpg"),
        (["path,label", "a.jpg,x", "./a.jpg,y"], "duplicate paths"),
        (["path,label", "a.jpg,x", "b.jpg,x"], "at least two classes, found 1 \\(x\\)"),
        (["path,label"], "no images found"),
        (["path,label,age", "a.jpg,x,3", "b.jpg,y"], "line 3: 2 columns but the header has 3"),
        (["path,label", "a.jpg,x", "b.jpg,"], "line 3: empty label"),
        (["path,label,split", "a.jpg,x,train", "b.jpg,y,holdout"], "unknown split 'holdout'"),
        (["path,label", "a.jpg,x", "c.jpg,y", "d.jpg,y"], "2 of 3 files listed .* missing, e.g. c.jpg, d.jpg"),
    ],
)
def test_bad_csv(tmp_path, rows, match):
    make_image(tmp_path / "d" / "a.jpg", seed=0)
    make_image(tmp_path / "d" / "b.jpg", seed=1)
    with pytest.raises(FeatxError, match=match) as e:
        data.load(write_csv(tmp_path / "d" / "l.csv", rows))
    assert "\n" not in str(e.value)


def test_bad_sources(tmp_path):
    with pytest.raises(FeatxError, match="data not found"):
        data.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatxError, match="no images found"):
        data.load(tmp_path / "empty")
    make_image(tmp_path / "flat" / "photo.jpg", seed=0)
    with pytest.raises(FeatxError, match="no class subfolders"):
        data.load(tmp_path / "flat")
    with pytest.raises(FeatxError, match="unsupported data"):
        data.load(tmp_path / "flat" / "photo.jpg")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(FeatxError, match="not UTF-8"):
        data.load(tmp_path / "bin.csv")


def test_single_utkface_subfolder_hints(tmp_path):
    make_utkface(tmp_path / "utk" / "images")
    with pytest.raises(FeatxError, match="point --data at .*images"):
        data.load(tmp_path / "utk")


# ---------------------------------------------------------------- real data


def test_real_utkface(shared_utkface, tmp_path):
    m = data.load(shared_utkface)
    assert len(m) == 5825
    assert Counter(m.labels) == {"male": 2579, "female": 3246}
    assert list(m.extras) == ["age", "race"]
    c = m.counts()
    for lab in ("male", "female"):
        n = sum(c[s][lab] for s in data.SPLITS)
        assert abs(c["val"][lab] - 0.1 * n) <= 1 and abs(c["test"][lab] - 0.1 * n) <= 1
    assert data.load(m.write(tmp_path / "m.csv")).hash() == m.hash()


# ---------------------------------------------------------------- path escapes: one rule for every CSV form


@pytest.mark.parametrize("header", ["path,label", "path,label,split", "label,path,split", "path,label,split,group"])
@pytest.mark.parametrize("bad", ["../../../etc/passwd", "img/../../x.jpg", "/etc/hosts"])
def test_every_csv_form_refuses_escapes(tmp_path, header, bad):
    root = tmp_path / "ds"
    make_image(root / "a.jpg", seed=0, size=8)
    cols = header.split(",")
    row = lambda p, lab: ",".join({"path": p, "label": lab, "split": "train", "group": "g"}[c] for c in cols)  # noqa: E731
    csv_path = write_csv(root / "labels.csv", [header, row("a.jpg", "x"), row(bad, "y")])
    with pytest.raises(FeatxError, match="escapes the dataset root"):
        data.load(csv_path)


def test_written_manifest_may_leave_its_folder_only_as_written(csv_dataset, tmp_path, monkeypatch):
    m = data.load(csv_dataset, seed=3)
    out = m.write(tmp_path / "elsewhere" / "m.csv")
    assert data.load(out).hash() == m.hash()  # featx wrote it: its ../ paths are followed
    lines = out.read_text().splitlines()
    lines[1] = "../../../../../../../etc/passwd," + lines[1].split(",", 1)[1]
    out.write_text("\n".join(lines) + "\n")
    with pytest.raises(FeatxError, match="escapes the dataset root.*etc/passwd.*featx data"):
        data.load(out)  # edited: no longer the manifest featx wrote
    good = m.write(tmp_path / "other" / "m.csv")
    monkeypatch.setenv("FEATX_HOME", str(tmp_path / "another-user"))
    with pytest.raises(FeatxError, match="escapes the dataset root"):
        data.load(good)  # written for another user's FEATX_HOME
    inside = m.write(csv_dataset.parent / "inside.csv")  # next to its images: no ../, loads anywhere
    assert data.load(inside).hash() == m.hash()


def test_written_manifest_leaves_nothing_half_written(folder_dataset, tmp_path, monkeypatch):
    import errno

    out = tmp_path / "m.csv"
    out.write_text("old\n")

    def full_disk(self, text, *a, **k):
        with open(self, "w") as f:
            f.write(text[:20])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        data.load(folder_dataset).write(out)
    monkeypatch.undo()
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["folder", "m.csv"]


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize("raw,canon", [("1", "1"), ("01", "1"), ("1.0", "1"), ("+1", "1"), ("-0", "0"),
                                       ("0.50", "0.5"), ("1e3", "1000"), ("-1", "-1"), ("007", "7"),
                                       ("male", "male"), ("nan", "nan"), ("1_0", "1_0"), ("1.", "1"), ("x1", "x1")])
def test_canonical_label(raw, canon):
    assert data.canonical_label(raw) == canon


def test_numeric_labels_written_differently_are_one_class(tmp_path):
    root = tmp_path / "ds"
    rows = ["path,label"]
    for i, lab in enumerate(["1", "01", "1.0", "0", "0.0", "00"] * 3):
        make_image(root / f"{i}.jpg", seed=i, size=8)
        rows.append(f"{i}.jpg,{lab}")
    m = data.load(write_csv(root / "labels.csv", rows))
    assert m.classes == ["0", "1"] and Counter(m.labels) == {"0": 9, "1": 9}
    assert data.load(m.write(tmp_path / "m.csv")).labels == m.labels


def test_empty_class_folder_warns(folder_dataset, capsys):
    (folder_dataset / "other").mkdir()
    m = data.load(folder_dataset)
    assert m.classes == ["female", "male"]
    err = capsys.readouterr().err
    assert "warning: class folder" in err and "other has no images" in err


def test_empty_class_folder_leaving_one_class_is_refused(folder_dataset, capsys):
    shutil.rmtree(folder_dataset / "female")
    (folder_dataset / "female").mkdir()
    with pytest.raises(FeatxError, match=r"need at least two classes, found 1 \(male\).*empty: female"):
        data.load(folder_dataset)
    assert "female has no images" in capsys.readouterr().err


def test_non_utf8_file_name_is_one_line(folder_dataset):
    bad = os.path.join(os.fsencode(folder_dataset / "male"), b"caf\xe9.jpg")
    with open(bad, "wb") as f:
        f.write((folder_dataset / "male" / "male_00.jpg").read_bytes())
    with pytest.raises(FeatxError, match=r"caf\\xe9\.jpg: file name is not valid UTF-8"):
        data.load(folder_dataset)
