"""Extraction: the frozen base run once over a manifest, features into a store.

    extract(data, "vgg16.hed", "cache/features/utk.zarr", tap="pool5-gap")

Each part reads alone:
  options    ExtractOptions: everything besides the data, the backbone and the store
  extractor  Extractor: the backbone side (normalise, model, tap; int8 included)
  sink       ShardSink: the writer thread
  units      running whole shards (decode -> extract -> write), what every distributor calls
  runner     the one runner: job, resume or create, a Distributor runs the units, record
  inprocess  InProcess: the units in this process
  dask       Dask: one dask.distributed task per shard, the model once per worker
  resume     which finished shards to compute again
  record     the store's creation record, run records, summary
  command    extract(), repair(): a distributor chosen, the runner started
"""

from .command import extract, repair
from .extractor import Extractor
from .options import ExtractOptions

__all__ = ["extract", "repair", "ExtractOptions", "Extractor"]
