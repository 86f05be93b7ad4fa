"""Is decoding + resizing ever the bottleneck? Decode rates against model rates, same photos, one run.

    python benchmarks/decode_speed.py --data ../shared/data/utkface/labels.csv --n 512

Prints, for the first N photos at the release's input size:
  featx decode    featx.extract.ImageRows (open_rgb: EXIF, mode checks; resize_crop; uint8) through a
                  DataLoader with 0, 1, 2 worker processes, and its CPU cost per image (ms of one core);
  PIL draft       Image.draft before decoding (JPEG DCT downscaling): only pays when the target is at most
                  half the stored size, so it is also timed on the same photos stored 4x larger;
  torchvision     torchvision.io.decode_jpeg on a list (batched) + resize (antialiased bilinear), and its
                  largest pixel difference from featx's PIL path;
  models          the bare model (auto precision, channels_last, in memory) for VGG16 pool5-gap (all of it),
                  pool3-gap, and pool1-gap (about 1/8 of VGG16's multiply-adds: the cost of a light face net).
On a CPU, decode and the model share the same cores: the share of CPU time that decode takes is
decode_ms / (decode_ms + model_ms_per_image * cores). On a GPU, decode workers must together deliver the
GPU's img/s: workers needed = GPU img/s / decode img/s per worker.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from common import machine, model_arguments, parser
from featx.data import load
from featx.device import AUTOCAST, resolve_precision
from featx.extract import Extractor
from featx.images import open_rgb
from featx.reader import ImageRows


def featx_decode(manifest, preprocess, workers: int, n: int) -> float:
    ds = ImageRows(manifest.root, manifest.paths[:n], preprocess)
    kw = {"num_workers": workers, "prefetch_factor": 4} if workers else {}
    t = time.perf_counter()
    for _ in DataLoader(ds, batch_size=32, **kw):
        pass
    return n / (time.perf_counter() - t)


def per_image_cost(paths, preprocess) -> dict:
    """ms of one core per image for open_rgb and for resize_crop + uint8 array (single process)."""
    t_dec = t_res = 0.0
    for p in paths:
        t = time.perf_counter()
        img = open_rgb(p)
        t_dec += time.perf_counter() - t
        t = time.perf_counter()
        np.asarray(preprocess.resize_crop(img), dtype=np.uint8)
        t_res += time.perf_counter() - t
    return {"decode_ms": 1e3 * t_dec / len(paths), "resize_ms": 1e3 * t_res / len(paths)}


def draft_rate(blobs: list[bytes], preprocess, use_draft: bool) -> float:
    size = preprocess.resize
    t = time.perf_counter()
    for b in blobs:
        img = Image.open(io.BytesIO(b))
        if use_draft:
            img.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale while still >= size
        np.asarray(preprocess.resize_crop(img.convert("RGB")), dtype=np.uint8)
    return len(blobs) / (time.perf_counter() - t)


def torchvision_rate(blobs: list[bytes], preprocess, reference: list[np.ndarray]) -> tuple[float, float]:
    """(img/s, largest |difference| in 0..255 against featx's PIL output) for decode_jpeg + resize."""
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as F

    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a decode worker: one core
    t = time.perf_counter()
    outs = []
    for a in range(0, len(datas), 32):
        for img in decode_jpeg(datas[a: a + 32]):  # a list: decoded as one batch
            img = F.resize(img, preprocess.resize, antialias=True)
            outs.append(F.center_crop(img, preprocess.size))
    rate = len(datas) / (time.perf_counter() - t)
    torch.set_num_threads(threads)
    diff = max(int(np.abs(o.permute(1, 2, 0).numpy().astype(int) - r.astype(int)).max())
               for o, r in zip(outs, reference))
    return rate, float(diff)


def enlarged(blobs: list[bytes], factor: int) -> list[bytes]:
    out = []
    for b in blobs:
        img = Image.open(io.BytesIO(b)).convert("RGB")
        img = img.resize((img.width * factor, img.height * factor), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@torch.inference_mode()
def model_rate(ex: Extractor, tap: str, x: torch.Tensor, precision: str, batch: int = 32) -> float:
    from featx.backbones import tap_features

    def run(t):
        with torch.autocast("cpu", dtype=AUTOCAST[precision], enabled=precision in AUTOCAST):
            return tap_features(ex.model, t, tap)
    run(x[:batch])
    t = time.perf_counter()
    for a in range(0, len(x), batch):
        run(x[a: a + batch])
    return len(x) / (time.perf_counter() - t)


def main() -> None:
    ap = parser(__doc__)
    model_arguments(ap, n=512, tap=None)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--model-n", type=int, default=64, help="photos for each model rate")
    args = ap.parse_args()

    m = load(args.data)
    n = min(args.n, len(m))
    paths = [m.abspath(i) for i in range(n)]
    ex = Extractor(args.backbone, weights=args.weights, device="cpu", precision="fp32")
    p = ex.preprocess
    for q in paths:  # the page cache: every decoder below reads warm files
        open(q, "rb").read()
    print(f"machine: {machine()}")
    print(f"{n} photos from {args.data}, to {p.size}x{p.size} (resize {p.resize}); {os.cpu_count()} cores")
    for w in [int(k) for k in args.workers.split(",")]:
        print(f"featx decode, {w} worker(s): {featx_decode(m, p, w, n):8.1f} img/s")
    cost = per_image_cost(paths[:128], p)
    print(f"featx per image, one core: open_rgb {cost['decode_ms']:.2f} ms + resize_crop {cost['resize_ms']:.2f} ms")

    blobs = [open(q, "rb").read() for q in paths[:128]]
    size = Image.open(io.BytesIO(blobs[0])).size
    print(f"PIL, stored size {size}: plain {draft_rate(blobs, p, False):8.1f} img/s, "
          f"draft {draft_rate(blobs, p, True):8.1f} img/s (draft cannot shrink below 2x the target)")
    big = enlarged(blobs[:64], 4)
    print(f"PIL, stored 4x larger {size[0] * 4}x{size[1] * 4}: plain {draft_rate(big, p, False):8.1f} img/s, "
          f"draft {draft_rate(big, p, True):8.1f} img/s")
    ref = [np.asarray(p.resize_crop(open_rgb(q)), dtype=np.uint8) for q in paths[:128]]
    rate, diff = torchvision_rate(blobs, p, ref)
    print(f"torchvision decode_jpeg (batched) + resize: {rate:8.1f} img/s; max |diff| vs featx/PIL {diff:.0f}/255")

    prec = resolve_precision("auto", torch.device("cpu"))
    loader = DataLoader(ImageRows(m.root, m.paths[: args.model_n], p), batch_size=args.model_n)
    x = ex.normalize(next(iter(loader))[1])
    decode_ms = cost["decode_ms"] + cost["resize_ms"]
    cores = os.cpu_count() or 1
    for tap in ("pool5-gap", "pool3-gap", "pool1-gap"):
        r = model_rate(ex, tap, x, prec)
        share = decode_ms / (decode_ms + 1e3 * cores / r)
        print(f"bare model {prec} {tap:>9}: {r:8.1f} img/s; decode would take {share:5.1%} of the CPU time")


if __name__ == "__main__":
    main()
