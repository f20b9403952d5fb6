"""Index a safetensors file from its header alone, without reading tensor data.

The safetensors format is an 8-byte little-endian header length N, N bytes of
UTF-8 JSON, then the tensor data. The header maps each tensor name to its dtype,
shape and ``data_offsets`` (relative to the end of the header). We parse it
ourselves only to learn byte ranges, which the safetensors library does not
expose; tensor *values* are always checked against that library in the tests.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import BinaryIO

from ptmpack.errors import InvalidTreeError

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""The safetensors library's own cap on the JSON header."""

MAX_TENSOR_DIMS = 32
"""numpy represents at most 64 dimensions; no real tensor needs more than a handful."""

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file: ``begin``/``end`` are byte offsets from the file start."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsIndex:
    """The parsed header: tensors in file order plus the free-form ``__metadata__``."""

    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str]
    data_start: int

    def by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}


def _bad(where: str, why: str) -> InvalidTreeError:
    return InvalidTreeError(f"{where}: not a valid safetensors file: {why}")


def index_safetensors(stream: BinaryIO, file_size: int, where: str = "<safetensors>") -> SafetensorsIndex:
    """Parse and check the header of a safetensors file of ``file_size`` bytes.

    Raises:
        InvalidTreeError: the header is truncated, oversized, not JSON, or describes
            tensors whose byte ranges overlap, leave gaps, or run past the file.
    """
    head = stream.read(8)
    if len(head) != 8:
        raise _bad(where, "shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES or 8 + n > file_size:
        raise _bad(where, f"header length {n} exceeds the file or the {MAX_HEADER_BYTES}-byte cap")
    raw = stream.read(n)
    if len(raw) != n:
        raise _bad(where, "truncated header")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(where, f"header is not UTF-8 JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _bad(where, "header is not a JSON object")
    data_start = 8 + n
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _bad(where, "__metadata__ must map strings to strings")
    tensors = [_tensor(name, spec, data_start, where) for name, spec in doc.items()]
    tensors.sort(key=lambda t: (t.begin, t.end))
    cursor = data_start
    for t in tensors:
        if t.begin != cursor:
            raise _bad(where, f"tensor {t.name!r} starts at {t.begin - data_start}, expected {cursor - data_start}")
        cursor = t.end
    if cursor > file_size:
        raise _bad(where, f"tensor data runs to byte {cursor}, past the end of the file ({file_size})")
    return SafetensorsIndex(tuple(tensors), dict(metadata), data_start)


def _tensor(name: str, spec: object, data_start: int, where: str) -> TensorInfo:
    if not isinstance(spec, dict):
        raise _bad(where, f"entry {name!r} is not an object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise _bad(where, f"tensor {name!r} has unknown dtype {dtype!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_TENSOR_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in shape)
    ):
        raise _bad(where, f"tensor {name!r} has an invalid shape {shape!r} "
                          f"(at most {MAX_TENSOR_DIMS} dimensions, each below 2**63)")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _bad(where, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise _bad(where, f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for shape {shape} {dtype} ({expected} expected)")
    return TensorInfo(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def index_safetensors_file(path: str) -> SafetensorsIndex:
    """Index a safetensors file on disk (reads only its header)."""
    import os

    with open(path, "rb") as f:
        return index_safetensors(f, os.fstat(f.fileno()).st_size, where=path)
