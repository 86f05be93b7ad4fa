"""One markdown row per evaluated head: accuracy overall, adults and children (common.ADULT_AGE).

    python benchmarks/face_table.py cache/heads/*/report-*-test/metrics.json

Reads `featx evaluate --by age` output (metrics.json); adults and children are pooled from its age groups.
"""

from __future__ import annotations

import json
import sys

from common import ADULT_AGE, by_age_groups


def main() -> None:
    if not sys.argv[1:] or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    print(f"| head | store | tap | accuracy | adults (>= {ADULT_AGE}) | children (< {ADULT_AGE}) | ROC AUC |")
    print("|---|---|---|---|---|---|---|")
    for path in sys.argv[1:]:
        d = json.load(open(path))
        r, ctx = by_age_groups(d["groups"]["age"]), d["context"]
        print(f"| {ctx['head_type']} | {ctx['store'].rsplit('/', 1)[-1]} | {ctx['tap']} | {d['accuracy']:.3f} "
              f"| {r['adults']:.3f} (n={r['n_adults']}) | {r['children']:.3f} (n={r['n_children']}) "
              f"| {d['roc_auc']:.3f} |")


if __name__ == "__main__":
    main()
