import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from featx.errors import FeatxError
from featx.finetune import fine_tune
from featx.heads import load_head
from featx.store import FeatureStore
from featx_cli.main import main

from conftest import tiny_state_dict

pytestmark = pytest.mark.slow

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


def changed_blocks(out) -> set[str]:
    base, tuned = signal_preserving_state_dict(), load_file(str(out / "weights.safetensors"))
    assert set(base) == set(tuned)
    return {k.split("_")[0] for k in base if not torch.equal(tuned[k], base[k])}


def test_pool4_trains_block5_alone_and_outputs_a_release_and_a_head(env, tmp_path, capsys):
    data, weights = env
    out = tmp_path / "models" / "ft"
    lines = []
    s = fine_tune(data, "vgg16.hed", out, weights=weights, log=lines.append, augment="flip,shift", **ARGS)
    assert s["epochs_run"] == 3 and 1 <= s["best_epoch"] <= 3
    assert s["val_loss"] < 0.6 and s["test"]["n"] == s["n_test"] > 0
    assert changed_blocks(out) == {"conv5"}  # blocks 1-4 are the cached prefix: frozen
    release = json.loads((out / "release.json").read_text())
    assert release["name"] == "vgg16.hed+ft" and release["arch"] == "vgg16"
    assert release["preprocess"]["channels"] == "BGR"  # the base release's preprocessing, unchanged
    lin = release["lineage"]
    assert (lin["base"], lin["prefix_tap"], lin["trained"], lin["head_tap"]) == ("vgg16.hed", "pool4", ["pool5"], "pool5-flat")
    assert lin["config"]["augment"] == "flip,shift" and lin["config"]["label_smoothing"] == 0.1
    assert lin["summary"]["wall_seconds"] >= lin["summary"]["train_seconds"] > 0
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3] and all({"val_auc", "seconds", "train_loss"} <= set(h) for h in hist)
    assert sum(m.startswith("epoch ") and " auc " in m and m.endswith("s") for m in lines) == 3
    assert (out / "curves.png").stat().st_size > 0 and not (out / "checkpoint.json").exists()
    capsys.readouterr()
    assert main(["weights", "list"]) == 0
    assert "vgg16.hed+ft" in capsys.readouterr().out


def test_pool3_trains_blocks_4_and_5(env, tmp_path):
    data, weights = env
    out = tmp_path / "ft3"
    s = fine_tune(data, "vgg16.hed", out, weights=weights, from_tap="pool3", augment="shift", shift=2, balance="sample",
                  **{**ARGS, "epochs": 2})
    assert changed_blocks(out) == {"conv4", "conv5"}
    lin = json.loads((out / "release.json").read_text())["lineage"]
    assert lin["trained"] == ["pool4", "pool5"] and lin["prefix_tap"] == "pool3"
    assert s["val_accuracy"] > 0.7
    # the pool3 prefix is a feature store of its own, reused by the next run on the same data
    stores = sorted(p.name for p in (tmp_path / "home" / "features").glob("*.zarr"))
    assert len(stores) == 1 and stores[0].endswith("-pool3.zarr")
    assert FeatureStore.open(tmp_path / "home" / "features" / stores[0]).tap == "pool3"


