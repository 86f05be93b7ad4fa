"""dlib's own binary serialisation of a DNN (`dlib::serialize(net, out)`), read without dlib.

The encodings (dlib/serialize.h, dlib/float_details.h, dlib/cuda/tensor.h):
  integer  a control byte (bit 7: negative; low 4 bits: how many bytes follow), then |value| little-endian
  float    two integers: a signed 64-bit mantissa, then a 16-bit exponent; value = mantissa * 2**exponent
           (exponents 32000 / 32001 / 32002 mean +inf / -inf / NaN)
  string   its length (integer), then the bytes
  bool     one ASCII byte, '1' or '0'
  tensor   version 2, num_samples, k, nr, nc (integers), then the values as float32 little-endian
  alias    (a shape without data) version 1, num_samples, k, nr, nc
A network serialises from the outside in (dlib/dnn/core.h): the loss layer (version 1, its details;
loss_mmod_ adds its mmod_options: detector windows, losses, the NMS overlap test),
then every wrapper writes its version number before its subnetwork, so a run of small integers comes
first (add_layer 2, tag and skip layers 1; the one next to the input 2 or 3). After the input layer's
details come each layer's details in forward order, each followed by three bools and three tensors
(gradient/output caches, normally empty). Tag/skip layers write nothing but their version, so the wiring
(which tag a skip or add_prev refers to) is not in the file: the family module that reads these layers
knows its network (featx.backbones.dlib_resnet, featx.faces.detect).
Training-time layers are read as dlib's own deserialize reads them for inference: bn_con2 (batch norm,
dlib/dnn/layers.h) becomes the affine layer it converts to, scale = gamma / sqrt(running var + eps) and
shift = beta - scale * running mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FeatxError

SPECIAL_EXPONENTS = {32000: np.inf, 32001: -np.inf, 32002: np.nan}


@dataclass
class DatLayer:
    """One layer's details, as written by its serialize()."""

    kind: str  # con | affine | relu | max_pool | avg_pool | add_prev | fc
    record: str  # the version string in the file (con_4, affine_, fc_2, ...)
    params: np.ndarray | None = None  # flat float32 (con: filters then biases; affine: gamma then beta)
    shape: tuple[int, ...] = ()  # con: (filters, k, nr, nc); affine: gamma's (1, k, nr, nc); fc: (inputs, outputs)
    window: tuple[int, int] = (0, 0)  # con / pools: (nr, nc)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    bias: bool = True  # con / fc
    mode: int = 0  # affine: 0 per channel (CONV_MODE), 1 per element (FC_MODE)
    disabled: bool = False  # affine_2 / relu_2


@dataclass
class MmodOptions:
    """loss_mmod_'s options (dlib/dnn/loss.h mmod_options, versions 1..4)."""

    windows: list[tuple[int, int, str]]  # detector windows: (width, height, label), one output channel each
    loss_per_false_alarm: float
    loss_per_missed_target: float
    truth_match_iou: float
    nms: tuple[float, float]  # test_box_overlap: (iou_thresh, percent_covered_thresh)
    ignore: tuple[float, float]
    image_pyramid: bool = True  # assume_image_pyramid
    bbr: bool = False  # use_bounding_box_regression (then 4 more output channels per window)
    bbr_lambda: float = 100.0
    version: int = 1


@dataclass
class DatNet:
    loss: str
    input: str
    mean: tuple[float, float, float]  # avg_red, avg_green, avg_blue (the input layer subtracts, then / 256)
    size: tuple[int, int] | None  # input_rgb_image_sized<NR, NC>
    layers: list[DatLayer] = field(default_factory=list)  # forward order (next to the input first)
    versions: list[int] = field(default_factory=list)  # the wrappers' version numbers, outermost first
    mmod: MmodOptions | None = None  # loss_mmod_ only
    pyramid_padding: tuple[int, int] | None = None  # input_rgb_image_pyramid: (padding, outer padding)


