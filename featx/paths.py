"""Checks on where featx will write, made before any work starts: one-line errors instead of
tracebacks half-way through a run (unknown URL scheme, unwritable folder, a file where a folder goes)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable

from .errors import FeatxError

SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def url_scheme(target: str) -> str | None:
    """The scheme of an fsspec URL ("s3" for s3://b/x), None for a plain local path."""
    m = SCHEME.match(str(target))
    return m.group(1).lower() if m else None


def check_scheme(url: str) -> None:
    """FeatxError unless fsspec knows the URL's scheme and its package is installed."""
    scheme = url_scheme(url)
    if scheme is None or scheme == "file":
        return
    import fsspec

    try:
        fsspec.get_filesystem_class(scheme)
    except ValueError:
        raise FeatxError(f"{url}: unknown URL scheme {scheme!r}; use a local path or an fsspec URL "
                         "such as file://, s3://, gs://, memory://") from None
    except ImportError as e:
        raise FeatxError(f"{url}: scheme {scheme!r} needs an extra package: {e}") from None


def local_path(target: str | os.PathLike) -> Path | None:
    """The local path behind a plain path or a file:// URL; None for any other URL."""
    s = os.fspath(target)
    scheme = url_scheme(s)
    if scheme is None:
        return Path(s).expanduser()
    if scheme == "file":
        return Path(s[len("file://"):])
    return None


def _nearest_existing(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: Path, what: str) -> None:
    """FeatxError unless a folder could be made at `path`: its nearest existing parent is a folder
    in which featx can really create something (probed with an empty temporary folder, removed)."""
    base = _nearest_existing(path)
    if not base.is_dir():
        raise FeatxError(f"{what} {path}: {base} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(dir=base, prefix=".featx-probe-"))
    except OSError as e:
        raise FeatxError(f"{what} {path}: cannot write in {base}: {e.strerror or e}") from None


def check_out_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """An output folder: refused when a file sits there or when its place is not writable."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise FeatxError(f"{what} {p} is an existing file; give a folder")
    check_writable(p, what)
    return p


def check_out_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """An output file: refused when a folder sits there or its folder is not writable."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise FeatxError(f"{what} {p} is a folder; give a file name")
    check_writable(p.parent, what)
    return p


def check_store_target(url: str, what: str = "--store") -> None:
    """A store that will be written: a known URL scheme, and for a local path a writable place
    that is not an existing file."""
    check_scheme(url)
    p = local_path(url)
    if p is not None:
        check_out_dir(p, what)


def check_store_source(url: str) -> None:
    """A store that will only be read: a known URL scheme (open() reports a missing store)."""
    check_scheme(url)


def featx_home() -> Path:
    """The per-user featx folder: $FEATX_HOME, else ~/.cache/featx (as torch hub and Hugging Face do)."""
    home = os.environ.get("FEATX_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "featx"


def shown(name: str) -> str:
    """A path for a one-line message: bytes that are not UTF-8 shown as \\xNN instead of failing to print."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def atomic_write(dst: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) next to dst, then rename over it: readers see the old file or the whole new one."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, dst)
    except OSError as e:  # full disk, read-only folder: name the file the user asked for
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(dst)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json_card(path: Path, fmt: str, newest: int, what: str, default_version: int | None = None) -> dict:
    """A featx JSON card, checked in one line each: readable JSON, of format `fmt`, of a version up to
    `newest` (`default_version` when it names none)."""
    try:
        card = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise FeatxError(f"cannot read {path}: {e}") from None
    if not isinstance(card, dict) or card.get("format") != fmt:
        raise FeatxError(f"{path} is not a featx {what}")
    version = card.get("version", default_version)
    if not isinstance(version, int) or version > newest:
        raise FeatxError(f"{path} has card version {version}; this featx reads up to {newest}")
    return card