def test_moved_model_folder_works_with_extract_evaluate_and_predict(env, tmp_path, capsys):
    data, weights = env
    first = tmp_path / "models" / "ft"
    fine_tune(data, "vgg16.hed", first, weights=weights, **ARGS)
    out = tmp_path / "elsewhere" / "moved"
    out.parent.mkdir()
    shutil.move(str(first), str(out))
    store = tmp_path / "other.zarr"
    assert main(["extract", "--backbone", str(out), "--tap", "pool5-flat", "--data", str(data),
                 "--store", str(store), "--precision", "fp32", "--dtype", "float32", "--workers", "0", "-q"]) == 0
    assert main(["evaluate", "--head", str(out), "--store", str(store), "--split", "all",
                 "--report", str(tmp_path / "rep")]) == 0
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["n"] == 40
    capsys.readouterr()
    img = next((data / "male").glob("*.jpg"))
    assert main(["predict", "--head", str(out), str(img), "--json"]) == 0
    assert "male" in capsys.readouterr().out

    # the head on extracted pool5-flat features agrees with the trained network on the prefix maps
    head, card = load_head(out)
    assert card["provenance"]["release_dir"] == "."
    fs = FeatureStore.open(store)
    val = fs.indices("val")
    p_head = head.predict_proba(fs.features(val))
    assert p_head[:, 1].std() > 0.05  # real, varied predictions, not a constant 0.5
    from featx.finetune.data import MapBatches
    from featx.finetune.model import TuneNet
    from featx.finetune.train import Loop
    from featx.weights import load_backbone

    prefix = FeatureStore.open(card["provenance"]["store"])
    _, model, _ = load_backbone(out)
    net = TuneNet(model, ["pool5"], "mlp", 2, card["params"]["hidden"][0], 0.0, torch.from_numpy(prefix.features([0, 1])))
    arrays = load_file(str(out / "head.safetensors"))
    for k, m in enumerate(net.linears()):
        m.weight.data, m.bias.data = arrays[f"layer{k}_weight"].float(), arrays[f"layer{k}_bias"].float()
    net.mean.copy_(arrays["scaler_mean"].float())
    net.scale.copy_(arrays["scaler_scale"].float())
    r = Loop(prefix.labels).evaluate(net, MapBatches(prefix, 8, 16), val)
    np.testing.assert_allclose(p_head, r["proba"], atol=2e-3)  # the prefix cache is fp16


def test_gap_head_exports_on_the_gap_tap(env, tmp_path):
    data, weights = env
    out = tmp_path / "gap"
    fine_tune(data, "vgg16.hed", out, weights=weights, head="gap", balance="weights", **{**ARGS, "epochs": 1})
    _, card = load_head(out)
    assert card["provenance"]["tap"] == "pool5-gap" and card["provenance"]["dim"] == [16]
    assert card["params"]["hidden"] == []


