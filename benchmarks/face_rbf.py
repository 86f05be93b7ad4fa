"""RBF SVM on a face store's train rows at a few grid points; test accuracy overall, adults, children.

    python benchmarks/face_rbf.py --store cache/features/utk-both-facenet.zarr --C 3,10

Each point is fitted on the store's train split and scored on val (the choice) and on the fixed test
split; `age` (an extra column) splits adults from children (common.ADULT_AGE).
"""

from __future__ import annotations

import json

from common import Stopwatch, by_age, machine, parser
from featx.heads import make_head
from featx.store import FeatureStore


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--store", required=True)
    ap.add_argument("--C", default="3,10")
    a = ap.parse_args()
    s = FeatureStore.open(a.store)
    tr, va, te = (s.indices(k) for k in ("train", "val", "test"))
    X, y, Xv, yv, Xt, yt = s.features(tr), s.labels[tr], s.features(va), s.labels[va], s.features(te), s.labels[te]
    age = [float(v) for v in s.extras["age"][te]]
    print(f"machine: {machine()}")
    for c in (float(v) for v in a.C.split(",")):
        grid = {"C": [c], "gamma": [1.0 / X.shape[1]]}
        with Stopwatch() as t:
            h = make_head("rbf-svm", grid=grid).fit(X, y, Xv, yv)
        test = by_age(h.predict(Xt) == yt, age)
        print(json.dumps({"C": c, "gamma": grid["gamma"][0], "fit_s": round(t.s, 1),
                          "val": round(float((h.predict(Xv) == yv).mean()), 4), "test": test["accuracy"],
                          "adults": test["adults"], "children": test["children"]}), flush=True)


if __name__ == "__main__":
    main()
