"""A smaller training manifest with the same fixed test split, for runs a busy CPU cannot finish in full.

    python benchmarks/face_subset.py --src cache/data/utk-both.csv --train 5000 --out cache/data/utk-both-5k.csv

Keeps every test row (the 583 `utkface` test photos) and `--train` train rows drawn at random (seed 0)
from the source's train split (both folders, in proportion); drops val (train heads with
`--select-on holdout`). Paths stay relative to the same folder, so the output sits next to the source.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="cache/data/utk-both.csv")
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--out", default="cache/data/utk-both-5k.csv")
    args = ap.parse_args()
    src, out = Path(args.src), Path(args.out)
    if src.resolve().parent != out.resolve().parent:
        raise SystemExit("--out must sit in the same folder as --src (paths are relative to it)")
    with open(src, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    pick = set(np.random.default_rng(0).choice(train, min(args.train, len(train)), replace=False).tolist())
    keep = [r for i, r in enumerate(rows) if r["split"] == "test" or i in pick]
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(keep)
    n_test = sum(r["split"] == "test" for r in keep)
    extra = sum(r["split"] == "train" and r.get("source") == "utkface_extra" for r in keep)
    print(f"{out}: {len(keep)} rows: {len(keep) - n_test} train ({extra} from utkface_extra), {n_test} test")


if __name__ == "__main__":
    main()
