"""What a face crop is worth on raw photos (issue 21): one saved head scored on the same frames, cut four ways.

    python benchmarks/utk_manifest.py --shared ../shared/data --out cache/data
    featx extract --backbone dlib.resnet --data cache/data/utk-both.csv --store cache/features/utk-both-dlib.zarr
    featx train-head --store cache/features/utk-both-dlib.zarr --head logreg --out cache/heads/dlib-logreg
    python benchmarks/lfw_manifest.py ...           # the raw frames: /work/data/lfw/labels.csv
    /work/scratch/scout-dlib/bin/python benchmarks/dlib_chips.py ...   # dlib's chips: /work/data/lfw-dlibchips
    python benchmarks/lfw_settings.py --head cache/heads/dlib-logreg --data /work/data/lfw/labels.csv \
        --centre 0.4,0.5,0.6,0.7,0.8 --chips dlib=/work/data/lfw-dlibchips/labels.csv

Settings, each fed through the base as `featx extract` and `featx predict` run it (featx.extract.Extractor:
the release's resize, auto precision, the tap, rounding to the store dtype); features are cached per setting
(`--cache`), so they can be made while the head's store is still being extracted, and scored later with `--head`
(its card must name the same release, tap and dtype):
- `whole`: the frame as it is;
- `centre-F`: the central fraction F of the frame (each F given; the best is the "hand-tuned" crop);
- `haar-M`: featx predict's `--detect-faces` crop (featx.predict.FaceCropper: OpenCV Haar cascade, largest
  face, the box widened by M on each side; predict's M is 0.25);
- `NAME=labels.csv`: ready-cut chips (dlib's own, or any other chip source), rows joined to the frames on the
  `group` column (one row per person); a frame without a chip has no answer there.

For each setting: accuracy on the frames it answers (n) with a 95% bootstrap interval (2,000 resamples of
those frames), its coverage, and the accuracy on all frames when a frame without a face falls back to the
whole-frame answer; then every setting on the frames that all settings answered (a paired comparison).
`--json` keeps every number.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
from pathlib import Path

import numpy as np


def read_manifest(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["file"] = str(path.parent / r["path"])
    return rows


def bootstrap(hit: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    if len(hit) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = hit[rng.integers(0, len(hit), (n_boot, len(hit)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


class Features:
    """Features of PIL images through the base as `featx extract` and `featx predict` compute them (the release's
    resize, auto precision, rounding to the store dtype), cached per setting so the head can come later."""

    def __init__(self, backbone: str, tap: str, dtype: str, cache: Path, batch: int = 32):
        from featx.extract import Extractor

        self.ex = Extractor(backbone, tap=tap, device="cpu", precision="auto", dtype=dtype)
        self.key = f"{backbone}.{tap}.{dtype}"
        self.cache, self.batch = cache, batch

    def __call__(self, name: str, images: list, digest: str) -> np.ndarray:
        """[n, d] float32 features, NaN rows where the image is None; `digest` names the inputs in the cache."""
        import torch

        path = self.cache / f"{name}.{self.key}.{digest}.npy"
        if path.exists():
            return np.load(path)
        todo = [(i, im) for i, im in enumerate(images) if im is not None]
        out = None
        for k in range(0, len(todo), self.batch):
            part = todo[k:k + self.batch]
            px = np.stack([np.array(self.ex.preprocess.resize_crop(im), dtype=np.uint8) for _, im in part])
            f = np.asarray(self.ex(torch.from_numpy(px))[0], np.float32)
            if out is None:
                out = np.full((len(images), f.shape[1]), np.nan, np.float32)
            out[[i for i, _ in part]] = f
        self.cache.mkdir(parents=True, exist_ok=True)
        np.save(path, out)
        return out


def head_labels(head_dir: str, feats: dict[str, np.ndarray], want: dict) -> dict[str, list]:
    """Each setting's predicted labels (None where no image) from a saved head whose card matches the features."""
    from featx.heads import load_head

    head, card = load_head(head_dir)
    prov = card.get("provenance", {})
    for k, v in want.items():
        if prov.get(k) != v:
            raise SystemExit(f"head {head_dir} was trained on {k}={prov.get(k)!r}, the features here are {v!r}")
    classes = list(card["classes"])
    out = {}
    for name, X in feats.items():
        ok = ~np.isnan(X).any(axis=1)
        lab: list = [None] * len(X)
        if ok.any():
            for i, k in zip(np.flatnonzero(ok), head.predict_proba(X[ok]).argmax(axis=1)):
                lab[i] = classes[k]
        out[name] = lab
    return out


def crops(frames: list, kind: str) -> tuple[list, float]:
    """The frames cut one way (None where no face is found) and the seconds the cutting took."""
    from featx.predict import FaceCropper
    from featx.releases import centre_fraction

    t0 = time.perf_counter()
    if kind == "whole":
        out = list(frames)
    elif kind.startswith("centre-"):
        out = [centre_fraction(im, float(kind.split("-", 1)[1])) for im in frames]
    elif kind.startswith("haar-"):
        cropper = FaceCropper(margin=float(kind.split("-", 1)[1]))
        out = []
        for im in frames:
            box = cropper.box(im)
            out.append(None if box is None else im.crop((box[0], box[1], box[0] + box[2], box[1] + box[3])))
    else:
        raise SystemExit(f"unknown setting {kind}")
    return out, time.perf_counter() - t0


