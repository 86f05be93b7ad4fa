"""ONNX export (issue 24): the exported file under onnxruntime gives featx's own answers.

The toy family of tests/test_toy_family.py with its own preprocessing runs the
whole path: extract -> every head kind -> one several-head ONNX file -> onnxruntime vs featx predict.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from featx.backbones import FAMILIES
from featx.releases import RELEASES, Preprocess, Release
from test_toy_family import ToyNet, toy_family  # the one toy family of the tests

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

KINDS = {"logreg": {}, "linear-svm": {}, "rbf-svm": {}, "mlp": {"max_epochs": 6, "patience": 3, "grid": {"hidden": [[8]]}},
         "sgd": {}}
PARITY = 1e-4


PER_IMAGE = Preprocess(size=16, resize=18, channels="RGB", scale=255.0, crop=0.9, norm="per-image",
                       mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
FIXED_BGR = Preprocess(size=20, resize=22, channels="BGR", scale=255.0, mean=(103.9, 116.8, 123.7),
                       std=(58.0, 57.0, 57.5))


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory):
    """The toy family, two releases (per-image and fixed BGR preprocessing), its weights and a dataset."""
    mp = pytest.MonkeyPatch()
    mp.setitem(FAMILIES, "toy", toy_family())
    for name, pre in (("toy.v1", PER_IMAGE), ("toy.bgr", FIXED_BGR)):
        mp.setitem(RELEASES, name, Release(name=name, description="a toy family", source="test", license="CC0",
                                           source_file="toy.safetensors", arch="toy", preprocess=pre))
    root = tmp_path_factory.mktemp("toy-export")
    torch.manual_seed(0)
    weights = root / "toy.safetensors"
    save_file({k: v.contiguous() for k, v in ToyNet().state_dict().items()}, str(weights))
    yield root, weights
    mp.undo()


def make_photos(root, n: int = 40) -> "Path":
    from tests.conftest import make_image

    lines = ["path,label"]
    for i in range(n):
        c = i % 2
        make_image(root / "img" / f"{i:03d}.jpg", seed=100 + i, size=24 + i % 9, cls=c)  # sizes differ: crops do
        lines.append(f"img/{i:03d}.jpg,{['female', 'male'][c]}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


@pytest.fixture(scope="module")
def toy_heads(toy_world):
    """Every head kind on the per-image release (float16 store, combined tap), and a logreg on the BGR
    release (float32 store with mirrored features, another tap), all trained on the toy photos."""
    from featx.extract import extract
    from featx.training import train

    root, weights = toy_world
    data = make_photos(root / "data")
    common = dict(weights=str(weights), precision="fp32", workers=0, progress=False, device="cpu")
    extract(data, "toy.v1", str(root / "a.zarr"), tap="s2-gap+emb", **common)
    extract(data, "toy.bgr", str(root / "b.zarr"), tap="s3-gapmax", dtype="float32", flip_tta=True, **common)
    heads = {}
    for kind, params in KINDS.items():
        train(str(root / "a.zarr"), kind, root / "heads" / kind, params=params)
        heads[kind] = root / "heads" / kind
    train(str(root / "b.zarr"), "logreg", root / "heads" / "bgr", augment_flip=True)
    heads["bgr"] = root / "heads" / "bgr"
    return root, weights, data.parent / "img", heads


def featx_proba(head_dir, photos, weights) -> np.ndarray:
    from featx.predict import iter_predictions

    preds = list(iter_predictions(head_dir, [photos], weights=weights, device="cpu", precision="fp32"))
    assert all(p.error is None for p in preds)
    return np.array([[p.probabilities[c] for c in sorted(p.probabilities)] for p in preds])


def onnx_proba(path, photos, output=None) -> np.ndarray:
    from featx.export import iter_model_predictions

    preds = list(iter_model_predictions(path, [photos], output=output, device="cpu"))
    assert all(p.error is None for p in preds)
    return np.array([[p.probabilities[c] for c in sorted(p.probabilities)] for p in preds])


def test_every_head_kind_in_one_file_matches_featx_predict(exported, toy_heads):
    root, weights, photos, heads = toy_heads
    card = json.loads(exported.with_suffix(".json").read_text())
    assert [o["name"] for o in card["outputs"]] == list(KINDS) and card["input"]["shape"] == ["batch", 16, 16, 3]
    for kind in KINDS:
        want = featx_proba(heads[kind], photos, weights)
        got = onnx_proba(exported, photos, output=kind)
        assert got.shape == want.shape == (40, 2)
        assert np.abs(got - want).max() <= PARITY, kind
        assert np.abs(want[:, 1] - 0.5).max() > 0.05, kind  # the heads answer something, not a constant half


def test_fixed_bgr_release_and_mirror_average(toy_heads, tmp_path):
    """BGR + fixed mean/std preprocessing, a float32 store, another pooling; a head trained with mirrored
    features answers with the mean over the photo and its mirror image: in the graph, in featx predict
    and in evaluate on the store."""
    from featx.export import ExportOptions, OnnxModel, export_onnx
    from featx.heads import load_head
    from featx.predict import HeadModel, load_heads
    from featx.store import FeatureStore
    from featx.training import predict_rows
    from PIL import Image

    root, weights, photos, heads = toy_heads
    mirrored = tmp_path / "mirror" / "m.onnx"
    export_onnx([heads["bgr"]], mirrored, ExportOptions(weights=weights))
    head, card = load_head(heads["bgr"])
    hm = HeadModel(load_heads(heads["bgr"]), weights, "cpu", "fp32")
    chips = np.stack([hm.pixels(Image.open(p).convert("RGB")) for p in sorted(photos.iterdir())])
    plain, flipped = (head.predict_proba(hm.ex(torch.from_numpy(c))[0]) for c in (chips, chips[:, :, ::-1].copy()))
    got = OnnxModel(mirrored, "cpu").run(chips)["bgr"]
    assert np.abs(got - (plain + flipped) / 2).max() <= PARITY
    assert np.abs(got - plain).max() > 1e-3  # the mirror pass did something
    assert np.abs(featx_proba(heads["bgr"], photos, weights) - got).max() <= PARITY  # featx predict averages too
    assert json.loads(mirrored.with_suffix(".json").read_text())["outputs"][0]["mirror_average"] is True
    assert readme_snippet(mirrored, sorted(photos.iterdir())[3], tmp_path) == pytest.approx(
        dict(zip(card["classes"], got[3].tolist())), abs=1e-3)  # the README's onnxruntime-only lines: same chip

    store = FeatureStore.open(str(root / "b.zarr"))
    idx = store.indices("all")
    rows, both = predict_rows(head, store, idx, mirror=True)
    _, one = predict_rows(head, store, idx)
    _, other = (rows, np.concatenate([head.predict_proba(X) for _, X in store.iter_chunks(idx, flip=True)]))
    assert np.allclose(both, (one + other) / 2) and np.abs(both - one).max() > 1e-3
    from featx.report.evaluate import evaluate

    m = evaluate(heads["bgr"], str(root / "b.zarr"), split="all", report_dir=tmp_path / "rep")
    assert m["context"]["mirror_average"] is True


def readme_snippet(model, photo, where) -> dict:
    """Run the README's numpy + Pillow + onnxruntime snippet on `photo` with `model` as models/gender.onnx."""
    import ast
    import contextlib
    import io
    import shutil
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("```python", text.index("Run the file without featx")) + len("```python")
    code = text[start:text.index("```", start)]
    assert len(code.strip().splitlines()) <= 10 and "featx" not in code
    run = where / "snippet"
    (run / "models").mkdir(parents=True)
    shutil.copy(model, run / "models" / "gender.onnx")
    shutil.copy(model.with_suffix(".json"), run / "models" / "gender.json")
    shutil.copy(photo, run / "photo.jpg")
    out, cwd = io.StringIO(), Path.cwd()
    try:
        os.chdir(run)
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    return ast.literal_eval(out.getvalue().strip())


