"""The library verbs: pack, unpack, verify, inspect, init, read tensors.

The CLI is a thin caller of these functions; users call them the same way.
Every function raises a :class:`ptmpack.errors.PtmError` subclass on failure and
never leaves a partial output behind.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ptmpack import meta
from ptmpack.codecs.chunk import Transform, choose_transform
from ptmpack.container import spec
from ptmpack.container.atomic import atomic_dir
from ptmpack.container.manifest import Manifest
from ptmpack.container.reader import PackageReader
from ptmpack.container.tree import SourceFile, scan_tree
from ptmpack.container.writer import EntryPlan, PackageOptions, write_package
from ptmpack.crypto.aead import Cipher
from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import IntegrityError, InvalidTreeError, UsageError
from ptmpack.package import FilePackage, Package, is_safetensors, open_package, tensor_records
from ptmpack.pipeline import ChunkPipeline
from ptmpack.protect import (
    EncryptionSpec,
    check_signature,
    protect,
    read_protection,
    signer,
    signer_fingerprint,
    unlocker,
)
from ptmpack.residual.record import RESIDUAL_JSON
from ptmpack.tensors.safetensors_index import index_safetensors

Progress = Callable[[int], None]
FLOAT_WIDTHS = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
SAMPLE_BYTES = 4 * 1024 * 1024
METADATA_FILES = ((meta.MANAGEMENT_SCHEMA, meta.MANAGEMENT_FILE), (meta.TECHNICAL_SCHEMA, meta.TECHNICAL_FILE))


@dataclass(frozen=True)
class PackConfig:
    """How to pack: compression, chunking, protection, signing."""

    compression: spec.Compression = spec.Compression.NONE
    level: int = 3
    chunk_size: int = spec.DEFAULT_CHUNK_SIZE
    encryption: EncryptionSpec | None = None
    sign_key: Ed25519PrivateKey | None = None
    residual_base: str | None = None
    workers: int = field(default_factory=lambda: max(1, min(os.cpu_count() or 1, 8)))

    def __post_init__(self) -> None:
        if not spec.MIN_CHUNK_SIZE <= self.chunk_size <= spec.MAX_CHUNK_SIZE:
            raise UsageError(f"chunk size must be between {spec.MIN_CHUNK_SIZE} and {spec.MAX_CHUNK_SIZE} bytes")
        if not -7 <= self.level <= 22 or self.level == 0:
            raise UsageError(f"zstd level {self.level} out of range (1..22, or -7..-1 for fast modes)")


def created_now() -> str:
    """RFC 3339 UTC timestamp; honours SOURCE_DATE_EPOCH for reproducible packages."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch else _dt.datetime.now(_dt.timezone.utc)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def pack(source: Path, target: Path, config: PackConfig = PackConfig(), *, force: bool = False,
         progress: Progress | None = None, package_id: bytes | None = None) -> Manifest:
    """Pack the package tree at ``source`` into the ``.ptm`` file ``target``.

    Checks the tree rules and both metadata files against their schemas first.

    Raises:
        InvalidTreeError / MetadataError: the tree or its metadata is invalid (nothing written).
        UsageError: the target exists without ``force``.
    """
    files = scan_tree(Path(source))
    for name, rel in METADATA_FILES:
        meta.load_metadata(Path(source) / rel, name)
    package_id = package_id or os.urandom(16)
    flags = spec.Flags(0)
    pipeline = ChunkPipeline(package_id, config.level)
    keyslots = b""
    cipher = 0
    if config.encryption is not None:
        pipeline, keyslots = protect(config.encryption, package_id, config.level)
        flags |= spec.Flags.ENCRYPTED
        cipher = int(config.encryption.cipher)
    if config.compression == spec.Compression.ZSTD:
        flags |= spec.Flags.COMPRESSED
    if config.sign_key is not None:
        flags |= spec.Flags.SIGNED
    if config.residual_base is not None:
        flags |= spec.Flags.RESIDUAL
    plans = [_plan(f, config, cipher) for f in files]
    options = PackageOptions(
        package_id=package_id, flags=int(flags), created=created_now(), keyslots=keyslots,
        residual_base=config.residual_base, workers=config.workers,
        sign=None if config.sign_key is None else signer(config.sign_key, package_id),
    )
    return write_package(Path(target), plans, options, pipeline.encode, force=force, progress=progress)


