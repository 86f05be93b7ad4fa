"""The installed `featx` executable: usage errors, OS errors and Ctrl-C are one line and an exit code,
never a traceback; `featx --version`."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import featx
from featx_cli.main import main

FEATX = Path(sys.executable).parent / "featx"


def featx_run(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    if not FEATX.is_file():
        pytest.skip(f"featx is not installed next to {sys.executable}")
    return subprocess.run([str(FEATX), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=dict(os.environ))


def in_process(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc: int, err: str, *parts: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for p in parts:
        assert p in lines[0], lines[0]


# ---------------------------------------------------------------- usage errors (item 4)


@pytest.mark.parametrize("args,message", [
    ([], "Usage: featx [OPTIONS] COMMAND [ARGS]...\nTry 'featx --help' for help.\n\nError: Missing command."),
    (["weights"], "Error: Missing command."),
    (["data"], "Error: Missing option '--data'."),
    (["data", "--data", "x", "--out"], "Error: Option '--out' requires an argument."),
    (["extract", "--backbone", "b", "--data", "d", "--store", "s", "--batch-size", "abc"],
     "Error: Invalid value for '--batch-size'"),
    (["datta"], "Error: No such command 'datta'. Did you mean 'data'?"),
    (["data", "--no-such-option"], "Error: No such option: --no-such-option"),
    (["weights", "frobnicate"], "Error: No such command 'frobnicate'."),
])
def test_usage_errors_exit_2_without_traceback(tmp_path, args, message):
    r = featx_run(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert message in r.stderr, r.stderr


def test_version(tmp_path, capsys):
    r = featx_run("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"featx {featx.__version__}", r.stderr
    assert in_process(capsys, "--version")[:2] == (0, f"featx {featx.__version__}\n")


def test_format_help_lists_every_importer_format():
    from featx.importers import FORMATS
    from featx_cli.weights_cmd import FORMAT_HELP

    assert FORMAT_HELP.split("|") == list(FORMATS)


# ---------------------------------------------------------------- bad values and output places (item 5)


@pytest.mark.parametrize("args,option", [
    (["extract", "--backbone", "b", "--data", "d", "--store", "s", "--workers", "-1"], "--workers"),
    (["extract", "--backbone", "b", "--data", "d", "--store", "s", "--batch-size", "0"], "--batch-size"),
    (["fine-tune", "--backbone", "b", "--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["fine-tune", "--backbone", "b", "--data", "d", "--out", "o", "--workers", "-2"], "--workers"),
    (["predict", "x.jpg", "--head", "h", "--batch-size", "0"], "--batch-size"),
])
def test_counts_below_their_minimum_are_refused(tmp_path, capsys, args, option):
    rc, _, err = in_process(capsys, *args)
    assert rc == 2 and f"Invalid value for '{option}'" in err and "Traceback" not in err, err
    assert not (tmp_path / "s").exists() and not (tmp_path / "o").exists()


def test_unknown_store_scheme(folder_dataset, capsys):
    rc, _, err = in_process(capsys, "extract", "--backbone", "vgg16.hed", "--data", folder_dataset,
                            "--store", "foo://x")
    one_line_error(rc, err, "foo://x", "unknown URL scheme 'foo'")


def test_unwritable_store_place(folder_dataset, capsys):
    rc, _, err = in_process(capsys, "extract", "--backbone", "vgg16.hed", "--data", folder_dataset,
                            "--store", "/proc/featx-test/s.zarr")
    one_line_error(rc, err, "/proc/featx-test/s.zarr", "cannot write in /proc")
    assert not Path("/proc/featx-test").exists()


@pytest.mark.parametrize("args,option", [
    (["train-head", "--store", "S", "--head", "logreg", "--out", "FILE"], "--out"),
    (["evaluate", "--head", "H", "--store", "S", "--report", "FILE"], "--report"),
    (["fine-tune", "--backbone", "vgg16.hed", "--data", "D", "--out", "FILE"], "--out"),
    (["extract", "--backbone", "vgg16.hed", "--data", "D", "--store", "FILE"], "--store"),
    (["data", "--data", "D", "--out", "DIR"], "--out"),
])
def test_output_place_of_the_wrong_kind(tmp_path, capsys, args, option):
    (tmp_path / "FILE").write_text("keep me\n")
    (tmp_path / "DIR").mkdir()
    args = [str(tmp_path / a) if a in ("FILE", "DIR") else a for a in args]
    rc, _, err = in_process(capsys, *args)
    one_line_error(rc, err, option, str(tmp_path))
    assert (tmp_path / "FILE").read_text() == "keep me\n" and not any((tmp_path / "DIR").iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(folder_dataset, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, _, err = in_process(capsys, "data", "--data", folder_dataset, "--out", ro / "m.csv")
    finally:
        ro.chmod(0o755)
    one_line_error(rc, err, str(ro), "Permission denied")
    assert not any(ro.iterdir())


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_os_error_while_writing_is_one_line_and_leaves_nothing(folder_dataset, tmp_path, capsys,
                                                                monkeypatch, code):
    """A full disk (or a folder turned read-only) half-way through writing the manifest."""
    out = tmp_path / "out" / "m.csv"

    def fail(self, text, *a, **k):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr(Path, "write_text", fail)
    rc, _, err = in_process(capsys, "data", "--data", folder_dataset, "--out", out)
    monkeypatch.undo()
    one_line_error(rc, err, f"error: {out}: {os.strerror(code)}")
    assert list(out.parent.iterdir()) == []


def test_non_utf8_file_name(folder_dataset, tmp_path):
    with open(os.path.join(os.fsencode(folder_dataset / "male"), b"caf\xe9.jpg"), "wb") as f:
        f.write((folder_dataset / "male" / "male_00.jpg").read_bytes())
    r = featx_run("data", "--data", folder_dataset, "--out", tmp_path / "m.csv", cwd=tmp_path)
    one_line_error(r.returncode, r.stderr, "caf\\xe9.jpg", "not valid UTF-8")
    assert not (tmp_path / "m.csv").exists()


# ---------------------------------------------------------------- Ctrl-C (item 6)


def interrupt_while_reading(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    """Run featx on a --data that is a FIFO (it blocks reading it), then send SIGINT."""
    if not FEATX.is_file():
        pytest.skip(f"featx is not installed next to {sys.executable}")
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    proc = subprocess.Popen([str(FEATX), *map(str, args), "--data", str(fifo)], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    deadline, fd = time.monotonic() + 60, None
    try:
        while fd is None:  # a non-blocking open for writing succeeds once featx has the FIFO open
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO or time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(f"featx never opened --data: {proc.communicate()}") from e
                time.sleep(0.05)
        time.sleep(0.2)  # featx now waits in read(): nothing written to the FIFO yet
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if fd is not None:
            os.close(fd)
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_in_extract_says_how_to_resume(tmp_path):
    r = interrupt_while_reading(tmp_path, "extract", "--backbone", "vgg16.hed", "--store", tmp_path / "s.zarr")
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip() == "interrupted: finished shards are kept; rerun the same command to resume"
    assert not (tmp_path / "s.zarr").exists()


def test_ctrl_c_in_data_writes_nothing(tmp_path):
    r = interrupt_while_reading(tmp_path, "data", "--out", tmp_path / "m.csv")
    assert r.returncode == 130 and r.stderr.strip() == "interrupted; rerun the same command", r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]
