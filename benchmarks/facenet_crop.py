"""Which central crop of the UTKFace chips suits FaceNet? A cheap setting that picks the release default.

    python benchmarks/facenet_crop.py --data cache/data/utk.csv --train 1200 --crops 1.0,0.8,0.7
    python benchmarks/facenet_crop.py --backbone dlib.resnet --crops 1.0,0.9,0.8   # another face release

For each crop fraction, the `embedding` tap of facenet.casia (bf16 on CPU, as `featx extract` runs it)
is computed for `--train` photos drawn (seed 0) from the manifest's train split and for all its test
photos; a logistic regression (standardised features, C chosen on a 5-fold CV of the train rows)
is scored on the test photos, overall, adults (age >= 13) and children (< 13).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from sklearn.linear_model import LogisticRegressionCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

from common import Stopwatch, age_line, by_age, machine, parser, sample, split_rows
from featx.data import load
from featx.extract import Extractor
from featx.reader import ImageRows
from featx.weights import load_backbone


def features(ex: Extractor, root, paths, batch: int = 32) -> tuple[np.ndarray, float]:
    loader = DataLoader(ImageRows(root, paths, ex.preprocess), batch_size=batch, num_workers=1)
    out = []
    with Stopwatch() as t:
        for batch in loader:  # (rows, pixels, ok, reason, digest)
            out.append(ex(batch[1])[0])
    return np.concatenate(out).astype(np.float32), len(paths) / t.s


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--data", default="cache/data/utk.csv")
    ap.add_argument("--train", type=int, default=1200)
    ap.add_argument("--crops", default="1.0,0.8,0.7")
    ap.add_argument("--tap", default="embedding")
    ap.add_argument("--backbone", default="facenet.casia")
    args = ap.parse_args()
    m = load(args.data)
    train = sample(split_rows(m.splits, "train"), args.train, seed=0)
    test = split_rows(m.splits, "test")
    y = np.array([lab == "male" for lab in m.labels])
    age = np.array([float(a) for a in m.extras["age"]])
    loaded = load_backbone(args.backbone)
    print(f"machine: {machine()}")
    print(f"{len(train)} train, {len(test)} test photos; tap {args.tap}")
    for crop in (float(c) for c in args.crops.split(",")):
        release = replace(loaded[0], preprocess=replace(loaded[0].preprocess, crop=crop))
        ex = Extractor(args.backbone, tap=args.tap, device="cpu", loaded=(release, loaded[1], loaded[2]))
        xtr, speed = features(ex, m.root, [m.paths[i] for i in train])
        xte, _ = features(ex, m.root, [m.paths[i] for i in test])
        clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[0.001, 0.01, 0.1, 1.0], cv=5, max_iter=2000))
        clf.fit(xtr, y[train])
        r = by_age(clf.predict(xte) == y[test], age[test])
        print(f"crop {crop:.2f}: {age_line(r)}  [{speed:.1f} img/s]", flush=True)


if __name__ == "__main__":
    main()
