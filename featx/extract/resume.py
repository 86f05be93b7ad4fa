"""Resume: which finished shards of an existing store must be computed again."""

from __future__ import annotations

from ..reader import digests
from ..store import StoreWriter


def refresh(writer: StoreWriter, manifest) -> tuple[list[int], str]:
    """Finished shards that must be computed again: damaged ones, and ones whose image files changed
    since (their digests differ from the data given now). Returns (shards reset, one-line note)."""
    stored = writer.row_hashes()
    if not writer.checked or stored is None:
        return [], ""  # a store from before featx 0.2: nothing to compare with
    fs = writer.reader()
    done = writer.done()
    finished = [i for k, (a, b) in enumerate(writer.shards) if done[k] for i in range(a, b)]
    now = digests(manifest.root, manifest.paths, finished)  # unfinished shards are computed anyway
    damaged, changed, images = [], [], 0
    for k, (a, b) in enumerate(writer.shards):
        if not done[k]:
            continue
        diff = sum(now[i] != stored[i] for i in range(a, b))
        if diff:
            changed.append(k)
            images += diff
        elif fs.check_unit(k):
            damaged.append(k)
    reset = sorted(damaged + changed)
    writer.reset_units(reset)
    if not reset:
        return [], ""
    kept = int(done.sum()) - len(reset)
    return reset, (f"kept {kept} finished shard(s); recomputing {len(reset)}: {len(changed)} with "
                   f"{images} changed image(s), {len(damaged)} damaged")
