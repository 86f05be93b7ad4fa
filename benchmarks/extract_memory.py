"""Does `featx extract`'s peak memory grow with the number of images? Peak RSS for a few N, in one run.

    python benchmarks/extract_memory.py --data ../shared/data/utkface/labels.csv --sizes 128,512

For each N: the first N photos of --data as a manifest, then `featx extract` on them in a fresh child
process into a fresh store; the child's peak RSS (os.wait4 -> ru_maxrss: the main process; decode workers
are its children and not counted) and the images/s it reports. Expected: flat in N, since batches
stream to the store. Not a test: run it on a quiet machine.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from common import machine, model_arguments, parser, peak_rss_of, weights_or_random
from featx.data import load


def main() -> int:
    ap = parser(__doc__)
    model_arguments(ap, n=0)
    ap.add_argument("--sizes", default="128,512", help="comma-separated image counts")
    a = ap.parse_args()
    m = load(a.data)
    print(f"machine: {machine()}")
    print(f"| images | peak RSS (MiB) | images/s | {a.backbone} tap {a.tap} |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        weights, note = weights_or_random(a.backbone, a.weights, Path(tmp))
        if note:
            print(note)
        for n in (int(k) for k in a.sizes.split(",")):
            csv = m.subset(range(min(n, len(m)))).write(Path(tmp) / f"first-{n}.csv")
            cmd = [sys.executable, "-m", "featx_cli.main", "extract", "--data", str(csv), "--backbone", a.backbone,
                   "--weights", weights, "--store", str(Path(tmp) / f"s-{n}.zarr"), "--tap", a.tap]
            rc, rss, secs, tail = peak_rss_of(cmd)
            if rc:
                print(f"featx extract failed (exit {rc}): {' / '.join(tail)}")
                return 1
            rate = re.search(r"([\d.]+) images/s", " ".join(tail))
            print(f"| {min(n, len(m))} | {rss:,.0f} | {rate.group(1) if rate else '?'} | {secs:.0f} s in all |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
