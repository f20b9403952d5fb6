"""Check everything that can be checked about a package or a tree, or raise."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import IntegrityError, InvalidTreeError, KeyAccessError, PtmError
from ptmpack.format.reader import PackageReader
from ptmpack.reports import VerifyReport
from ptmpack.storage.package import FilePackage, Package, is_safetensors, open_package
from ptmpack.storage.protect import check_signature, signer_fingerprint
from ptmpack.tensors.safetensors_index import index_safetensors

Progress = Callable[[int], None]


def verify_package(package: Path, *, opener: Opener | None = None, pubkey: Ed25519PublicKey | None = None,
                   progress: Progress | None = None, hashed: frozenset[int] = frozenset()) -> VerifyReport:
    """Check everything that can be checked about a package or tree; return a report or raise.

    For a ``.ptm``: the sequential and trailer views agree, every header matches the
    manifest, every digest and AEAD tag, the tensor tables, the metadata schemas,
    and the signature when a public key is given. For a tree: path rules, metadata
    schemas and safetensors headers.

    ``hashed``: indexes of raw entries whose bytes the caller has already checked
    against their digest (a pull hashes each file as it arrives); they are not hashed again.

    Raises:
        IntegrityError (3), KeyAccessError (4), InvalidTreeError/MetadataError (5), UnsupportedError (6).
    """
    progress = progress or (lambda n: None)
    path = Path(package)
    from ptmpack.storage.pack import in_background

    loading = in_background(_import_metadata_checker)  # overlaps the digests; check_metadata waits for it
    try:
        return _verify(path, opener, pubkey, progress, hashed)
    finally:
        loading.exception()  # never leave the thread importing


@contextmanager
def _checking(name: str) -> Iterator[None]:
    """Name the check a PtmError raised inside comes from (``verify --json`` reports it as ``check``)."""
    try:
        yield
    except PtmError as exc:
        if exc.check is None:
            exc.check = "key" if isinstance(exc, KeyAccessError) else name  # a wrong key is not a damaged manifest
        raise


def _verify(path: Path, opener: Opener | None, pubkey: Ed25519PublicKey | None, progress: Progress,
            hashed: frozenset[int]) -> VerifyReport:
    if opener is None and path.is_file():
        with _checking("manifest"):  # a missing trailer or magic is the layout's failure, not the signature's
            sealed = PackageReader(path, sealed_ok=True)
        with sealed, _checking("signature"):
            if sealed.sealed and pubkey is not None:
                return _verify_sealed(sealed, pubkey)
            if sealed.sealed:
                raise _no_key(sealed)
    with _checking("manifest"):
        pkg = open_package(path, opener)
    with pkg:
        checks = ["paths", "metadata schemas", "safetensors headers"]
        signature, signer_fp = "none", None
        if isinstance(pkg, FilePackage):
            reader = pkg.reader
            sig = reader.signature()
            with _checking("signature"):
                if pubkey is not None and sig is None:
                    raise IntegrityError(f"{path} is not signed, but a signature by the given public key is required")
                if sig is not None:
                    signer_fp = signer_fingerprint(sig)
                    if pubkey is not None:
                        check_signature(sig, reader.header.package_id, pubkey)
                        signature = "verified"
                    else:
                        signature = "unchecked"
            with _checking("entries"):
                reader.check_entries(progress=progress, hashed=hashed)  # sequential walk, headers, padding, digests
            checks = ["trailer", "sequential walk", "entry headers", "padding", "digests", *checks]
            if reader.encrypted:
                checks.append("AEAD tags")
            if sig is not None and pubkey is not None:
                checks.append("signature")
        with _checking("metadata schemas"):
            check_metadata(pkg)
        with _checking("tensor tables"):
            _check_tensor_tables(pkg)
        size = sum(f.size for f in pkg.files)
        return VerifyReport(str(path), "file" if pkg.is_file else "tree", len(pkg.files), size,
                            pkg.encrypted, signature != "none", signature, signer_fp, tuple(checks))


def _no_key(reader: PackageReader) -> KeyAccessError:
    """The error for an encrypted package given no key: what the clear header says, and the two ways on."""
    from ptmpack.storage.protect import read_protection

    cipher, slots = read_protection(reader.keyslots)
    signed = reader.signature() is not None
    exc = KeyAccessError(
        f"{reader.path} is encrypted ({cipher.name.lower().replace('_', '-')}; key slots: "
        f"{', '.join(s.describe() for s in slots)}; {'signed' if signed else 'not signed'})",
        hint="give a key (--passphrase-file, --key-file or --identity) to check every digest"
             + (", or --pubkey alone to check the signature over every byte" if signed else ""))
    exc.check = "key"
    return exc


def _verify_sealed(reader: PackageReader, pubkey: Ed25519PublicKey) -> VerifyReport:
    """Keyless check of an encrypted, signed package: layout, padding and the signature.

    The signature covers every byte before it (headers, key slots, ciphertext, sealed
    manifest), so a valid signature proves the file is exactly the one the signer made.
    """
    sig = reader.signature()
    if sig is None:
        raise IntegrityError(f"{reader.path} is not signed, but a signature by the given public key is required")
    check_signature(sig, reader.header.package_id, pubkey)
    reader.check_padding()
    raw = sum(hdr.raw_length for _, hdr, _ in reader.walk_headers())
    return VerifyReport(str(reader.path), "file", reader.header.entry_count, raw, True, True, "verified",
                        signer_fingerprint(sig), ("trailer", "sequential walk", "padding", "signature over every byte"),
                        decrypted=False)


def metadata_bytes(pkg: Package, rel: str) -> bytes:
    """The bytes of one Meta-info document of ``pkg``.

    Raises:
        InvalidTreeError: the package lacks it.
    """
    if not pkg.has_file(rel):
        raise InvalidTreeError(f"{pkg.path} has no {rel}", hint="every package needs both Meta-info files")
    return pkg.read_file(rel)


def _import_metadata_checker() -> None:
    import ptmpack.metadata.documents  # noqa: F401 - jsonschema, a large share of a short verify


def check_metadata(pkg: Package) -> None:
    """Both Meta-info documents of ``pkg`` parse strictly and pass their schemas (raises MetadataError)."""
    from ptmpack.metadata import documents as meta
    from ptmpack.storage.pack import METADATA_FILES

    meta.check_documents([lambda name=name, rel=rel: meta.parse_metadata(metadata_bytes(pkg, rel), name, rel)
                          for name, rel in METADATA_FILES])


def _check_tensor_tables(pkg: Package) -> None:
    """The manifest's tensor table must be exactly what the safetensors header inside the entry says."""
    if not pkg.is_file:
        return
    for f in pkg.files:
        if not is_safetensors(f.path):
            continue
        head = bytes(pkg.read_range(f, 0, min(8, f.size)))
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        header = bytes(pkg.read_range(f, 0, min(f.size, 8 + n)))
        idx = index_safetensors(io.BytesIO(header), f.size, where=f.path)
        listed = tuple((t.name, t.dtype, t.shape, t.begin, t.end) for t in f.tensors or ())
        actual = tuple((t.name, t.dtype, t.shape, t.begin, t.end) for t in idx.tensors)
        if listed != actual:
            raise IntegrityError(f"{f.path}: the manifest's tensor table does not match the file's safetensors header")
