"""What an opened ``.ptm`` says about itself, for engines that bind to it or read it chunk by chunk.

Residual updates bind to a base's manifest digest, rebuild with the base's protection, and
read compressed entries one stored chunk at a time; distribution maps entries to blobs.
They ask here instead of reaching into the format reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ptmpack.config import EncryptionSpec
from ptmpack.crypto.aead import Cipher
from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import IntegrityError, KeyAccessError, UsageError
from ptmpack.format import spec
from ptmpack.format.manifest import EntryRecord
from ptmpack.format.reader import PackageReader, is_package_file
from ptmpack.storage.package import FilePackage, Package
from ptmpack.storage.protect import read_protection


@dataclass(frozen=True)
class PackageFacts:
    """Identity and protection of a ``.ptm``: what a residual delta or a registry binds to."""

    package_id: str
    manifest_sha256: str
    flags: spec.Flags
    residual_base: str | None
    cipher: Cipher
    """``Cipher.NONE`` for an unencrypted package."""

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & spec.Flags.ENCRYPTED)

    @property
    def compressed(self) -> bool:
        return bool(self.flags & spec.Flags.COMPRESSED)


def package_facts(pkg: Package) -> PackageFacts | None:
    """The facts of a ``.ptm`` package; None for a tree (which has no identity until packed)."""
    if not isinstance(pkg, FilePackage):
        return None
    r = pkg.reader
    cipher = read_protection(r.keyslots)[0] if r.encrypted else Cipher.NONE
    return PackageFacts(package_id=r.header.package_id.hex(), manifest_sha256=r.trailer.manifest_sha256.hex(),
                        flags=spec.Flags(r.header.flags), residual_base=r.manifest.residual_base, cipher=cipher)


def header_protection(path: Path) -> tuple[spec.Flags, Cipher]:
    """A ``.ptm``'s flags and cipher (``Cipher.NONE`` when unencrypted), from its clear header and key-slot region.

    Needs no key, so no passphrase is stretched just to learn how the input is stored.

    Raises:
        PtmError: the file is not a readable package (as :class:`~ptmpack.format.reader.PackageReader`).
    """
    if not is_package_file(path):  # the same refusal (and exit code) as open_package
        raise IntegrityError(f"{path} is not a ptmpack package (no PTMPACK magic)")
    with PackageReader(path, sealed_ok=True) as r:
        return spec.Flags(r.header.flags), read_protection(r.keyslots)[0] if r.encrypted else Cipher.NONE


def same_protection(cipher: Cipher, opener: Opener | None, what: str = "use") -> EncryptionSpec:
    """Encryption for a package made from an encrypted input: its ``cipher`` (AES-256-GCM when the input is
    unencrypted, ``Cipher.NONE``), for the secret(s) that opened it.

    A package derived from an encrypted one (``apply``, ``compress``) must not come out in
    the clear by default; whoever opened the input opens the output with the same key
    file, passphrase or identity.

    Raises:
        KeyAccessError: no key was given (an encrypted input cannot have been opened).
    """
    if opener is None:
        raise KeyAccessError(f"an encrypted input needs a key to {what}")
    return EncryptionSpec(
        cipher=cipher if cipher is not Cipher.NONE else Cipher.AES_256_GCM,
        passphrases=(opener.passphrase,) if opener.passphrase is not None else (),
        keks=(opener.kek,) if opener.kek is not None else (),
        recipients=(opener.identity.public_key(),) if opener.identity is not None else (),
    )


def stored_entry(pkg: Package, path: str) -> EntryRecord:
    """The manifest record of a packed file, after checking its own header agrees with the manifest.

    Raises:
        UsageError: ``pkg`` is a tree, or has no such file. IntegrityError: the header disagrees.
    """
    if not isinstance(pkg, FilePackage):
        raise UsageError(f"{pkg.path} is a tree; stored entries exist only in a .ptm")
    e = pkg.entry(path)
    pkg.reader.entry_header(e)
    return e


def read_stored_chunk(pkg: Package, path: str, index: int) -> bytes:
    """The decoded (decompressed, decrypted, tag-checked) bytes of chunk ``index`` of a packed file."""
    if not isinstance(pkg, FilePackage):
        raise UsageError(f"{pkg.path} is a tree; stored chunks exist only in a .ptm")
    return pkg.reader.read_chunk(pkg.entry(path), index)