def test_interrupted_fine_tune_resumes_to_the_same_weights(env, tmp_path):
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
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (full, part))
    assert [h["val_loss"] for h in ha] == [h["val_loss"] for h in hb]

    # SIGKILL wherever the process happens to be after epoch 2 starts its checkpoint; it waits at
    # epoch 3's line (before that checkpoint) so that a tiny run cannot finish before the signal lands
    killed = tmp_path / "killed"
    code = (f"import time\nfrom featx.finetune import fine_tune\n"
            f"def log(m):\n    print(m, flush=True)\n    time.sleep(60 if m.startswith('epoch 3/') else 0)\n"
            f"fine_tune({str(data)!r}, 'vgg16.hed', {str(killed)!r}, weights={str(weights)!r}, "
            f"log=log, **{ARGS!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch 2/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL and not (killed / "release.json").exists()
    fine_tune(data, "vgg16.hed", killed, weights=weights, **ARGS)
    c = load_file(str(killed / "weights.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert sorted(p.name for p in killed.glob("checkpoint*")) == []


def test_early_stopping_on_val_auc_keeps_the_best_epoch(env, tmp_path, monkeypatch):
    """Scripted val AUCs 0.6, 0.8, 0.7, 0.75: patience 2 stops after epoch 4 and exports epoch 2."""
    from featx.finetune import train as finetune_train

    data, weights = env
    aucs = iter([0.6, 0.8, 0.7, 0.75])
    real = finetune_train.Loop.evaluate
    snaps = {}

    def scripted(self, net, batches, rows, label=""):
        r = real(self, net, batches, rows)
        a = next(aucs, None)
        if a is not None:
            r["auc"] = a
            snaps[a] = net.base.conv5_3.weight.detach().clone()
        return r

    monkeypatch.setattr(finetune_train.Loop, "evaluate", scripted)
    out = tmp_path / "es"
    s = fine_tune(data, "vgg16.hed", out, weights=weights, patience=2, head_epochs=0, **{**ARGS, "epochs": 8})
    assert (s["epochs_run"], s["best_epoch"]) == (4, 2)
    assert [h["val_auc"] for h in json.loads((out / "history.json").read_text())] == [0.6, 0.8, 0.7, 0.75]
    assert torch.equal(load_file(str(out / "weights.safetensors"))["conv5_3.weight"], snaps[0.8])
    assert not torch.equal(snaps[0.75], snaps[0.8])


def test_pixel_augmentation_reruns_the_prefix(env, tmp_path, monkeypatch):
    from featx.finetune import data as finetune_data

    data, weights = env
    seen = []
    real = finetune_data.PixelRows.__getitem__
    monkeypatch.setattr(finetune_data.PixelRows, "__getitem__", lambda self, it: seen.append(it) or real(self, it))
    out = tmp_path / "px"
    s = fine_tune(data, "vgg16.hed", out, weights=weights, augment="pixels", **{**ARGS, "epochs": 2})
    _, card = load_head(out)
    train = FeatureStore.open(card["provenance"]["store"]).indices("train")
    assert s["epochs_run"] == 2 and len(seen) == 2 * len(train)  # every photo decoded again each epoch
    assert sorted(r for r, *_ in seen[:len(train)]) == train.tolist()
    assert any(f for _, f, _, _ in seen) and any(dy or dx for _, _, dy, dx in seen)


def test_map_augmentations(env):
    from featx.finetune.data import augment_maps, epoch_rows, parse_augment

    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    seen_flip = seen_shift = False
    for seed in range(20):
        y = augment_maps(x, True, 0, np.random.default_rng(seed))
        for i in range(2):
            assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(2))
            seen_flip |= torch.equal(y[i], x[i].flip(2))
        z = augment_maps(x, False, 1, np.random.default_rng(seed))
        for i in range(2):  # a translation by at most one cell, zeros shifted in
            ok = []
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    t = torch.zeros(4, 4)
                    src = x[i, 0, max(0, dy):4 + min(0, dy), max(0, dx):4 + min(0, dx)]
                    t[max(0, -dy):4 - max(0, dy), max(0, -dx):4 - max(0, dx)] = src
                    ok.append(torch.equal(z[i, 0], t))
            assert any(ok)
            seen_shift |= not torch.equal(z[i], x[i])
    assert seen_flip and seen_shift
    assert parse_augment("shift, flip") == ("flip", "shift") and parse_augment("none") == ()
    with pytest.raises(FeatxError, match="crop"):
        parse_augment("crop")
    labels = np.array([0] * 6 + [1] * 2)
    rows = epoch_rows(np.arange(8), labels, "sample", np.random.default_rng(0))
    assert np.bincount(labels[rows]).tolist() == [6, 6] and set(range(8)) <= set(rows.tolist())


def test_rerun_is_a_no_op_and_other_settings_are_refused(env, tmp_path, capsys):
    data, weights = env
    out = tmp_path / "ft"
    fine_tune(data, "vgg16.hed", out, weights=weights, **{**ARGS, "epochs": 1})
    lines = []
    fine_tune(data, "vgg16.hed", out, weights=weights, log=lines.append, **{**ARGS, "epochs": 1})
    assert lines == [f"{out} is already fine-tuned with these settings; nothing to do"]
    with pytest.raises(FeatxError, match="other settings"):
        fine_tune(data, "vgg16.hed", out, weights=weights, **{**ARGS, "epochs": 2})
    base = ["fine-tune", "--backbone", "vgg16.hed", "--weights", str(weights), "--data", str(data),
            "--out", str(tmp_path / "x")]
    assert main(base + ["--unfreeze", "block3"]) == 2
    assert "--from-tap" in capsys.readouterr().err
    assert main(base + ["--from-tap", "pool2"]) == 2
    assert "pool4 or pool3" in capsys.readouterr().err
    assert main(base + ["--balance", "x"]) == 2 and main(base + ["--head", "x"]) == 2
    assert not (tmp_path / "x").exists()


def pool4_store(env, path, rows_per_chunk: int) -> FeatureStore:
    """The tiny model's pool4 maps of the folder dataset, as a fine-tune's prefix store."""
    from featx.extract import extract

    data, weights = env
    extract(data, "vgg16.hed", path, tap="pool4", weights=weights, precision="fp32", workers=0, progress=False,
            rows_per_chunk=rows_per_chunk)
    return FeatureStore.open(path)


def test_row_blocks_visit_each_row_once_in_shuffled_order(env, tmp_path):
    from featx.finetune.data import stream_blocks

    fs = pool4_store(env, tmp_path / "p4.zarr", 4)
    idx = fs.indices("train")
    rows = np.concatenate([r for r, _ in stream_blocks(fs, idx, 8, np.random.default_rng(0))])
    assert sorted(rows.tolist()) == sorted(idx.tolist()) and rows.tolist() != sorted(rows.tolist())
    for r, x in stream_blocks(fs, idx, 8, None):
        np.testing.assert_array_equal(x, fs.features(r))


def test_training_blocks_mix_a_sorted_manifest(env, tmp_path):
    """The folder dataset lists all female photos, then all male: training blocks must still mix them."""
    from featx.finetune.data import row_blocks

    fs = pool4_store(env, tmp_path / "p4.zarr", 2)
    rows, labels = np.arange(len(fs.labels)), np.asarray(fs.labels)
    assert (np.diff(labels) >= 0).all()  # sorted by class
    blocks = list(row_blocks(fs, rows, 8, np.random.default_rng(0)))
    assert sorted(np.concatenate(blocks).tolist()) == rows.tolist()
    assert all(len(b) <= 8 and len(set((b // 2).tolist())) == len(b) // 2 for b in blocks)  # whole chunks
    mixed = sum(len(set(labels[b].tolist())) == 2 for b in blocks)
    assert mixed >= len(blocks) - 2  # consecutive blocks would mix one at most


class Toy(torch.nn.Module):
    """A toy family: two conv stages and a vector stage, in the stage protocol."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.b = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.vec = torch.nn.Linear(6, 5)

    def stage_names(self):
        return ("a", "b", "vec")

    def run_stage(self, name, x):
        if name == "a":
            return torch.relu(self.a(x))
        if name == "b":
            return torch.nn.functional.max_pool2d(torch.relu(self.b(x)), 2)
        return torch.relu(self.vec(x.mean((2, 3))))

    def stage_module(self, name):
        return getattr(self, name)


def build_toy(sd):
    m = Toy()
    m.load_state_dict(sd)
    return m.eval()


def test_fine_tune_is_generic_over_the_family_registry(env, tmp_path, monkeypatch, capsys):
    """A family registered here (vector head-input tap) fine-tunes and predicts with no other change."""
    from featx import backbones, releases
    from featx.backbones import Family, TapInfo

    fam = Family("toyft", build_toy, (TapInfo("a", 4, 4, "a"), TapInfo("b", 6, 8, "b"),
                                      TapInfo("vec", 5, 0, "vec", "vector")), "vec", finetune={"a": "vec"})
    rel = releases.Release(name="toyft.base", description="toy", source="test", license="MIT", source_file="toy",
                           preprocess=releases.Preprocess(size=32, resize=32, channels="RGB", scale=1.0,
                                                          mean=(0.5,) * 3, std=(0.25,) * 3), arch="toyft")
    monkeypatch.setitem(backbones.FAMILIES, "toyft", fam)
    monkeypatch.setitem(releases.RELEASES, "toyft.base", rel)
    torch.manual_seed(0)
    w = tmp_path / "toy.safetensors"
    save_file({k: v.contiguous() for k, v in Toy().state_dict().items()}, str(w))
    data, _ = env
    out = tmp_path / "toyft"
    fine_tune(data, "toyft.base", out, weights=w, from_tap="a", head="linear", **{**ARGS, "epochs": 2})
    lin = json.loads((out / "release.json").read_text())["lineage"]
    assert lin["trained"] == ["b", "vec"] and lin["head_tap"] == "vec"
    tuned, base = load_file(str(out / "weights.safetensors")), load_file(str(w))
    assert torch.equal(tuned["a.weight"], base["a.weight"]) and not torch.equal(tuned["b.weight"], base["b.weight"])
    capsys.readouterr()
    assert main(["predict", "--head", str(out), str(next((data / "female").glob("*.jpg"))), "--json"]) == 0
    import re

    assert re.search(r'"label": "(fe)?male"', capsys.readouterr().out)  # a JSON array or JSON lines


def test_lr_zero_is_the_frozen_baseline(env, tmp_path):
    data, weights = env
    out = tmp_path / "frozen"
    s = fine_tune(data, "vgg16.hed", out, weights=weights, lr=0.0, **{**ARGS, "epochs": 1})
    assert changed_blocks(out) == set() and s["val_accuracy"] > 0.7  # only the head trained


def test_head_trains_alone_on_frozen_features_before_the_stages(env, tmp_path, monkeypatch):
    import featx.finetune.train as ft

    data, weights = env
    seen, real = {}, ft.head_probe

    def spy(net, *args, **kw):
        stages = {n: p.detach().clone() for n, p in net.base.named_parameters()}
        head = [p.detach().clone() for p in net.head.parameters()]
        rec = real(net, *args, **kw)
        seen["stages_kept"] = all(torch.equal(stages[n], p) for n, p in net.base.named_parameters())
        seen["head_moved"] = any(not torch.equal(a, b) for a, b in zip(head, net.head.parameters()))
        return rec

    monkeypatch.setattr(ft, "head_probe", spy)
    lines = []
    s = fine_tune(data, "vgg16.hed", tmp_path / "probed", weights=weights, log=lines.append, head_epochs=4,
                  **{**ARGS, "epochs": 1})
    assert seen == {"stages_kept": True, "head_moved": True}
    first = [i for i, m in enumerate(lines) if m.startswith(("head alone", "epoch "))]
    assert lines[first[0]].startswith("head alone, 4 epochs") and lines[first[1]].startswith("epoch 1/1")
    assert s["head_probe"]["epochs"] == 4 and s["head_probe"]["val_accuracy"] > 0.7
    seen.clear()
    lines.clear()
    s = fine_tune(data, "vgg16.hed", tmp_path / "unprobed", weights=weights, log=lines.append, head_epochs=0,
                  **{**ARGS, "epochs": 1})
    assert s["head_probe"] is None and not seen and not any(m.startswith("head alone") for m in lines)


def test_the_head_alone_is_kept_when_no_epoch_beats_it(env, tmp_path, monkeypatch):
    from featx.finetune import train as finetune_train

    data, weights = env
    real = finetune_train.Loop.evaluate

    def worse(self, net, batches, rows, label=""):
        return {**real(self, net, batches, rows), "auc": 0.0}

    monkeypatch.setattr(finetune_train.Loop, "evaluate", worse)
    out = tmp_path / "probe-best"
    s = fine_tune(data, "vgg16.hed", out, weights=weights, patience=2, head_epochs=3, **{**ARGS, "epochs": 5})
    assert (s["epochs_run"], s["best_epoch"]) == (2, 0)  # two epochs without beating the head alone
    assert changed_blocks(out) == set()  # the exported stages are the base's: the head-alone checkpoint
    assert s["val_loss"] == s["head_probe"]["val_loss"]
