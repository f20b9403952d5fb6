"""Verbs over the package container: init, pack, unpack, verify, inspect, keygen, key loading."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ptmpack.config import CIPHER_NAMES, EncryptionSpec, KeyFiles, PackConfig, RecipientFiles, parse_compression
from ptmpack.crypto import keyfiles
from ptmpack.crypto.keyslots import Opener
from ptmpack.format import spec
from ptmpack.reports import InspectReport, PackReport, UnpackReport, VerifyReport
from ptmpack.storage.package import open_package

__all__ = [
    "EncryptionSpec", "KeyFiles", "Opener", "PackConfig", "RecipientFiles", "init", "inspect", "keygen", "load_encryption",
    "load_opener", "load_public_key", "load_signing_key", "open_package", "output_config", "pack", "package_bytes", "parse_compression", "tree_bytes",
    "unpack", "verify",
]

Progress = Callable[[int], None]

def init(directory: Path, *, from_hf: Path | None = None, from_gguf: Path | None = None, name: str | None = None,
         gguf_dtype: str = "float32", provider: str | None = None, license: str | None = None,
         model_version: str | None = None) -> list[str]:
    """Lay out a package tree with valid metadata, empty or imported from a checkpoint; return the files written.

    ``provider``, ``license`` (SPDX id) and ``model_version`` (semver) are set in
    ``managementinfo.json`` over whatever the template or the checkpoint says.

    Raises:
        UsageError: both sources given, or the target exists and is not empty.
        InvalidTreeError, UnsupportedError: the checkpoint cannot be imported.
    """
    from ptmpack.errors import UsageError

    if from_hf is not None and from_gguf is not None:
        raise UsageError("import from a Hugging Face directory or a GGUF file, not both")
    fields = {k: v for k, v in (("provider", provider), ("license", license), ("version", model_version)) if v}
    if from_gguf is not None:
        from ptmpack.importers.gguf import init_tree_from_gguf

        return init_tree_from_gguf(Path(directory), Path(from_gguf), name=name, dtype=gguf_dtype,
                                   management_fields=fields)
    from ptmpack.importers.hf import init_tree

    return init_tree(Path(directory), from_hf=from_hf, name=name, management_fields=fields)


def pack(source: Path, target: Path, config: PackConfig | None = None, *, force: bool = False,
         progress: Progress | None = None, package_id: bytes | None = None) -> PackReport:
    """Pack the package tree ``source`` into the ``.ptm`` file ``target`` (see :func:`ptmpack.storage.pack.pack_tree`)."""
    from ptmpack.storage.pack import pack_tree

    manifest = pack_tree(Path(source), Path(target), config, force=force, progress=progress, package_id=package_id)
    return PackReport(str(target), manifest, Path(target).stat().st_size)


def output_config(source: Path, opener: Opener | None, *, compression: tuple[spec.Compression, int] | None = None,
                  encryption: EncryptionSpec | None = None, encrypt: bool | None = None,
                  chunk_size: int = spec.DEFAULT_CHUNK_SIZE,
                  sign_key: Ed25519PrivateKey | None = None) -> PackConfig:
    """How to pack a package made from ``source``: whatever the caller did not choose follows the input.

    The codec is ``compression`` when given, else the input's (zstd when it was compressed).
    The output is encrypted for ``encryption`` when given; else, when ``encrypt`` is True or
    the input is encrypted and ``encrypt`` is not False, for the secret(s) in ``opener`` with
    the input's cipher: a package derived from an encrypted one never comes out in the clear
    unless asked for (``encrypt=False``).

    Raises:
        KeyAccessError: the output must be encrypted like the input but no key was given.
    """
    from ptmpack.crypto.aead import Cipher
    from ptmpack.storage.facts import header_protection, same_protection

    flags, cipher = header_protection(Path(source)) if Path(source).is_file() else (spec.Flags(0), Cipher.NONE)
    if compression is None:
        compression = (spec.Compression.ZSTD if flags & spec.Flags.COMPRESSED else spec.Compression.NONE, 3)
    if encryption is None and (encrypt or (encrypt is None and flags & spec.Flags.ENCRYPTED)):
        encryption = same_protection(cipher, opener, "protect the output like the input")
    return PackConfig(compression=compression[0], level=compression[1], chunk_size=chunk_size,
                      encryption=encryption if encrypt is not False else None, sign_key=sign_key)


def package_bytes(package: Path) -> int | None:
    """Raw bytes of the files of a package or tree (what unpack writes, verify reads); None when unknown.

    For progress totals only. A ``.ptm``'s entry headers carry the raw lengths in the clear,
    so no key is needed (and no passphrase is stretched twice); a file that cannot be read
    here gives None, and the command itself then reports why.
    """
    from ptmpack.errors import PtmError
    from ptmpack.format.reader import PackageReader

    if Path(package).is_dir():
        return tree_bytes(Path(package))
    try:
        with PackageReader(Path(package), sealed_ok=True) as reader:
            return sum(hdr.raw_length for _, hdr, _ in reader.walk_headers())
    except (PtmError, OSError):
        return None


def tree_bytes(directory: Path) -> int | None:
    """Bytes of the regular files a pack of ``directory`` would store (None when it is not a directory)."""
    from ptmpack.format.tree import scan_tree

    return sum(f.size for f in scan_tree(Path(directory))) if Path(directory).is_dir() else None


def unpack(package: Path, target: Path, *, opener: Opener | None = None, pubkey: Ed25519PublicKey | None = None,
           force: bool = False, progress: Progress | None = None, workers: int = 2,
           dequantize: bool = False) -> UnpackReport:
    """Unpack a ``.ptm`` into ``target`` atomically (see :func:`ptmpack.storage.unpack.unpack_file`).

    With ``dequantize`` the quantized linear layers of a compressed package come out as float
    weights (and ``config.json`` without its ``quantization_config``) before the tree appears.
    Missing parent directories of ``target`` are created (as ``mkdir -p`` would).
    """
    from ptmpack.storage.unpack import unpack_file

    Path(target).parent.mkdir(parents=True, exist_ok=True)
    finish = None
    if dequantize:
        from ptmpack.compress.quant.dequantize import dequantize_tree

        finish = dequantize_tree
    return unpack_file(Path(package), Path(target), opener=opener, pubkey=pubkey, force=force, progress=progress,
                       workers=workers, finish=finish)


def verify(package: Path, *, opener: Opener | None = None, pubkey: Ed25519PublicKey | None = None,
           progress: Progress | None = None) -> VerifyReport:
    """Check a package or tree (see :func:`ptmpack.storage.verify.verify_package`)."""
    from ptmpack.storage.verify import verify_package

    return verify_package(Path(package), opener=opener, pubkey=pubkey, progress=progress)


def inspect(package: Path, *, opener: Opener | None = None, tensors: bool = False) -> InspectReport:
    """Describe a package or tree; residual packages also get their update summary."""
    from ptmpack.residual.record import RESIDUAL_JSON
    from ptmpack.storage.inspect import inspect_package

    report = inspect_package(Path(package), opener=opener, tensors=tensors)
    if any(e["path"] == RESIDUAL_JSON for e in report.entries):
        from ptmpack.residual.report import summarize_residual

        with open_package(Path(package), opener) as pkg:
            report = dataclasses.replace(report, residual=summarize_residual(pkg.read_file(RESIDUAL_JSON)))
    return report


def keygen(kind: str, prefix: Path) -> list[Path]:
    """Write a new key (``symmetric``, ``x25519`` pair or ``ed25519`` pair) next to ``prefix``; return the paths."""
    return keyfiles.keygen(kind, Path(prefix))


def load_opener(keys: KeyFiles) -> Opener | None:
    """The keys that may open an encrypted package, read from files or the environment; None when there are none.

    Raises:
        KeyAccessError: a key file is missing, unreadable or of the wrong type.
    """
    passphrase = keyfiles.load_passphrase(keys.passphrase_file) if keys.passphrase_file \
        else keyfiles.passphrase_from_env()
    key_path = keys.key_file or keyfiles.key_file_from_env()
    kek = keyfiles.load_symmetric_key(key_path) if key_path else None
    ident = keyfiles.load_x25519_private(keys.identity) if keys.identity else None
    if passphrase is None and kek is None and ident is None:
        return None
    return Opener(passphrase=passphrase, kek=kek, identity=ident)


def load_encryption(recipients: RecipientFiles) -> EncryptionSpec:
    """Who may open a new package, read from files; a lone ``PTMPACK_PASSPHRASE`` counts when no file is named.

    Raises:
        UsageError: nobody to encrypt for. KeyAccessError: a key file is bad.
    """
    passphrases = [keyfiles.load_passphrase(p) for p in recipients.passphrase_files]
    if not (passphrases or recipients.key_files or recipients.recipients) and (env := keyfiles.passphrase_from_env()):
        passphrases.append(env)
    return EncryptionSpec(
        cipher=CIPHER_NAMES[recipients.cipher],
        passphrases=tuple(passphrases),
        keks=tuple(keyfiles.load_symmetric_key(k) for k in recipients.key_files),
        recipients=tuple(keyfiles.load_x25519_public(r) for r in recipients.recipients),
    )


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key (PEM) to sign with (raises KeyAccessError)."""
    return keyfiles.load_ed25519_private(Path(path))


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key (PEM) a signature must verify with (raises KeyAccessError)."""
    return keyfiles.load_ed25519_public(Path(path))
