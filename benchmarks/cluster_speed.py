"""Throughput of featx extract in one process vs on a local dask cluster of 1 and 2 workers.

    python benchmarks/cluster_speed.py --data ../shared/data/utkface/labels.csv --n 256
    python benchmarks/cluster_speed.py --data ../shared/data/utkface/labels.csv --n 16 \
        --weights tiny.safetensors --clusters local:1     # a smoke run

On the first N images of --data, each mode writes a fresh temp store:
  single      featx.extract.extract in this process (its default decode workers)
  local:K     featx.extract.command.extract_on_cluster(cluster="local:K"): K single-threaded worker processes,
              each with torch threads = cores / K, one task per shard
Reports images/s over the compute phase (shards submitted -> last shard written) and over the whole call
(cluster start, model loads and teardown included), and checks each cluster store against the single one.
On a CPU-only machine K workers share the same cores, so expect roughly equal compute throughput: the
point of a cluster is more machines or more GPUs, not more speed from one CPU. Not a test.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import Stopwatch, machine, model_arguments, parser, weights_or_random


def main(argv=None) -> int:
    ap = parser(__doc__)
    model_arguments(ap)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--rows-per-shard", type=int, default=32, help="shard = one dask task (default 32)")
    ap.add_argument("--clusters", default="local:1,local:2")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    from featx.data import load
    from featx.extract.command import extract_on_cluster
    from featx.extract import extract
    from featx.store import FeatureStore

    tmp = Path(tempfile.mkdtemp(prefix="featx-cluster-speed-"))
    rows = []
    try:
        weights, note = weights_or_random(args.backbone, args.weights, tmp)
        print(f"machine: {machine()}" + (f"\n{note}" if note else ""))
        m = load(args.data)
        m = m.subset(range(min(args.n, len(m))))
        kw = dict(tap=args.tap, weights=weights, precision=args.precision, batch_size=args.batch_size,
                  rows_per_shard=args.rows_per_shard, progress=False)
        modes = ["single"] + [c for c in args.clusters.split(",") if c]
        ref = None
        for mode in modes:
            store = tmp / f"{mode.replace(':', '-')}.zarr"
            with Stopwatch() as t:
                if mode == "single":
                    s = extract(m, args.backbone, store, **kw)
                else:
                    s = extract_on_cluster(m, args.backbone, store, cluster=mode, **kw)
            wall = t.s
            fs = FeatureStore.open(store)
            same = None
            if ref is None:
                ref = fs.features()
            else:
                same = float(np.abs(fs.features() - ref).max())
            row = {"mode": mode, "n": s["n"], "images_per_s": s["images_per_s"],
                   "images_per_s_whole_call": round(s["n"] / wall, 2), "wall_s": round(wall, 2),
                   "compute_wall_s": round(s["compute_wall_s"], 2), "device": s["device"],
                   "precision": s["precision"], "max_abs_diff_vs_single": same}
            rows.append(row)
            diff = "" if same is None else f"  max|diff| vs single {same:.2e}"
            print(f"{mode:>8}: {s['images_per_s']:8.1f} img/s compute, {row['images_per_s_whole_call']:8.1f} img/s "
                  f"whole call ({wall:.1f} s) on {s['device']} at {s['precision']}{diff}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
