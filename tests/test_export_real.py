"""ONNX export of real bases (issue 24), real_data tier: dlib.resnet, facenet.casia and vgg16.hed, every
head kind trained on a few real UTKFace photos, one several-head file per base; onnxruntime's answers
on other photos match featx's predict path (fp32) within 1e-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHARED, fetch_real_weights

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.real_data
TAPS = {"dlib.resnet": "embedding+pooled", "facenet.casia": "embedding+block8-gap", "vgg16.hed": "pool4-gap+pool5-gap"}
KINDS = ("logreg", "linear-svm", "rbf-svm", "mlp", "sgd")


@pytest.fixture(scope="module")
def utk():
    from featx.data import load

    p = SHARED / "utkface" / "labels.csv"
    if not p.is_file():
        pytest.skip("real photos in ../shared/data/utkface are absent")
    return load(p, seed=0)


def weights_for(name: str, tmp_path_factory):
    from featx.weights import canonical_path

    path = canonical_path(name)
    return path if path.is_file() else fetch_real_weights(tmp_path_factory, name)[0]


@pytest.mark.parametrize("base", list(TAPS))
def test_real_base_every_head_kind_matches_featx(base, utk, tmp_path_factory):
    from featx.data import Manifest
    from featx.export import ExportOptions, OnnxModel, export_onnx
    from featx.extract import extract
    from featx.heads import load_head
    from featx.training import train
    from featx.images import open_rgb
    from featx.predict import HeadModel, load_heads

    weights = weights_for(base, tmp_path_factory)
    work = tmp_path_factory.mktemp(f"real-{base}")
    rows = [i for i, s in enumerate(utk.splits) if s == "train"][:48] + \
           [i for i, s in enumerate(utk.splits) if s == "val"][:16]
    m = Manifest(root=utk.root, paths=[utk.paths[i] for i in rows], labels=[utk.labels[i] for i in rows],
                 splits=[utk.splits[i] for i in rows], source="csv", split_by="test subset")
    extract(m, base, str(work / "s.zarr"), tap=TAPS[base], weights=str(weights), precision="fp32", device="cpu",
            progress=False, workers=0)
    params = {"mlp": {"grid": {"hidden": [[32]]}, "max_epochs": 40}}
    for kind in KINDS:
        train(str(work / "s.zarr"), kind, work / kind, params=params.get(kind))
    out = work / "model.onnx"
    export_onnx([work / k for k in KINDS], out, ExportOptions(weights=weights))
    photos = [utk.root / utk.paths[i] for i in [i for i, s in enumerate(utk.splits) if s == "test"][:12]]
    head, card = load_head(work / "logreg")
    hm = HeadModel(load_heads(work / "logreg"), weights, "cpu", "fp32")
    om = OnnxModel(out, "cpu", "logreg")
    chips = np.stack([om.pixels(open_rgb(p)) for p in photos])
    feats = hm.ex(torch.from_numpy(chips))[0]
    got = om.run(chips)
    for kind in KINDS:
        want = load_head(work / kind)[0].predict_proba(feats)
        assert np.abs(got[kind] - want).max() <= 1e-4, kind
