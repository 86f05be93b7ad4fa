"""Does `featx train-head --head sgd` train in bounded memory as the store grows?

    python benchmarks/sgd_memory.py                       # N = 20k, 80k, 320k rows x 512 dims (fp16)
    python benchmarks/sgd_memory.py --sizes 2000,4000     # a quick smoke run
    python benchmarks/sgd_memory.py --heads sgd,logreg    # contrast with an in-memory head

For each N it synthesises a featx store directly with the store API (two Gaussian classes,
80/10/10 splits, written shard by shard so the generator itself stays small), then runs
`featx train-head --store S --head sgd` in a fresh subprocess and reads that child's peak RSS
(os.wait4 -> ru_maxrss). Expected: the SGD head's peak RSS stays flat (it streams one chunk group at a
time; only per-row labels and splits, ~30 bytes a row, grow with N) while the features grow by
N x dim x 2 bytes. Not a test: run it on a quiet machine.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import Stopwatch, machine, parser, peak_rss_of
from featx.data import Manifest
from featx.store import create


def synth_store(path: Path, n: int, dim: int = 512, dtype: str = "float16", seed: int = 0) -> Path:
    """A finished featx store of n rows: class c has mean +-0.5 on the first 16 dims, unit noise elsewhere."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    splits = np.array(["train"] * 8 + ["val", "test"])[rng.integers(0, 10, n)]
    m = Manifest(root=path.parent, paths=[f"synthetic/{i:07d}.jpg" for i in range(n)],
                 labels=[["female", "male"][c] for c in labels], splits=list(splits), source="csv")
    identity = {"manifest_hash": m.hash(), "release": "vgg16.hed", "weights_sha256": "0" * 64,
                "tap": "pool5-gap", "preprocess": {"synthetic": True}, "dtype": dtype, "flip": False}
    w = create(str(path), manifest=m, identity=identity, dim=(dim,),
               provenance={"precision": "fp32", "device": "synthetic", "synthetic": True})
    ids = m.label_ids()
    for start, stop in w.plan_units():
        x = rng.standard_normal((stop - start, dim), dtype=np.float32)
        x[:, :16] += np.where(ids[start:stop, None] == 1, 0.5, -0.5)
        w.write_unit(start, stop, x, np.ones(stop - start, bool), [""] * (stop - start))
    w.update_attrs({"complete": True})
    return path


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--sizes", default="20000,80000,320000", help="comma-separated row counts")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--heads", default="sgd", help="comma-separated heads to train, e.g. sgd,logreg")
    ap.add_argument("--dir", default=None, help="where to write the stores (default: a temp folder, removed)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="featx-sgd-mem-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"machine: {machine()}")
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            store = root / f"synth-{n}-{args.dim}.zarr"
            with Stopwatch() as t:
                if not store.exists():
                    synth_store(store, n, args.dim, args.dtype)
            made = t.s
            feat_mb = n * args.dim * np.dtype(args.dtype).itemsize / 2**20
            for head in args.heads.split(","):
                cmd = [sys.executable, "-m", "featx_cli.main", "train-head", "--store", str(store), "--head", head,
                       "--out", str(root / f"head-{head}-{n}")]
                rc, rss, secs, tail = peak_rss_of(cmd)
                row = {"n": n, "dim": args.dim, "head": head, "features_mib": round(feat_mb, 1),
                       "peak_rss_mib": round(rss, 1), "train_s": round(secs, 1), "synth_s": round(made, 1), "rc": rc}
                rows.append(row)
                print(f"N={n:>8}  head={head:<7} features={feat_mb:8.1f} MiB  peak RSS={rss:8.1f} MiB  "
                      f"train={secs:6.1f} s  rc={rc}", flush=True)
                if rc != 0:
                    print("   " + "\n   ".join(tail), flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    for head in args.heads.split(","):
        r = [x for x in rows if x["head"] == head and x["rc"] == 0]
        if len(r) >= 2:
            grow = r[-1]["peak_rss_mib"] - r[0]["peak_rss_mib"]
            print(f"{head}: features grew {r[-1]['features_mib'] - r[0]['features_mib']:.0f} MiB, "
                  f"peak RSS grew {grow:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
