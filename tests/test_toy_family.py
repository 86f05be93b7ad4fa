"""Issue 11's proof: a new backbone family is one module. This test registers a toy family, with its
own release and preprocessing, and runs extract -> train-head -> evaluate -> fine-tune -> predict
through it without any other file knowing it exists."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from featx.backbones import FAMILIES, Family, TapInfo, register_family
from featx.releases import RELEASES, Preprocess, Release, register_release
from featx_cli.main import main


class ToyNet(nn.Module):
    """Three conv stages and a linear embedding; widths follow the weights."""

    def __init__(self, widths=(4, 6, 8), emb=5):
        super().__init__()
        chans = (3,) + tuple(widths)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:]))
        self.emb = nn.Linear(widths[-1], emb)

    def stage_names(self):
        return ("s1", "s2", "s3", "emb")

    def run_stage(self, name, x):
        if name == "emb":
            return self.emb(x.mean((2, 3)))
        return F.max_pool2d(F.relu(self.convs[int(name[1]) - 1](x)), 2)

    def stage_module(self, name):
        return self.emb if name == "emb" else self.convs[int(name[1]) - 1]


def build(sd):
    widths = tuple(sd[f"convs.{i}.weight"].shape[0] for i in range(3))
    m = ToyNet(widths, sd["emb.weight"].shape[0])
    m.load_state_dict(sd)
    return m.eval()


def toy_family() -> Family:
    """The toy family's registry entry: its taps as data, one fine-tune split."""
    return Family(arch="toy", build=build, default_tap="s3-gap", finetune={"s2": "s3"},
                  taps=(TapInfo("s1", 4, 2, "convs.0"), TapInfo("s2", 6, 4, "convs.1"),
                        TapInfo("s3", 8, 8, "convs.2"), TapInfo("emb", 5, 0, "emb", "vector")))


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """Register the toy family and its release (and take them away again afterwards)."""
    monkeypatch.setitem(FAMILIES, "toy", toy_family())
    release = Release(name="toy.v1", description="a toy family", source="test", license="CC0",
                      source_file="toy.safetensors", arch="toy",
                      preprocess=Preprocess(size=16, resize=18, channels="RGB", scale=255.0, crop=0.9,
                                            norm="per-image", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
    monkeypatch.setitem(RELEASES, release.name, release)
    torch.manual_seed(0)
    weights = tmp_path / "toy.safetensors"
    save_file({k: v.contiguous() for k, v in ToyNet().state_dict().items()}, str(weights))
    return weights


def test_register_helpers_are_the_public_way(monkeypatch):
    fam = Family(arch="toy2", build=build, default_tap="s3-gap", taps=(TapInfo("s3", 8, 8, "convs.2"),))
    monkeypatch.setitem(FAMILIES, "toy2", fam)
    assert register_family(fam) is fam and FAMILIES["toy2"] is fam
    rel = Release(name="toy2.v1", description="", source="", license="", source_file="", arch="toy2",
                  preprocess=Preprocess())
    monkeypatch.setitem(RELEASES, "toy2.v1", rel)
    assert register_release(rel) is rel and rel.taps == ("s3", "s3-gap", "s3-max", "s3-gapmax", "s3-flat")


@pytest.mark.slow
def test_toy_family_end_to_end(toy, csv_dataset, tmp_path, capsys):
    store, head = tmp_path / "toy.zarr", tmp_path / "head"
    common = ["--backbone", "toy.v1", "--weights", str(toy), "--data", str(csv_dataset)]
    assert main(["extract", *common, "--store", str(store), "--tap", "s2-gap+emb", "-q", "--workers", "0"]) == 0
    assert "extracted 40 of 40" in capsys.readouterr().out
    assert main(["train-head", "--store", str(store), "--head", "logreg", "--out", str(head)]) == 0
    assert main(["evaluate", "--head", str(head), "--store", str(store), "--report", str(tmp_path / "rep")]) == 0
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["n"] > 0 and metrics["context"]["tap"] == "s2-gap+emb"
    capsys.readouterr()
    photo = str(csv_dataset.parent / "img" / "001.jpg")
    assert main(["predict", "--head", str(head), "--weights", str(toy), "--json", photo]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["label"] in ("female", "male")
    model = tmp_path / "ft"
    assert main(["fine-tune", *common, "--out", str(model), "--epochs", "2", "--batch-size", "8",
                 "--from-tap", "s2"]) == 0
    assert (model / "release.json").is_file()
    assert main(["predict", "--head", str(model), "--json", photo]) == 0


def test_extract_without_tap_reads_the_family_default(toy, csv_dataset, tmp_path):
    from featx.store import FeatureStore

    store = tmp_path / "default.zarr"
    assert main(["extract", "--backbone", "toy.v1", "--weights", str(toy), "--data", str(csv_dataset),
                 "--store", str(store), "-q", "--workers", "0"]) == 0
    assert FeatureStore.open(store).attrs["tap"] == "s3-gap"  # the toy family's default_tap, not VGG's pool5-gap
