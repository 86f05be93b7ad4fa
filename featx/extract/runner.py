"""The one extraction runner: reader -> backbone -> writer, composed once; a distributor decides where.

The runner opens the job (manifest, the store as found, its identity), resumes or creates the store
(provenance first), hands the unfinished units to a `Distributor` and records the run. Argument
checks, the writer lock, provenance, the run record and the summary live in the runner only.
Distributors (`featx.extract.inprocess.InProcess`, `featx.extract.dask.Dask`) import from here,
never the reverse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ..errors import FeatxError
from ..faces.stage import FaceStage
from ..progress import progress_bar
from ..reader import ImageRows
from ..releases import RELEASES
from ..store import StoreWriter, create, image_paths, open_for_extract, writer_lock
from ..weights import canonical_path, load_backbone, read_record, sha256_file
from .extractor import Extractor
from .options import ExtractOptions
from .record import complete_summary, creation_record, record
from .resume import manifest_digests, map_manifest
from .units import check_extractor, check_precision


class Distributor(Protocol):
    """Where the units run. Used as a context manager around load() and run()."""

    where: str | None  # after load(): the device(s), for the summary
    extractor: Extractor | None  # the model in this process, None when units run elsewhere

    def __enter__(self) -> "Distributor": ...

    def __exit__(self, *exc) -> None: ...

    def load(self, backbone: str, loaded=None) -> dict:
        """Load the base where units will run; returns Extractor.info()."""

    def run(self, writer: StoreWriter, units: list[tuple[int, int]], paths: list[str],
            advance: Callable[[int], None]) -> dict:
        """Compute and write the units (`paths[row]`: each store row's image); returns {"rows", "skipped",
        "wall_s", "units", "error", ...}."""


def weights_identity(backbone: str, weights) -> tuple | None:
    """(release, weights path, sha256) without loading the model: the cache record's sha256 when
    the cached file is meant (load_backbone verifies it when the model is loaded), else the file's."""
    if backbone not in RELEASES:
        return None
    release = RELEASES[backbone]
    path = Path(weights) if weights else canonical_path(release.name)
    if not path.is_file():
        load_backbone(backbone, weights)  # raises the one-line "no weights" error
    rec = read_record(release.name) if not weights else None
    return release, path, (rec["sha256"] if rec else sha256_file(path))


@dataclass
class Job:
    """One extraction: what is asked, and the store as found."""

    manifest: Any
    backbone: str
    store: Any
    opts: ExtractOptions
    identity: dict | None = None  # known before loading the model for plain releases
    writer: StoreWriter | None = None
    note: str = ""  # what a resume kept and recomputed
    source: str | None = None  # the --data given, for provenance
    digests: list[str] | None = None  # each manifest row's file digest: its key in the store
    rows: Any = None  # each manifest row's store row, once mapped
    target_set: str = ""  # the manifest's target set in the store

    def identity_for(self, info: dict) -> dict:
        """What the features depend on; never the labels (rows are keyed by image content)."""
        return {"release": info["release"], "weights_sha256": info["weights_sha256"], "tap": info["tap"],
                "preprocess": info["preprocess"], "dtype": self.opts.dtype, "flip": bool(self.opts.flip_tta),
                "faces": info.get("faces")}


def open_job(data, backbone: str, store, opts: ExtractOptions) -> Job:
    """Load the manifest; for a plain release, find the existing store without loading the model."""
    from ..data import Manifest, load

    manifest = data if isinstance(data, Manifest) else load(data)
    job = Job(manifest, str(backbone), store, opts, source=None if isinstance(data, Manifest) else str(data))
    job.digests = manifest_digests(manifest)
    cheap = weights_identity(job.backbone, opts.weights)
    if cheap:
        release, _, sha = cheap
        from ..quantize import variant_release

        info = {"release": variant_release(release.name, opts.precision), "weights_sha256": sha,
                "tap": "+".join(release.parse_tap(opts.tap)),
                "preprocess": release.preprocess.to_dict(),
                "faces": FaceStage(opts.faces or release.faces, release.chip).identity()}
        job.identity = job.identity_for(info)
        job.writer = open_for_extract(store, job.identity)
        if job.writer is not None:
            check_precision(job.writer, opts.precision)
    return job


def run(data, backbone: str, store, opts: ExtractOptions, d: Distributor) -> dict:
    """Extract every image of `data` into `store` with distributor `d`: resume, or create, then record."""
    t0 = time.perf_counter()
    with writer_lock(store):
        job = open_job(data, backbone, store, opts)
        if job.writer is not None:
            map_manifest(job, job.writer)
            if job.writer.is_complete():
                return complete_summary(job, job.writer, t0)
        with d:
            writer, info = start(job, d)
            if writer.is_complete():
                return complete_summary(job, writer, t0)
            units = writer.plan_units()
            todo = sum(b - a for a, b in units)
            paths = image_paths(writer, job.manifest, job.rows)
            with progress_bar(opts.progress, writer.n, writer.n - todo, "extract") as advance:
                stats = d.run(writer, units, paths, advance)
        return record(job, writer, info, stats, d.where, t0)


def start(job: Job, d: Distributor) -> tuple[StoreWriter, dict]:
    """Load the model where the units will run; create the store (provenance first) when new."""
    loaded = None
    if job.identity is None:  # not a plain release (e.g. a fine-tuned model folder): load it to know it
        loaded = load_backbone(job.backbone, job.opts.weights) if not job.opts.distributed else None
    info = d.load(job.backbone, loaded)
    if job.identity is not None and info["weights_sha256"] != job.identity["weights_sha256"]:
        raise FeatxError(f"weights for {job.backbone} changed while starting; run again")
    writer = job.writer
    if writer is None and job.identity is None:
        writer = open_for_extract(job.store, job.identity_for(info))
        if writer is not None:
            map_manifest(job, writer)
    if info["precision"] == "int8":
        info["int8"] = int8_for(job, d, writer)
    if writer is None:
        writer = create(job.store, manifest=job.manifest, identity=job.identity or job.identity_for(info),
                        provenance=creation_record(job, info, d), dim=tuple(info["dim"]),
                        rows_per_shard=job.opts.rows_per_shard, rows_per_chunk=job.opts.rows_per_chunk,
                        digests=job.digests)
        job.rows, job.target_set = np.arange(len(job.manifest)), writer.reader().tset.name
    check_extractor(writer, info)
    return writer, info


def int8_for(job: Job, d: Distributor, writer: StoreWriter | None) -> dict:
    """int8: the store's recorded scales (resume), else calibrate on the data; in this process only."""
    ex = d.extractor
    if ex is None:
        raise FeatxError("--precision int8 runs in one process for now; drop --cluster/--scheduler")
    record = writer.attrs.get("int8") if writer is not None else None
    return ex.use_int8(ImageRows(job.manifest.root, job.manifest.paths, ex.preprocess, ex.face_step), record)
