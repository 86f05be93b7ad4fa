"""What the benchmark scripts share: the adults/children cut, subsets, the machine, timing, known-answer inputs.

Imports only numpy at module level (PIL where an image is made, torch only to name a GPU when it is
already installed), so the reference scripts that run in scratch venvs without featx or torch
(dlib_reference.py, facenet_reference.py, vgg16_reference.py) use it too. Scripts run as
`python benchmarks/NAME.py`, which puts this folder first on sys.path: `import common` finds this file;
tests/conftest.py puts it there as well.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# --- command lines ---------------------------------------------------------------------------------

def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose --help shows the script's docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def model_arguments(ap: argparse.ArgumentParser, n: int = 256, tap: str | None = "pool5-gap") -> None:
    """What every speed script takes: --data, --n (the first N photos), --backbone, --weights[, --tap]."""
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=n)
    ap.add_argument("--backbone", default="vgg16.hed")
    ap.add_argument("--weights", default=None, help="a weights FILE (default: the release's cached file)")
    if tap:
        ap.add_argument("--tap", default=tap)


def reference_arguments(ap: argparse.ArgumentParser, out: str) -> argparse.Namespace:
    """What every known-answer script takes (--shared, --out), parsed."""
    ap.add_argument("--shared", default="../shared/data", help="the folder holding utkface/")
    ap.add_argument("--out", default=out)
    return ap.parse_args()


# --- UTKFace's adults and children ----------------------------------------------------------------

ADULT_AGE = 13  # a UTKFace photo is a child's below this age: the benchmark's cut, not featx's


def is_adult(age) -> np.ndarray:
    return np.asarray(age, dtype=float) >= ADULT_AGE


def by_age(hit, age) -> dict:
    """Accuracy overall, of adults and of children, from per-photo hits (bool) and ages."""
    hit, adult = np.asarray(hit, bool), is_adult(age)
    mean = lambda h: round(float(h.mean()), 4) if len(h) else float("nan")  # noqa: E731
    return {"accuracy": mean(hit), "adults": mean(hit[adult]), "children": mean(hit[~adult]),
            "n_adults": int(adult.sum()), "n_children": int((~adult).sum())}


def by_age_groups(groups: dict) -> dict:
    """The same from `featx evaluate --by age` groups ({"0-12": {"accuracy", "n"}, ..., "60+": ...})."""
    hits, ages = [], []
    for name, g in groups.items():
        lo = int(name.split("-")[0].rstrip("+"))
        right = int(round(g["accuracy"] * g["n"]))
        hits += [True] * right + [False] * (g["n"] - right)
        ages += [lo] * g["n"]
    return by_age(hits, ages)


def age_line(r: dict) -> str:
    return (f"accuracy {r['accuracy']:.4f}  adults {r['adults']:.4f} (n={r['n_adults']})  "
            f"children {r['children']:.4f} (n={r['n_children']})")


# --- subsets ----------------------------------------------------------------------------------------

def sample(rows, n: int | None, seed: int = 0) -> np.ndarray:
    """n rows drawn at random (seed) from `rows`, in row order; all of them when n is None or larger."""
    rows = np.asarray(rows)
    if n is None or n >= len(rows):
        return np.sort(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def split_rows(splits, name: str) -> np.ndarray:
    return np.flatnonzero(np.asarray(splits) == name)


# --- the machine ------------------------------------------------------------------------------------

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info() -> dict:
    """The first processor's `model name` and `flags` from /proc/cpuinfo (empty where there is none)."""
    info: dict = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "flags") and key not in info:
                info[key] = value.strip()
            if not line.strip() and info:
                break
    return {"model": info.get("model name", "unknown CPU"), "flags": set(info.get("flags", "").split())}


