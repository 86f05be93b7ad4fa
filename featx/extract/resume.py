"""Resume: which finished shards of an existing store must be computed again, and how the manifest
given now maps onto the store's rows (by image content)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ..reader import file_digest
from ..store import StoreWriter, attach


def manifest_digests(manifest) -> list[str]:
    """The digest of every image file of the manifest: the rows' content keys ("" when unreadable)."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(file_digest, (manifest.abspath(i) for i in range(len(manifest)))))


def refresh(writer: StoreWriter) -> list[int]:
    """Finished shards that no longer verify, reset to be computed again. (A changed image is new
    content: it gets a new row, and its old row stays, still right for the old bytes.)"""
    if not writer.checked:
        return []  # a store from before featx 0.2: nothing to compare with
    fs = writer.reader()
    done = writer.done()
    damaged = [k for k in range(writer.n_shards) if done[k] and fs.check_unit(k)]
    writer.reset_units(damaged)
    return damaged


def map_manifest(job, writer: StoreWriter) -> None:
    """Damaged shards reset; the manifest mapped onto the store by content: images already there keep
    their rows, new ones get rows in a new segment (computed as unfinished shards), and the manifest
    becomes a target set. Sets job.rows, job.target_set and job.note."""
    damaged = refresh(writer)
    got = attach(writer, job.manifest, job.digests)
    job.rows, job.target_set = got["rows"], got["set"]
    n = len(job.manifest)
    parts = []
    if got["new"]:
        parts.append(f"{got['new']} of {n} images are new: computing them; {got['kept']} already in the store")
    if damaged:
        parts.append(f"recomputing {len(damaged)} damaged shard(s)")
    job.note = "; ".join(parts)
