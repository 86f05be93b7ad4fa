"""Extraction speed of the face bases against vgg16.hed, in one run on the same photos.

    python benchmarks/face_speed.py --data cache/data/utk.csv --n 96 --batch 32
    python benchmarks/face_speed.py --releases dlib.resnet:embedding+pooled,vgg16.hed:pool5-gap

The releases run through featx's Extractor (release preprocessing, auto precision: bf16 where the CPU
has it, channels_last) on the same N photos, decoded and resized once up front so only the model is
timed. Batches of the models alternate, so all see the same machine load (on a shared machine
that matters more than anything). Prints img/s per model, each one's ratio to the last, features per
image at its tap, and the CPU (model name, avx512_bf16 / amx flags).
"""

from __future__ import annotations


import numpy as np
import torch

from common import Stopwatch, machine, parser, split_rows
from featx.data import load
from featx.extract import Extractor
from featx.images import open_rgb
from featx.weights import load_backbone

RELEASES = "facenet.casia:embedding+block8-gap,dlib.resnet:embedding+pooled,vgg16.hed:pool5-gap"


def chips(m, rows, release) -> torch.Tensor:
    pre = release.preprocess
    return torch.from_numpy(np.stack([np.asarray(pre.resize_crop(open_rgb(m.root / m.paths[i])), np.uint8)
                                      for i in rows]))


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--data", default="cache/data/utk.csv")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--precision", default="auto", help="auto|bf16|fp32 (every model)")
    ap.add_argument("--releases", default=RELEASES, help="release:tap,... (ratios are to the last one)")
    args = ap.parse_args()
    releases = [tuple(r.split(":", 1)) for r in args.releases.split(",")]
    m = load(args.data)
    rows = split_rows(m.splits, "test")[: args.n]
    ex, data, spent = {}, {}, {}
    for name, tap in releases:
        loaded = load_backbone(name)
        ex[name] = Extractor(name, tap=tap, device="cpu", precision=args.precision, loaded=loaded)
        data[name] = chips(m, rows, loaded[0])
        ex[name](data[name][:2])  # warm-up
        spent[name] = 0.0
    for a in range(0, len(rows), args.batch):
        for name, _ in releases:
            with Stopwatch() as t:
                ex[name](data[name][a: a + args.batch])
            spent[name] += t.s
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}")
    last = releases[-1][0]
    for name, tap in releases:
        e = ex[name]
        print(f"{name:15s} {tap:22s} {e.precision:5s} {e.preprocess.size}px  {len(rows) / spent[name]:7.2f} img/s  "
              f"{int(np.prod(e.dim))} features/image  {spent[last] / spent[name]:.1f}x {last}")


if __name__ == "__main__":
    main()