@pytest.fixture(scope="module")
def exported(toy_heads, tmp_path_factory):
    """`featx export` of every head kind (one file, the base once) through the CLI, for the tests here."""
    from featx_cli.main import main

    from featx.report import evaluate

    root, weights, photos, heads = toy_heads
    evaluate(heads["logreg"], str(root / "a.zarr"))  # metrics.json with intervals, in the head's folder
    out = tmp_path_factory.mktemp("cli") / "all" / "model.onnx"
    argv = [a for k in KINDS for a in ("--head", str(heads[k]))]
    assert main(["export", *argv, "--weights", str(weights), "--out", str(out), "-q"]) == 0
    return out


def test_cli_export_writes_the_card(exported, toy_heads):
    import onnx

    from featx.weights import sha256_file

    card = json.loads(exported.with_suffix(".json").read_text())
    assert card["onnx_sha256"] == sha256_file(exported) and card["release"]["name"] == "toy.v1"
    assert card["release"]["license"] == "CC0" and len(card["release"]["weights_sha256"]) == 64
    assert card["input"]["preprocess"]["crop"] == 0.9 and card["input"]["dtype"] == "uint8"
    assert [o["classes"] for o in card["outputs"]] == [["female", "male"]] * len(KINDS)
    test, val = card["outputs"][0]["evaluation"][0], card["outputs"][1]["evaluation"][0]
    lo, hi = test["figures"]["accuracy"]["interval"]
    assert test["split"] == "test" and lo <= test["figures"]["accuracy"]["value"] <= hi and test["n"] == 4
    assert val["split"] == "val" and val["figures"]["accuracy"]["interval"] is None
    md = (exported.parent / "MODEL_CARD.md").read_text()
    assert card["onnx_sha256"] in md and "CC0" in md and "['female', 'male']" in md
    assert "test split" in md and "95% percentile bootstrap over rows intervals" in md
    m = onnx.load(str(exported))
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["logreg.classes"]) == ["female", "male"]
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch is dynamic


