"""Describe a package or tree: headers, entries, codecs, metadata, totals, tensors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ptmpack.crypto.aead import Cipher
from ptmpack.crypto.keyslots import Opener
from ptmpack.format import spec
from ptmpack.format.manifest import EntryRecord
from ptmpack.format.reader import PackageReader
from ptmpack.metadata import documents as meta
from ptmpack.reports import InspectReport
from ptmpack.storage.pack import METADATA_FILES
from ptmpack.storage.package import FilePackage, open_package
from ptmpack.storage.protect import read_protection, signer_fingerprint
from ptmpack.storage.verify import metadata_bytes


def inspect_package(package: Path, *, opener: Opener | None = None, tensors: bool = False) -> InspectReport:
    """Describe a package or tree: headers, entries, metadata, totals and optionally every tensor.

    Raises:
        the errors of :func:`ptmpack.storage.package.open_package`; MetadataError for bad metadata.
    """
    path = Path(package)
    if opener is None and path.is_file():
        with PackageReader(path, sealed_ok=True) as sealed:
            if sealed.sealed:
                return _inspect_sealed(sealed)
    with open_package(path, opener) as pkg:
        fields: dict[str, Any] = {}
        if isinstance(pkg, FilePackage):
            r = pkg.reader
            fields.update(_clear_fields(r))
            m = r.manifest
            fields["manifest"] = {"created": m.created, "tool": m.tool, "residual_base": m.residual_base,
                                  "length": r.trailer.manifest_length, "sha256": r.trailer.manifest_sha256.hex()}
            entries = tuple(_entry_doc(e) for e in m.entries)
        else:
            entries = tuple({"path": f.path, "kind": f.kind.name.lower(), "raw_length": f.size} for f in pkg.files)
        metadata = {name: meta.parse_json(metadata_bytes(pkg, rel), rel) for name, rel in METADATA_FILES}
        all_tensors = pkg.tensors()
        totals = {
            "files": len(pkg.files),
            "raw_bytes": sum(f.size for f in pkg.files),
            "tensors": len(all_tensors),
            "parameters": sum(math.prod(t.shape) for _, t in all_tensors),
        }
        if tensors:
            fields["tensors"] = tuple(
                {"file": p, "name": t.name, "dtype": t.dtype, "shape": list(t.shape), "bytes": t.end - t.begin}
                for p, t in all_tensors
            )
        return InspectReport(str(path), "file" if pkg.is_file else "tree", entries, metadata, totals, **fields)


def _clear_fields(r: PackageReader) -> dict[str, Any]:
    """What a ``.ptm`` says in the clear: file header, signature, cipher and key-slot kinds (no key needed)."""
    h = r.header
    fields: dict[str, Any] = {"file_size": r.size, "header": {
        "version": f"{h.version_major}.{h.version_minor}",
        "flags": [f.name for f in spec.Flags if h.flags & f],
        "package_id": h.package_id.hex(),
        "entry_count": h.entry_count,
        "model_count": h.model_count,
        "header_size": h.header_size,
    }}
    sig = r.signature()
    fields["signature"] = None if sig is None else {"algorithm": "ed25519", "signer": signer_fingerprint(sig)}
    if r.encrypted:
        cipher, slots = read_protection(r.keyslots)
        fields["encryption"] = {"cipher": cipher.name.lower().replace("_", "-"),
                                "slots": [s.describe() for s in slots]}
    return fields


def _inspect_sealed(r: PackageReader) -> InspectReport:
    """An encrypted package described without its key: the clear header, flags, signer and key-slot kinds.

    Names, sizes and metadata live in the sealed manifest, so they stay unknown.
    """
    fields = _clear_fields(r)
    fields["manifest"] = {"length": r.trailer.manifest_length, "sha256": r.trailer.manifest_sha256.hex(),
                          "sealed": True}
    return InspectReport(str(r.path), "file", (), {}, {"files": r.header.entry_count}, sealed=True, **fields)


def codec_names(codec: int) -> dict[str, str]:
    """The names of a codec field's compression, encryption and transform ids."""
    from ptmpack.codecs.transform import Transform

    compression, encryption, transform = spec.split_codec(codec)

    def name(enum_cls: Any, value: int) -> str:
        try:
            return enum_cls(value).name.lower().replace("_", "-")
        except ValueError:
            return f"unknown-{value}"

    return {"compression": name(spec.Compression, compression), "encryption": name(Cipher, encryption),
            "transform": name(Transform, transform)}


def _entry_doc(e: EntryRecord) -> dict[str, Any]:
    return {
        "index": e.index, "path": e.path, "kind": e.kind.name.lower(), "raw_length": e.raw_length,
        "stored_length": e.stored_length, "codec": codec_names(e.codec), "chunk_size": e.chunk_size,
        "chunks": len(e.chunks), "sha256": e.sha256.hex(), "data_offset": e.data_offset,
        "executable": e.executable, "tensors": None if e.tensors is None else len(e.tensors),
    }
