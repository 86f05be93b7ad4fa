"""What a face crop is worth on raw photos (issue 21): one saved head scored on the same frames, cut four ways.

    python benchmarks/utk_manifest.py --shared ../shared/data --out cache/data
    featx extract --backbone dlib.resnet --data cache/data/utk-both.csv --store cache/features/utk-both-dlib.zarr
    featx train-head --store cache/features/utk-both-dlib.zarr --head logreg --out cache/heads/dlib-logreg
    python benchmarks/lfw_manifest.py ...           # the raw frames: /work/data/lfw/labels.csv
    /work/scratch/scout-dlib/bin/python benchmarks/dlib_chips.py ...   # dlib's chips: /work/data/lfw-dlibchips
    python benchmarks/lfw_settings.py --head cache/heads/dlib-logreg --data /work/data/lfw/labels.csv \
        --centre 0.4,0.5,0.6,0.7,0.8 --chips dlib=/work/data/lfw-dlibchips/labels.csv

Settings, each fed through the head's own path (featx.predict.HeadModel: the release's resize, the tap, the
store dtype, the head) exactly as `featx predict` runs it:
- `whole`: the frame as it is;
- `centre-F`: the central fraction F of the frame (each F given; the best is the "hand-tuned" crop);
- `haar`: featx predict's `--detect-faces` crop (OpenCV Haar cascade, largest face, +25% margin: FaceCropper);
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


class Scorer:
    """Answers of one head for PIL images, batched through featx's own predict path."""

    def __init__(self, head_dir: str, batch: int = 32):
        from featx.heads import load_head
        from featx.predict import HeadModel

        head, card = load_head(head_dir)
        self.model = HeadModel(head, card, device="cpu", head_dir=head_dir)
        self.card, self.batch = card, batch

    def labels(self, images: list) -> list[str | None]:
        """Predicted label per image (None where the image is None)."""
        from featx.predict import Prediction

        out: list[str | None] = [None] * len(images)
        todo = [(i, im) for i, im in enumerate(images) if im is not None]
        for k in range(0, len(todo), self.batch):
            part = todo[k:k + self.batch]
            preds = [(Prediction(str(i)), self.model.pixels(im)) for i, im in part]
            self.model.label(preds)
            for (i, _), (p, _) in zip(part, preds):
                out[i] = p.label
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
    elif kind == "haar":
        cropper = FaceCropper()
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
    return {"setting": name, "n": int(ans.sum()), "coverage": float(ans.mean()), "accuracy": float(hit.mean()),
            "ci95": [lo, hi], "accuracy_fallback_whole": float(fall.mean()), "ci95_fallback": [flo, fhi]}


def main() -> None:
    from featx.images import open_rgb

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head", required=True, help="a head trained by featx train-head (dlib.resnet features)")
    ap.add_argument("--data", default="/work/data/lfw/labels.csv")
    ap.add_argument("--centre", default="0.4,0.5,0.6,0.7,0.8", help="central fractions to try")
    ap.add_argument("--no-haar", action="store_true")
    ap.add_argument("--chips", action="append", default=[], help="NAME=labels.csv of ready-cut chips (repeatable)")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args()
    rows = read_manifest(Path(args.data))
    truth = [r["label"] for r in rows]
    frames = [open_rgb(r["file"]) for r in rows]
    scorer = Scorer(args.head)
    prov = scorer.card.get("provenance", {})
    print(f"{len(rows)} frames ({truth.count('female')} female, {truth.count('male')} male); head "
          f"{args.head}: {prov.get('release')} tap {prov.get('tap')}")
    kinds = ["whole"] + [f"centre-{float(f):.2f}" for f in args.centre.split(",") if f] + ([] if args.no_haar else ["haar"])
    results, whole, preds = [], None, {}
    for kind in kinds + args.chips:
        t0 = time.perf_counter()
        if "=" in kind:
            images, cut = chip_images(rows, kind), 0.0
            kind = kind.split("=", 1)[0]
        else:
            images, cut = crops(frames, kind)
        pred = preds[kind.split("=", 1)[0]] = scorer.labels(images)
        whole = pred if whole is None else whole
        res = summarise(kind, pred, truth, whole)
        res["seconds_cut"], res["seconds_total"] = cut, time.perf_counter() - t0
        results.append(res)
        print(f"{kind:>12}: accuracy {res['accuracy']:.3f} [{res['ci95'][0]:.3f}, {res['ci95'][1]:.3f}] n={res['n']} "
              f"(coverage {res['coverage']:.3f}); all frames, whole frame where no face: "
              f"{res['accuracy_fallback_whole']:.3f}  [{res['seconds_total']:.0f} s]", flush=True)
    both = np.array([all(p[i] is not None for p in preds.values()) for i in range(len(rows))])
    print(f"on the {both.sum()} frames every setting answered:")
    for res in results:
        hit = np.array([p == t for p, t, b in zip(preds[res["setting"]], truth, both) if b], dtype=float)
        res["accuracy_common"], res["n_common"] = float(hit.mean()), int(both.sum())
        print(f"{res['setting']:>12}: {hit.mean():.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, "head": args.head, "provenance": prov,
                                               "results": results}, indent=1))


if __name__ == "__main__":
    main()
