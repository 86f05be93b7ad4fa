"""Where features and heads come from: one `provenance()` of a store and one `versions()`.

A store's attrs hold what made its features (release, tap, preprocessing, weights and data hashes);
head cards and reports copy them from here.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

from . import __version__

# copied from a store's attrs into head cards and reports
STORE_KEYS = ("release", "tap", "preprocess", "manifest_hash", "weights_sha256", "dtype", "precision", "dim", "faces")
PACKAGES = {"torch": "torch", "zarr": "zarr", "numpy": "numpy", "scikit-learn": "sklearn"}  # name: module


def versions() -> dict:
    """featx, Python and the packages that shape the numbers: a loaded module's __version__ (torch's
    names its build, e.g. +cu130), else the installed distribution's; None when not installed."""
    out = {"featx": __version__, "python": platform.python_version()}
    for name, module in PACKAGES.items():
        loaded = sys.modules.get(module)
        try:
            out[name] = getattr(loaded, "__version__", None) or metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(store) -> dict:
    """What a store's features are: STORE_KEYS from its attrs, its dim and its name."""
    attrs = dict(getattr(store, "attrs", {}) or {})
    prov = {k: attrs.get(k) for k in STORE_KEYS}
    prov["release"] = prov["release"] or getattr(store, "release", None)
    prov["tap"] = prov["tap"] or getattr(store, "tap", None)
    dim = getattr(store, "dim", None) or prov["dim"]
    prov["dim"] = list(dim) if dim is not None else None
    prov["store"] = str(getattr(store, "name", ""))
    return prov
