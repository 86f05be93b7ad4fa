"""What `featx store verify` and a resume's digest check cost, against the extraction they protect.

    python benchmarks/verify_speed.py --store cache/features/utk-hed.zarr --data ../shared/data/utkface/labels.csv

Times, on a finished store: `verify` (every shard re-read, decoded and re-hashed), the digest pass a
resume makes over the image files (blake2b of each file's bytes), and a no-op `featx extract` rerun
(both checks, no model load); and prints them next to the extraction wall time the store recorded.
"""

from __future__ import annotations

import json

from common import Stopwatch, machine, parser
from featx.data import load
from featx.reader import digests
from featx.store import FeatureStore, verify


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--store", required=True)
    ap.add_argument("--data", required=True)
    a = ap.parse_args()
    fs = FeatureStore.open(a.store)
    extract_s = fs.attrs.get("timings", {}).get("wall_s")
    with Stopwatch() as t:
        bad = verify(a.store)
    verify_s = t.s
    m = load(a.data)
    with Stopwatch() as t:
        digests(m.root, m.paths, range(len(m)))
    digest_s = t.s
    out = {"store": a.store, "rows": fs.n, "dim": list(fs.dim), "bad_shards": len(bad),
           "extract_wall_s": extract_s, "verify_s": round(verify_s, 3), "digest_s": round(digest_s, 3),
           "verify_fraction_of_extract": round(verify_s / extract_s, 4) if extract_s else None,
           "machine": machine()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
