"""Train a featx head on one tap of a store that holds several (e.g. `embedding` of embedding+pooled+...).

    python benchmarks/tap_head.py --store /work/cache/utk-both-dlib.zarr --tap embedding \
        --head logreg --out /work/data/heads/utk-both-dlib-embedding-logreg

The store's tap is a '+' join; features are concatenated in that order, so `--tap` must be one or more of its
leading parts. The head is trained by featx.training.train (the same code as `featx train-head`: train split,
C chosen on the val split) on a view of the store that shows only those columns, and its card records the
narrower tap, so `featx predict` and benchmarks/lfw_settings.py extract just that tap for it.

`--partial`: train on the shards a still-running `featx extract` has finished (checksummed rows only), for a
first look; the card's training block says how many rows it used. Never for a figure of record.
"""

from __future__ import annotations

import argparse
from functools import cached_property

import numpy as np
import zarr

from featx.extract import Extractor
from featx.training import train
from featx.store import FeatureStore, store_name


class TapView(FeatureStore):
    """A finished (or, with only_done, a partly written) store seen through its first `width` feature columns."""

    def __init__(self, store: str, tap: str, width: int, only_done: bool):
        super().__init__(zarr.open_group(store, mode="r"), store_name(store))
        if not only_done:
            FeatureStore.open(store)  # refuses an unfinished or damaged store in one line
        self.only_done, self.width = only_done, width
        self.tap, self.dim = tap, (width,)
        self.attrs = {**self.attrs, "tap": tap, "dim": [width]}

    @cached_property
    def ok(self) -> np.ndarray:
        ok = np.asarray(self.group["ok"][:], dtype=bool)
        if self.only_done:
            done = np.asarray(self.group["done"][:], dtype=bool)
            rows = np.zeros_like(ok)
            for k in np.flatnonzero(done):
                rows[k * self.rows_per_shard:(k + 1) * self.rows_per_shard] = True
            ok &= rows
        return ok

    def _read(self, arr, lo: int, hi: int) -> np.ndarray:
        """Every read (features, iter_chunks) goes through here; shards are still verified whole."""
        return super()._read(arr, lo, hi)[:, :self.width]


def leading_width(store: FeatureStore, tap: str) -> int:
    parts, want = store.tap.split("+"), tap.split("+")
    if parts[:len(want)] != want:
        raise SystemExit(f"{store.name} holds tap {store.tap}; --tap must be its leading part(s)")
    return int(Extractor(store.release, tap=tap, device="cpu").dim[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--tap", default="embedding")
    ap.add_argument("--head", default="logreg")
    ap.add_argument("--out", required=True)
    ap.add_argument("--partial", action="store_true")
    args = ap.parse_args()
    base = FeatureStore(zarr.open_group(args.store, mode="r"), store_name(args.store))
    view = TapView(args.store, args.tap, leading_width(base, args.tap), args.partial)
    n_tr, n_va = len(view.indices("train")), len(view.indices("val"))
    print(f"{view.name}: tap {base.tap} -> {args.tap} ({view.width} columns); {n_tr} train, {n_va} val rows"
          + (f" (partial: {int(view.group['done'][:].sum())} of {view.group['done'].size} shards)" if args.partial else ""))
    card = train(view, args.head, args.out)
    print(f"saved {args.out}: selection {card['selection']}; val {card['val_metrics']}")


if __name__ == "__main__":
    main()
