"""How well can a store's features tell the gender of children at all? A bound for issue 12's 0.90.

    python benchmarks/children_ceiling.py --store cache/features/utk-both-dlib.zarr [--store S2 ...] [--age 13]

For each store (any featx store whose manifest kept an `age` column): logistic regression trained only
on the children (age < --age) of every split, scored by 5-fold stratified cross-validation, for a few C
values (the best is shown, which flatters it). That is what the features can give children when a head
is fitted to children alone. With the fixed test split's mix of adults and children, it bounds the
overall accuracy any head on these features can reach: (adults right + children right) / n, with the
adults' figure taken at 100% and at the best a fine-tune reached.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common import ADULT_AGE, machine
from featx.training import open_store

C_GRID = (0.001, 0.01, 0.1, 1.0)


def children_cv(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, float, float]:
    """(best mean accuracy, its std, its C) of 5-fold CV over C_GRID."""
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    best = (0.0, 0.0, 0.0)
    for C in C_GRID:
        s = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000)), X, y, cv=cv)
        best = max(best, (float(s.mean()), float(s.std()), C))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", action="append", required=True)
    ap.add_argument("--age", type=float, default=ADULT_AGE, help="children are younger than this")
    ap.add_argument("--adults", type=float, default=0.987, help="adults' accuracy for the second bound")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"machine: {machine()}")
    print("| store | tap | dim | children (train/val/test) | children-only 5-fold CV acc | C "
          f"| bound at adults 1.0 | bound at adults {a.adults} |")
    print("|---|---|---|---|---|---|---|---|")
    for path in a.store:
        s = open_store(path)
        if "age" not in s.extras:
            raise SystemExit(f"error: store {path} has no `age` column")
        age = s.extras["age"].astype(float)
        ch = np.flatnonzero((age < a.age) & s.ok)
        X = s.features(ch).reshape(len(ch), -1)
        acc, sd, C = children_cv(X, s.labels[ch], a.seed)
        te = np.flatnonzero((s.split == "test") & s.ok)
        n_ch = int((age[te] < a.age).sum())
        n_ad = len(te) - n_ch
        counts = "/".join(str(int((s.split[ch] == k).sum())) for k in ("train", "val", "test"))
        bound = lambda adults: (adults * n_ad + acc * n_ch) / max(len(te), 1)  # noqa: E731
        print(f"| {path} | {s.tap} | {X.shape[1]} | {counts} | {acc:.3f} ± {sd:.3f} | {C:g} "
              f"| {bound(1.0):.3f} | {bound(a.adults):.3f} |", flush=True)


if __name__ == "__main__":
    main()