class _Reader:
    def __init__(self, data: bytes, what: str):
        self.data, self.what, self.pos = memoryview(data), what, 0

    def fail(self, msg: str) -> FeatxError:
        return FeatxError(f"{self.what}: {msg} at byte {self.pos} (not a dlib network file?)")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail("file ends early")
        out = self.data[self.pos: self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        ctrl = self.take(1)[0]
        n = ctrl & 0x0F
        if n == 0 or n > 8 or ctrl & 0x70:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x}")
        v = int.from_bytes(self.take(n), "little")
        return -v if ctrl & 0x80 else v

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent in SPECIAL_EXPONENTS:
            return float(SPECIAL_EXPONENTS[exponent])
        return float(np.ldexp(float(mantissa), exponent))

    def string(self, limit: int = 256) -> str:
        n = self.int()
        if not 0 <= n <= limit:
            raise self.fail(f"string of length {n}")
        return bytes(self.take(n)).decode("latin-1")

    def bool(self) -> bool:
        c = bytes(self.take(1))
        if c not in (b"0", b"1"):
            raise self.fail(f"bad bool byte {c!r}")
        return c == b"1"

    def dims(self, version: int, what: str) -> tuple[int, int, int, int]:
        v = self.int()
        if v != version:
            raise self.fail(f"{what} version {v}, expected {version}")
        d = tuple(self.int() for _ in range(4))
        if min(d) < 0:
            raise self.fail(f"{what} of negative shape {d}")
        return d  # type: ignore[return-value]

    def tensor(self) -> np.ndarray:
        d = self.dims(2, "tensor")
        n = int(np.prod(d))
        raw = self.take(4 * n)
        return np.frombuffer(raw, "<f4").astype(np.float32).reshape(d)

    def alias(self) -> tuple[int, int, int, int]:
        return self.dims(1, "alias_tensor")


def _con(r: _Reader, rec: str) -> DatLayer:
    params = r.tensor().reshape(-1)
    filters = r.int()
    window = (r.int(), r.int())
    stride = (r.int(), r.int())
    padding = (r.int(), r.int())
    shape, _ = r.alias(), r.alias()  # filters (num_filters, k, nr, nc), biases
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.float()
    bias = r.bool() if rec in ("con_5", "con_6") else True
    if rec == "con_6" and r.bool():
        raise r.fail("a con_ layer with a fused relu is not supported")
    if shape[0] != filters or shape[2:] != window:
        raise r.fail(f"con_ filters {shape} disagree with {filters} filters of {window}")
    return DatLayer("con", rec, params, shape, window, stride, padding, bias=bias)


def _affine(r: _Reader, rec: str) -> DatLayer:
    params = r.tensor().reshape(-1)
    gamma, _ = r.alias(), r.alias()
    mode = r.int()
    disabled = r.bool() if rec == "affine_2" else False
    return DatLayer("affine", rec, params, gamma, mode=mode, disabled=disabled)


def _bn_con(r: _Reader, rec: str) -> DatLayer:
    """bn_con2 (batch norm over channels) as the affine layer dlib converts it to for inference."""
    params = r.tensor().reshape(-1).astype(np.float64)
    gamma, _ = r.alias(), r.alias()
    r.tensor(), r.tensor()  # batch means, inverse stds (training state)
    mean, var = r.tensor().reshape(-1).astype(np.float64), r.tensor().reshape(-1).astype(np.float64)
    r.int(), r.int()  # num_updates, running_stats_window_size
    for _ in range(4):
        r.float()
    eps = r.float()
    k = gamma[1]
    if params.size != 2 * k or mean.size != k or var.size != k or gamma[2:] != (1, 1) or np.any(var + eps <= 0):
        raise r.fail(f"bn_con2 of {params.size} values for {k} channels ({mean.size} means, {var.size} variances)")
    scale = params[:k] / np.sqrt(var + eps)
    shift = params[k:] - scale * mean
    return DatLayer("affine", rec, np.concatenate([scale, shift]).astype(np.float32), gamma, mode=0)


def _pool(r: _Reader, rec: str) -> DatLayer:
    window, stride, padding = (r.int(), r.int()), (r.int(), r.int()), (r.int(), r.int())
    return DatLayer(rec.rsplit("_", 1)[0], rec, window=window, stride=stride, padding=padding)


def _fc(r: _Reader, rec: str) -> DatLayer:
    outputs, inputs = r.int(), r.int()
    params = r.tensor().reshape(-1)
    weights, _ = r.alias(), r.alias()  # weights (inputs, outputs), biases
    bias_mode = r.int()  # 0 FC_HAS_BIAS, 1 FC_NO_BIAS
    for _ in range(4):
        r.float()
    use_bias = r.bool() if rec == "fc_3" else True
    if weights[:2] != (inputs, outputs):
        raise r.fail(f"fc_ weights {weights} disagree with {inputs} inputs, {outputs} outputs")
    return DatLayer("fc", rec, params, (inputs, outputs), bias=bias_mode == 0 and use_bias)


