"""A smaller training manifest with the same fixed test split, for runs a busy CPU cannot finish in full.

    python benchmarks/face_subset.py --src cache/data/utk-both.csv --train 5000 --out cache/data/utk-both-5k.csv
    python benchmarks/face_subset.py --src cache/data/utk.csv --train 1000 --keep-val --out cache/data/utk-1k.csv

Keeps every test row (the 583 `utkface` test photos) and `--train` train rows drawn at random (seed 0,
common.sample) from the source's train split (both folders, in proportion). Val is dropped (train heads with
`--select-on holdout`) unless `--keep-val` keeps all of it. Manifest.subset keeps every column.
"""

from __future__ import annotations


import numpy as np

from common import parser, sample, split_rows
from featx.data import load


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--src", default="cache/data/utk-both.csv")
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--keep-val", action="store_true", help="keep every val row (default: drop val)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="cache/data/utk-both-5k.csv")
    args = ap.parse_args()
    m = load(args.src)
    keep = [sample(split_rows(m.splits, "train"), args.train, args.seed), split_rows(m.splits, "test")]
    keep += [split_rows(m.splits, "val")] if args.keep_val else []
    sub = m.subset(np.sort(np.concatenate(keep)))
    path = sub.write(args.out)
    counts = {s: sum(1 for x in sub.splits if x == s) for s in ("train", "val", "test")}
    extra = sum(s == "train" and src == "utkface_extra" for s, src in zip(sub.splits, sub.extras.get("source", [])))
    print(f"{path}: {len(sub)} rows {counts} ({extra} train rows from utkface_extra) hash {sub.hash()[:12]}")


if __name__ == "__main__":
    main()
