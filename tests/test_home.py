"""The per-user featx folder: $FEATX_HOME (default ~/.cache/featx), $FEATX_WEIGHTS, and the old ./cache/weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from featx import weights as W
from featx.paths import featx_home
from featx.releases import get_release

HED = get_release("vgg16.hed").filename


@pytest.fixture
def user(tmp_path, monkeypatch) -> Path:
    """A fresh user: HOME in tmp, no FEATX_* variables, working folder elsewhere."""
    monkeypatch.delenv("FEATX_HOME", raising=False)
    monkeypatch.delenv("FEATX_WEIGHTS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def test_default_is_per_user_not_per_folder(user):
    assert featx_home() == user / "home" / ".cache" / "featx"
    assert W.weights_dir() == user / "home" / ".cache" / "featx" / "weights"
    assert W.canonical_path("vgg16.hed") == user / "home" / ".cache" / "featx" / "weights" / HED
    assert W.finetuned_dir() == user / "home" / ".cache" / "featx" / "weights" / "finetuned"


def test_variables_override(user, monkeypatch):
    monkeypatch.setenv("FEATX_HOME", str(user / "fh"))
    assert W.weights_dir() == user / "fh" / "weights"
    monkeypatch.setenv("FEATX_WEIGHTS", str(user / "fw"))
    assert W.weights_dir() == user / "fw" and W.canonical_path("vgg16.hed") == user / "fw" / HED


def test_old_cache_folder_still_found(user, monkeypatch):
    old = Path("cache") / "weights"
    old.mkdir(parents=True)
    (old / HED).write_bytes(b"x")
    (old / "vgg16.hed.json").write_text("{}")
    assert W.canonical_path("vgg16.hed") == old / HED  # the old file is used where it exists...
    assert W.record_path("vgg16.hed") == old / "vgg16.hed.json"
    assert W.canonical_path("vgg16.imagenet").parent == user / "home" / ".cache" / "featx" / "weights"  # ...only there
    assert W.weights_dir() == user / "home" / ".cache" / "featx" / "weights"  # new files go to the user's cache
    new = W.weights_dir() / HED
    new.parent.mkdir(parents=True)
    new.write_bytes(b"y")
    assert W.canonical_path("vgg16.hed") == new  # the user's cache wins once it has the file
    monkeypatch.setenv("FEATX_HOME", str(user / "fh"))
    assert W.canonical_path("vgg16.hed") == user / "fh" / "weights" / HED  # an explicit home: no fallback
