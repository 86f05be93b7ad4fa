import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from featx.errors import FeatxError
from featx.finetune import fine_tune, stream_blocks
from featx.heads import load_head
from featx.store import FeatureStore
from featx_cli.main import main

from conftest import tiny_state_dict

ARGS = dict(epochs=3, batch_size=8, precision="fp32", workers=0, progress=False, block_rows=16)


def signal_preserving_state_dict() -> dict[str, torch.Tensor]:
    """Tiny VGG with He-initialised convs, so class colour survives to pool5 and training has signal."""
    sd = tiny_state_dict()
    g = torch.Generator().manual_seed(0)
    for k, v in sd.items():
        if k.endswith(".weight"):
            fan_in = v[0].numel()
            sd[k] = torch.randn(v.shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:
            sd[k] = torch.full_like(v, 0.01)
    return sd


@pytest.fixture
def env(tmp_path, monkeypatch, folder_dataset):
    monkeypatch.setenv("FEATX_HOME", str(tmp_path / "home"))
    weights = tmp_path / "tiny-he.safetensors"
    save_file(signal_preserving_state_dict(), str(weights))
    return folder_dataset, weights


def test_fine_tune_outputs_a_release_and_a_head(env, tmp_path, capsys):
    data, weights = env
    out = tmp_path / "models" / "ft"
    s = fine_tune(data, "vgg16.hed", out, weights=weights, augment="flip", **ARGS)
    assert s["epochs_run"] == 3 and 1 <= s["best_epoch"] <= 3
    release = json.loads((out / "release.json").read_text())
    assert release["name"] == "vgg16.hed+ft" and release["lineage"]["base"] == "vgg16.hed"
    assert release["preprocess"]["channels"] == "BGR"  # the base release's preprocessing, unchanged
    # blocks 1-4 stay frozen: only conv5_* may differ from the base weights
    base, tuned = signal_preserving_state_dict(), load_file(str(out / "weights.safetensors"))
    assert s["val_loss"] < 0.6
    for k, v in base.items():
        if k.startswith("conv5"):
            continue
        assert torch.equal(tuned[k], v), k
    assert any(not torch.equal(tuned[k], base[k]) for k in base if k.startswith("conv5"))
    assert (out / "curves.png").stat().st_size > 0
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2, 3]
    # `featx weights list` shows it, with where it came from
    capsys.readouterr()
    assert main(["weights", "list"]) == 0
    assert "vgg16.hed+ft" in capsys.readouterr().out


def test_new_release_and_head_score_another_collection(env, tmp_path, capsys):
    """extract --backbone models/NAME --tap pool5-flat, then evaluate --head models/NAME --split all."""
    data, weights = env
    out = tmp_path / "models" / "ft"
    fine_tune(data, "vgg16.hed", out, weights=weights, **ARGS)
    store = tmp_path / "other.zarr"
    assert main(["extract", "--backbone", str(out), "--tap", "pool5-flat", "--data", str(data),
                 "--store", str(store), "--precision", "fp32", "--dtype", "float32", "--workers", "0", "-q"]) == 0
    assert main(["evaluate", "--head", str(out), "--store", str(store), "--split", "all",
                 "--report", str(tmp_path / "rep")]) == 0
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["n"] == 40
    # the head on extracted pool5-flat features agrees with the trained network's own val predictions
    head, card = load_head(out)
    fs = FeatureStore.open(store)
    val = fs.indices("val")
    p_head = head.predict_proba(fs.features(val))
    from featx.finetune import Block5Net, run_epoch
    from featx.weights import load_backbone

    _, model, _ = load_backbone(out)
    net = Block5Net(model, 2, card["params"]["hidden"], 0.0)
    lin = [m for m in net.head if isinstance(m, torch.nn.Linear)]
    arrays = load_file(str(out / "head.safetensors"))
    for k, m in enumerate(lin):
        m.weight.data, m.bias.data = arrays[f"layer{k}_weight"].float(), arrays[f"layer{k}_bias"].float()
    net.mean.copy_(arrays["scaler_mean"].float())
    net.scale.copy_(arrays["scaler_scale"].float())
    prefix = FeatureStore.open(card["provenance"]["store"])
    r = run_epoch(net, prefix, val, prefix.labels, train=False, block_rows=16)
    order = np.argsort(r["rows"])
    assert p_head[:, 1].std() > 0.05  # real, varied predictions, not a constant 0.5
    np.testing.assert_allclose(p_head, r["proba"][order], atol=2e-3)  # pool4 cache is fp16


def test_interrupted_fine_tune_resumes_to_the_same_model(env, tmp_path):
    data, weights = env
    full = tmp_path / "full"
    fine_tune(data, "vgg16.hed", full, weights=weights, **ARGS)

    part = tmp_path / "part"

    def stop_after_epoch_2(msg):
        if msg.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fine_tune(data, "vgg16.hed", part, weights=weights, log=stop_after_epoch_2, **ARGS)
    assert not (part / "release.json").exists()
    lines = []
    fine_tune(data, "vgg16.hed", part, weights=weights, log=lines.append, **ARGS)
    assert any("resuming" in m for m in lines) and sum(m.startswith("epoch ") for m in lines) == 2
    a, b = load_file(str(full / "weights.safetensors")), load_file(str(part / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((full / "history.json").read_text()) != [] and \
        [h["val_loss"] for h in json.loads((full / "history.json").read_text())] == \
        [h["val_loss"] for h in json.loads((part / "history.json").read_text())]


def test_rerun_is_a_no_op_and_other_settings_are_refused(env, tmp_path, capsys):
    data, weights = env
    out = tmp_path / "ft"
    fine_tune(data, "vgg16.hed", out, weights=weights, **ARGS)
    lines = []
    fine_tune(data, "vgg16.hed", out, weights=weights, log=lines.append, **ARGS)
    assert lines == [f"{out} is already fine-tuned with these settings; nothing to do"]
    with pytest.raises(FeatxError, match="other settings"):
        fine_tune(data, "vgg16.hed", out, weights=weights, **{**ARGS, "epochs": 4})
    assert main(["fine-tune", "--backbone", "vgg16.hed", "--weights", str(weights), "--data", str(data),
                 "--out", str(tmp_path / "x"), "--unfreeze", "block4"]) == 2
    assert "only block5" in capsys.readouterr().err


def test_stream_blocks_visits_each_row_once_in_shuffled_order(env, tmp_path):
    data, weights = env
    from featx.extract import extract

    store = tmp_path / "p4.zarr"
    extract(data, "vgg16.hed", store, tap="pool4", weights=weights, precision="fp32", workers=0, progress=False,
            rows_per_chunk=4)
    fs = FeatureStore.open(store)
    idx = fs.indices("train")
    rng = np.random.default_rng(0)
    rows = np.concatenate([r for r, _ in stream_blocks(fs, idx, 8, rng)])
    assert sorted(rows.tolist()) == sorted(idx.tolist()) and rows.tolist() != sorted(rows.tolist())
    for r, x in stream_blocks(fs, idx, 8, None):
        np.testing.assert_array_equal(x, fs.features(r))
