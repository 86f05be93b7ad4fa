"""Datasets -> manifest: one row per image with path, label, split, optional group and extra columns.

Accepted layouts (see `load`): a folder with one subfolder per class, a CSV with `path,label`
(paths relative to the CSV), a CelebA root, a UTKFace folder, or a manifest written by `Manifest.write`.
Building a manifest only lists files (no decoding); existence is checked with one directory listing
per folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from .errors import FeatxError
from .images import is_image_name
from .paths import atomic_write, featx_home, shown

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
RESERVED = ("path", "label", "split")
GROUP_COLUMNS = ("group", "identity")

CELEBA_ATTR = "list_attr_celeba.txt"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_IDENTITY = "identity_CelebA.txt"
CELEBA_IMAGES = "img_align_celeba"
CELEBA_SPLITS = {"0": "train", "1": "val", "2": "test"}

# UTKFace: AGE_GENDER_RACE_DATE.jpg[.chip.jpg], gender 0 = male, 1 = female, race 0-4.
UTK_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)\.")
UTK_GENDER = {"0": "male", "1": "female"}


def check_split(split: str) -> str:
    """The one split check: train, val, test, or all (every row)."""
    if split not in (*SPLITS, "all"):
        raise FeatxError(f"unknown split {split!r}; use train, val, test or all")
    return split


@dataclass
class Manifest:
    root: Path  # absolute; `paths` are posix paths relative to it
    paths: list[str]
    labels: list[str]
    splits: list[str]  # each in SPLITS ("" only while loading: not split yet)
    groups: list[str] | None = None  # e.g. identity; "" = no group
    extras: dict[str, list[str]] = field(default_factory=dict)  # kept for per-group metrics
    source: str = "csv"  # "folder" | "csv" | "celeba" | "utkface"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) left out while loading
    split_by: str = ""  # how the splits were made, for display
    types: dict[str, str] = field(default_factory=dict)  # declared target types (featx.targets), else inferred
    origin: str | None = None  # the --data it was loaded from (names its target set in a store)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        n = len(self.paths)
        cols = {"labels": self.labels, "splits": self.splits, **({"groups": self.groups} if self.groups is not None else {})}
        cols.update({f"extra {k!r}": v for k, v in self.extras.items()})
        for name, col in cols.items():
            if len(col) != n:
                raise ValueError(f"manifest has {n} paths but {len(col)} {name}")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def label_ids(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.fromiter((index[x] for x in self.labels), dtype=np.int64, count=len(self.labels))

    def abspath(self, i: int) -> Path:
        return Path(os.path.normpath(os.path.join(self.root, self.paths[i])))

    def indices(self, split: str) -> np.ndarray:
        """Row numbers in `split` ("all" = every row)."""
        if check_split(split) == "all":
            return np.arange(len(self), dtype=np.int64)
        return np.flatnonzero(np.asarray(self.splits) == split).astype(np.int64)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: count}} with every split and class present."""
        out = {s: {c: 0 for c in self.classes} for s in SPLITS}
        for s, c in zip(self.splits, self.labels):
            out[s][c] += 1
        return out

    def subset(self, idx) -> Manifest:
        idx = [int(i) for i in idx]
        pick = lambda col: [col[i] for i in idx]  # noqa: E731
        return Manifest(
            root=self.root, paths=pick(self.paths), labels=pick(self.labels), splits=pick(self.splits),
            groups=pick(self.groups) if self.groups is not None else None,
            extras={k: pick(v) for k, v in self.extras.items()},
            source=self.source, skipped=list(self.skipped), split_by=self.split_by, types=dict(self.types),
            origin=self.origin,
        )

    def _full_paths(self) -> list[str]:
        root = str(self.root)
        return [os.path.normpath(os.path.join(root, p)) for p in self.paths]

    def hash(self) -> str:
        """sha256 of the rows (paths relative to the images' common parent folder), labels, splits, groups, extras.

        The same whether loaded from the source or from a written manifest, wherever that was written.
        """
        full = self._full_paths()
        base = os.path.commonpath(sorted({os.path.dirname(f) for f in full})) if full else ""
        prefix = base if base.endswith(os.sep) else base + os.sep
        keys = sorted(self.extras)
        h = hashlib.sha256()
        head = {"format": "featx-manifest-1", "groups": self.groups is not None, "extras": keys}
        h.update(json.dumps(head, sort_keys=True).encode())
        for i, f in enumerate(full):
            row = [f[len(prefix):].replace(os.sep, "/"), self.labels[i], self.splits[i],
                   self.groups[i] if self.groups is not None else "", *(self.extras[k][i] for k in keys)]
            h.update(b"\n" + json.dumps(row, ensure_ascii=False).encode())
        return h.hexdigest()

    def write(self, out: str | Path) -> Path:
        """Write CSV path,label,split[,group],extras... with paths relative to out's folder (atomic)."""
        out = Path(out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out_dir = str(out.parent.resolve())
        header = ["path", "label", "split"] + (["group"] if self.groups is not None else []) + list(self.extras)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        climbs = False  # a row leaves out's folder: the manifest is recorded as featx's own (see _inside)
        for i, f in enumerate(self._full_paths()):
            row = [os.path.relpath(f, out_dir).replace(os.sep, "/"), self.labels[i], self.splits[i]]
            climbs = climbs or row[0].startswith("../")
            if self.groups is not None:
                row.append(self.groups[i])
            row.extend(v[i] for v in self.extras.values())
            w.writerow(row)
        text = buf.getvalue()
        atomic_write(out, lambda p: p.write_text(text, encoding="utf-8"))  # no half-written manifest, ever
        if climbs:
            _remember(text, out)
        return out


# ---------------------------------------------------------------- splits


def ratios_from(val: float, test: float) -> tuple[float, float, float]:
    """(train, val, test) from the validation and test fractions."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise FeatxError(f"--val and --test must be in [0, 1) with a sum below 1, got {val} and {test}")
    return (1 - val - test, val, test)


def check_ratios(ratios) -> tuple[float, float, float]:
    try:
        r = tuple(float(x) for x in ratios)
    except (TypeError, ValueError):
        raise FeatxError(f"split ratios must be three numbers (train, val, test), got {ratios!r}") from None
    if len(r) != 3 or min(r) < 0 or r[0] <= 0 or abs(sum(r) - 1) > 1e-6:
        raise FeatxError(f"split ratios must be train > 0, val >= 0, test >= 0 summing to 1, got {ratios!r}")
    return r  # type: ignore[return-value]


def _round(x: float) -> int:
    return int(np.floor(x + 0.5))


def assign_splits(labels: list[str], groups: list[str] | None = None, *, seed: int = 0,
                  ratios=(0.8, 0.1, 0.1)) -> list[str]:
    """Deterministic split per row, stratified by label; group-disjoint when `groups` is given ("" = own group)."""
    ratios = check_ratios(ratios)
    rng = np.random.default_rng(seed)
    n = len(labels)
    out = ["train"] * n
    if groups is None:
        by_class: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(labels):
            by_class[c].append(i)
        for c in sorted(by_class):
            idx = np.asarray(by_class[c])[rng.permutation(len(by_class[c]))]
            n_test = _round(len(idx) * ratios[2])
            n_val = min(_round(len(idx) * ratios[1]), len(idx) - n_test)
            for i in idx[:n_test]:
                out[i] = "test"
            for i in idx[n_test:n_test + n_val]:
                out[i] = "val"
        return out

    # Group-disjoint: whole groups go, largest first (random order among equal sizes), to the split
    # whose per-class shortfall, relative to its ratio, is largest.
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g if g != "" else f"\0row{i}"].append(i)
    names = sorted(members)
    names = [names[k] for k in rng.permutation(len(names))]
    names.sort(key=lambda g: -len(members[g]))
    classes = sorted(set(labels))
    ci = {c: k for k, c in enumerate(classes)}
    total = [0] * len(classes)
    for c in labels:
        total[ci[c]] += 1
    active = [s for s in range(3) if ratios[s] > 0]
    deficit = [[ratios[s] * t for t in total] for s in range(3)]
    for g in names:
        cnt: dict[int, int] = defaultdict(int)
        for i in members[g]:
            cnt[ci[labels[i]]] += 1
        best = max(active, key=lambda s: (sum(k * deficit[s][c] for c, k in cnt.items()) / ratios[s], -s))
        for c, k in cnt.items():
            deficit[best][c] -= k
        for i in members[g]:
            out[i] = SPLITS[best]
    return out


def drop_unreadable(m: Manifest, check, echo=print) -> Manifest:
    """Decode every image with check(path) -> reason | None and leave out those that fail."""
    bad = []
    for i in range(len(m)):
        reason = check(m.abspath(i))
        if reason:
            bad.append(i)
            echo(f"unreadable {m.paths[i]}: {reason}")
    if not bad:
        return m
    m = m.subset(sorted(set(range(len(m))) - set(bad)))
    echo(f"left out {len(bad)} unreadable images")
    if len(m.classes) < 2 or len(m) == 0:
        raise FeatxError("fewer than two classes are left after leaving out unreadable images")
    return m


def leaked_groups(m: Manifest) -> list[str]:
    """Groups (non-empty) that appear in more than one split."""
    if m.groups is None:
        return []
    seen: dict[str, set[str]] = defaultdict(set)
    for g, s in zip(m.groups, m.splits):
        if g:
            seen[g].add(s)
    return sorted(g for g, s in seen.items() if len(s) > 1)


# ---------------------------------------------------------------- loading


def load(data: str | Path, *, attribute: str = "Male", seed: int = 0, ratios=(0.8, 0.1, 0.1)) -> Manifest:
    """Dataset -> Manifest. `data` is a class folder, a CSV (path,label[,split][,group|identity],extras...),
    a CelebA root (or its list_attr_celeba.txt), a UTKFace folder, or a manifest written by `featx data`.
    A source's own split wins; otherwise rows are split with `seed` and `ratios` (train, val, test)."""
    ratios = check_ratios(ratios)
    p = Path(data).expanduser()
    if not p.exists():
        raise FeatxError(f"data not found: {data}")
    if p.is_dir():
        if (p / CELEBA_ATTR).is_file():
            m = _load_celeba(p.resolve(), attribute)
        else:
            m = _load_folder(p.resolve())
    elif p.name == CELEBA_ATTR:
        m = _load_celeba(p.resolve().parent, attribute)
    elif p.suffix.lower() in (".csv", ".tsv"):
        m = _load_csv(p.resolve())
    else:
        raise FeatxError(f"unsupported data {data}: expected a folder, a .csv file or a CelebA root")
    m.labels = [canonical_label(x) for x in m.labels]
    _validate(m, str(data))
    if "" in m.splits:  # no split from the source
        m.splits = assign_splits(m.labels, m.groups, seed=seed, ratios=ratios)
        pct = "/".join(f"{100 * r:g}" for r in ratios)
        m.split_by = f"seed {seed}, {pct} train/val/test, stratified by label" + (
            ", group-disjoint" if m.groups is not None else "")
    m.origin = str(data)
    return m


NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def canonical_label(label: str) -> str:
    """Numeric labels compared as numbers: "1", "01", "1.0" and "+1" are all class "1"; "0.50" is "0.5"."""
    if not NUMBER.match(label):
        return label
    try:
        d = Decimal(label)
    except InvalidOperation:
        return label
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def _validate(m: Manifest, name: str) -> None:
    if not m.paths:
        hint = f"; {len(m.skipped)} files skipped, e.g. {m.skipped[0][0]} ({m.skipped[0][1]})" if m.skipped else ""
        raise FeatxError(f"no images found in {name}{hint}")
    seen: set[str] = set()
    dups: list[str] = []
    for p in m.paths:
        if p in seen:
            dups.append(p)
        seen.add(p)
    if dups:
        raise FeatxError(f"{len(dups)} duplicate paths in {name}, e.g. {', '.join(dups[:3])}")
    classes = m.classes
    if len(classes) < 2:
        raise FeatxError(f"need at least two classes, found {len(classes)} ({', '.join(classes)}) in {name}")
    missing = _missing(m.root, m.paths)
    if missing:
        raise FeatxError(
            f"{len(missing)} of {len(m.paths)} files listed in {name} are missing, e.g. {', '.join(missing[:3])}")


def _missing(root: Path, paths: list[str]) -> list[str]:
    """Listed files that do not exist: one directory listing per folder, a stat only for the rest."""
    by_dir: dict[str, list[str]] = defaultdict(list)
    for p in paths:
        by_dir[p.rpartition("/")[0]].append(p)
    gone: set[str] = set()
    for d, items in by_dir.items():
        folder = os.path.join(root, d)
        names: set[str] = set()
        if len(items) > 8:
            try:
                with os.scandir(folder) as it:
                    names = {e.name for e in it if e.is_file()}
            except OSError:
                pass
        for p in items:
            if p.rpartition("/")[2] not in names and not os.path.isfile(os.path.join(root, p)):
                gone.add(p)
    return [p for p in paths if p in gone]


def _inside(root: Path, value: str, where: str, climb_ok: bool = False) -> str:
    """Normalise a listed path to a posix path relative to root; FeatxError when it escapes root.

    Every manifest form goes through here. `climb_ok` lets a path leave root by a leading run of
    `../` (and an absolute path lie anywhere): only for a manifest featx wrote itself (`_wrote`)."""
    v = value.strip().replace("\\", "/")
    if os.path.isabs(v):
        rel = os.path.relpath(os.path.normpath(v), root)
        if rel.startswith(".."):  # maybe reached through a symlink
            rel = os.path.relpath(os.path.realpath(v), root)
        v = rel
    v = os.path.normpath(v).replace(os.sep, "/")
    if v in (".", "..") or (v.startswith("../") and not climb_ok):
        hint = ("; featx follows paths out of a manifest's folder only in manifests it wrote itself "
                "for this user: rebuild it with `featx data`, or keep it next to its images") if not climb_ok else ""
        raise FeatxError(f"path escapes the dataset root {root}: {value.strip()} ({where}){hint}")
    return v


# Manifests written by featx whose rows leave the manifest's folder (`--out` away from the images)
# are recorded by content hash under $FEATX_HOME/manifests. Only those may climb out of their folder,
# so a CSV from elsewhere cannot point featx at ../../../home/someone/photo.jpg.
def _registry(text: str) -> Path:
    return featx_home() / "manifests" / f"{hashlib.sha256(text.encode('utf-8')).hexdigest()}.json"


def _remember(text: str, out: Path) -> None:
    atomic_write(_registry(text), lambda p: p.write_text(json.dumps({"manifest": str(out.resolve())}),
                                                         encoding="utf-8"))


def _wrote(text: str) -> bool:
    return _registry(text).is_file()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise FeatxError(f"{path} is not UTF-8 text") from None
    except OSError as e:
        raise FeatxError(f"cannot read {path}: {e.strerror or e}") from None


def _csv_rows(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV's text (TSV by its suffix) with their line numbers; a malformed file is one
    line."""
    reader = csv.reader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        return [(reader.line_num, r) for r in reader if any(x.strip() for x in r)]
    except csv.Error as e:
        raise FeatxError(f"{path}: malformed CSV: {e}") from None


def _load_csv(path: Path) -> Manifest:
    root = path.parent
    text = _read_text(path)
    rows = _csv_rows(path, text)
    if not rows:
        raise FeatxError(f"{path} is empty")
    header = [h.strip() for h in rows[0][1]]
    low = [h.lower() for h in header]
    if "path" not in low or "label" not in low:
        raise FeatxError(f"{path}: CSV needs columns path,label (found: {','.join(header)})")
    if len(set(low)) != len(low):
        raise FeatxError(f"{path}: repeated column names in header: {','.join(header)}")
    # A manifest from `featx data` may list paths out of its folder, when featx recorded writing it.
    climb_ok = low[:3] == ["path", "label", "split"] and _wrote(text)
    col = {name: low.index(name) for name in (*RESERVED, *GROUP_COLUMNS) if name in low}
    gcol = col.get("group", col.get("identity"))
    extra_cols = [k for k, h in enumerate(low) if h not in RESERVED and k != gcol]
    paths, labels, splits, groups = [], [], [], []
    extras: dict[str, list[str]] = {header[k]: [] for k in extra_cols}
    for line, r in rows[1:]:
        where = f"{path.name} line {line}"
        if len(r) != len(header):
            raise FeatxError(f"{where}: {len(r)} columns but the header has {len(header)} ({','.join(header)})")
        value = r[col["path"]]
        if not value.strip():
            raise FeatxError(f"{where}: empty path")
        paths.append(_inside(root, value, where, climb_ok))
        label = r[col["label"]].strip()
        if not label:
            raise FeatxError(f"{where}: empty label")
        labels.append(label)
        if "split" in col:
            s = SPLIT_NAMES.get(r[col["split"]].strip().lower())
            if s is None:
                raise FeatxError(f"{where}: unknown split {r[col['split']].strip()!r} (use train, val or test)")
            splits.append(s)
        if gcol is not None:
            groups.append(r[gcol].strip())
        for k in extra_cols:
            extras[header[k]].append(r[k].strip())
    return Manifest(root=root, paths=paths, labels=labels, splits=splits or [""] * len(paths),
                    groups=groups if gcol is not None else None,
                    extras=extras, source="csv", split_by="the source's split column" if splits else "")


@dataclass
class Columns:
    """A CSV of `path` plus any columns (for `featx labels add`): paths relative to `root`."""

    root: Path
    paths: list[str]
    columns: dict[str, list[str]]
    lines: list[int]


def load_columns(data: str | Path) -> Columns:
    """path,COL,... from a CSV (paths relative to it, kept inside it as in any manifest); every other
    column is kept, values stripped. Duplicate paths and missing columns are one-line errors."""
    path = Path(data).expanduser()
    if not path.is_file():
        raise FeatxError(f"data not found: {data}")
    path = path.resolve()
    text = _read_text(path)
    rows = _csv_rows(path, text)
    header = [h.strip() for h in rows[0][1]] if rows else []
    low = [h.lower() for h in header]
    if "path" not in low:
        raise FeatxError(f"{path}: needs a path column (found: {','.join(header) or 'nothing'})")
    if len(set(low)) != len(low):
        raise FeatxError(f"{path}: repeated column names in header: {','.join(header)}")
    climb_ok = _wrote(text)
    pk = low.index("path")
    out = Columns(path.parent, [], {h: [] for k, h in enumerate(header) if k != pk}, [])
    for line, r in rows[1:]:
        where = f"{path.name} line {line}"
        if len(r) != len(header):
            raise FeatxError(f"{where}: {len(r)} columns but the header has {len(header)} ({','.join(header)})")
        out.paths.append(_inside(path.parent, r[pk], where, climb_ok))
        out.lines.append(line)
        for k, h in enumerate(header):
            if k != pk:
                out.columns[h].append(r[k].strip())
    seen: set[str] = set()
    dups = [p for p in out.paths if p in seen or seen.add(p)]
    if dups:
        raise FeatxError(f"{len(dups)} duplicate paths in {path}, e.g. {', '.join(dups[:3])}")
    return out


def _utf8_name(folder: Path | str, name: str) -> str:
    """`name`, or a one-line FeatxError naming the file when its name is not valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FeatxError(f"{shown(os.path.join(folder, name))}: file name is not valid UTF-8; rename it") from None
    return name


def _listdir(folder: Path) -> tuple[list[str], list[str]]:
    """(files, subfolders) in `folder`, sorted, hidden entries left out."""
    files, dirs = [], []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith(".") or e.name == "__MACOSX":
                    continue
                if e.is_dir() or is_image_name(e.name):
                    _utf8_name(folder, e.name)
                if e.is_dir():
                    dirs.append(e.name)
                elif e.is_file():
                    files.append(e.name)
    except OSError as e:
        raise FeatxError(f"cannot list {folder}: {e.strerror or e}") from None
    return sorted(files), sorted(dirs)


def _load_folder(root: Path) -> Manifest:
    files, dirs = _listdir(root)
    top = [f for f in files if is_image_name(f)]
    if top and 2 * sum(bool(UTK_NAME.match(f)) for f in top) >= len(top):
        return _load_utkface(root, top)
    paths, labels, empty = [], [], []
    for d in dirs:
        found = _class_images(root, d)
        if not found:
            empty.append(d)
            print(f"warning: class folder {shown(str(root / d))} has no images; left out", file=sys.stderr)
        paths.extend(found)
        labels.extend([d] * len(found))
    skipped = [(f, "not in a class folder") for f in top]
    if not paths and top:
        raise FeatxError(
            f"{root} has images but no class subfolders, and their names are not UTKFace names "
            "(AGE_GENDER_RACE_DATE.jpg); expected one subfolder per class")
    m = Manifest(root=root, paths=paths, labels=labels, splits=[""] * len(paths), source="folder", skipped=skipped)
    if len(set(labels)) == 1:
        only = labels[0]
        utk = sum(bool(UTK_NAME.match(p.rpartition("/")[2])) for p in paths)
        hint = f"; for UTKFace, point --data at {root / only}" if 2 * utk >= len(paths) else ""
        raise FeatxError(f"need at least two classes, found 1 ({only}) in {root}: expected one subfolder per class"
                         + (f" (empty: {', '.join(empty)})" if empty else "") + hint)
    if not paths and empty:
        raise FeatxError(f"need at least two classes in {root}: every class folder is empty ({', '.join(empty)})")
    return m


def _class_images(root: Path, d: str) -> list[str]:
    """Image paths (relative to root) anywhere under the class folder root/d."""
    found = []
    for here, subdirs, names in os.walk(root / d):
        subdirs[:] = sorted(s for s in subdirs if not s.startswith(".") and s != "__MACOSX")
        for s in subdirs:
            _utf8_name(here, s)
        rel = Path(here).relative_to(root).as_posix()
        for name in sorted(names):
            if is_image_name(name) and not name.startswith("."):
                found.append(f"{rel}/{_utf8_name(here, name)}")
    return found


def _load_utkface(root: Path, names: list[str]) -> Manifest:
    paths, labels, ages, races, skipped = [], [], [], [], []
    for name in names:
        m = UTK_NAME.match(name)
        if not m:
            skipped.append((name, "name is not AGE_GENDER_RACE_DATE.jpg"))
            continue
        paths.append(name)
        labels.append(UTK_GENDER[m.group(2)])
        ages.append(str(int(m.group(1))))
        races.append(m.group(3))
    return Manifest(root=root, paths=paths, labels=labels, splits=[""] * len(paths), extras={"age": ages, "race": races},
                    source="utkface", skipped=skipped, types={"age": "numeric", "race": "categorical"})


def _celeba_table(path: Path) -> dict[str, str]:
    """name -> value from a two-column CelebA list file."""
    out = {}
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise FeatxError(f"{path.name} line {n}: {len(parts)} columns, expected 2 (image value)")
        out[parts[0]] = parts[1]
    return out


def celeba_values(attr: str) -> tuple[str, str]:
    """(positive, negative) class names of a CelebA attribute: male/female, smiling/not_smiling, ..."""
    return ("male", "female") if attr == "Male" else (attr.lower(), f"not_{attr.lower()}")


def _load_celeba(root: Path, attribute: str) -> Manifest:
    """`attribute` is one attribute (the label) or "all": the label is Male and every attribute is a column."""
    attr_file, part_file = root / CELEBA_ATTR, root / CELEBA_PARTITION
    if not part_file.is_file():
        raise FeatxError(f"CelebA root {root} has no {CELEBA_PARTITION}")
    lines = _read_text(attr_file).splitlines()
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise FeatxError(f"{attr_file} is not a CelebA attribute file (line 1 should be the image count)")
    names = lines[1].split()
    lookup = {a.lower(): a for a in names}
    every = (attribute or "").strip().lower() == "all"
    attr = lookup.get("male" if every else (attribute or "Male").strip().lower())
    if attr is None:
        raise FeatxError(f"unknown CelebA attribute {attribute!r}; choose from: all, {', '.join(names)}")
    keep = {a: names.index(a) + 1 for a in (names if every else [attr])}
    values = {a: celeba_values(a) for a in keep}
    files, cols = [], {a: [] for a in keep}
    for n, line in enumerate(lines[2:], 3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1:
            raise FeatxError(f"{CELEBA_ATTR} line {n}: {len(parts)} columns, expected {len(names) + 1} (image + attributes)")
        files.append(parts[0])
        for a, k in keep.items():
            v = parts[k]
            if v not in ("1", "-1", "0"):
                raise FeatxError(f"{CELEBA_ATTR} line {n}: {a} is {v!r}, expected 1 or -1")
            cols[a].append(values[a][0] if v == "1" else values[a][1])
    labels = cols[attr]
    extras = cols if every else {}
    part = _celeba_table(part_file)
    nopart = [f for f in files if f not in part]
    if nopart:
        raise FeatxError(f"{len(nopart)} images in {CELEBA_ATTR} have no entry in {CELEBA_PARTITION}, e.g. {nopart[0]}")
    splits = []
    for f in files:
        s = CELEBA_SPLITS.get(part[f])
        if s is None:
            raise FeatxError(f"{CELEBA_PARTITION}: {f} has partition {part[f]!r}, expected 0, 1 or 2")
        splits.append(s)
    groups = None
    if (root / CELEBA_IDENTITY).is_file():
        ident = _celeba_table(root / CELEBA_IDENTITY)
        groups = [ident.get(f, "") for f in files]
    paths = [_inside(root, f"{CELEBA_IMAGES}/{f}", CELEBA_ATTR) for f in files]
    return Manifest(root=root, paths=paths, labels=labels, splits=splits, groups=groups, source="celeba",
                    split_by="CelebA's official partition", extras=extras, types={a: "categorical" for a in extras})
