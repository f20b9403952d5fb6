"""The manifest: the package's table of contents, as canonical JSON.

It repeats every header field so readers can cross-check the two views, records
the chunk table of each entry and, for safetensors entries, the tensor table.
``Manifest.from_json(m.to_json()) == m``. Parsing treats the bytes as hostile:
every field's type and range is checked before use.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ptmpack.errors import IntegrityError, UnsupportedError
from ptmpack.format import spec
from ptmpack.format.paths import check_entry_path, check_unique_paths
from ptmpack.jsonio import Fields, is_int, loads_strict
from ptmpack.tensors.safetensors_index import DTYPE_SIZES, MAX_TENSOR_DIMS

FORMAT_NAME = "ptmpack"
KIND_NAMES = {spec.Kind.MODEL: "model", spec.Kind.PROGRAM: "program", spec.Kind.META: "meta"}
KINDS_BY_NAME = {v: k for k, v in KIND_NAMES.items()}


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of a safetensors entry; ``begin``/``end`` are raw byte offsets within the entry."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class EntryRecord:
    """One file of the package tree as the manifest describes it."""

    index: int
    path: str
    kind: spec.Kind
    header_offset: int
    data_offset: int
    stored_length: int
    raw_length: int
    codec: int
    chunk_size: int
    sha256: bytes
    executable: bool = False
    chunks: tuple[tuple[int, int], ...] = ()
    """(offset relative to data_offset, stored length incl. its prefix) per chunk; empty for raw entries."""
    tensors: tuple[TensorRecord, ...] | None = None

    @property
    def chunked(self) -> bool:
        return self.codec != 0

    def chunk_raw_length(self, i: int) -> int:
        """Raw bytes in chunk ``i`` (all chunks are ``chunk_size`` except the last)."""
        return min(self.chunk_size, self.raw_length - i * self.chunk_size) if self.raw_length else 0


@dataclass(frozen=True)
class Manifest:
    """The whole table of contents of a package."""

    package_id: bytes
    created: str
    tool: str
    flags: int
    entries: tuple[EntryRecord, ...]
    residual_base: str | None = None
    """Hex sha256 of the base package's manifest, for residual (delta) packages."""
    version: tuple[int, int] = (spec.VERSION_MAJOR, spec.VERSION_MINOR)
    extra: dict[str, Any] = field(default_factory=dict)
    """Fields written by newer minor versions, kept so they survive a round trip."""

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": list(self.version),
            "package_id": self.package_id.hex(),
            "created": self.created,
            "tool": self.tool,
            "flags": self.flags,
            "entries": [_entry_doc(e) for e in self.entries],
            **self.extra,
        }
        if self.residual_base is not None:
            doc["residual_base"] = {"manifest_sha256": self.residual_base}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """Parse and check a manifest.

        Raises:
            IntegrityError: not JSON, or a field of the wrong type or out of range.
            UnsupportedError: a newer major format version.
        """
        p = Fields(loads_strict(raw, "manifest"), "manifest")
        if p.get("format", str) != FORMAT_NAME:
            raise IntegrityError("manifest: format is not 'ptmpack'")
        version = p.get("version", list)
        if len(version) != 2 or not all(is_int(v) for v in version):
            raise IntegrityError("manifest: version must be [major, minor]")
        if version[0] != spec.VERSION_MAJOR:
            raise UnsupportedError(f"manifest format version {version[0]}.{version[1]} is not supported")
        entries_doc = p.get("entries", list)
        if len(entries_doc) > spec.MAX_ENTRIES:
            raise IntegrityError("manifest: too many entries")
        entries = tuple(_entry_from(d, i) for i, d in enumerate(entries_doc))
        check_unique_paths([e.path for e in entries])
        base = p.optional("residual_base", dict)
        known = {"format", "version", "package_id", "created", "tool", "flags", "entries", "residual_base"}
        return cls(
            package_id=_hex(p.get("package_id", str), 16, "manifest.package_id"),
            created=p.get("created", str),
            tool=p.get("tool", str),
            flags=p.uint("flags", 2**32),
            entries=entries,
            residual_base=None if base is None else _hex(
                Fields(base, "residual_base").get("manifest_sha256", str), 32, "residual_base"
            ).hex(),
            version=(version[0], version[1]),
            extra={k: v for k, v in p.doc.items() if k not in known},
        )


def _entry_doc(e: EntryRecord) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "index": e.index,
        "path": e.path,
        "kind": KIND_NAMES[e.kind],
        "header_offset": e.header_offset,
        "data_offset": e.data_offset,
        "stored_length": e.stored_length,
        "raw_length": e.raw_length,
        "codec": e.codec,
        "chunk_size": e.chunk_size,
        "sha256": e.sha256.hex(),
        "executable": e.executable,
        "chunks": [list(c) for c in e.chunks],
    }
    if e.tensors is not None:
        doc["tensors"] = [
            {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "begin": t.begin, "end": t.end}
            for t in e.tensors
        ]
    return doc


