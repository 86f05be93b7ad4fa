"""Does int8 cost accuracy? Head accuracy on int8 features against float features, same photos, same head.

    python benchmarks/int8_accuracy.py --data ../shared/data/utkface/labels.csv --train 1200 --val 300

The photos are split by `featx data` with seed 0 (as benchmarks/utk_manifest.py); all test photos are
used, and --train / --val photos drawn at random (seed 0) from the train and val splits (a subset:
extraction runs twice).
Each photo is decoded once (uint8 in memory); then the float model (--reference, bf16 by default: its
features match fp32 to a cosine of 0.99999) and the int8 model, calibrated on --calib train photos
(featx.quantize.calibration_rows), extract the same tap. A standardised logistic regression, C picked
on val, is trained on each and scored on test. Also prints the per-row cosine int8 vs reference.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from common import machine, parser
from featx.data import load
from featx.extract import Extractor
from featx.reader import ImageRows
from featx.quantize import Int8Options, calibration_rows, quantize_int8


def pick_rows(splits: list[str], n_train: int, n_val: int, n_test: int | None) -> np.ndarray:
    s = np.asarray(splits)
    rng = np.random.default_rng(0)  # a random subset: the files are sorted by age, so the first rows are not one
    train, val, test = (np.sort(rng.permutation(np.flatnonzero(s == k))[:n])
                        for k, n in (("train", n_train), ("val", n_val), ("test", n_test)))
    return np.concatenate([train, val, test])


def decode(manifest, rows: np.ndarray, preprocess, workers: int) -> torch.Tensor:
    ds = ImageRows(manifest.root, [manifest.paths[i] for i in rows], preprocess)
    out = torch.zeros((len(rows), preprocess.size, preprocess.size, 3), dtype=torch.uint8)
    for batch in DataLoader(ds, batch_size=64, num_workers=workers):  # (rows, pixels, ok, reason, digest)
        out[batch[0]] = batch[1]
    return out


def features(fn, images: torch.Tensor, batch: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = [fn(images[a: a + batch]) for a in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.float32), time.perf_counter() - t0


def fit_head(f: np.ndarray, y: np.ndarray, split: np.ndarray):
    """Standardised logistic regression, C picked on val: (predict(features) -> labels, {"C", "val"})."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    tr, va = split == "train", split == "val"
    sc = StandardScaler().fit(f[tr])
    best = None
    for c in (1e-4, 1e-3, 1e-2, 0.1):
        m = LogisticRegression(C=c, max_iter=2000).fit(sc.transform(f[tr]), y[tr])
        acc = m.score(sc.transform(f[va]), y[va])
        if best is None or acc > best[0]:
            best = (acc, c, m)
    val_acc, c, m = best
    return (lambda g: m.predict(sc.transform(g))), {"C": c, "val": round(float(val_acc), 4)}


def compare_heads(f_ref: np.ndarray, f_int8: np.ndarray, y: np.ndarray, split: np.ndarray, ref: str) -> dict:
    """Test accuracy of a head trained on each, their paired difference (with its standard error, in
    points), how often they agree, and the float head applied to int8 features (what mixing would do)."""
    te = split == "test"
    p_ref, info_ref = fit_head(f_ref, y, split)
    p_q, info_q = fit_head(f_int8, y, split)
    a, b = p_ref(f_ref[te]) == y[te], p_q(f_int8[te]) == y[te]
    d = b.astype(float) - a.astype(float)
    return {ref: {**info_ref, "test": round(float(a.mean()), 4)}, "int8": {**info_q, "test": round(float(b.mean()), 4)},
            "int8_minus_ref_points": round(100 * float(d.mean()), 2),
            "paired_se_points": round(100 * float(d.std(ddof=1) / np.sqrt(len(d))), 2),
            "agreement": round(float((p_ref(f_ref[te]) == p_q(f_int8[te])).mean()), 4),
            f"{ref}_head_on_int8_features": round(float((p_ref(f_int8[te]) == y[te]).mean()), 4)}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--backbone", default="vgg16.hed")
    ap.add_argument("--tap", default="pool4-gap+pool5-gap")
    ap.add_argument("--train", type=int, default=1200)
    ap.add_argument("--val", type=int, default=300)
    ap.add_argument("--test", type=int, default=None, help="default: every test photo")
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--reference", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--save", default=None, help="also save the features (.npz) for other heads")
    args = ap.parse_args()

    m = load(args.data, seed=0)
    rows = pick_rows(list(m.splits), args.train, args.val, args.test)
    split = np.asarray(m.splits)[rows]
    y = np.asarray([str(m.labels[i]) for i in rows])
    print(f"machine: {machine()}", flush=True)
    ex = Extractor(args.backbone, tap=args.tap, device="cpu", precision=args.reference, dtype="float32")
    t0 = time.perf_counter()
    images = decode(m, rows, ex.preprocess, args.workers)
    print(f"{len(rows)} photos ({dict(zip(*np.unique(split, return_counts=True)))}) decoded in "
          f"{time.perf_counter() - t0:.0f} s; tap {args.tap}; {torch.get_num_threads()} threads", flush=True)

    train_idx = np.flatnonzero(split == "train")
    calib_idx = train_idx[calibration_rows(len(train_idx), args.calib, seed=0)]
    calib = [ex.normalize(images[calib_idx[a: a + 32]]) for a in range(0, len(calib_idx), 32)]
    q8 = quantize_int8(ex.model, calib, ex.tap, Int8Options(batch_size=args.batch_size))
    q8.lower()
    print(f"int8: calibrated on {len(calib_idx)} train photos in {q8.info['quantize_s']:.0f} s, "
          f"lowered in {q8.info['lower_s']:.0f} s", flush=True)

    f_int8, s_int8 = features(lambda x: q8(ex.normalize(x)).numpy(), images, args.batch_size)
    print(f"int8 features: {len(images) / s_int8:.2f} img/s", flush=True)
    f_ref, s_ref = features(lambda x: ex(x)[0], images, args.batch_size)
    print(f"{args.reference} features: {len(images) / s_ref:.2f} img/s", flush=True)
    cos = (f_ref * f_int8).sum(1) / (np.linalg.norm(f_ref, axis=1) * np.linalg.norm(f_int8, axis=1) + 1e-12)
    out = {"n": len(rows), "tap": args.tap, "reference": args.reference, "calib": len(calib_idx),
           "cosine": {"min": float(cos.min()), "p1": float(np.percentile(cos, 1)), "mean": float(cos.mean())},
           "img_per_s": {"int8": len(images) / s_int8, args.reference: len(images) / s_ref},
           "head": compare_heads(f_ref, f_int8, y, split, args.reference),
           "quantize": q8.info}
    print(json.dumps(out, indent=2, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float) + "\n")
    if args.save:
        np.savez(args.save, rows=rows, split=split, y=y, ref=f_ref, int8=f_int8)


if __name__ == "__main__":
    main()
