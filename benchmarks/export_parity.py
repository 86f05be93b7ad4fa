"""ONNX export on real photos: parity with featx's predict path, file size and speed, in one run.

    python benchmarks/export_parity.py --shared ../shared/data --work cache/export-bench
    python benchmarks/export_parity.py --bases dlib.resnet --train 480 --n 256 --rounds 2

For each base and store dtype (--dtypes; float16 is featx's default): a store of --train `utkface`
photos (rows of featx's seed-0 train and val splits; the base in fp32, `featx extract --precision
fp32`, with mirrored features), every classifier kind trained on gender, a logistic regression trained
with the mirrored features too (its answers average the photo and its mirror image), every regression
kind on age; all heads exported to one file; the logistic regression (the gender model) also to a file of
its own. On --n photos of `utkface`'s seed-0 test split (never trained on):

- parity: featx's predict path at fp32 (featx.predict.HeadModel: Extractor, then SavedHead.outputs)
  against the exported file under onnxruntime (`featx predict --model`'s OnnxModel), largest
  |difference| in any class probability, per head kind;
- speed: `featx predict --head` (iter_predictions, its default `auto` precision) against
  `featx predict --model` (iter_model_predictions) on the same photos: decoding, resizing and
  batches of 16 as the CLI does, model loading excluded (timed apart). The two alternate --rounds
  times on the shared machine; the best round of each is kept.

Prints Markdown tables and writes results.json into --work.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from featx.data import Manifest, load

BASES = {"dlib.resnet": "embedding+pooled", "facenet.casia": "embedding+block8-gap",
         "vgg16.hed": "pool4-gap+pool5-gap"}
KINDS = ("logreg", "linear-svm", "rbf-svm", "mlp", "sgd")
MIRROR = "logreg-mirror"  # a logreg trained with mirrored features (--augment-flip): answers average both
REGRESSORS = ("ridge", "rbf-ridge", "mlp-regress", "sgd-regress")  # on `age`


def subset(m: Manifest, split: str, n: int) -> list[int]:
    return [i for i, s in enumerate(m.splits) if s == split][:n]


def train_manifest(m: Manifest, n: int) -> Manifest:
    rows = subset(m, "train", n - n // 8) + subset(m, "val", n // 8)
    return Manifest(root=m.root, paths=[m.paths[i] for i in rows], labels=[m.labels[i] for i in rows],
                    splits=[m.splits[i] for i in rows], source="csv", split_by="featx data seed 0 (subset)",
                    extras={k: [v[i] for i in rows] for k, v in m.extras.items()}, types=m.types)


def train_heads(m: Manifest, base: str, work: Path, dtype: str) -> dict[str, Path]:
    """Every classifier kind on gender, a mirror-averaging logreg, every regression kind on age."""
    from featx.extract import extract
    from featx.training import open_store, train, use_target

    store = work / f"{base}-{dtype}.zarr"
    extract(m, base, str(store), tap=BASES[base], precision="fp32", device="cpu", progress=False, workers=1,
            dtype=dtype, flip_tta=True)
    plan = [(k, k, "label", False) for k in KINDS] + [(MIRROR, "logreg", "label", True)]
    plan += [(k, k, "age", False) for k in REGRESSORS]
    heads = {}
    for name, kind, target, flip in plan:
        out = work / f"{base}-{dtype}" / name
        if not (out / "head.json").is_file():
            train(use_target(open_store(str(store)), None if target == "label" else target, "auto"), kind, out,
                  augment_flip=flip)
        heads[name] = out
    return heads


def parity(heads: dict[str, Path], onnx_all: Path, photos: list[Path]) -> dict[str, float]:
    """Largest |Δprob| (regression: |Δvalue| in years) per head: featx predict's own path (HeadModel at
    fp32: one base, features and mirrored features, SavedHead.outputs) vs the several-head file."""
    import torch

    from featx.export import OnnxModel
    from featx.images import open_rgb
    from featx.predict import HeadModel, load_heads

    hm = HeadModel(load_heads(list(heads.values())), None, "cpu", "fp32")
    om = OnnxModel(onnx_all, "cpu", "logreg")
    chips = np.stack([hm.pixels(open_rgb(p)) for p in photos])
    assert np.array_equal(chips, np.stack([om.pixels(open_rgb(p)) for p in photos]))
    base = hm.bases[0]
    runs = [base.ex(torch.from_numpy(chips[s:s + 16])) for s in range(0, len(chips), 16)]
    feats, flips = (np.concatenate([np.asarray(r[k], np.float32) for r in runs]) for k in (0, 1))
    got = {k: np.concatenate([om.run(chips[s:s + 16])[k] for s in range(0, len(chips), 16)]) for k in heads}
    out = {}
    for h, cols in base.heads:
        want = h.outputs(feats[:, cols], flips[:, cols] if h.mirror else None)
        out[h.name] = float(np.abs(want - got[h.name]).max())
    return out


def timed(make, photos: list[Path]) -> tuple[float, np.ndarray]:
    from featx.predict import predict_with

    model = make()
    t0 = time.perf_counter()
    preds = list(predict_with(lambda: model, [str(p) for p in photos], batch_size=16))
    dt = time.perf_counter() - t0
    assert all(p.error is None for p in preds)
    return len(photos) / dt, np.array([[p.probabilities[c] for c in sorted(p.probabilities)] for p in preds])


def speed(head_dir: Path, onnx_file: Path, photos: list[Path], rounds: int) -> dict:
    from featx.export import OnnxModel
    from featx.heads import load_head
    from featx.predict import HeadModel, load_heads

    def featx_model():
        head, card = load_head(head_dir)
        return HeadModel(load_heads(head_dir), None, "auto")

    t0 = time.perf_counter()
    m = featx_model()
    load_featx, precision = time.perf_counter() - t0, m.ex.precision
    t0 = time.perf_counter()
    OnnxModel(onnx_file)
    load_onnx = time.perf_counter() - t0
    best_f = best_o = 0.0
    for _ in range(rounds):
        rf, pf = timed(featx_model, photos)
        ro, po = timed(lambda: OnnxModel(onnx_file), photos)
        best_f, best_o = max(best_f, rf), max(best_o, ro)
    return {"featx_img_s": best_f, "onnx_img_s": best_o, "ratio": best_o / best_f, "featx_precision": precision,
            "featx_auto_vs_onnx_max_dprob": float(np.abs(pf - po).max()), "load_s": {"featx": load_featx,
                                                                                      "onnx": load_onnx}}


def run_base(base: str, m: Manifest, photos: list[Path], work: Path, rounds: int) -> dict:
    from featx.export import export_onnx

    res = {"tap": BASES[base], "parity": {}, "n": ARGS.n, "train": ARGS.train}
    for dtype in ARGS.dtypes.split(","):
        heads = train_heads(train_manifest(m, ARGS.train), base, work, dtype)
        folder = work / f"{base}-{dtype}"
        card = export_onnx(list(heads.values()), folder / "all" / "model.onnx")
        res["parity"][dtype] = parity(heads, folder / "all" / "model.onnx", photos)
        res["opset"], res["all_mb"] = card["export"]["opset"], (folder / "all" / "model.onnx").stat().st_size / 1e6
        if ARGS.speed and "speed" not in res:  # the first dtype's gender model (float16: featx's default store)
            gender = folder / "gender" / "model.onnx"
            export_onnx([heads["logreg"]], gender)
            res["gender_mb"] = gender.stat().st_size / 1e6
            res["speed"] = speed(heads["logreg"], gender, photos, rounds)
    return res


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def report(results: dict) -> None:
    import onnxruntime
    import torch

    print(f"\nonnxruntime {onnxruntime.__version__}, torch {torch.__version__}, opset "
          f"{next(iter(results.values()))['opset']}; {cpu()}; utkface test photos\n")
    cols = (*KINDS, MIRROR, *REGRESSORS)
    print("| base | tap | store dtype | photos | " + " | ".join(cols) + " |")
    print("|---|---|---|---|" + "---|" * len(cols))
    for b, r in results.items():
        for dtype, par in r["parity"].items():
            print(f"| {b} | {r['tap']} | {dtype} | {r.get('n', 256)} | "
                  + " | ".join(f"{par[k]:.1e}" if k in par else "" for k in cols) + " |")
    print("\n| base | gender file MB | all 10 heads MB | featx predict img/s (precision) | onnxruntime img/s | ratio |"
          " max Δprob featx auto vs onnx |")
    print("|---|---|---|---|---|---|---|")
    for b, r in results.items():
        if "speed" not in r:
            continue
        s = r["speed"]
        print(f"| {b} | {r['gender_mb']:.1f} | {r['all_mb']:.1f} | {s['featx_img_s']:.1f} ({s['featx_precision']}) | "
              f"{s['onnx_img_s']:.1f} | {s['ratio']:.2f} | {s['featx_auto_vs_onnx_max_dprob']:.1e} |")


def main() -> None:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--work", default="cache/export-bench")
    ap.add_argument("--bases", default=",".join(BASES))
    ap.add_argument("--train", type=int, default=480, help="photos in each base's store (train + val)")
    ap.add_argument("--n", type=int, default=256, help="test photos for parity and speed")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtypes", default="float16,float32", help="store dtypes (float16: featx's default)")
    ap.add_argument("--no-speed", dest="speed", action="store_false", help="parity and size only")
    ARGS = ap.parse_args()
    m = load(Path(ARGS.shared) / "utkface" / "labels.csv", seed=0)
    photos = [Path(m.root) / m.paths[i] for i in subset(m, "test", ARGS.n)]
    work = Path(ARGS.work)
    out = work / "results.json"
    results = json.loads(out.read_text()) if out.is_file() else {}
    for base in ARGS.bases.split(","):
        t0 = time.perf_counter()
        results[base] = run_base(base, m, photos, work, ARGS.rounds)
        print(f"{base}: {time.perf_counter() - t0:.0f} s {json.dumps(results[base])}", flush=True)
        out.write_text(json.dumps(results, indent=1))
    report(results)


ARGS = argparse.Namespace()

if __name__ == "__main__":
    main()