def test_cli_predict_model_prints_the_lines_predict_head_prints(exported, toy_heads, capsys):
    from featx_cli.main import main

    root, weights, photos, heads = toy_heads
    few = [str(p) for p in sorted(photos.iterdir())[:5]] + [str(root / "missing.jpg")]
    capsys.readouterr()
    assert main(["predict", "--head", str(heads["mlp"]), "--weights", str(weights), "--json", "-q",
                 "--precision", "fp32", *few]) == 0
    by_head = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert main(["predict", "--model", str(exported), "--output", "mlp", "--json", "-q", *few]) == 0
    by_model = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in by_model] == [r["path"] for r in by_head] == few
    assert by_model[-1] == by_head[-1] and "error" in by_model[-1]
    for a, b in zip(by_head[:-1], by_model[:-1]):
        assert a["label"] == b["label"] and abs(a["probability"] - b["probability"]) <= PARITY
    assert main(["predict", "--model", str(exported), "--json", "-q", *few]) == 0  # every head: by head name
    every = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert sorted(every[0]["heads"]) == sorted(KINDS) and every[-1] == by_head[-1]
    for r, b in zip(every[:-1], by_model[:-1]):
        assert r["heads"]["mlp"] == {k: b[k] for k in ("label", "probability", "probabilities")}


def one_line_error(capsys, argv) -> str:
    from featx_cli.main import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err, err
    return err


