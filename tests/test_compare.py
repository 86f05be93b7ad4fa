"""featx compare: exact McNemar on known cases, ranking and pairing from real reports, refusal of other rows."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from featx.report.compare import compare, holm
from featx.errors import FeatxError
from featx.training import train
from featx.metrics import binomial_two_sided, mcnemar_exact
from featx.report import evaluate
from featx_cli.main import main

from test_heads import FakeStore, separable

ROOT = Path(__file__).resolve().parents[1]


def paired(only_a: int, only_b: int, both: int = 3, neither: int = 2):
    """Correctness vectors with exactly these discordant and concordant counts."""
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return np.array(a), np.array(b)


@pytest.mark.parametrize("only_a, only_b, p", [
    (0, 0, 1.0),                       # no discordant pairs: nothing to test
    (5, 0, 2 / 32),                    # all five discordant pairs favour A: 2 * (1/2)^5
    (0, 5, 2 / 32),                    # symmetric
    (1, 9, 2 * 11 / 1024),             # P(X <= 1 | n=10) = (1 + 10) / 2^10
    (3, 12, 2 * 576 / 32768),          # (1 + 15 + 105 + 455) / 2^15
    (10, 10, 1.0),                     # balanced: p capped at 1
    (6, 5, 1.0),                       # 2 * P(X <= 5 | n=11) = 2 * 1/2 = 1
])
def test_mcnemar_known_answers(only_a, only_b, p):
    a, b = paired(only_a, only_b)
    r = mcnemar_exact(a, b)
    assert (r["only_a"], r["only_b"], r["both"], r["neither"]) == (only_a, only_b, 3, 2)
    assert r["p_value"] == pytest.approx(p, rel=1e-12)


def test_mcnemar_agrees_with_scipy_and_ignores_concordant_pairs():
    from scipy.stats import binomtest

    for b, c in [(7, 1), (20, 35), (0, 13), (120, 90), (400, 460)]:
        assert binomial_two_sided(b, c) == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9)
    # concordant rows change nothing
    assert mcnemar_exact(*paired(2, 9, both=0, neither=0))["p_value"] == \
        mcnemar_exact(*paired(2, 9, both=500, neither=70))["p_value"]
    with pytest.raises(ValueError):
        mcnemar_exact([True, False], [True])


def test_holm_adjustment_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def noisy_store(**kw) -> FakeStore:
    X, y = separable(300, 16, 2, seed=5, shift=1.0)
    return FakeStore(X, y, ["female", "male"], **kw)


@pytest.fixture
def reports(tmp_path):
    store = noisy_store()
    dirs = {}
    for kind in ("logreg", "sgd", "linear-svm"):
        train(store, kind, tmp_path / "heads" / kind)
        dirs[kind] = tmp_path / "rep" / kind
        evaluate(tmp_path / "heads" / kind, store, report_dir=dirs[kind])
    return store, dirs


def test_compare_ranks_and_pairs_the_rows(reports, tmp_path):
    store, dirs = reports
    s = compare(list(dirs.values()), tmp_path / "cmp")
    metrics = {k: json.loads((d / "metrics.json").read_text()) for k, d in dirs.items()}
    accs = [r["accuracy"] for r in s["runs"]]
    assert accs == sorted(accs, reverse=True) and len(s["pairs"]) == 3
    for r in s["runs"]:
        kind = r["label"].split(" on ")[0]
        m = metrics[kind]
        assert r["accuracy"] == m["accuracy"] and r["accuracy_interval"] == m["intervals"]["overall"]["accuracy"]
        assert r["fit_seconds"] == m["timing"]["fit_seconds"] > 0 and r["predict_seconds"] is not None
        assert r["n"] == len(store.indices("test"))
    # the counts come from the rows themselves
    by_rank = {r["rank"]: r["label"].split(" on ")[0] for r in s["runs"]}
    for p in s["pairs"]:
        a = np.loadtxt(dirs[by_rank[p["a"]]] / "predictions.csv", delimiter=",", skiprows=1, usecols=5)
        b = np.loadtxt(dirs[by_rank[p["b"]]] / "predictions.csv", delimiter=",", skiprows=1, usecols=5)
        assert p["only_a"] == int(((a == 1) & (b == 0)).sum()) and p["only_b"] == int(((a == 0) & (b == 1)).sum())
        assert p["p_value"] == mcnemar_exact(a == 1, b == 1)["p_value"]
    # the page shows the same numbers, and only inlined images
    html = (tmp_path / "cmp" / "compare.html").read_text()
    for r in s["runs"]:
        row = re.search(f'<tr data-rank="{r["rank"]}">(.*?)</tr>', html).group(1)
        assert f'data-key="accuracy">{r["accuracy"]:.3f}<' in row
        lo, hi = r["accuracy_interval"]
        assert f'data-key="interval">[{lo:.3f}, {hi:.3f}]<' in row
    for p in s["pairs"]:
        assert f'data-pair="{p["a"]},{p["b"]}"' in html and f'data-key="p">{p["p_value"]:.4g}<' in html
    assert re.findall(r'src="([^"]{0,22})', html) == ["data:image/png;base64,"]
    assert "weights sha256" in html and "w" * 64 in html and json.loads((tmp_path / "cmp" / "compare.json")
                                                                         .read_text())["runs"][0]["rank"] == 1


def test_compare_refuses_other_rows_in_one_line(reports, tmp_path, capsys):
    store, dirs = reports
    evaluate(tmp_path / "heads" / "logreg", store, split="val", report_dir=tmp_path / "rep" / "val")
    with pytest.raises(FeatxError, match="different test rows"):
        compare([dirs["logreg"], tmp_path / "rep" / "val"], tmp_path / "cmp")
    assert main(["compare", str(dirs["sgd"]), str(tmp_path / "rep" / "val"), "--out", str(tmp_path / "c2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: reports ") and "different test rows" in err and err.count("\n") == 1
    assert not (tmp_path / "c2").exists()
    # same row count, another path in one row
    other = noisy_store()
    other.paths = other.paths.astype("<U40")
    other.paths[store.indices("test")[3]] = "img/elsewhere.jpg"
    evaluate(tmp_path / "heads" / "sgd", other, report_dir=tmp_path / "rep" / "moved")
    with pytest.raises(FeatxError, match="row 3 is 'img/0019.jpg' in one and 'img/elsewhere.jpg'"):
        compare([dirs["sgd"], tmp_path / "rep" / "moved"], tmp_path / "cmp")
    assert main(["compare", str(dirs["sgd"])]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["compare", str(dirs["sgd"]), str(tmp_path)]) == 2
    assert "not a report folder" in capsys.readouterr().err


def test_cli_compare_prints_the_ranking(reports, tmp_path, capsys):
    _, dirs = reports
    assert main(["compare", *map(str, dirs.values()), "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1. ") and "McNemar p=" in out and f"page: {tmp_path / 'c' / 'compare.html'}" in out
    # the same report twice: labels carry the folder, and the pair has no discordant rows
    s = compare([dirs["sgd"], dirs["sgd"]], tmp_path / "c3")
    assert s["runs"][0]["label"] == f"sgd on fake [{dirs['sgd']}]" and s["pairs"][0]["p_value"] == 1.0


def test_benchmark_writes_the_same_page(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import compare_heads

    store = noisy_store()
    monkeypatch.setattr(compare_heads, "open_store", lambda s: store)
    assert compare_heads.main(["--store", "s.zarr", "--out", str(tmp_path / "b"), "--heads", "logreg,sgd"]) == 0
    reports = sorted((tmp_path / "b" / "reports" / "s").iterdir())
    assert [p.name for p in reports] == ["logreg", "sgd"]
    bench = json.loads((tmp_path / "b" / "compare.json").read_text())
    again = compare(reports, tmp_path / "cli")
    strip = lambda s: {k: v for k, v in s.items() if k not in ("date", "page")}  # noqa: E731
    assert strip(bench) == strip(json.loads((tmp_path / "cli" / "compare.json").read_text()))
    assert (tmp_path / "b" / "compare.html").is_file() and again["pairs"][0]["a"] == 1
