"""One markdown row per evaluated head: accuracy overall, adults (age >= 13) and children (< 13).

    python benchmarks/face_table.py cache/heads/*/report-*-test/metrics.json

Reads `featx evaluate --by age` output (metrics.json); adults and children are pooled from its age groups.
"""

from __future__ import annotations

import json
import sys


def pooled(groups: dict, keep) -> tuple[float, int]:
    hits = n = 0
    for name, g in groups.items():
        if keep(int(name.split("-")[0].rstrip("+"))):
            hits += g["accuracy"] * g["n"]
            n += g["n"]
    return (hits / n if n else float("nan")), n


def main() -> None:
    if not sys.argv[1:] or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    print("| head | store | tap | accuracy | adults (>= 13) | children (< 13) | ROC AUC |")
    print("|---|---|---|---|---|---|---|")
    for path in sys.argv[1:]:
        d = json.load(open(path))
        ages, ctx = d["groups"]["age"], d["context"]
        adults, na = pooled(ages, lambda lo: lo >= 13)
        kids, nk = pooled(ages, lambda lo: lo < 13)
        print(f"| {ctx['head_type']} | {ctx['store'].rsplit('/', 1)[-1]} | {ctx['tap']} | {d['accuracy']:.3f} "
              f"| {adults:.3f} (n={na}) | {kids:.3f} (n={nk}) | {d['roc_auc']:.3f} |")


if __name__ == "__main__":
    main()
