"""A saved head: head.safetensors (the learned arrays) and head.json (the card). Never a pickle.

The card (version 2) names the head's task ("classify" or "regress"; cards without it are
classifiers), and records the sha256 of head.safetensors ("arrays_sha256") and a digest of its
own content ("card_sha256": sha256 of the card as canonical JSON without that field). Loading
refuses a head whose files do not match, in one line. Version 1 cards (no digests) still load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import FeatxError
from ..paths import read_json_card
from .base import Estimator
from .registry import get_head_class, head_classes

CARD_FORMAT = "featx-head"
CARD_VERSION = 2  # 2: adds "fitted" (the choices made in fit) and the sha256 digests
ARRAYS_FILE = "head.safetensors"
CARD_FILE = "head.json"
ARRAYS_DIGEST = "arrays_sha256"
CARD_DIGEST = "card_sha256"
DAMAGED = "the head was modified or damaged"


def card_digest(card: dict) -> str:
    """sha256 of the card as canonical JSON (sorted keys, no spaces), leaving out card_sha256."""
    body = {k: v for k, v in card.items() if k != CARD_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_head(head: Estimator, out_dir: str | Path, card: dict) -> Path:
    """Write head.safetensors, then head.json with both digests; each atomically, mode 0644."""
    from safetensors.numpy import save_file

    from ..paths import atomic_write

    out = Path(out_dir)
    arrays = {k: np.ascontiguousarray(v) for k, v in head.arrays().items()}
    sha: dict[str, str] = {}

    def write_arrays(tmp: Path) -> None:
        save_file(arrays, str(tmp), metadata={"format": CARD_FORMAT, "head": head.kind})
        sha["arrays"] = file_sha256(tmp)

    atomic_write(out / ARRAYS_FILE, write_arrays)
    given = {k: v for k, v in card.items() if k not in (ARRAYS_DIGEST, CARD_DIGEST)}
    full = to_json({"format": CARD_FORMAT, "version": CARD_VERSION, **given, "head": head.kind, "task": head.task,
                    "params": params_record(head), "fitted": head.fitted_params(),
                    ARRAYS_DIGEST: sha["arrays"]})
    full[CARD_DIGEST] = card_digest(full)
    text = json.dumps(full, indent=2) + "\n"
    atomic_write(out / CARD_FILE, lambda tmp: tmp.write_text(text))
    return out


def params_record(head: Estimator) -> dict:
    """head.json "params": the constructor parameters, with the fitted choices alongside (C, gamma, hidden,
    ...) as version 1 cards had them, for readers of card["params"]. Loading takes the constructor
    parameters from here and the fitted ones from "fitted"."""
    return {"kind": head.kind, **head.fitted_params(), **head.get_params()}


def read_card(head_dir: str | Path) -> dict:
    """The card of a saved head, checked: format, version, its own digest, a known head kind."""
    path = Path(head_dir) / CARD_FILE
    if not path.is_file():
        raise FeatxError(f"no saved head at {head_dir} (missing {CARD_FILE}); train one with `featx train-head`")
    card = read_json_card(path, CARD_FORMAT, CARD_VERSION, "head card", default_version=0)
    version = card.get("version", 0)
    if version >= 2 or CARD_DIGEST in card:
        have, want = card_digest(card), str(card.get(CARD_DIGEST))
        if have != want:
            raise FeatxError(f"{path} does not match its digest (card_sha256 {have[:12]}, recorded "
                             f"{want[:12]}); {DAMAGED}")
    if card.get("head") not in head_classes():
        raise FeatxError(f"{path} names unknown head {card.get('head')!r}")
    return card


def card_task(card: dict) -> str:
    """"classify" or "regress": what a saved head predicts (cards written before regression heads: classify)."""
    return card.get("task") or "classify"


def load_head(head_dir: str | Path) -> tuple[Estimator, dict]:
    """(head, card) from a folder written by save_head. Reads JSON and safetensors only."""
    from safetensors.numpy import load_file

    card = read_card(head_dir)
    path = Path(head_dir) / ARRAYS_FILE
    if not path.is_file():
        raise FeatxError(f"{head_dir} has a card but no {ARRAYS_FILE}")
    want = card.get(ARRAYS_DIGEST)
    if want is not None:
        have = file_sha256(path)
        if have != want:
            raise FeatxError(f"{path} does not match its card (sha256 {have[:12]}, card says "
                             f"{str(want)[:12]}); {DAMAGED}")
    try:
        arrays = load_file(str(path))
    except Exception as e:  # safetensors raises several types
        raise FeatxError(f"cannot read {path}: {e}") from None
    head = get_head_class(card["head"]).from_arrays(card.get("params", {}), arrays, card.get("fitted"))
    selection = card.get("selection") or {}
    head.selection_, head.cv_results_ = selection, selection.get("results", [])
    return head, card


def check_compatible(card: dict, store_attrs: dict) -> None:
    """Refuse features from another release, tap, weights file, preprocessing or shape.

    Another manifest is fine: evaluating on another collection is the point.
    """
    have, want = card.get("provenance", {}), store_attrs
    for key, what in (("release", "release"), ("tap", "tap")):
        if have.get(key) != want.get(key):
            raise FeatxError(f"head was trained on {what} {have.get(key)!r} features but the store has "
                             f"{what} {want.get(key)!r}; extract the store with --backbone {have.get('release')} "
                             f"--tap {have.get('tap')} or train a head on it")
    for key, what in (("weights_sha256", "weights"), ("preprocess", "preprocessing")):
        a, b = have.get(key), want.get(key)
        if a is not None and b is not None and to_json(a) != to_json(b):
            if key == "weights_sha256":
                a, b = str(a)[:12], str(b)[:12]
            raise FeatxError(f"head was trained on features from other {what} ({a} vs {b}); "
                             "features from the same release must match exactly")
    if have.get("dim") is not None and want.get("dim") is not None and list(have["dim"]) != list(want["dim"]):
        raise FeatxError(f"head expects features of shape {have['dim']} but the store has {list(want['dim'])}")


def to_json(x):
    """numpy scalars/arrays and tuples -> plain JSON values."""
    if isinstance(x, dict):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_json(x.tolist())
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        x = float(x)
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x
