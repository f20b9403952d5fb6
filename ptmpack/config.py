"""What callers ask for: how to pack, who may open a package, which keys to use.

These records are plain data checked on construction; the engines read them and
the CLI builds them from options. Nothing here touches a package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from ptmpack.crypto.aead import Cipher, sm4_gcm_supported
from ptmpack.errors import UnsupportedError, UsageError
from ptmpack.format import spec

CIPHER_NAMES = {"aes-256-gcm": Cipher.AES_256_GCM, "sm4-gcm": Cipher.SM4_GCM}


@dataclass(frozen=True)
class EncryptionSpec:
    """Who may open a package: any number of passphrases, key-file keys and X25519 recipients."""

    cipher: Cipher = Cipher.AES_256_GCM
    passphrases: tuple[bytes, ...] = ()
    keks: tuple[bytes, ...] = ()
    recipients: tuple[X25519PublicKey, ...] = ()
    scrypt_log2_n: int = 17

    def __post_init__(self) -> None:
        if not (self.passphrases or self.keks or self.recipients):
            raise UsageError("encryption needs at least one passphrase, key file or recipient")
        if self.cipher == Cipher.SM4_GCM and not sm4_gcm_supported():
            raise UnsupportedError("this system's OpenSSL has no SM4-GCM", hint="use aes-256-gcm")


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


@dataclass(frozen=True)
class KeyFiles:
    """Where the keys that open an encrypted package are: files named by the user.

    Each field falls back to its environment variable (``PTMPACK_PASSPHRASE``,
    ``PTMPACK_KEY_FILE``) when unset; ``ptmpack.api.load_opener`` reads them.
    """

    passphrase_file: Path | None = None
    key_file: Path | None = None
    identity: Path | None = None


@dataclass(frozen=True)
class RecipientFiles:
    """Who to encrypt for, as files: passphrase files, key files, X25519 public keys (PEM)."""

    passphrase_files: tuple[Path, ...] = ()
    key_files: tuple[Path, ...] = ()
    recipients: tuple[Path, ...] = ()
    cipher: str = "aes-256-gcm"

    def __post_init__(self) -> None:
        if self.cipher not in CIPHER_NAMES:
            raise UsageError(f"unknown cipher {self.cipher!r}", hint=f"use one of {', '.join(sorted(CIPHER_NAMES))}")


def parse_compression(text: str) -> tuple[spec.Compression, int]:
    """``none``, ``zstd`` or ``zstd:LEVEL`` → (compression, zstd level).

    Raises:
        UsageError: anything else.
    """
    name, _, level = text.partition(":")
    if name == "none" and not level:
        return spec.Compression.NONE, 3
    if name == "zstd":
        try:
            return spec.Compression.ZSTD, int(level) if level else 3
        except ValueError:
            raise UsageError(f"bad zstd level {level!r}", hint="use zstd:1 .. zstd:22") from None
    raise UsageError(f"unknown compression {text!r}", hint="use none, zstd or zstd:LEVEL")