def _entry_from(doc: object, position: int) -> EntryRecord:
    where = f"manifest.entries[{position}]"
    p = Fields(doc, where)
    index = p.uint("index", 2**32 - 1)
    if index != position:
        raise IntegrityError(f"{where}: index {index} out of order")
    kind_name = p.get("kind", str)
    if kind_name not in KINDS_BY_NAME:
        raise IntegrityError(f"{where}: unknown kind {kind_name!r}")
    path = check_entry_path(p.get("path", str))
    if spec.KIND_ROOTS[path.split("/", 1)[0]] != KINDS_BY_NAME[kind_name]:
        raise IntegrityError(f"{where}: kind {kind_name!r} does not match path {path!r}")
    raw_length = p.uint("raw_length", 2**64)
    stored_length = p.uint("stored_length", 2**64)
    codec = p.uint("codec", 2**32)
    chunk_size = p.uint("chunk_size", spec.MAX_CHUNK_SIZE + 1)
    data_offset = p.uint("data_offset", 2**64)
    chunks_doc = p.get("chunks", list)
    chunks = tuple(_chunk(c, where) for c in chunks_doc)
    if codec:
        if chunk_size < spec.MIN_CHUNK_SIZE:
            raise IntegrityError(f"{where}: chunk size {chunk_size} out of range")
        expected = max(1, -(-raw_length // chunk_size))
        if len(chunks) != expected:
            raise IntegrityError(f"{where}: {len(chunks)} chunks listed, {expected} expected")
        cursor = 0
        for off, length in chunks:
            if off != cursor:
                raise IntegrityError(f"{where}: chunk table has a gap or overlap at {off}")
            cursor += length
        if cursor != stored_length:
            raise IntegrityError(f"{where}: chunks add up to {cursor} bytes, stored length is {stored_length}")
    elif chunks or stored_length != raw_length:
        raise IntegrityError(f"{where}: a raw entry has no chunks and stores exactly its raw bytes")
    tensors_doc = p.optional("tensors", list)
    if tensors_doc is not None and not path.lower().endswith(".safetensors"):
        raise IntegrityError(f"{where}: only safetensors entries carry a tensor table")
    return EntryRecord(
        index=index,
        path=path,
        kind=KINDS_BY_NAME[kind_name],
        header_offset=p.uint("header_offset", 2**64),
        data_offset=data_offset,
        stored_length=stored_length,
        raw_length=raw_length,
        codec=codec,
        chunk_size=chunk_size,
        sha256=_hex(p.get("sha256", str), 32, f"{where}.sha256"),
        executable=p.get("executable", bool),
        chunks=chunks,
        tensors=None if tensors_doc is None else tuple(_tensor(t, raw_length, where) for t in tensors_doc),
    )


def _chunk(doc: object, where: str) -> tuple[int, int]:
    if not (isinstance(doc, list) and len(doc) == 2 and all(is_int(v) and 0 <= v < 2**64 for v in doc)):
        raise IntegrityError(f"{where}: malformed chunk record {doc!r}")
    off, length = doc
    if not spec.CHUNK_PREFIX.size <= length <= spec.MAX_CHUNK_SIZE + 1024 * 1024:
        raise IntegrityError(f"{where}: chunk of {length} stored bytes out of range")
    return off, length


def _tensor(doc: object, raw_length: int, where: str) -> TensorRecord:
    p = Fields(doc, f"{where}.tensors")
    shape = p.get("shape", list)
    if len(shape) > MAX_TENSOR_DIMS or not all(is_int(d) and 0 <= d < 2**63 for d in shape):
        raise IntegrityError(f"{where}: tensor shape {shape!r} is invalid "
                             f"(at most {MAX_TENSOR_DIMS} dimensions, each below 2**63)")
    begin, end = p.uint("begin", 2**64), p.uint("end", 2**64)
    if not begin <= end <= raw_length:
        raise IntegrityError(f"{where}: tensor byte range [{begin}, {end}) outside the entry")
    name, dtype = p.get("name", str), p.get("dtype", str)
    if dtype not in DTYPE_SIZES:
        raise IntegrityError(f"{where}: tensor {name!r} has unknown dtype {dtype!r}")
    if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise IntegrityError(f"{where}: tensor {name!r}: {end - begin} bytes cannot hold shape {shape} of {dtype}")
    return TensorRecord(name, dtype, tuple(shape), begin, end)


def _hex(text: str, size: int, where: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != size:
        raise IntegrityError(f"{where}: expected {size} bytes of hex")
    return value


