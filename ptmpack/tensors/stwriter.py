"""Write safetensors files tensor by tensor, never holding the whole file in memory.

The safetensors library saves only dicts of arrays held wholly in memory. The
residual commands need two streaming writers instead:

* :class:`PlannedWriter` writes a file whose header is known up front (given
  verbatim, byte for byte, so ``apply`` can rebuild a target file exactly); the
  tensors must then arrive in file order, each in as many pieces as the caller
  likes. It is a small state machine that refuses anything out of order.
* :class:`SpoolWriter` collects tensors whose set is not known in advance (the
  data of a delta): each tensor's bytes go to a spool file as they are produced
  (also out of order within a tensor, by offset), and :meth:`SpoolWriter.finish`
  writes the header followed by the spooled data.

Both produce files the safetensors library reads back identically (the tests
check this): an 8-byte little-endian header length, a JSON header padded with
spaces to a multiple of 8 bytes, then the tensor data with contiguous
``data_offsets`` in file order.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ptmpack.errors import UsageError
from ptmpack.tensors.safetensors_index import DTYPE_SIZES, MAX_HEADER_BYTES, TensorInfo, index_safetensors

HEADER_ALIGN = 8
"""The safetensors library pads its JSON header with spaces to this multiple."""
COPY_BLOCK = 1024 * 1024


def encode_header(tensors: Iterable[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None) -> bytes:
    """The complete header (length prefix + padded JSON) for tensors laid out in the given order.

    Raises:
        UsageError: an unknown dtype, a duplicate or reserved name, or a header over the cap.
    """
    doc: dict[str, object] = {}
    if metadata:
        doc["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape in tensors:
        if dtype not in DTYPE_SIZES:
            raise UsageError(f"cannot write tensor {name!r}: unknown safetensors dtype {dtype!r}")
        if name in doc or name == "__metadata__":
            raise UsageError(f"cannot write tensor {name!r} twice (or under a reserved name)")
        n = math.prod(shape) * DTYPE_SIZES[dtype]
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGN)
    if len(text) > MAX_HEADER_BYTES:
        raise UsageError(f"safetensors header of {len(text)} bytes exceeds the {MAX_HEADER_BYTES}-byte cap")
    return struct.pack("<Q", len(text)) + text


class PlannedWriter:
    """Write a safetensors file whose exact header bytes are given; tensors follow in file order.

    ``header`` is the whole header including its 8-byte length prefix. Calls must be
    ``begin(name)``, ``write(piece)``…, ``end()`` per tensor in the header's order, then
    ``finish()``; anything else raises :class:`UsageError` (a programming error, not bad input).
    """

    def __init__(self, out: BinaryIO, header: bytes, *, where: str = "<safetensors>") -> None:
        self._out = out
        self.where = where
        n = struct.unpack_from("<Q", header)[0] if len(header) >= 8 else -1
        if n != len(header) - 8:
            raise UsageError(f"{where}: header length prefix {n} does not match {len(header) - 8} header bytes")
        index = index_safetensors(io.BytesIO(header), 2**63, where=where)
        self.tensors: tuple[TensorInfo, ...] = index.tensors
        self.size = self.tensors[-1].end if self.tensors else len(header)
        self._next = 0
        self._open: TensorInfo | None = None
        self._written = 0
        out.write(header)

    def begin(self, name: str) -> TensorInfo:
        """Start the next tensor, which must be ``name``; returns its record."""
        if self._open is not None:
            raise UsageError(f"{self.where}: begin({name!r}) while {self._open.name!r} is still open")
        if self._next >= len(self.tensors):
            raise UsageError(f"{self.where}: begin({name!r}) after the last tensor")
        t = self.tensors[self._next]
        if t.name != name:
            raise UsageError(f"{self.where}: tensor {name!r} written out of order; {t.name!r} comes next")
        self._open, self._written = t, 0
        return t

    def write(self, piece: bytes | memoryview) -> None:
        """Append bytes of the open tensor."""
        if self._open is None:
            raise UsageError(f"{self.where}: write() with no tensor open")
        n = memoryview(piece).nbytes
        if self._written + n > self._open.nbytes:
            raise UsageError(f"{self.where}: tensor {self._open.name!r} given more than its {self._open.nbytes} bytes")
        self._out.write(piece)
        self._written += n

    def end(self) -> None:
        """Close the open tensor; it must have received exactly its size."""
        if self._open is None or self._written != self._open.nbytes:
            what = "no tensor open" if self._open is None else f"{self._written} of {self._open.nbytes} bytes written"
            raise UsageError(f"{self.where}: end(): {what}")
        self._open = None
        self._next += 1

    def write_tensor(self, name: str, pieces: Iterable[bytes | memoryview]) -> None:
        """``begin``, one ``write`` per piece, ``end``."""
        self.begin(name)
        for piece in pieces:
            self.write(piece)
        self.end()

    def finish(self) -> None:
        """Check that every tensor of the header was written."""
        if self._open is not None or self._next != len(self.tensors):
            raise UsageError(f"{self.where}: finish() with {len(self.tensors) - self._next} tensors still to write")


@dataclass(frozen=True)
class Slot:
    """Where one spooled tensor lives: its name, dtype, shape and byte range in the spool."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class SpoolWriter:
    """Collect tensors into a safetensors file at ``path``, spooling their data to disk.

    ``add`` reserves a tensor and returns its :class:`Slot`; ``write_at`` fills it by
    offset, in any order and any number of pieces; ``finish`` checks that every byte
    was written, then writes the header and copies the spool after it. Memory stays at
    the size of the pieces the caller hands in.
    """

    def __init__(self, path: Path, metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.metadata = metadata
        self.slots: list[Slot] = []
        self._filled: dict[str, int] = {}
        self._spool_path = self.path.with_name(self.path.name + ".spool")
        self._spool = open(self._spool_path, "w+b")  # noqa: SIM115 - closed in finish()/abort()
        self.size = 0
        self._finished = False

    def add(self, name: str, dtype: str, shape: tuple[int, ...]) -> Slot:
        """Reserve space for a tensor; its bytes must then be written with ``write_at``."""
        if self._finished:
            raise UsageError(f"{self.path}: add() after finish()")
        if name in self._filled:
            raise UsageError(f"{self.path}: tensor {name!r} added twice")
        if dtype not in DTYPE_SIZES:
            raise UsageError(f"{self.path}: unknown safetensors dtype {dtype!r}")
        slot = Slot(name, dtype, tuple(shape), self.size, math.prod(shape) * DTYPE_SIZES[dtype])
        self.slots.append(slot)
        self._filled[name] = 0
        self.size += slot.nbytes
        return slot

    def write_at(self, slot: Slot, pos: int, piece: bytes | memoryview) -> None:
        """Write ``piece`` at byte ``pos`` of the tensor (pieces must not overlap)."""
        n = memoryview(piece).nbytes
        if not 0 <= pos <= pos + n <= slot.nbytes:
            raise UsageError(f"{self.path}: bytes [{pos}, {pos + n}) outside tensor {slot.name!r} ({slot.nbytes} bytes)")
        os.pwrite(self._spool.fileno(), piece, slot.offset + pos)
        self._filled[slot.name] += n

    def put(self, name: str, dtype: str, shape: tuple[int, ...], data: bytes | memoryview) -> Slot:
        """``add`` then write the whole tensor at once."""
        slot = self.add(name, dtype, shape)
        self.write_at(slot, 0, data)
        return slot

    def finish(self) -> int:
        """Write the file (header, then the spooled data); returns its size in bytes.

        The spool is removed whatever happens; a failed ``finish`` leaves no file.

        Raises:
            UsageError: a tensor was not completely written.
        """
        try:
            for s in self.slots:
                if self._filled[s.name] != s.nbytes:
                    raise UsageError(f"{self.path}: tensor {s.name!r} has {self._filled[s.name]} of {s.nbytes} bytes")
            header = encode_header(((s.name, s.dtype, s.shape) for s in self.slots), self.metadata)
            with open(self.path, "xb") as out:
                try:
                    out.write(header)
                    self._spool.seek(0)
                    shutil.copyfileobj(self._spool, out, COPY_BLOCK)
                except BaseException:
                    self.path.unlink(missing_ok=True)
                    raise
        finally:
            self.abort()
        self._finished = True
        return len(header) + self.size

    def abort(self) -> None:
        """Drop the spool file (the target is left as it is)."""
        self._spool.close()
        self._spool_path.unlink(missing_ok=True)