def _details(r: _Reader) -> DatLayer:
    rec = r.string()
    if rec in ("con_4", "con_5", "con_6"):
        return _con(r, rec)
    if rec in ("affine_", "affine_2"):
        return _affine(r, rec)
    if rec == "bn_con2":
        return _bn_con(r, rec)
    if rec in ("relu_", "relu_2"):
        return DatLayer("relu", rec, disabled=r.bool() if rec == "relu_2" else False)
    if rec in ("max_pool_2", "avg_pool_2"):
        return _pool(r, rec)
    if rec == "add_prev_":
        return DatLayer("add_prev", rec)
    if rec in ("fc_2", "fc_3"):
        return _fc(r, rec)
    raise r.fail(f"layer {rec!r} is not supported (featx reads con, affine, bn_con, relu, max/avg pool, add_prev, fc)")


def _layer(r: _Reader, caches: int) -> DatLayer:
    """One add_layer's details plus what it keeps for training (3 bools, `caches` tensors), skipped."""
    layer = _details(r)
    for _ in range(3):
        r.bool()
    for _ in range(caches):
        r.tensor()
    return layer


INPUTS = ("input_rgb_image", "input_rgb_image_sized", "input_rgb_image_pyramid", "input_rgb_image_pyramid2")


def _input(r: _Reader, net: DatNet) -> None:
    name = r.string()
    if name not in INPUTS:
        raise r.fail(f"input layer {name!r} is not supported (featx reads {', '.join(INPUTS)})")
    net.input = name.rstrip("2")
    net.mean = (r.float(), r.float(), r.float())
    if name == "input_rgb_image_sized":
        net.size = (r.int(), r.int())
    elif name == "input_rgb_image_pyramid2":
        net.pyramid_padding = (r.int(), r.int())
    elif name == "input_rgb_image_pyramid":  # the first version wrote no padding: dlib's defaults
        net.pyramid_padding = (10, 11)


def _window(r: _Reader) -> tuple[int, int, str]:
    v = r.int()
    if v not in (1, 2):
        raise r.fail(f"detector window version {v}")
    return r.int(), r.int(), r.string() if v == 2 else ""


def _mmod_options(r: _Reader) -> MmodOptions:
    v = r.int()
    if not 1 <= v <= 4:
        raise r.fail(f"mmod_options version {v}")
    if v == 1:
        windows = [(r.int(), r.int(), "")]
    else:
        windows = [_window(r) for _ in range(r.int())]
    o = MmodOptions(windows, r.float(), r.float(), r.float(), (r.float(), r.float()), (r.float(), r.float()),
                    version=v)
    if v >= 3:
        o.image_pyramid = bool(r.take(1)[0])  # a uint8 enum: one raw byte
    if v >= 4:
        o.bbr, o.bbr_lambda = r.bool(), r.float()
    if not windows or any(w <= 0 or h <= 0 for w, h, _ in windows):
        raise r.fail(f"mmod detector windows {windows}")
    return o


def _loss(r: _Reader, net: DatNet) -> None:
    if r.int() != 1:
        raise r.fail("no dlib loss layer (version 1) at the start")
    loss = r.string()
    if not loss.startswith("loss_"):
        raise r.fail(f"{loss!r} is not a dlib loss layer")
    if loss == "loss_metric_2":  # margin, distance threshold
        r.float(), r.float()
    elif loss == "loss_mmod_":
        net.mmod = _mmod_options(r)
    elif loss not in ("loss_metric_",):
        raise r.fail(f"loss layer {loss!r} is not supported (featx reads loss_metric, loss_mmod)")
    net.loss = loss


def read_net(data: bytes, what: str) -> DatNet:
    """A serialised dlib network (loss_metric or loss_mmod over add_layers on an RGB input) -> its layers."""
    r = _Reader(data, what)
    net = DatNet("", "", (0.0, 0.0, 0.0), None)
    _loss(r, net)
    versions = []
    while True:  # wrapper versions are 1..3; the input layer's name length (> 3) ends the run
        start = r.pos
        v = r.int()
        if v > 3:
            r.pos = start
            break
        versions.append(v)
    if not versions or versions[-1] not in (2, 3) or any(v not in (1, 2) for v in versions[:-1]):
        raise r.fail(f"unexpected layer versions {versions[:8]}...")
    _input(r, net)
    layers = [_layer(r, 3)]  # the layer next to the input: x_grad, cached_output, grad_final
    if versions[-1] == 3:
        r.int()  # its sample expansion factor
    layers += [_layer(r, 3) for _ in range(versions[:-1].count(2))]  # x_grad, cached_output, params_grad
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} bytes left after the last layer")
    net.layers, net.versions = layers, versions
    return net


def read_net_file(path: str | Path) -> DatNet:
    path = Path(path)
    return read_net(path.read_bytes(), path.name)
