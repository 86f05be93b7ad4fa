"""`featx data`: writes the manifest, prints counts; every bad input is one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from featx import data
from featx_cli.main import main

from conftest import make_image


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main(["data", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, match: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0], lines[0]
    assert "Traceback" not in err


def make_celeba(root: Path) -> Path:
    attr, part = ["4", "Male Smiling"], []
    for i in range(4):
        name = f"{i + 1:06d}.jpg"
        make_image(root / "img_align_celeba" / name, seed=i, size=8)
        attr.append(f"{name} {1 if i % 2 else -1} -1")
        part.append(f"{name} {i % 3}")
    (root / "list_attr_celeba.txt").write_text("\n".join(attr) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(part) + "\n")
    return root


def test_folder_to_manifest(folder_dataset, tmp_path, capsys):
    out = tmp_path / "out" / "m.csv"
    rc, text, err = run(capsys, "--data", folder_dataset, "--out", out)
    assert rc == 0, err
    assert out.read_text().startswith("path,label,split\n../folder/")
    assert "40 images (folder)" in text and "seed 0" in text
    rows = {line.split("│")[1].strip(): [x.strip() for x in line.split("│")[2:6]] for line in text.splitlines()
            if line.startswith("│")}
    assert rows["female"] == ["16", "2", "2", "20"] and rows["male"] == ["16", "2", "2", "20"]
    assert rows["all"] == ["32", "4", "4", "40"]
    assert data.load(out).hash()[:12] in text


def test_options_and_rerun_on_manifest(csv_dataset, tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    rc, text, _ = run(capsys, "--data", csv_dataset, "--out", a, "--seed", "4", "--val", "0.2", "--test", "0.3")
    assert rc == 0 and "50/20/30" in text and "extras: age" in text
    m = data.load(a)
    assert m.counts()["test"] == {"female": 6, "male": 6}
    rc, text, _ = run(capsys, "--data", a, "--out", b, "--seed", "9")
    assert rc == 0 and "the source's split column" in text
    assert b.read_text() == a.read_text()


def test_celeba_attribute(tmp_path, capsys):
    root = make_celeba(tmp_path / "celeba")
    rc, text, err = run(capsys, "--data", root, "--out", tmp_path / "m.csv")
    assert rc == 0, err
    assert "official partition" in text
    rc, _, err = run(capsys, "--data", root, "--out", tmp_path / "m.csv", "--attribute", "Bald")
    assert_one_line_error(rc, err, "unknown CelebA attribute 'Bald'")


def test_check_leaves_out_unreadable_images(folder_dataset, tmp_path, capsys):
    (folder_dataset / "male" / "zz_broken.jpg").write_bytes(b"garbage")
    (folder_dataset / "female" / "zz_empty.jpg").write_bytes(b"")
    out = tmp_path / "m.csv"
    rc, text, _ = run(capsys, "--data", folder_dataset, "--out", out)
    assert rc == 0 and len(data.load(out)) == 42
    rc, text, _ = run(capsys, "--data", folder_dataset, "--out", out, "--check")
    assert rc == 0
    assert "unreadable male/zz_broken.jpg: not an image" in text and "unreadable female/zz_empty.jpg: empty file" in text
    m = data.load(out)
    assert len(m) == 40 and not any("zz_" in p for p in m.paths)


def test_utkface_skips_are_reported(tmp_path, capsys):
    for i, name in enumerate(["20_0_0_20170101.jpg", "30_1_1_20170102.jpg", "40_0_2_20170103.jpg", "41_1_3_20170104.jpg",
                              "bad_name.jpg"]):
        make_image(tmp_path / "utk" / name, seed=i, size=8)
    rc, text, _ = run(capsys, "--data", tmp_path / "utk", "--out", tmp_path / "m.csv")
    assert rc == 0 and "skipped bad_name.jpg" in text and "4 images (utkface)" in text


def bad_csv(tmp_path: Path, rows: list[str]) -> Path:
    make_image(tmp_path / "d" / "a.jpg", seed=0)
    make_image(tmp_path / "d" / "b.jpg", seed=1)
    p = tmp_path / "d" / "l.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


@pytest.mark.parametrize(
    "rows,match",
    [
        (["file,label", "a.jpg,x"], "CSV needs columns path,label"),
        (["path,label", "a.jpg,x", "b.jpg,x"], "need at least two classes"),
        (["path,label", "a.jpg,x", "a.jpg,y"], "duplicate paths"),
        (["path,label", "a.jpg,x", "../x.jpg,y"], "escapes the dataset root"),
        (["path,label", "a.jpg,x", "/tmp/elsewhere.jpg,y"], "escapes the dataset root"),
        (["path,label"], "no images found"),
        (["path,label,age", "a.jpg,x", "b.jpg,y,4"], "columns but the header has 3"),
        (["path,label", "a.jpg,x", "b.jpg,y", "gone.jpg,y"], "1 of 3 files listed"),
    ],
)
def test_bad_csv_exits_2(tmp_path, capsys, rows, match):
    rc, _, err = run(capsys, "--data", bad_csv(tmp_path, rows), "--out", tmp_path / "m.csv")
    assert_one_line_error(rc, err, match)
    assert not (tmp_path / "m.csv").exists()


def test_bad_paths_and_options_exit_2(folder_dataset, tmp_path, capsys):
    rc, _, err = run(capsys, "--data", tmp_path / "missing", "--out", tmp_path / "m.csv")
    assert_one_line_error(rc, err, "data not found")
    (tmp_path / "empty").mkdir()
    rc, _, err = run(capsys, "--data", tmp_path / "empty", "--out", tmp_path / "m.csv")
    assert_one_line_error(rc, err, "no images found")
    rc, _, err = run(capsys, "--data", folder_dataset, "--out", tmp_path / "m.csv", "--val", "0.6", "--test", "0.5")
    assert_one_line_error(rc, err, "--val and --test")
    csv = bad_csv(tmp_path, ["path,label", "a.jpg,x", "b.jpg,y"])
    rc, _, err = run(capsys, "--data", csv, "--out", csv)
    assert_one_line_error(rc, err, "would overwrite the input")


def test_real_utkface_cli(shared_utkface, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, text, err = run(capsys, "--data", shared_utkface, "--out", "m.csv")
    assert rc == 0, err
    m = data.load(tmp_path / "m.csv")
    assert len(m) == 5825 and m.labels.count("male") == 2579 and m.labels.count("female") == 3246
    assert "5825 images" in text and "extras: age, race" in text
    assert m.hash() == data.load(shared_utkface).hash()