def _plan(f: SourceFile, config: PackConfig, cipher: int) -> EntryPlan:
    tensors = tensor_records(f.source) if is_safetensors(f.path) else None
    compression = config.compression if f.size else spec.Compression.NONE
    transform = Transform.NONE
    if compression == spec.Compression.ZSTD and tensors:
        transform = _choose_transform(f, tensors, config.level)
    codec = spec.make_codec(compression, cipher, transform)
    return EntryPlan(f, codec, config.chunk_size if codec else 0, tensors)


def _choose_transform(f: SourceFile, tensors: tuple, level: int) -> Transform:
    """Pick the float byte-plane transform when the entry is mostly one float width and it wins on a sample."""
    by_width: dict[int, int] = {}
    for t in tensors:
        width = FLOAT_WIDTHS.get(t.dtype)
        if width:
            by_width[width] = by_width.get(width, 0) + (t.end - t.begin)
    if not by_width:
        return Transform.NONE
    width, nbytes = max(by_width.items(), key=lambda kv: kv[1])
    if nbytes * 2 < f.size:
        return Transform.NONE
    start = min(t.begin for t in tensors)
    with open(f.source, "rb") as fh:
        fh.seek(start)
        sample = fh.read(SAMPLE_BYTES)
    return choose_transform(sample[: len(sample) - len(sample) % width], width, level)


@dataclass(frozen=True)
class UnpackResult:
    target: Path
    files: int
    bytes: int


