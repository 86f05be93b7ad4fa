"""Caffe .caffemodel (protobuf NetParameter) read with a tiny wire-format parser: no Caffe, no _pb2.

The file is streamed: only the fields featx needs are read, everything else is skipped with seek,
and float blobs are read straight into numpy arrays. Fields used (caffe.proto):
  NetParameter:      layer = 100 (LayerParameter), layers = 2 (V1LayerParameter)
  LayerParameter:    name = 1, type = 2 (string), blobs = 7
  V1LayerParameter:  layer = 1 (V0LayerParameter: name = 1, blobs = 50), name = 4, blobs = 6
  BlobProto:         num, channels, height, width = 1..4, data = 5 (packed float),
                     shape = 7 (BlobShape: dim = 1, packed int64), double_data = 8
Caffe weights are conv [out, in, kh, kw] and InnerProduct [out, in] flattened C,H,W, as in PyTorch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from ..errors import FeatxError
from .common import Layer

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


class _Wire:
    """Sequential protobuf reader over a seekable binary file."""

    def __init__(self, f: BinaryIO, what: str, kind: str = "caffemodel"):
        self.f, self.what, self.kind = f, what, kind

    def varint(self) -> int:
        result = shift = 0
        while True:
            c = self.f.read(1)
            if not c:
                raise FeatxError(f"{self.what}: truncated protobuf (file ends inside a field)")
            result |= (c[0] & 0x7F) << shift
            if not c[0] & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise FeatxError(f"{self.what}: corrupt protobuf varint")

    def fields(self, end: int) -> Iterator[tuple[int, int, int | bytes]]:
        """Yield (field number, wire type, value) up to offset `end`.

        For length-delimited fields the value is the payload length; the payload starts at the
        current offset and the caller may read it (or not): the next step seeks past it.
        """
        while self.f.tell() < end:
            key = self.varint()
            num, wire = key >> 3, key & 7
            if wire == VARINT:
                yield num, wire, self.varint()
            elif wire == FIXED64:
                yield num, wire, self._exact(8)
            elif wire == FIXED32:
                yield num, wire, self._exact(4)
            elif wire == LEN:
                n = self.varint()
                start = self.f.tell()
                if start + n > end:
                    raise FeatxError(f"{self.what}: corrupt protobuf (field {num} runs past its message)")
                yield num, wire, n
                self.f.seek(start + n)
            else:
                raise FeatxError(f"{self.what}: unsupported protobuf wire type {wire} (not a {self.kind}?)")

    def _exact(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise FeatxError(f"{self.what}: truncated protobuf")
        return b

    def array(self, n: int, dtype: str) -> np.ndarray:
        """Read n bytes of little-endian numbers into a new array."""
        a = np.empty(n // np.dtype(dtype).itemsize, dtype)
        if self.f.readinto(memoryview(a).cast("B")) != n:
            raise FeatxError(f"{self.what}: truncated blob data")
        return a

    def packed_varints(self, n: int) -> list[int]:
        end = self.f.tell() + n
        out = []
        while self.f.tell() < end:
            out.append(self.varint())
        return out


def _blob(w: _Wire, end: int) -> np.ndarray:
    legacy = [0, 0, 0, 0]
    shape: list[int] | None = None
    data: list[np.ndarray] = []
    for num, wire, v in w.fields(end):
        if 1 <= num <= 4 and wire == VARINT:
            legacy[num - 1] = v
        elif num == 7 and wire == LEN:  # BlobShape
            shape = []
            for n2, w2, v2 in w.fields(w.f.tell() + v):
                if n2 == 1 and w2 == LEN:
                    shape += w.packed_varints(v2)
                elif n2 == 1 and w2 == VARINT:
                    shape.append(v2)
        elif num == 5 and wire == LEN:
            data.append(w.array(v, "<f4"))
        elif num == 5 and wire == FIXED32:  # unpacked floats (very old writers)
            data.append(np.frombuffer(v, "<f4").copy())
        elif num == 8 and wire == LEN:
            data.append(w.array(v, "<f8").astype(np.float32))
        elif num == 8 and wire == FIXED64:
            data.append(np.frombuffer(v, "<f8").astype(np.float32))
    arr = data[0] if len(data) == 1 else np.concatenate(data) if data else np.zeros(0, np.float32)
    if shape is None:
        shape = legacy
        # legacy 4-D blobs pad with leading 1s: InnerProduct (1, 1, out, in), bias (1, 1, 1, out)
        while len(shape) > 1 and shape[0] == 1:
            shape = shape[1:]
    if int(np.prod(shape)) != arr.size:
        raise FeatxError(f"{w.what}: blob shape {shape} does not match its {arr.size} values")
    return arr.reshape(shape)


def _layer(w: _Wire, end: int, name_field: int, blob_field: int, v0_field: int | None) -> tuple[str, list[np.ndarray]]:
    name, blobs = "", []
    for num, wire, v in w.fields(end):
        if wire != LEN:
            continue
        if num == name_field:
            name = w._exact(v).decode("utf8", "replace")
        elif num == blob_field:
            blobs.append(_blob(w, w.f.tell() + v))
        elif v0_field is not None and num == v0_field:  # V1 wrapping a V0 layer
            name0, blobs0 = _layer(w, w.f.tell() + v, 1, 50, None)
            name, blobs = name or name0, blobs + blobs0
    return name, blobs


def read_layers_from(f: BinaryIO, what: str) -> list[Layer]:
    w = _Wire(f, what)
    f.seek(0, os.SEEK_END)
    end = f.tell()
    f.seek(0)
    layers = []
    for num, wire, v in w.fields(end):
        if wire != LEN or num not in (2, 100):
            continue
        if num == 100:
            name, blobs = _layer(w, f.tell() + v, 1, 7, None)
        else:
            name, blobs = _layer(w, f.tell() + v, 4, 6, 1)
        if not blobs:
            continue
        weight = blobs[0]
        if weight.ndim not in (2, 4):
            raise FeatxError(f"{what}: layer {name!r} weight blob has shape {weight.shape}")
        layers.append(Layer(name, weight, blobs[1] if len(blobs) > 1 else None))
    if not layers:
        raise FeatxError(f"{what}: no layers with weights found (not a caffemodel?)")
    return layers


def read_layers(path: Path) -> list[Layer]:
    with open(path, "rb") as f:
        return read_layers_from(f, path.name)
