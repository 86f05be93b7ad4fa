"""What a run leaves behind: the store's creation record (its provenance), the run record, the summary
attrs once complete, and the one-line summary."""

from __future__ import annotations

import time
from typing import Any

from ..store import StoreWriter


def creation_record(job, info: dict, d) -> dict:
    """The store's provenance, written before any feature: weights, release, precision, device, versions."""
    return {
        "weights_file": str(job.opts.weights or job.backbone),
        "release_info": info["release_info"],
        "precision": info["precision"],
        "device": info["device"],
        "versions": info["versions"],
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": {"data": job.source, "backbone": job.backbone},
        **({"cluster": d.cluster_info} if getattr(d, "cluster_info", None) else {}),
        **({"int8": info["int8"]} if info.get("int8") else {}),
    }


def record(job, writer: StoreWriter, info: dict, stats: dict, where: str, t0: float) -> dict:
    """The run record in the store, the summary attrs, and the summary; re-raises a unit's error after."""
    o = job.opts
    rate = round(stats["rows"] / stats["wall_s"], 2) if stats["wall_s"] > 0 else None
    run = {"rows": stats["rows"], "wall_s": round(stats["wall_s"], 3), "images_per_s": rate, "device": where,
           "precision": info["precision"], "batch_size": stats.get("batch_size"), "workers": stats.get("workers"),
           "compile": o.compile, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           **({"cluster": stats["cluster"]} if stats.get("cluster") else {})}
    attrs = finish(writer, run)
    if stats.get("error") is not None:
        raise stats["error"]
    skipped = attrs.get("skipped", {})
    return {"store": writer.name, "n": writer.n, "images": len(job.manifest), "target_set": job.target_set,
            "computed": stats["rows"], "skipped_now": stats["skipped"], "several_faces": stats.get("several_faces", 0),
            "skipped": int(skipped.get("count", 0)), "skipped_first": skipped.get("first", []),
            "already_complete": False, "wall_s": time.perf_counter() - t0, "compute_wall_s": stats["wall_s"],
            "images_per_s": rate, "device": where, "precision": info["precision"], "note": job.note,
            "peak_shard_buffers": stats.get("peak_shard_buffers"), "units": stats.get("units"),
            **{k: stats[k] for k in ("units_already_done", "n_workers", "scheduler", "per_worker") if k in stats}}


def complete_summary(job, writer: StoreWriter, t0: float) -> dict:
    """The summary of a run that found every image of its data in the store already."""
    count, _ = writer.skipped(0)
    return {"store": writer.name, "n": writer.n, "computed": 0, "skipped": count, "images": len(job.manifest),
            "target_set": job.target_set, "already_complete": True, "wall_s": time.perf_counter() - t0}


def finish(store, run: dict | None = None) -> dict:
    """Record a run's timings and, once every shard is written, the summary attrs (single coordinator)."""
    writer = store if isinstance(store, StoreWriter) else StoreWriter.open(store)
    runs = list(writer.attrs.get("runs", []))
    if run and run.get("rows"):
        runs.append(run)
    values: dict[str, Any] = {"runs": runs}
    if writer.is_complete():
        count, first = writer.skipped(100)
        wall = sum(r["wall_s"] for r in runs)
        rows = sum(r["rows"] for r in runs)
        values.update({
            "complete": True,
            "skipped": {"count": count, "first": first},
            "timings": {"wall_s": round(wall, 3), "rows": rows,
                        "images_per_s": round(rows / wall, 2) if wall > 0 else None},
        })
    writer.update_attrs(values)
    return writer.attrs


def summary_line(s: dict) -> str:
    if s["already_complete"]:
        return (f"store {s['store']} is already complete: all {s.get('images', s['n'])} images of this data are in "
                f"it (target set {s.get('target_set', '')!r}; {s['skipped']} skipped in the store); nothing to do "
                f"({s['wall_s']:.1f} s)")
    rate = f", {s['images_per_s']:.1f} images/s" if s.get("images_per_s") else ""
    return (f"extracted {s['computed']} of {s.get('images', s['n'])} images into {s['store']} in {s['wall_s']:.1f} s"
            f"{rate} on {s['device']} at {s['precision']}; skipped {s['skipped']} "
            f"(reasons in the store's `reason` array)"
            + (f"; {s['several_faces']} photos had several faces (largest kept)" if s.get("several_faces") else ""))
