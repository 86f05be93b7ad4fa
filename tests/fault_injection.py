"""Fault injection for the feature store: every fault must end in "nothing lost, nothing mixed,
one-line error". Prints a table; exits 1 if any row fails. Run by .ci/run and by tests/test_faults.py.

    python tests/fault_injection.py [--trials 20] [--workdir DIR]

Faults: SIGKILL at random moments (then resume), two concurrent writers, flipped / truncated /
deleted chunks, a moved dataset, a full disk (ENOSPC from the store's writes).
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

KW = dict(workers=0, progress=False, rows_per_shard=8, device="cpu", precision="fp32", dtype="float32",
          batch_size=4)
RUN = """
import sys, time
import featx.extract as fx
call = fx.Extractor.__call__
def slow(self, x, pad_to=None):
    time.sleep(0.2)
    return call(self, x, pad_to)
fx.Extractor.__call__ = slow
data, weights, store = sys.argv[1:4]
fx.extract(data, "vgg16.hed", store, weights=weights, **{kw})
"""


def setup(work: Path) -> tuple[Path, Path]:
    """A 40-image CSV dataset and tiny random VGG weights, made here."""
    from safetensors.torch import save_file

    from conftest import make_image, tiny_state_dict

    root = work / "data"
    lines = ["path,label"]
    for i in range(40):
        make_image(root / "img" / f"{i:03d}.jpg", seed=i, cls=i % 2)
        lines.append(f"img/{i:03d}.jpg,{['female', 'male'][i % 2]}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    weights = work / "tiny.safetensors"
    save_file(tiny_state_dict(), str(weights))
    return root / "labels.csv", weights


def features(store: Path) -> np.ndarray:
    from featx.store import FeatureStore

    return FeatureStore.open(store).features()


def extract(data, weights, store):
    from featx.extract import extract as run

    return run(data, "vgg16.hed", store, weights=weights, **KW)


def one_line(fn) -> str | None:
    """Run fn expecting a FeatxError; return its message if it is one line, else None."""
    from featx.errors import FeatxError

    try:
        fn()
    except FeatxError as e:
        return str(e) if "\n" not in str(e) else None
    return None


def sigkill_trial(data, weights, ref, work: Path, rng: random.Random) -> str:
    store = work / f"kill{rng.random():.6f}.zarr"
    script = work / "run.py"
    script.write_text(textwrap.dedent(RUN.format(kw=repr(KW))))
    proc = subprocess.Popen([sys.executable, str(script), str(data), str(weights), str(store)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (store / "zarr.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # the store exists: the run is computing
    time.sleep(rng.uniform(0.0, 2.0))  # 10 batches of >= 0.2 s: most kills land mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    s = extract(data, weights, store)
    ok = np.array_equal(features(store), ref)
    kept = 40 if s["already_complete"] else s["n"] - s["computed"]
    return f"killed with {kept} of 40 rows finished; resumed " + ("bit-identical" if ok else "DIFFERENT")


def concurrent_writers(data, weights, work: Path) -> tuple[bool, str]:
    store = work / "conc.zarr"
    hold = f"from featx.store import writer_lock\nimport time\nwith writer_lock({str(store)!r}):\n" \
           "    print('locked', flush=True)\n    time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        from featx.extract import extract as run

        msg = one_line(lambda: run(data, "vgg16.hed", store, weights=weights, tap="pool4-gap", **KW))
    finally:
        proc.kill()
        proc.wait()
    good = msg is not None and f"pid {proc.pid}" in msg and not store.exists()
    extract(data, weights, store)
    return good, (msg or "no error")[:90]


def damaged(kind: str, data, weights, ref, work: Path) -> tuple[bool, str]:
    from featx.extract import repair
    from featx.store import FeatureStore, verify

    store = work / f"{kind}.zarr"
    extract(data, weights, store)
    f = sorted(p for p in (store / "features" / "c").rglob("*") if p.is_file())[2]
    raw = bytearray(f.read_bytes())
    if kind == "flipped":
        raw[len(raw) // 3] ^= 0xFF
        f.write_bytes(bytes(raw))
    elif kind == "truncated":
        f.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        f.unlink()
    bad = verify(store)
    msg = one_line(lambda: FeatureStore.open(store).features())
    repair(store, data, workers=0, progress=False)
    good = len(bad) == 1 and msg is not None and np.array_equal(features(store), ref) and not verify(store)
    return good, f"verify found shard {[b['shard'] for b in bad]}; read refused; repaired: {(msg or '')[:40]}..."


def moved(data, weights, ref, work: Path) -> tuple[bool, str]:
    from featx.store import StoreWriter

    store = work / "moved.zarr"
    extract(data, weights, store)
    StoreWriter.open(store).reset_units([1, 3])
    new = work / "moved-data"
    shutil.copytree(data.parent, new)
    s = extract(new / "labels.csv", weights, store)
    fs_ok = np.array_equal(features(store), ref)
    return s["computed"] == 16 and fs_ok, f"resumed from the new folder: {s['computed']} rows computed, rest kept"


def full_disk(data, weights, ref, work: Path) -> tuple[bool, str]:
    from featx.store import StoreWriter

    store = work / "full.zarr"
    real = StoreWriter.write_unit
    calls = {"n": 0}

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(store))
        return real(self, *a, **k)

    StoreWriter.write_unit = failing
    try:
        from featx.extract import extract as run

        err = None
        try:
            run(data, "vgg16.hed", store, weights=weights, **KW)
        except OSError as e:
            err = e
    finally:
        StoreWriter.write_unit = real
    done = StoreWriter.open(store).done()
    s = extract(data, weights, store)  # space again: resume
    good = err is not None and err.errno == errno.ENOSPC and done.sum() == 2 and np.array_equal(features(store), ref)
    return good, f"ENOSPC at shard 3: {int(done.sum())} shards kept, resume computed {s['computed']} rows"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--workdir")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="featx-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FEATX_HOME", str(work / "home"))
    data, weights = setup(work)
    extract(data, weights, work / "ref.zarr")
    ref = features(work / "ref.zarr")
    rng = random.Random(a.seed)
    rows = []
    for t in range(a.trials):
        outcome = sigkill_trial(data, weights, ref, work, rng)
        rows.append((f"SIGKILL at a random moment, trial {t + 1}", "bit-identical" in outcome, outcome))
    rows.append(("two concurrent writers", *concurrent_writers(data, weights, work)))
    for kind in ("flipped", "truncated", "deleted"):
        rows.append((f"{kind} chunk", *damaged(kind, data, weights, ref, work)))
    rows.append(("moved dataset", *moved(data, weights, ref, work)))
    rows.append(("full disk (ENOSPC)", *full_disk(data, weights, ref, work)))
    width = max(len(r[0]) for r in rows)
    print(f"{'fault'.ljust(width)}  result                                          detail")
    for name, good, detail in rows:
        verdict = "nothing lost, nothing mixed, one-line error" if good else "FAILED"
        print(f"{name.ljust(width)}  {verdict:<46}  {detail}")
    failed = sum(not g for _, g, _ in rows)
    print(f"{len(rows) - failed} passed, {failed} failed")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
