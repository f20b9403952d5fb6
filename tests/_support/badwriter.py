"""A test-only writer that builds hostile ``.ptm`` files byte by byte.

It uses only the struct layouts and constants of :mod:`ptmpack.format.spec` (never
the library's writer or records), so a test can put any value in any field: duplicate
or traversal paths, absurd lengths, overlapping entries, headers that disagree with the
manifest, a manifest that is not what the trailer says. With no overrides it writes a
valid package (``test_adversarial`` checks that the library reads it), so each hostile
case differs from a good file by exactly the defect it names.

Usage::

    blob = build([BadEntry("Model/a.bin", b"abc")], manifest={"flags": 1}).blob
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import zstandard

from ptmpack.format import spec

DELETE = object()
"""An override value that removes the field from the manifest object."""

FILE_HEADER_FIELDS = ("magic", "major", "minor", "flags", "model_count", "entry_count", "reserved", "package_id",
                      "keyslots_length", "header_size")
MODEL_HEADER_FIELDS = ("magic", "entry_index", "kind", "codec", "path_length", "stored_length", "raw_length",
                       "chunk_size", "sha256")
TRAILER_FIELDS = ("manifest_offset", "manifest_length", "manifest_sha256", "signature_offset", "magic")
KIND_NAMES = {1: "model", 2: "program", 3: "meta"}
ROOT_KINDS = {"Model": 1, "Program": 2, "Meta-info": 3}

MANAGEMENT = {"model_id": "bad", "name": "bad", "version": "0.1.0", "provider": "tests",
              "created": "2024-01-01T00:00:00Z"}
TECHNICAL = {"framework": "PyTorch", "task": {"type": "other", "description": ""},
             "inputs": [{"name": "input_ids", "modality": "text", "dtype": "int64", "shape": [-1, -1]}],
             "outputs": [], "ptm_info": {"architecture": ["transformer"]}}


@dataclass
class BadEntry:
    """One entry as it will be written; every derived field can be overridden.

    ``frames`` makes the entry chunked: each item is a stored chunk body, written after a
    u32 length prefix (``prefixes`` maps a frame number to the prefix to write instead). ``header`` overrides fields
    of the 72-byte entry header, ``manifest`` fields of the entry's manifest object.
    """

    path: str
    data: bytes = b""
    codec: int = 0
    chunk_size: int = 0
    frames: list[bytes] | None = None
    prefixes: dict[int, int] | None = None
    executable: bool = False
    tensors: list[dict[str, Any]] | None = None
    header: dict[str, Any] = field(default_factory=dict)
    header_path: bytes | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    padding_byte: int = 0

    @property
    def kind(self) -> int:
        return ROOT_KINDS.get(self.path.split("/", 1)[0], 1)

    def stored(self) -> tuple[bytes, list[list[int]]]:
        """The stored bytes and the chunk table ``[[offset, frame length], ...]``."""
        if self.frames is None:
            return self.data, []
        out, table = bytearray(), []
        for i, body in enumerate(self.frames):
            prefix = (self.prefixes or {}).get(i, len(body))
            frame = spec.CHUNK_PREFIX.pack(prefix) + body
            table.append([len(out), len(frame)])
            out += frame
        return bytes(out), table


@dataclass(frozen=True)
class Built:
    """A written package and where its parts are."""

    blob: bytes
    header_offsets: tuple[int, ...]
    data_offsets: tuple[int, ...]
    path_ends: tuple[int, ...]
    manifest_offset: int
    manifest_length: int
    manifest: bytes

    def padding(self) -> list[range]:
        """Byte ranges that are alignment padding (not covered by any digest)."""
        first = self.header_offsets[0] if self.header_offsets else self.manifest_offset
        ranges = [range(spec.FILE_HEADER.size, first)]
        ranges += [range(end, data) for end, data in zip(self.path_ends, self.data_offsets, strict=True)]
        return [r for r in ranges if len(r)]


def zstd_frames(data: bytes, chunk_size: int, level: int = 3) -> list[bytes]:
    """Chunk bodies for a zstd entry without a transform: one zstd frame per chunk, with
    its content size and a checksum (docs/CODECS.md), made with zstandard directly."""
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    pieces = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]
    return [cctx.compress(p) for p in pieces]


def metadata_entries() -> list[BadEntry]:
    """The two required metadata files, valid against the schemas."""
    return [
        BadEntry("Meta-info/managementinfo.json", json.dumps(MANAGEMENT).encode()),
        BadEntry("Meta-info/technicalinfo.json", json.dumps(TECHNICAL).encode()),
    ]


def good_entries() -> list[BadEntry]:
    """A small valid entry list: metadata plus two model files."""
    return [*metadata_entries(), BadEntry("Model/config.json", b'{"a": 1}'), BadEntry("Model/w.bin", bytes(range(256)) * 4)]


def canonical_json(doc: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8; lone surrogates are written through (invalid UTF-8)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def _apply(doc: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if value is DELETE:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def build(
    entries: list[BadEntry] | None = None,
    *,
    package_id: bytes = b"\x42" * 16,
    flags: int = 0,
    keyslots: bytes = b"",
    header: dict[str, Any] | None = None,
    manifest: dict[str, Any] | None = None,
    manifest_bytes: bytes | None = None,
    trailer: dict[str, Any] | None = None,
    signature: bytes = b"",
    created: str = "2024-01-01T00:00:00Z",
    tool: str = "badwriter",
) -> Built:
    """Write ``entries`` (default: :func:`good_entries`) as a package, with overrides.

    ``header``/``manifest``/``trailer`` override fields of the file header, the top-level
    manifest object and the trailer; ``manifest_bytes`` replaces the stored manifest
    outright (the trailer digest and length then describe those bytes unless overridden).
    """
    entries = good_entries() if entries is None else entries
    out = bytearray()
    header_size = spec.align_up(spec.FILE_HEADER.size + len(keyslots))
    fh = {
        "magic": spec.MAGIC, "major": spec.VERSION_MAJOR, "minor": spec.VERSION_MINOR, "flags": flags,
        "model_count": sum(1 for e in entries if e.kind == 1), "entry_count": len(entries), "reserved": 0,
        "package_id": package_id, "keyslots_length": len(keyslots), "header_size": header_size,
    }
    _apply(fh, header or {})
    out += spec.FILE_HEADER.pack(*(fh[k] for k in FILE_HEADER_FIELDS)) + keyslots
    out += b"\0" * (header_size - len(out))
    docs, header_offsets, data_offsets, path_ends = [], [], [], []
    for index, e in enumerate(entries):
        stored, table = e.stored()
        path_bytes = e.path.encode("utf-8", "surrogatepass") if e.header_path is None else e.header_path
        header_offset = len(out)
        data_offset = spec.align_up(header_offset + spec.MODEL_HEADER.size + len(path_bytes))
        sha = hashlib.sha256(e.data).digest()
        mh = {
            "magic": spec.ENTRY_MAGIC, "entry_index": index, "kind": e.kind, "codec": e.codec,
            "path_length": len(path_bytes), "stored_length": len(stored), "raw_length": len(e.data),
            "chunk_size": e.chunk_size, "sha256": sha,
        }
        _apply(mh, e.header)
        out += spec.MODEL_HEADER.pack(*(mh[k] for k in MODEL_HEADER_FIELDS)) + path_bytes
        path_ends.append(len(out))
        out += bytes([e.padding_byte]) * (data_offset - len(out))
        out += stored
        header_offsets.append(header_offset)
        data_offsets.append(data_offset)
        doc: dict[str, Any] = {
            "index": index, "path": e.path, "kind": KIND_NAMES.get(e.kind, "model"), "header_offset": header_offset,
            "data_offset": data_offset, "stored_length": len(stored), "raw_length": len(e.data), "codec": e.codec,
            "chunk_size": e.chunk_size, "sha256": sha.hex(), "executable": e.executable, "chunks": table,
        }
        if e.tensors is not None:
            doc["tensors"] = e.tensors
        docs.append(_apply(doc, e.manifest))
    top = {
        "format": "ptmpack", "version": [spec.VERSION_MAJOR, spec.VERSION_MINOR], "package_id": package_id.hex(),
        "created": created, "tool": tool, "flags": flags, "entries": docs,
    }
    body = canonical_json(_apply(top, manifest or {})) if manifest_bytes is None else manifest_bytes
    manifest_offset = len(out)
    out += body + signature
    tr = {
        "manifest_offset": manifest_offset, "manifest_length": len(body),
        "manifest_sha256": hashlib.sha256(body).digest(),
        "signature_offset": manifest_offset + len(body) if signature else 0, "magic": spec.END_MAGIC,
    }
    _apply(tr, trailer or {})
    out += spec.TRAILER.pack(*(tr[k] for k in TRAILER_FIELDS))
    return Built(bytes(out), tuple(header_offsets), tuple(data_offsets), tuple(path_ends), manifest_offset,
                 len(body), body)