def chip_images(rows: list[dict], spec: str) -> list:
    """Chips from a NAME=labels.csv manifest, in the order of `rows` (joined on group), None where missing."""
    from featx.images import open_rgb

    by_group = {r["group"]: r["file"] for r in read_manifest(Path(spec.split("=", 1)[1]))}
    return [open_rgb(by_group[r["group"]]) if r["group"] in by_group else None for r in rows]


def summarise(name: str, pred: list, truth: list[str], whole: list) -> dict:
    ans = np.array([p is not None for p in pred])
    hit = np.array([p == t for p, t in zip(pred, truth) if p is not None], dtype=float)
    fall = np.array([(p if p is not None else w) == t for p, w, t in zip(pred, whole, truth)], dtype=float)
    lo, hi = bootstrap(hit)
    flo, fhi = bootstrap(fall)
    by_label = {c: float(np.mean([p == t for p, t in zip(pred, truth) if t == c and p is not None]))
                for c in sorted(set(truth))}
    return {"setting": name, "n": int(ans.sum()), "coverage": float(ans.mean()), "accuracy": float(hit.mean()),
            "ci95": [lo, hi], "accuracy_fallback_whole": float(fall.mean()), "ci95_fallback": [flo, fhi],
            "by_label": by_label, "pred": pred}


def inputs_digest(data: str, spec: str) -> str:
    """sha256 of what a setting's images come from: the frames' manifest, the setting, a chip manifest's bytes."""
    h = hashlib.sha256(Path(data).read_bytes() + spec.encode())
    if "=" in spec:
        h.update(Path(spec.split("=", 1)[1]).read_bytes())
    return h.hexdigest()[:12]


def setting_images(rows: list[dict], frames: list, spec: str) -> tuple[str, list, float]:
    if "=" in spec:
        return spec.split("=", 1)[0], chip_images(rows, spec), 0.0
    images, cut = crops(frames, spec)
    return spec, images, cut


def report(preds: dict[str, list], truth: list[str]) -> list[dict]:
    results = []
    for name, pred in preds.items():
        res = summarise(name, pred, truth, preds["whole"])
        results.append(res)
        print(f"{name:>12}: accuracy {res['accuracy']:.3f} [{res['ci95'][0]:.3f}, {res['ci95'][1]:.3f}] n={res['n']} "
              f"(coverage {res['coverage']:.3f}); all frames, whole frame where no face: "
              f"{res['accuracy_fallback_whole']:.3f}; " + ", ".join(f"{c} {v:.3f}" for c, v in res["by_label"].items()))
    both = np.array([all(p[i] is not None for p in preds.values()) for i in range(len(truth))])
    print(f"on the {both.sum()} frames every setting answered:")
    for res in results:
        hit = np.array([p == t for p, t, b in zip(preds[res["setting"]], truth, both) if b], dtype=float)
        res["accuracy_common"], res["n_common"] = float(hit.mean()), int(both.sum())
        print(f"{res['setting']:>12}: {hit.mean():.3f}")
    return results


def main() -> None:
    from featx.images import open_rgb

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head", help="a head trained by featx train-head; without it only the features are cached")
    ap.add_argument("--data", default="/work/data/lfw/labels.csv")
    ap.add_argument("--backbone", default="dlib.resnet")
    ap.add_argument("--tap", default="embedding")
    ap.add_argument("--dtype", default="float16", help="the store dtype the head was trained on")
    ap.add_argument("--cache", default="/work/data/lfw-features", help="features per setting (.npy)")
    ap.add_argument("--centre", default="0.4,0.5,0.6,0.7,0.8", help="central fractions to try")
    ap.add_argument("--haar-margins", default="0.25", help="Haar box margins to try (0.25: featx predict's)")
    ap.add_argument("--chips", action="append", default=[], help="NAME=labels.csv of ready-cut chips (repeatable)")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args()
    rows = read_manifest(Path(args.data))
    truth = [r["label"] for r in rows]
    frames = [open_rgb(r["file"]) for r in rows]
    cache = Path(args.cache) / Path(args.data).parent.name
    feats_of = Features(args.backbone, args.tap, args.dtype, cache)
    print(f"{len(rows)} frames ({truth.count('female')} female, {truth.count('male')} male); "
          f"{args.backbone} tap {args.tap} ({args.dtype}); features cached in {cache}")
    specs = ["whole"] + [f"centre-{float(f):.2f}" for f in args.centre.split(",") if f]
    feats, timing = {}, {}
    specs += [f"haar-{float(m):.2f}" for m in args.haar_margins.split(",") if m]
    for spec in specs + args.chips:
        t0 = time.perf_counter()
        name, images, cut = setting_images(rows, frames, spec)
        feats[name] = feats_of(name, images, inputs_digest(args.data, spec))
        timing[name] = {"seconds_cut": cut, "seconds_total": time.perf_counter() - t0}
        print(f"{name:>12}: {int((~np.isnan(feats[name]).any(axis=1)).sum())} images, cut in {cut:.1f} s, "
              f"{timing[name]['seconds_total']:.0f} s in all", flush=True)
    if not args.head:
        return
    want = {"release": args.backbone, "tap": args.tap, "dtype": args.dtype}
    results = report(head_labels(args.head, feats, want), truth)
    for res in results:
        res.update(timing[res["setting"]])
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, "head": args.head, "features": want,
                                               "results": results}, indent=1))


if __name__ == "__main__":
    main()