def gpu_name() -> str | None:
    """The first CUDA GPU's name: from torch when this process has it, else nvidia-smi, else None."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.splitlines()[0].strip()
    return None


def memory_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return None


def machine() -> str:
    """One line naming the machine a figure was measured on: CPU model, cores, memory, the flags that
    decide precision, GPU, and the load average at the time."""
    cpu = cpu_info()
    have = " ".join(f for f in FLAGS if f in cpu["flags"]) or "none of " + " ".join(FLAGS)
    mem = memory_gb()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu['model']}, {os.cpu_count()} cores" + (f", {mem:.0f} GB" if mem else "")
            + f"; flags: {have}; GPU: {gpu_name() or 'none'}; load average {load:.1f}")


# --- timing -----------------------------------------------------------------------------------------

class Stopwatch:
    """`with Stopwatch() as t: ...` then t.s: wall seconds (perf_counter)."""

    def __enter__(self) -> Stopwatch:
        self.t0, self.s = time.perf_counter(), 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.s = time.perf_counter() - self.t0


def peak_rss_of(cmd: list[str]) -> tuple[int, float, float, list[str]]:
    """Run cmd as a child: (exit code, the child's peak RSS in MiB, seconds, last 3 lines of its output)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(p.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024, time.perf_counter() - t, \
        out.strip().splitlines()[-3:]


def weights_or_random(backbone: str, weights: str | None, tmp: Path) -> tuple[str, str]:
    """(weights file, note): `weights`, else the release's cached file, else a random-init full-size VGG16
    written to tmp (the same speed, meaningless features) and a note that says so."""
    if weights:
        return weights, ""
    from featx.weights import canonical_path

    path = canonical_path(backbone)
    if path.is_file():
        return str(path), ""
    import torch
    from safetensors.torch import save_file

    from featx.backbones.vgg16 import VGG16

    torch.manual_seed(0)
    out = tmp / "random-vgg16.safetensors"
    save_file({k: v.contiguous() for k, v in VGG16().state_dict().items()}, str(out))
    return str(out), (f"note: {path} absent (featx weights get {backbone}); using a random-init full-size VGG16 "
                      "(same speed, meaningless features)")


# --- known-answer inputs (tests/data/*_reference.npz) -----------------------------------------------

PHOTOS = ("images/100_1_0_20170110183726390.jpg.chip.jpg", "images/10_0_0_20170103233459275.jpg.chip.jpg",
          "images/28_0_0_20170102233520314.jpg.chip.jpg", "images/30_1_0_20170103180631960.jpg.chip.jpg")


def synthetic_face(k: int, size: int) -> np.ndarray:
    """A closed-form RGB uint8 pattern (no files needed): sinusoids whose frequencies and phases depend on k."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    chans = [np.sin(2 * np.pi * ((k + 1 + c) * x + (2 * k + 1 - c) * y) + 0.7 * c + k) for c in range(3)]
    return np.clip(np.round(127.5 + 120.0 * np.stack(chans, -1)), 0, 255).astype(np.uint8)


def resize_crop(img, crop: float, size: int, resize: int | None = None):
    """featx's Preprocess(size, resize, crop).resize_crop restated with PIL alone: the central `crop`
    fraction, the shorter side bilinearly to `resize` (default size), then the central size x size."""
    from PIL import Image

    resize = resize or size
    if crop < 1.0:
        w, h = img.size
        cw, ch = max(1, round(w * crop)), max(1, round(h * crop))
        left, top = (w - cw) // 2, (h - ch) // 2
        img = img.crop((left, top, left + cw, top + ch))
    w, h = img.size
    new_long = int(resize * max(w, h) / min(w, h))
    nw, nh = (resize, new_long) if w <= h else (new_long, resize)
    nw, nh = max(nw, size), max(nh, size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def reference_inputs(shared: str | Path, size: int, big_crop: float, resize: int | None = None) -> list[tuple]:
    """(name, kind, crop, uint8 chip) of every known-answer input: three synthetic patterns at `size`
    (crop 1.0) and at 200 px with `big_crop` (chosen so no resampling happens where it can), then the
    PHOTOS of <shared>/utkface at crops 1.0 and 0.8. The photos are never committed."""
    from PIL import Image

    rows = []
    for k in range(3):
        rows.append((f"synthetic-{k}-{size}", "synthetic", 1.0, synthetic_face(k, size)))
        big = Image.fromarray(synthetic_face(k, 200))
        rows.append((f"synthetic-{k}-200", "synthetic", big_crop, np.asarray(resize_crop(big, big_crop, size, resize))))
    for p in PHOTOS:
        img = Image.open(Path(shared) / "utkface" / p).convert("RGB")
        for crop in (1.0, 0.8):
            rows.append((p, "utkface", crop, np.asarray(resize_crop(img, crop, size, resize))))
    return rows


def save_reference(out: str | Path, rows: list[tuple], outputs: dict[str, list], **meta) -> None:
    """The .npz a known-answer test reads: name, kind, crop, pixels_sha256 per row, each output stacked,
    and the reference tool's versions (meta)."""
    np.savez(out, name=np.array([r[0] for r in rows]), kind=np.array([r[1] for r in rows]),
             crop=np.array([r[2] for r in rows], np.float32),
             pixels_sha256=np.array([hashlib.sha256(np.ascontiguousarray(r[3]).tobytes()).hexdigest() for r in rows]),
             **{k: np.stack(v).astype(np.float32) for k, v in outputs.items()},
             **{k: np.array(v) for k, v in meta.items()})


def reference_rows(path: str | Path, kind: str, keys: tuple[str, ...]) -> list[dict]:
    """The rows of a committed known-answer file of one kind ("synthetic" or "utkface")."""
    ref = np.load(path, allow_pickle=False)
    return [{k: ref[k][i] for k in keys} for i in range(len(ref["name"])) if ref["kind"][i] == kind]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
