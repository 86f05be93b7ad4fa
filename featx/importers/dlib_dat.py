"""dlib's own binary serialisation of a DNN (`dlib::serialize(net, out)`), read without dlib.

The encodings (dlib/serialize.h, dlib/float_details.h, dlib/cuda/tensor.h):
  integer  a control byte (bit 7: negative; low 4 bits: how many bytes follow), then |value| little-endian
  float    two integers: a signed 64-bit mantissa, then a 16-bit exponent; value = mantissa * 2**exponent
           (exponents 32000 / 32001 / 32002 mean +inf / -inf / NaN)
  string   its length (integer), then the bytes
  bool     one ASCII byte, '1' or '0'
  tensor   version 2, num_samples, k, nr, nc (integers), then the values as float32 little-endian
  alias    (a shape without data) version 1, num_samples, k, nr, nc
A network serialises from the outside in (dlib/dnn/core.h): the loss layer (version 1, its details),
then every wrapper writes its version number before its subnetwork, so a run of small integers comes
first (add_layer 2, tag and skip layers 1; the one next to the input 2 or 3). After the input layer's
details come each layer's details in forward order, each followed by three bools and three tensors
(gradient/output caches, normally empty). Tag/skip layers write nothing but their version, so the wiring
(which tag a skip or add_prev refers to) is not in the file: the family module that reads these layers
knows its network (featx.backbones.dlib_resnet).
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
class DatNet:
    loss: str
    input: str
    mean: tuple[float, float, float]  # avg_red, avg_green, avg_blue (the input layer subtracts, then / 256)
    size: tuple[int, int] | None  # input_rgb_image_sized<NR, NC>
    layers: list[DatLayer] = field(default_factory=list)  # forward order (next to the input first)
    versions: list[int] = field(default_factory=list)  # the wrappers' version numbers, outermost first


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
    if rec in ("relu_", "relu_2"):
        return DatLayer("relu", rec, disabled=r.bool() if rec == "relu_2" else False)
    if rec in ("max_pool_2", "avg_pool_2"):
        return _pool(r, rec)
    if rec == "add_prev_":
        return DatLayer("add_prev", rec)
    if rec in ("fc_2", "fc_3"):
        return _fc(r, rec)
    raise r.fail(f"layer {rec!r} is not supported (featx reads con, affine, relu, max/avg pool, add_prev, fc)")


def _layer(r: _Reader, caches: int) -> DatLayer:
    """One add_layer's details plus what it keeps for training (3 bools, `caches` tensors), skipped."""
    layer = _details(r)
    for _ in range(3):
        r.bool()
    for _ in range(caches):
        r.tensor()
    return layer


def _input(r: _Reader) -> tuple[str, tuple[float, float, float], tuple[int, int] | None]:
    name = r.string()
    if name not in ("input_rgb_image", "input_rgb_image_sized"):
        raise r.fail(f"input layer {name!r} is not supported (featx reads input_rgb_image[_sized])")
    mean = (r.float(), r.float(), r.float())
    size = (r.int(), r.int()) if name == "input_rgb_image_sized" else None
    return name, mean, size


def _loss(r: _Reader) -> str:
    if r.int() != 1:
        raise r.fail("no dlib loss layer (version 1) at the start")
    loss = r.string()
    if not loss.startswith("loss_"):
        raise r.fail(f"{loss!r} is not a dlib loss layer")
    if loss == "loss_metric_2":  # margin, distance threshold
        r.float(), r.float()
    elif loss not in ("loss_metric_",):
        raise r.fail(f"loss layer {loss!r} is not supported (featx reads loss_metric)")
    return loss


def read_net(data: bytes, what: str) -> DatNet:
    """A serialised dlib network (loss_metric over add_layers on an RGB input) -> its layers, in order."""
    r = _Reader(data, what)
    loss = _loss(r)
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
    name, mean, size = _input(r)
    layers = [_layer(r, 3)]  # the layer next to the input: x_grad, cached_output, grad_final
    if versions[-1] == 3:
        r.int()  # its sample expansion factor
    layers += [_layer(r, 3) for _ in range(versions[:-1].count(2))]  # x_grad, cached_output, params_grad
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} bytes left after the last layer")
    return DatNet(loss, name, mean, size, layers, versions)


def read_net_file(path: str | Path) -> DatNet:
    path = Path(path)
    return read_net(path.read_bytes(), path.name)