def test_predict_model_refuses_a_missing_or_mismatched_card(exported, toy_heads, tmp_path, capsys):
    import shutil

    photo = str(sorted(toy_heads[2].iterdir())[0])
    copy = tmp_path / "model.onnx"
    shutil.copy(exported, copy)
    assert "no card model.json" in one_line_error(capsys, ["predict", "--model", str(copy), photo])
    card = json.loads(exported.with_suffix(".json").read_text())
    card["onnx_sha256"] = "0" * 64
    copy.with_suffix(".json").write_text(json.dumps(card))
    assert "does not match its card" in one_line_error(capsys, ["predict", "--model", str(copy), photo])
    shutil.copy(exported.with_suffix(".json"), copy.with_suffix(".json"))
    with open(copy, "r+b") as f:  # one byte of the weights changed
        f.seek(copy.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    assert "does not match its card" in one_line_error(capsys, ["predict", "--model", str(copy), photo])
    assert "no output 'nope'" in one_line_error(capsys, ["predict", "--model", str(exported), "--output", "nope",
                                                          photo])
    assert "exactly one of --head" in one_line_error(capsys, ["predict", photo])


def test_export_refuses_int8_heads_and_mixed_bases(toy_heads, tmp_path, capsys):
    from featx.heads import load_head, save_head

    root, weights, photos, heads = toy_heads
    head, card = load_head(heads["logreg"])
    card["provenance"].update(precision="int8", release="toy.v1+int8")
    save_head(head, tmp_path / "int8", card)
    err = one_line_error(capsys, ["export", "--head", str(tmp_path / "int8"), "--out", str(tmp_path / "a.onnx")])
    assert "int8" in err and "--precision fp32" in err
    err = one_line_error(capsys, ["export", "--head", str(heads["logreg"]), "--head", str(heads["bgr"]),
                                  "--weights", str(weights), "--out", str(tmp_path / "b.onnx")])
    assert "different bases" in err
    err = one_line_error(capsys, ["export", "--head", str(heads["logreg"]), "--out", str(tmp_path / "c.onnx")])
    assert "weights" in err  # no --weights: the cached toy release is absent (one line, not a traceback)
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.slow
def test_fine_tuned_model_folder_exports_the_same_way(toy_heads, tmp_path):
    from featx.export import ExportOptions, export_onnx
    from featx_cli.main import main

    root, weights, photos, heads = toy_heads
    model = tmp_path / "ft"
    assert main(["fine-tune", "--backbone", "toy.v1", "--weights", str(weights), "--data",
                 str(root / "data" / "labels.csv"), "--out", str(model), "--epochs", "1", "--batch-size", "8",
                 "--from-tap", "s2", "--head-epochs", "1"]) == 0
    out = tmp_path / "onnx" / "ft.onnx"
    card = export_onnx([model], out, ExportOptions())
    assert card["release"]["fine_tuned"]["base"] == "toy.v1" and card["release"]["fine_tuned"]["trained"] == ["s3"]
    assert card["release"]["weights_sha256"] != card_sha(weights)
    want = featx_proba(model, photos, None)
    assert np.abs(onnx_proba(out, photos) - want).max() <= PARITY


def card_sha(path) -> str:
    from featx.weights import sha256_file

    return sha256_file(path)


REGRESSORS = {"ridge": {}, "rbf-ridge": {"n_landmarks": 20}, "mlp-regress": {"max_epochs": 6, "grid": {"hidden": [[8]]}},
              "sgd-regress": {}}


def test_regression_heads_export_their_values(toy_heads, tmp_path, capsys):
    """Every regression kind (when featx has them): the file's value = head.predict on featx's features,
    within 1e-3 in the target's units; `predict --model` prints it as "value"."""
    from featx.heads import head_classes, load_head, make_head, save_head
    from featx.export import ExportOptions, OnnxModel, export_onnx
    from featx.predict import HeadModel, load_heads
    from featx.provenance import provenance
    from featx.store import FeatureStore
    from featx_cli.main import main
    from PIL import Image

    if not set(REGRESSORS) <= set(head_classes()):
        pytest.skip("this featx has no regression heads")
    root, weights, photos, heads = toy_heads
    store = FeatureStore.open(str(root / "a.zarr"))
    tr, va = store.indices("train"), store.indices("val")
    age = np.arange(len(store.labels), dtype=np.float64) % 17 + 3.0 + 20 * np.asarray(store.labels)
    for kind, params in REGRESSORS.items():
        head = make_head(kind, **params).fit(store.features(tr), age[tr], store.features(va), age[va])
        save_head(head, tmp_path / kind, {"provenance": provenance(store), "target": "age", "classes": []})
    out = tmp_path / "age" / "model.onnx"
    card = export_onnx([tmp_path / k for k in REGRESSORS], out, ExportOptions(weights=weights))
    assert [o["task"] for o in card["outputs"]] == ["regression"] * len(REGRESSORS)
    head, hcard = load_head(tmp_path / "ridge")
    hm = HeadModel(load_heads(tmp_path / "ridge"), weights, "cpu", "fp32")
    chips = np.stack([hm.pixels(Image.open(p).convert("RGB")) for p in sorted(photos.iterdir())])
    feats = hm.ex(torch.from_numpy(chips))[0]
    got = OnnxModel(out, "cpu", "ridge").run(chips)
    for kind in REGRESSORS:
        want = load_head(tmp_path / kind)[0].predict(feats)
        assert got[kind].shape == want.shape and np.abs(got[kind] - want).max() <= 1e-3, kind
        assert want.std() > 0.1, kind  # not a constant
    capsys.readouterr()
    first = str(sorted(photos.iterdir())[0])
    assert main(["predict", "--model", str(out), "--output", "ridge", "--json", "-q", first]) == 0
    line = json.loads(capsys.readouterr().out)
    assert abs(line["value"] - got["ridge"][0]) < 1e-6 and "label" not in line
