"""`featx weights get vggface`: download from public mirrors (here a local HTTP server serving a tiny
VGG-Face-shaped file built in the test), convert, pin the sha256 on first download; offline, one line."""

from __future__ import annotations

import functools
import http.server
import threading
from dataclasses import replace

import pytest

from featx.releases import RELEASES
from featx.weights import get_weights, load_backbone
from featx_cli.main import main

from test_importers import raw_nchw, write_mcn_pth


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_get_downloads_converts_and_pins(server, monkeypatch, capsys):
    root, base = server
    write_mcn_pth(root / "vgg_face_dag.pth", raw_nchw(1, fc6="linear"))
    urls = (f"{base}/missing/vgg_face_dag.pth", f"{base}/vgg_face_dag.pth")
    monkeypatch.setitem(RELEASES, "vggface", replace(RELEASES["vggface"], urls=urls))
    rec = get_weights("vggface")
    assert rec["format"] == "mcn-pth" and rec["has_fc"] is True
    release, model, sha = load_backbone("vggface")
    assert sha == rec["sha256"] and model.has_fc
    # the mirror later serves other bytes: refused, whatever the file claims to be
    write_mcn_pth(root / "vgg_face_dag.pth", raw_nchw(2, fc6="linear"))
    from featx.weights import weights_dir

    (weights_dir() / "downloads" / "vgg_face_dag.pth").unlink()
    assert main(["weights", "get", "vggface", "--force"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error:") and "recorded when featx first downloaded it" in last


def test_offline_says_where_to_put_the_file(monkeypatch, capsys):
    urls = ("http://127.0.0.1:9/vgg_face_dag.pth",)  # nothing listens on the discard port
    monkeypatch.setitem(RELEASES, "vggface", replace(RELEASES["vggface"], urls=urls))
    assert main(["weights", "get", "vggface"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error:") and "put vgg_face_dag.pth in" in last and "weights import vggface" in last
