"""RBF SVM on a face store's train rows at a few grid points; test accuracy overall, adults, children.

    python benchmarks/face_rbf.py --store cache/features/utk-both-facenet.zarr --C 3,10

Each point is fitted on the store's train split and scored on val (the choice) and on the fixed test
split; `age` (an extra column) splits adults (>= 13) from children.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from featx.heads import make_head
from featx.store import FeatureStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--C", default="3,10")
    a = ap.parse_args()
    s = FeatureStore.open(a.store)
    tr, va, te = (s.indices(k) for k in ("train", "val", "test"))
    X, y, Xv, yv, Xt, yt = s.features(tr), s.labels[tr], s.features(va), s.labels[va], s.features(te), s.labels[te]
    age = np.array([float(v) for v in s.extras["age"][te]])
    for c in (float(v) for v in a.C.split(",")):
        t = time.time()
        grid = {"C": [c], "gamma": [1.0 / X.shape[1]]}
        h = make_head("rbf-svm", grid=grid).fit(X, y, Xv, yv)
        ok = h.predict(Xt) == yt
        print(json.dumps({"C": c, "gamma": grid["gamma"][0], "fit_s": round(time.time() - t, 1),
                          "val": round(float((h.predict(Xv) == yv).mean()), 4), "test": round(float(ok.mean()), 4),
                          "adults": round(float(ok[age >= 13].mean()), 4),
                          "children": round(float(ok[age < 13].mean()), 4)}), flush=True)


if __name__ == "__main__":
    main()
