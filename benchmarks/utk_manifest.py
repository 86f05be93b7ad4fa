"""Write the UTKFace manifests every accuracy figure in benchmarks/README.md uses.

    python benchmarks/utk_manifest.py --shared ../shared/data --out cache/data

utk.csv:      the 5,825 `utkface` photos, split by `featx data` with seed 0 (80/10/10, stratified).
utk-both.csv: the same rows and splits, plus the 13,472 `utkface_extra` photos as train (90%) and
              val (10%), seed 0. No `utkface_extra` photo is ever in test.
utk-both-utkval.csv: utk-both.csv with `utkface_extra`'s val rows moved to train, so val is the 583
              `utkface` val photos alone (the test split's mix of adults and children).
The fixed test split of every figure is the 583 `utkface` test photos (seed 0), in every file.
A `source` column says which folder a row came from; `age` and `race` are kept for per-group metrics.
Smaller training sets with the same test split: benchmarks/face_subset.py (utk-1k.csv, utk-both-5k.csv).
"""

from __future__ import annotations

from pathlib import Path

from common import parser
from featx.data import Manifest, assign_splits, load


def prefixed(m: Manifest, root: Path, source: str, splits: list[str]) -> Manifest:
    rel = Path(m.root).resolve().relative_to(root)
    extras = {**m.extras, "source": [source] * len(m)}
    return Manifest(root=root, paths=[f"{rel.as_posix()}/{p}" for p in m.paths], labels=list(m.labels),
                    splits=splits, extras=extras, source="csv", split_by="see benchmarks/utk_manifest.py")


def concat(a: Manifest, b: Manifest) -> Manifest:
    keys = sorted(set(a.extras) | set(b.extras))
    col = lambda m, k: m.extras.get(k, [""] * len(m))  # noqa: E731
    return Manifest(root=a.root, paths=a.paths + b.paths, labels=a.labels + b.labels, splits=a.splits + b.splits,
                    extras={k: col(a, k) + col(b, k) for k in keys}, source="csv", split_by=a.split_by)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--out", default="cache/data")
    args = ap.parse_args()
    root = Path(args.shared).resolve()
    utk = load(root / "utkface" / "labels.csv", seed=0)
    extra = load(root / "utkface_extra" / "labels.csv", seed=0)
    a = prefixed(utk, root, "utkface", list(utk.splits))
    extra_splits = assign_splits(extra.labels, None, seed=0, ratios=(0.9, 0.1, 0.0))
    b = prefixed(extra, root, "utkface_extra", extra_splits)
    b_utkval = prefixed(extra, root, "utkface_extra", [s if s != "val" else "train" for s in extra_splits])
    out = Path(args.out)
    for name, m in (("utk.csv", a), ("utk-both.csv", concat(a, b)), ("utk-both-utkval.csv", concat(a, b_utkval))):
        path = m.write(out / name)
        counts = {s: sum(1 for x in m.splits if x == s) for s in ("train", "val", "test")}
        print(f"{path}: {len(m)} rows {counts} hash {m.hash()[:12]}")


if __name__ == "__main__":
    main()
