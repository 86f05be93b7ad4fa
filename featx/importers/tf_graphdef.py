"""A frozen TensorFlow GraphDef (.pb) read with the Caffe importer's wire-format reader: no tensorflow.

A frozen graph holds its weights as Const nodes. Fields used (tensorflow/core/framework/*.proto):
  GraphDef:          node = 1 (NodeDef)
  NodeDef:           name = 1, op = 2, input = 3 (repeated string), attr = 5 (map<string, AttrValue>)
  AttrValue:         list = 1, s = 2, i = 3, f = 4, b = 5, type = 6, shape = 7, tensor = 8
  AttrValue.List:    s = 2, i = 3 (packed int64), f = 4 (packed float)
  TensorProto:       dtype = 1, tensor_shape = 2, tensor_content = 4 (raw little-endian),
                     float_val = 5, int_val = 7, int64_val = 10 (a single value is broadcast)
  TensorShapeProto:  dim = 2 (Dim: size = 1)
Only float32, int32 and int64 tensors are decoded (what a frozen conv net holds); others stay None.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import FeatxError
from .caffe import FIXED32, LEN, VARINT, _Wire

DTYPES = {1: "<f4", 3: "<i4", 9: "<i8"}  # DT_FLOAT, DT_INT32, DT_INT64


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attr: dict = field(default_factory=dict)  # name -> str | int | float | bool | list | np.ndarray


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _shape(w: _Wire, end: int) -> list[int]:
    dims = []
    for num, wire, v in w.fields(end):
        if num == 2 and wire == LEN:
            size = 0
            for n2, w2, v2 in w.fields(w.f.tell() + v):
                if n2 == 1 and w2 == VARINT:
                    size = _signed(v2)
            dims.append(size)
    return dims


def _tensor(w: _Wire, end: int) -> np.ndarray | None:
    dtype, shape, content, vals = 0, [], None, []
    for num, wire, v in w.fields(end):
        if num == 1 and wire == VARINT:
            dtype = v
        elif num == 2 and wire == LEN:
            shape = _shape(w, w.f.tell() + v)
        elif num == 4 and wire == LEN:
            content = w._exact(v)
        elif num == 5 and wire == LEN:
            vals += w.array(v, "<f4").tolist()
        elif num == 5 and wire == FIXED32:
            vals.append(float(np.frombuffer(v, "<f4")[0]))
        elif num in (7, 10) and wire == LEN:
            vals += [_signed(x) for x in w.packed_varints(v)]
        elif num in (7, 10) and wire == VARINT:
            vals.append(_signed(v))
    if dtype not in DTYPES:
        return None
    n = int(np.prod(shape)) if shape else 1
    if content is not None:
        a = np.frombuffer(content, DTYPES[dtype]).copy()
    elif len(vals) in (0, 1):  # TF stores a constant fill as one value
        a = np.full(n, vals[0] if vals else 0, DTYPES[dtype])
    else:
        a = np.asarray(vals, DTYPES[dtype])
    if a.size != n:
        raise FeatxError(f"{w.what}: tensor of shape {shape} holds {a.size} values")
    return a.reshape(shape).astype(a.dtype.newbyteorder("="))


def _attr_list(w: _Wire, end: int) -> list:
    out: list = []
    for num, wire, v in w.fields(end):
        if num == 2 and wire == LEN:
            out.append(w._exact(v).decode("utf8", "replace"))
        elif num == 3 and wire == LEN:
            out += [_signed(x) for x in w.packed_varints(v)]
        elif num == 3 and wire == VARINT:
            out.append(_signed(v))
        elif num == 4 and wire == LEN:
            out += w.array(v, "<f4").tolist()
    return out


def _attr_value(w: _Wire, end: int):
    value = None
    for num, wire, v in w.fields(end):
        if num == 1 and wire == LEN:
            value = _attr_list(w, w.f.tell() + v)
        elif num == 2 and wire == LEN:
            value = w._exact(v).decode("utf8", "replace")
        elif num in (3, 6) and wire == VARINT:
            value = _signed(v)
        elif num == 4 and wire == FIXED32:
            value = float(np.frombuffer(v, "<f4")[0])
        elif num == 5 and wire == VARINT:
            value = bool(v)
        elif num == 7 and wire == LEN:
            value = _shape(w, w.f.tell() + v)
        elif num == 8 and wire == LEN:
            value = _tensor(w, w.f.tell() + v)
    return value


def _node(w: _Wire, end: int) -> Node:
    node = Node("", "")
    for num, wire, v in w.fields(end):
        if wire != LEN:
            continue
        if num in (1, 2, 3):
            s = w._exact(v).decode("utf8", "replace")
            if num == 1:
                node.name = s
            elif num == 2:
                node.op = s
            else:
                node.inputs.append(s)
        elif num == 5:  # map entry: key = 1, value = 2
            key, val = "", None
            for n2, w2, v2 in w.fields(w.f.tell() + v):
                if n2 == 1 and w2 == LEN:
                    key = w._exact(v2).decode("utf8", "replace")
                elif n2 == 2 and w2 == LEN:
                    val = _attr_value(w, w.f.tell() + v2)
            node.attr[key] = val
    return node


def read_nodes_from(f: BinaryIO, what: str) -> list[Node]:
    """Every node of a GraphDef, in file order."""
    w = _Wire(f, what, kind="TensorFlow GraphDef")
    f.seek(0, os.SEEK_END)
    end = f.tell()
    f.seek(0)
    nodes = []
    for num, wire, v in w.fields(end):
        if num == 1 and wire == LEN:
            nodes.append(_node(w, f.tell() + v))
    if not nodes or not all(n.name and n.op for n in nodes):
        raise FeatxError(f"{what}: no TensorFlow graph nodes found (not a frozen GraphDef .pb?)")
    return nodes


def read_nodes(path: str | Path) -> list[Node]:
    path = Path(path)
    with open(path, "rb") as f:
        return read_nodes_from(f, path.name)


def read_nodes_bytes(data: bytes, what: str) -> list[Node]:
    return read_nodes_from(io.BytesIO(data), what)


def consts(nodes: list[Node]) -> dict[str, np.ndarray]:
    """Const node name -> its value (float/int tensors only)."""
    return {n.name: n.attr["value"] for n in nodes if n.op == "Const" and isinstance(n.attr.get("value"), np.ndarray)}
