"""Which part of a store's tap carries the label? One logistic regression per part, and one on all of them.

    python benchmarks/tap_table.py --store cache/features/utk-dlib.zarr          # tap embedding+pooled
    python benchmarks/tap_table.py --store cache/features/utk-both-5k-facenet.zarr --select holdout

For a store extracted with a tap of several parts (`embedding+pooled`, `embedding+block8-gap`, ...), each
part's columns alone and all columns: standardised logistic regression, C in C_GRID chosen on val (or, with
`--select holdout`, on a seeded 20% of train, for stores without val rows), refitted on train and scored
on test: accuracy overall, of adults and of children (common.ADULT_AGE).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common import by_age, machine, parser, sample
from featx.backbones import tap_dim
from featx.store import FeatureStore
from featx.weights import load_backbone

C_GRID = (0.001, 0.01, 0.1, 1.0)


def part_columns(store: FeatureStore) -> list[tuple[str, slice]]:
    """(part, its columns) for each part of the store's tap, widths computed on the release's model."""
    ident = store.attrs["identity"]
    release, model, _ = load_backbone(ident["release"])
    out, start = [], 0
    for part in ident["tap"].split("+"):
        width = int(np.prod(tap_dim(model, part, release.preprocess.size)))
        out.append((part, slice(start, start + width)))
        start += width
    return out


def fit(X: np.ndarray, y: np.ndarray, fit_rows: np.ndarray, pick_rows: np.ndarray):
    """The grid point best on pick_rows, refitted on fit_rows: (model, C)."""
    def model(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
    scores = [(model(c).fit(X[fit_rows], y[fit_rows]).score(X[pick_rows], y[pick_rows]), c) for c in C_GRID]
    c = max(scores)[1]
    return model(c).fit(X[fit_rows], y[fit_rows]), c


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--store", required=True)
    ap.add_argument("--select", choices=["val", "holdout"], default="val")
    a = ap.parse_args()
    s = FeatureStore.open(a.store)
    tr, va, te = (s.indices(k) for k in ("train", "val", "test"))
    if a.select == "holdout":
        va = sample(tr, len(tr) // 5, seed=0)
        tr = np.setdiff1d(tr, va)
    rows = np.concatenate([tr, va, te])
    X, y = s.features(rows).reshape(len(rows), -1).astype(np.float32), np.asarray(s.labels)[rows]
    fit_rows, pick_rows, test_rows = np.split(np.arange(len(rows)), [len(tr), len(tr) + len(va)])
    age = np.asarray(s.extras["age"], float)[te]
    print(f"machine: {machine()}")
    print(f"{a.store}: {len(tr)} train, {len(va)} {a.select}, {len(te)} test rows")
    print("| features | dim | accuracy | adults | children | C |")
    print("|---|---|---|---|---|---|")
    parts = part_columns(s)
    for name, cols in parts + ([("+".join(p for p, _ in parts), slice(None))] if len(parts) > 1 else []):
        model, c = fit(X[:, cols], y, fit_rows, pick_rows)
        r = by_age(model.predict(X[test_rows][:, cols]) == y[test_rows], age)
        print(f"| `{name}` | {X[:, cols].shape[1]} | {r['accuracy']:.3f} | {r['adults']:.3f} | {r['children']:.3f} "
              f"| {c:g} |", flush=True)


if __name__ == "__main__":
    main()