def unpack(package: Path, target: Path, *, opener: Opener | None = None, pubkey: Ed25519PublicKey | None = None,
           force: bool = False, progress: Progress | None = None, workers: int = 2) -> UnpackResult:
    """Unpack a ``.ptm`` into the directory ``target`` atomically.

    With ``pubkey`` the signature is checked before anything is written. Every
    entry's SHA-256 (and, when encrypted, every chunk's tag) is checked before the
    directory appears; on any failure nothing is left at ``target``. The digests are
    checked even under encryption: GCM is not key-committing, so any holder of the
    data key could forge chunks that keep their tags.

    Raises:
        IntegrityError, KeyAccessError, UnsupportedError: a bad package, key or signature.
        UsageError: the target exists without ``force``.
    """
    progress = progress or (lambda n: None)
    with PackageReader(Path(package), unlock=unlocker(opener), workers=workers) as reader:
        if pubkey is not None:
            sig = reader.signature()
            if sig is None:
                raise IntegrityError(f"{package} is not signed, but --pubkey asks for a signature")
            check_signature(sig, reader.header.package_id, pubkey)
        reader.check_padding()
        total = 0
        with atomic_dir(Path(target), force=force) as tmp:
            for d in spec.SKELETON_DIRS:
                tmp.joinpath(*d.split("/")).mkdir(parents=True)
            for e in reader.entries:
                dest = tmp.joinpath(*e.path.split("/"))
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(dest, "xb") as out:
                    for block in reader.iter_entry(e):
                        out.write(block)
                        progress(len(block))
                os.chmod(dest, 0o755 if e.executable else 0o644)
                total += e.raw_length
        return UnpackResult(Path(target), len(reader.entries), total)


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` checked; any failure raises instead."""

    path: str
    kind: str
    entries: int
    bytes: int
    encrypted: bool
    signed: bool
    signature: str
    """'verified', 'unchecked' (signed but no --pubkey), or 'none'."""
    signer: str | None
    checks: tuple[str, ...]
    decrypted: bool = True
    """False when an encrypted package was checked without its key (signature and layout only)."""

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}}


def verify(package: Path, *, opener: Opener | None = None, pubkey: Ed25519PublicKey | None = None,
           progress: Progress | None = None) -> VerifyReport:
    """Check everything that can be checked about a package or tree; return a report or raise.

    For a ``.ptm``: the sequential and trailer views agree, every header matches the
    manifest, every digest and AEAD tag, the tensor tables, the metadata schemas,
    and the signature when a public key is given. For a tree: path rules, metadata
    schemas and safetensors headers.

    Raises:
        IntegrityError (3), KeyAccessError (4), InvalidTreeError/MetadataError (5), UnsupportedError (6).
    """
    progress = progress or (lambda n: None)
    path = Path(package)
    if opener is None and pubkey is not None and path.is_file():
        with PackageReader(path, sealed_ok=True) as sealed:
            if sealed.sealed:
                return _verify_sealed(sealed, pubkey)
    with open_package(path, opener) as pkg:
        checks = ["paths", "metadata schemas", "safetensors headers"]
        signature, signer_fp = "none", None
        if isinstance(pkg, FilePackage):
            reader = pkg.reader
            sig = reader.signature()
            if pubkey is not None and sig is None:
                raise IntegrityError(f"{path} is not signed, but --pubkey asks for a signature")
            if sig is not None:
                signer_fp = signer_fingerprint(sig)
                if pubkey is not None:
                    check_signature(sig, reader.header.package_id, pubkey)
                    signature = "verified"
                else:
                    signature = "unchecked"
            _check_sequential(reader)
            reader.check_padding()
            for e in reader.entries:
                for block in reader.iter_entry(e):
                    progress(len(block))
            checks = ["trailer", "sequential walk", "entry headers", "padding", "digests", *checks]
            if reader.encrypted:
                checks.append("AEAD tags")
            if sig is not None and pubkey is not None:
                checks.append("signature")
        _check_metadata(pkg)
        _check_tensor_tables(pkg)
        size = sum(f.size for f in pkg.files)
        encrypted = isinstance(pkg, FilePackage) and pkg.reader.encrypted
        return VerifyReport(str(path), "file" if isinstance(pkg, FilePackage) else "tree", len(pkg.files), size,
                            encrypted, signature != "none", signature, signer_fp, tuple(checks))


def _verify_sealed(reader: PackageReader, pubkey: Ed25519PublicKey) -> VerifyReport:
    """Keyless check of an encrypted, signed package: layout, padding and the signature.

    The signature covers every byte before it (headers, key slots, ciphertext, sealed
    manifest), so a valid signature proves the file is exactly the one the signer made.
    """
    sig = reader.signature()
    if sig is None:
        raise IntegrityError(f"{reader.path} is not signed, but --pubkey asks for a signature")
    check_signature(sig, reader.header.package_id, pubkey)
    reader.check_padding()
    raw = sum(hdr.raw_length for _, hdr, _ in reader.walk_headers())
    return VerifyReport(str(reader.path), "file", reader.header.entry_count, raw, True, True, "verified",
                        signer_fingerprint(sig), ("trailer", "sequential walk", "padding", "signature over every byte"),
                        decrypted=False)


def _check_sequential(reader: PackageReader) -> None:
    entries = reader.entries
    for (offset, _hdr, _path), e in zip(reader.walk_headers(), entries, strict=True):
        if offset != e.header_offset:
            raise IntegrityError(f"sequential walk finds entry {e.index} at {offset}, the manifest at {e.header_offset}")
        reader.entry_header(e)


def _metadata_bytes(pkg: Package, rel: str) -> bytes:
    if not any(f.path == rel for f in pkg.files):
        raise InvalidTreeError(f"{pkg.path} has no {rel}", hint="every package needs both Meta-info files")
    return pkg.read_file(rel)


def _check_metadata(pkg: Package) -> None:
    for name, rel in METADATA_FILES:
        meta.parse_metadata(_metadata_bytes(pkg, rel), name, rel)


def _check_tensor_tables(pkg: Package) -> None:
    """The manifest's tensor table must be exactly what the safetensors header inside the entry says."""
    for f in pkg.files:
        if not is_safetensors(f.path) or not isinstance(pkg, FilePackage):
            continue
        head = bytes(pkg.read_range(f, 0, min(8, f.size)))
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        header = bytes(pkg.read_range(f, 0, min(f.size, 8 + n)))
        idx = index_safetensors(io.BytesIO(header), f.size, where=f.path)
        listed = tuple((t.name, t.dtype, t.shape, t.begin, t.end) for t in f.tensors or ())
        actual = tuple((t.name, t.dtype, t.shape, t.begin, t.end) for t in idx.tensors)
        if listed != actual:
            raise IntegrityError(f"{f.path}: the manifest's tensor table does not match the file's safetensors header")


def inspect(package: Path, *, opener: Opener | None = None, tensors: bool = False) -> dict[str, Any]:
    """One JSON-ready document describing a package or tree: headers, entries, metadata, tensors."""
    path = Path(package)
    with open_package(path, opener) as pkg:
        doc: dict[str, Any] = {"path": str(path)}
        if isinstance(pkg, FilePackage):
            r = pkg.reader
            h = r.header
            doc["type"] = "file"
            doc["file_size"] = r.size
            doc["header"] = {
                "version": f"{h.version_major}.{h.version_minor}",
                "flags": [f.name for f in spec.Flags if h.flags & f],
                "package_id": h.package_id.hex(),
                "entry_count": h.entry_count,
                "model_count": h.model_count,
                "header_size": h.header_size,
            }
            m = r.manifest
            doc["manifest"] = {"created": m.created, "tool": m.tool, "residual_base": m.residual_base,
                               "length": r.trailer.manifest_length, "sha256": r.trailer.manifest_sha256.hex()}
            sig = r.signature()
            doc["signature"] = None if sig is None else {"algorithm": "ed25519", "signer": signer_fingerprint(sig)}
            if r.encrypted:
                cipher, slots = read_protection(r.keyslots)
                doc["encryption"] = {"cipher": cipher.name.lower().replace("_", "-"),
                                     "slots": [s.describe() for s in slots]}
            doc["entries"] = [_entry_doc(e) for e in m.entries]
        else:
            doc["type"] = "tree"
            doc["entries"] = [{"path": f.path, "kind": f.kind.name.lower(), "raw_length": f.size} for f in pkg.files]
        doc["metadata"] = {
            name: meta.parse_json(_metadata_bytes(pkg, rel), rel) for name, rel in METADATA_FILES
        }
        if any(f.path == RESIDUAL_JSON for f in pkg.files):
            from ptmpack.residual import summarize_residual

            doc["residual"] = summarize_residual(pkg.read_file(RESIDUAL_JSON))
        doc["totals"] = {
            "files": len(pkg.files),
            "raw_bytes": sum(f.size for f in pkg.files),
            "tensors": len(pkg.tensors()),
            "parameters": sum(math.prod(t.shape) for _, t in pkg.tensors()),
        }
        if tensors:
            doc["tensors"] = [
                {"file": p, "name": t.name, "dtype": t.dtype, "shape": list(t.shape), "bytes": t.end - t.begin}
                for p, t in pkg.tensors()
            ]
        return doc


def codec_names(codec: int) -> dict[str, str]:
    compression, encryption, transform = spec.split_codec(codec)

    def name(enum_cls: Any, value: int) -> str:
        try:
            return enum_cls(value).name.lower().replace("_", "-")
        except ValueError:
            return f"unknown-{value}"

    return {"compression": name(spec.Compression, compression), "encryption": name(Cipher, encryption),
            "transform": name(Transform, transform)}


def _entry_doc(e: Any) -> dict[str, Any]:
    return {
        "index": e.index, "path": e.path, "kind": e.kind.name.lower(), "raw_length": e.raw_length,
        "stored_length": e.stored_length, "codec": codec_names(e.codec), "chunk_size": e.chunk_size,
        "chunks": len(e.chunks), "sha256": e.sha256.hex(), "data_offset": e.data_offset,
        "executable": e.executable, "tensors": None if e.tensors is None else len(e.tensors),
    }
