"""Build a raw-photo benchmark collection from LFW frames with gender labels (issue 21).

    python benchmarks/lfw_manifest.py --lfw-git /work/.mirror/umass-vis-lfw+umass-vis-lfw.github.io/repo \
        --labels-git /work/.mirror/sushii2001+DeepFace-gender-bias-detection/repo --per-class 500 --out /work/data/lfw

Sources (public GitHub snapshots, read with git; nothing is checked out):
- frames: the LFW project's own site, github.com/umass-vis-lfw/umass-vis-lfw.github.io at commit
  2a620cd8cceb10430f8c7012fe9fa5f0837759e9, folder `images/`: all 13,233 LFW photos, un-aligned (the original
  "lfw" set, not funneled), whole frames with background, colour JPEG, stored there at 150×150 (the 250×250
  frames scaled down; same field of view).
- gender: Afifi & Abdelhamed's manually verified LFW gender lists ("AFIF4", arXiv:1706.04277), one file name a
  line: `male_names.txt` (10,269 lines) and `female_names.txt` (2,967), as copied into
  github.com/sushii2001/DeepFace-gender-bias-detection at commit 9d4ebe569f33fe512fe0fba424f98d9a394d29b9,
  folder `etc/` (sha256 checked below).

One frame per person (`<Name>_0001.jpg`), persons named in both lists left out, `--per-class` persons of each
gender drawn at random (seed 0). Output: `<out>/images/<Name>/<Name>_0001.jpg` (the source bytes) and
`<out>/labels.csv` with `path,label,split,group` (split `test` for every row, group = the person), which
`featx data`/`featx extract` read as it is. LFW's terms: research use; never commit the photos.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import random
import subprocess
from pathlib import Path

LFW_COMMIT = "2a620cd8cceb10430f8c7012fe9fa5f0837759e9"
LABELS_COMMIT = "9d4ebe569f33fe512fe0fba424f98d9a394d29b9"
LABEL_FILES = {  # label -> (path in the labels snapshot, sha256 of its bytes)
    "male": ("etc/male_names.txt", "07028c987779f04561a88f4612513f35cf83815ff1a4c72de8f5e65ebf6e93a6"),
    "female": ("etc/female_names.txt", "eab558117a1c03e614f6dc6853628d1abdc16265a571b60ad031324167f4e262"),
}


def git_bytes(repo: Path, commit: str, path: str) -> bytes:
    r = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"], capture_output=True)
    if r.returncode:
        raise SystemExit(f"{repo}: no {path} at {commit[:12]} ({r.stderr.decode().strip()})")
    return r.stdout


def person_labels(repo: Path, commit: str) -> dict[str, str]:
    """Person -> gender from the two lists; persons listed under both are dropped."""
    seen: dict[str, set[str]] = {}
    for label, (path, sha) in LABEL_FILES.items():
        raw = git_bytes(repo, commit, path)
        if hashlib.sha256(raw).hexdigest() != sha:
            raise SystemExit(f"{path} at {commit[:12]} has sha256 {hashlib.sha256(raw).hexdigest()[:12]}, want {sha[:12]}")
        for line in raw.decode().split():
            name = line.strip().rsplit("_", 1)[0]
            seen.setdefault(name, set()).add(label)
    return {p: next(iter(ls)) for p, ls in seen.items() if len(ls) == 1}


def frames(repo: Path, commit: str) -> dict[str, str]:
    """Person -> blob id of images/<Name>/<Name>_0001.jpg."""
    out = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", commit, "images/"], capture_output=True,
                         text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        meta, path = line.split("\t", 1)
        parts = path.split("/")
        if len(parts) == 3 and parts[2] == f"{parts[1]}_0001.jpg":
            found[parts[1]] = meta.split()[2]
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw-git", required=True, help="git dir of the umass-vis-lfw.github.io snapshot")
    ap.add_argument("--labels-git", required=True, help="git dir of the DeepFace-gender-bias-detection snapshot")
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/work/data/lfw")
    args = ap.parse_args()
    labels = person_labels(Path(args.labels_git), LABELS_COMMIT)
    blobs = frames(Path(args.lfw_git), LFW_COMMIT)
    rng = random.Random(args.seed)
    rows = []
    for label in ("female", "male"):
        people = sorted(p for p, g in labels.items() if g == label and p in blobs)
        if len(people) < args.per_class:
            raise SystemExit(f"only {len(people)} {label} persons with a frame; lower --per-class")
        rows += [(p, label) for p in rng.sample(people, args.per_class)]
    rows.sort()
    out = Path(args.out)
    for person, _ in rows:
        dst = out / "images" / person / f"{person}_0001.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(git_bytes(Path(args.lfw_git), LFW_COMMIT, f"images/{person}/{person}_0001.jpg"))
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "group"])
        w.writerows([f"images/{p}/{p}_0001.jpg", g, "test", p] for p, g in rows)
    n_f = sum(g == "female" for _, g in rows)
    print(f"{out / 'labels.csv'}: {len(rows)} frames ({n_f} female, {len(rows) - n_f} male), one per person; "
          f"{sum(g == 'female' for g in labels.values())} female / {sum(g == 'male' for g in labels.values())} "
          f"male persons labelled")


if __name__ == "__main__":
    main()
