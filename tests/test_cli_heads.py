"""`featx train-head`, `evaluate`, `predict` through featx_cli.main.main, and one run on a real store."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from featx.backbones import tap_features
from featx.backbones.vgg16 import from_state_dict
from featx.releases import get_release
from featx.weights import sha256_file
from featx_cli.main import main

from conftest import make_image, tiny_state_dict
from test_heads import FakeStore, fake_store
from test_progress import LINE

RELEASE = "vgg16.hed"


@pytest.fixture
def stores(monkeypatch):
    """Paths -> FakeStore objects, served to the CLI in place of FeatureStore.open."""
    table: dict[str, FakeStore] = {}
    monkeypatch.setattr("featx.training.open_store", lambda s, *a: table[str(s)] if isinstance(s, str) else s)
    return table


def image_store(tmp_path, weights) -> FakeStore:
    """A fake store holding real tiny-backbone features of 40 coloured images (class = colour)."""
    release = get_release(RELEASE)
    model = from_state_dict(tiny_state_dict())
    paths = [make_image(tmp_path / "train" / f"{i:02d}.jpg", seed=i, cls=i % 2) for i in range(40)]
    x = torch.stack([release.preprocess(Image.open(p).convert("RGB")) for p in paths])
    with torch.inference_mode():
        feats = tap_features(model, x, "pool5-gap").numpy().astype(np.float16).astype(np.float32)
    y = np.arange(40) % 2
    split = np.array(["train"] * 28 + ["val"] * 6 + ["test"] * 6)
    return FakeStore(feats, y, ["female", "male"], split=split, preprocess=release.preprocess.to_dict(),
                     weights_sha256=sha256_file(weights), release=RELEASE, tap="pool5-gap", chunk=8)


def test_train_head_and_evaluate(tmp_path, stores, capsys):
    stores["s.zarr"] = fake_store(extras={"age": [str(5 + i % 70) for i in range(200)]})
    code = main(["train-head", "--store", "s.zarr", "--head", "logreg", "--out", str(tmp_path / "h"),
                 "--class-weight", "balanced", "--seed", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "trained logreg on 120 rows" in out and "chose C=" in out and "balanced_accuracy" in out
    card = json.loads((tmp_path / "h" / "head.json").read_text())
    assert card["training"]["class_weight"] == "balanced" and card["training"]["seed"] == 3

    code = main(["evaluate", "--head", str(tmp_path / "h"), "--store", "s.zarr", "--by", "age"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[1].split() == ["group", "n", "acc", "bal_acc", "prec", "recall", "f1", "spec", "auc"]
    assert lines[3].split()[:2] == ["all", "40"]
    assert any(line.startswith("age=0-12") for line in lines) and "positive class: male" in out
    metrics = json.loads((tmp_path / "h" / "report-s-test" / "metrics.json").read_text())
    assert metrics["n"] == 40 and "0-12" in metrics["groups"]["age"]

    code = main(["evaluate", "--head", str(tmp_path / "h"), "--store", "s.zarr", "--split", "val",
                 "--report", str(tmp_path / "rep")])
    assert code == 0 and json.loads((tmp_path / "rep" / "metrics.json").read_text())["n"] == 40

    code = main(["evaluate", "--head", str(tmp_path / "h"), "--store", "s.zarr", "--by", "age", "--bins", "age=0,18,65",
                 "--report", str(tmp_path / "bins")])
    assert code == 0 and list(json.loads((tmp_path / "bins" / "metrics.json").read_text())["groups"]["age"]) == \
        ["0-17", "18-64", "65+"]


def test_user_errors_are_one_line_exit_2(tmp_path, stores, capsys):
    stores["s.zarr"] = fake_store()
    stores["fc7.zarr"] = fake_store(tap="fc7")
    assert main(["train-head", "--store", "s.zarr", "--head", "tree", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown head 'tree'") and err.count("\n") == 1
    assert main(["train-head", "--store", "s.zarr", "--head", "sgd", "--out", str(tmp_path / "h")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--head", str(tmp_path / "h"), "--store", "fc7.zarr"]) == 2
    err = capsys.readouterr().err
    assert "error: head was trained on tap 'pool5-gap'" in err and "Traceback" not in err
    assert main(["evaluate", "--head", str(tmp_path / "nope"), "--store", "s.zarr"]) == 2
    assert "no saved head" in capsys.readouterr().err


def test_predict_with_a_corrupt_image_among_good_ones(tmp_path, stores, capsys, tiny_weights):
    stores["img.zarr"] = image_store(tmp_path, tiny_weights)
    assert main(["train-head", "--store", "img.zarr", "--head", "logreg", "--out", str(tmp_path / "h")]) == 0
    new = tmp_path / "new"
    female = make_image(new / "a_female.jpg", seed=500, cls=0)
    male = make_image(new / "b_male.jpg", seed=501, cls=1)
    bad = new / "c_broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    capsys.readouterr()

    code = main(["predict", "--head", str(tmp_path / "h"), str(female), str(bad), str(male),
                 "--weights", str(tiny_weights), "--batch-size", "1"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    rows = [line.split() for line in cap.out.splitlines()]
    assert [(r[0], r[1]) for r in rows] == [(str(female), "female"), (str(male), "male")]
    assert all(0.5 < float(r[2]) <= 1.0 for r in rows)
    assert cap.err.startswith(f"error: {bad}: ") and cap.err.count("\n") == 1

    code = main(["predict", "--head", str(tmp_path / "h"), str(new), "--weights", str(tiny_weights), "--json"])
    cap = capsys.readouterr()
    assert code == 0
    lines = cap.out.splitlines()
    assert len(lines) == 3 and not cap.out.lstrip().startswith("[")  # JSON lines, not an array
    out = [json.loads(line) for line in lines]  # one object per image, each on its own line
    assert [o.get("label") for o in out] == ["female", "male", None]  # folder: sorted file names
    assert "error" in out[2] and abs(sum(out[0]["probabilities"].values()) - 1) < 1e-9

    assert main(["predict", "--head", str(tmp_path / "h"), str(bad), "--weights", str(tiny_weights)]) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}:" in err and "error: no image could be predicted" in err


def test_predict_refuses_other_weights(tmp_path, stores, capsys, tiny_weights):
    from safetensors.torch import save_file

    stores["img.zarr"] = image_store(tmp_path, tiny_weights)
    assert main(["train-head", "--store", "img.zarr", "--head", "logreg", "--out", str(tmp_path / "h")]) == 0
    other = tmp_path / "other.safetensors"
    save_file(tiny_state_dict(seed=1), str(other))
    img = make_image(tmp_path / "x.jpg", seed=1)
    capsys.readouterr()
    assert main(["predict", "--head", str(tmp_path / "h"), str(img), "--weights", str(other)]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and "pass the weights file the store was extracted with" in err


def test_haar_fallback(tmp_path, stores, capsys, tiny_weights, monkeypatch):
    stores["img.zarr"] = image_store(tmp_path, tiny_weights)
    assert main(["train-head", "--store", "img.zarr", "--head", "logreg", "--out", str(tmp_path / "h")]) == 0
    img = make_image(tmp_path / "noise.jpg", seed=1, size=96)
    args = ["predict", "--head", str(tmp_path / "h"), str(img), "--weights", str(tiny_weights), "--faces", "haar"]
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were not installed
    assert main(args) == 2
    assert capsys.readouterr().err == "error: --faces haar needs OpenCV: pip install 'featx[faces]'\n"
    monkeypatch.undo()
    pytest.importorskip("cv2")
    stores["img.zarr"] = image_store(tmp_path, tiny_weights)
    assert main(args) == 2
    assert f"error: {img}: no face" in capsys.readouterr().err


def test_face_crops_on_real_photos(shared_utkface):
    pytest.importorskip("cv2")
    from featx.predict import FaceCropper
    from featx.images import open_rgb

    lines = shared_utkface.read_text().splitlines()[1:]
    photos = [shared_utkface.parent / line.split(",")[0] for line in lines[::700][:8]]
    cropper = FaceCropper()
    boxes = [cropper.box(open_rgb(p)) for p in photos]
    assert sum(b is not None for b in boxes) >= 6  # aligned 200x200 crops: the face fills the frame
    for b in boxes:
        if b is not None:
            x, y, w, h = b
            assert x >= 0 and y >= 0 and x + w <= 200 and y + h <= 200 and w >= 50 and h >= 50


def test_real_store_extract_train_evaluate_predict(tmp_path, csv_dataset, tiny_weights, capsys):
    """The real FeatureStore end to end: extract tiny images, train, evaluate by age, predict."""
    from featx.extract import extract

    store = tmp_path / "faces.zarr"
    extract(csv_dataset, RELEASE, store, weights=tiny_weights, workers=0, progress=False, batch_size=8)
    for kind in ("logreg", "sgd"):
        code = main(["train-head", "--store", str(store), "--head", kind, "--out", str(tmp_path / kind)])
        assert code == 0, capsys.readouterr().err
    card = json.loads((tmp_path / "sgd" / "head.json").read_text())
    assert card["provenance"]["weights_sha256"] == sha256_file(tiny_weights)
    assert card["provenance"]["release"] == RELEASE and card["provenance"]["tap"] == "pool5-gap"

    code = main(["evaluate", "--head", str(tmp_path / "logreg"), "--store", str(store), "--split", "all",
                 "--by", "age"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    metrics = json.loads((tmp_path / "logreg" / "report-faces-all" / "metrics.json").read_text())
    assert metrics["n"] == 40 and metrics["accuracy"] > 0.9
    assert set(metrics["groups"]["age"]) == {"0-12", "13-19", "20-39", "40-59"}

    images = csv_dataset.parent / "img"
    code = main(["predict", "--head", str(tmp_path / "logreg"), str(images / "000.jpg"), str(images / "001.jpg"),
                 "--weights", str(tiny_weights)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert [line.split()[1] for line in cap.out.splitlines()] == ["female", "male"]


def test_predict_json_lines_are_streamed_as_results_come(tmp_path, stores, capsys, tiny_weights, monkeypatch):
    import featx.predict as fp

    stores["img.zarr"] = image_store(tmp_path, tiny_weights)
    assert main(["train-head", "--store", "img.zarr", "--head", "logreg", "--out", str(tmp_path / "h")]) == 0
    a = make_image(tmp_path / "p" / "a.jpg", seed=500, cls=0)
    bad = tmp_path / "p" / "b.jpg"
    bad.write_bytes(b"not a jpeg")
    c = make_image(tmp_path / "p" / "c.jpg", seed=501, cls=1)

    # the API: a generator in input order; photo 2 is read only after result 1 came out
    gen = fp.iter_predictions(tmp_path / "h", [a, c], weights=tiny_weights, batch_size=1)
    first = next(gen)
    assert (first.path, first.label) == (str(a), "female")
    c.rename(tmp_path / "gone.jpg")
    second = next(gen)
    assert second.path == str(c) and second.error and list(gen) == []
    (tmp_path / "gone.jpg").rename(c)

    # the CLI: when photo 3 is read, lines 1 and 2 are already on stdout, one JSON object each
    capsys.readouterr()
    seen, read = [], fp.read_photo

    def spy(path, cropper):
        if path == c:
            seen.append(capsys.readouterr().out)
        return read(path, cropper)

    monkeypatch.setattr(fp, "read_photo", spy)
    assert main(["predict", "--head", str(tmp_path / "h"), str(a), str(bad), str(c), "--weights", str(tiny_weights),
                 "--batch-size", "1", "--json"]) == 0
    early = [json.loads(line) for line in seen[0].splitlines()]
    assert [o["path"] for o in early] == [str(a), str(bad)] and "error" in early[1]
    late = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(o["path"], o["label"]) for o in late] == [(str(c), "male")]

    # batched: a bad photo between two good ones keeps its place
    out = list(fp.iter_predictions(tmp_path / "h", [a, bad, c], weights=tiny_weights, batch_size=2))
    assert [(o.path, o.label) for o in out] == [(str(a), "female"), (str(bad), None), (str(c), "male")]


def test_predict_shows_progress_in_a_log(tmp_path, stores, capsys, tiny_weights, monkeypatch):
    stores["img.zarr"] = image_store(tmp_path, tiny_weights)
    assert main(["train-head", "--store", "img.zarr", "--head", "logreg", "--out", str(tmp_path / "h")]) == 0
    for k in range(3):
        make_image(tmp_path / "new" / f"{k}.jpg", seed=600 + k, cls=k % 2)
    args = ["predict", "--head", str(tmp_path / "h"), str(tmp_path / "new"), "--weights", str(tiny_weights),
            "--batch-size", "1"]
    capsys.readouterr()
    monkeypatch.setenv("FEATX_PROGRESS_EVERY", "0")
    assert main(args) == 0
    cap = capsys.readouterr()
    assert len(cap.out.splitlines()) == 3
    assert [LINE.match(x)["done"] for x in cap.err.splitlines()] == ["1", "2", "3", "3"]
    assert main(args + ["-q"]) == 0 and capsys.readouterr().err == ""
