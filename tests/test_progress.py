"""Progress of long work: status lines when stderr is a log, quiet short passes, and the fine-tune's passes."""

import io
import re

import pytest

from featx.progress import StatusLines, progress_bar

LINE = re.compile(r"^(?P<label>.+): (?P<done>\d+)/(?P<total>\d+) \((?P<pct>[\d.]+)%\), [\d.]+ img/s, "
                  r"elapsed \d+:\d\d, ETA (\d+:)?\d+:\d\d$")


def test_status_lines_say_done_rate_and_eta():
    out = io.StringIO()
    s = StatusLines("extract", 10, 2, every=0, stream=out)
    s.advance(3)
    s.advance(5)
    s.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # one per period (every=0: each advance), one at the end
    first = LINE.match(lines[0])
    assert first and (first["label"], first["done"], first["total"], first["pct"]) == ("extract", "5", "10", "50.0")
    assert LINE.match(lines[-1])["done"] == "10"


def test_a_short_transient_pass_leaves_no_line_a_long_one_does():
    out = io.StringIO()
    s = StatusLines("epoch 1/3 val", 4, 0, every=3600, stream=out, final=False)
    s.advance(4)
    s.close()
    assert out.getvalue() == ""  # shorter than a period: nothing in the log
    s = StatusLines("epoch 1/3 train", 4, 0, every=0, stream=out, final=False)
    s.advance(2)
    s.advance(2)
    s.close()
    assert [LINE.match(x)["done"] for x in out.getvalue().splitlines()] == ["2", "4", "4"]


def test_progress_bar_in_a_log_reads_the_period_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("FEATX_PROGRESS_EVERY", "0")
    with progress_bar(True, 6, 0, "extract") as advance:
        advance(3)
        advance(3)
    lines = capsys.readouterr().err.splitlines()  # pytest's stderr is not a terminal
    assert [LINE.match(x)["done"] for x in lines] == ["3", "6", "6"]
    with progress_bar(False, 6, 0, "extract") as advance:
        advance(6)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_fine_tune_shows_each_pass_in_a_log(tmp_path, monkeypatch, capsys, folder_dataset):
    from safetensors.torch import save_file

    from conftest import tiny_state_dict
    from featx.finetune import fine_tune

    monkeypatch.setenv("FEATX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FEATX_PROGRESS_EVERY", "0")
    weights = tmp_path / "tiny.safetensors"
    save_file(tiny_state_dict(), str(weights))
    fine_tune(folder_dataset, "vgg16.hed", tmp_path / "ft", weights=weights, log=lambda m: None, epochs=2,
              head_epochs=1, batch_size=8, precision="fp32", workers=0, progress=True, block_rows=16)
    labels = {m["label"] for m in map(LINE.match, capsys.readouterr().err.splitlines()) if m}
    assert {"head alone: train features", "head alone: val features", "epoch 1/2 train", "epoch 1/2 val",
            "epoch 2/2 train", "epoch 2/2 val"} <= labels

