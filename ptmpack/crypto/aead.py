"""Authenticated encryption of package chunks: cipher ids, nonce and AAD policy, seal/open.

A package has one random data key (DEK). Every chunk of every entry is sealed on its own with
that key under the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015): the 96-bit
nonce names the entry and the chunk's position and marks the last chunk, and the associated
data binds the package and the entry's header fields. Moving, reordering, dropping or splicing
chunks therefore fails authentication instead of yielding other plaintext. The byte-exact
construction is documented in ``docs/CRYPTO.md``; :func:`chunk_nonce` and :func:`chunk_aad` are
the only places that build it.

All primitives come from ``cryptography``: AES-256-GCM through its AEAD interface and SM4-GCM
through the generic ``Cipher`` interface (only when the linked OpenSSL provides SM4).
"""

from __future__ import annotations

import enum
import functools
import os
import struct

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers import Cipher as _CipherContext
from cryptography.hazmat.primitives.ciphers import algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ptmpack.errors import IntegrityError, UnsupportedError, UsageError


class Cipher(enum.IntEnum):
    """On-disk cipher ids; frozen once released (they appear in codecs, slot AAD and manifests)."""

    NONE = 0
    AES_256_GCM = 1
    SM4_GCM = 2


KEY_SIZES = {Cipher.AES_256_GCM: 32, Cipher.SM4_GCM: 16}
TAG_SIZE = 16
NONCE_SIZE = 12
PACKAGE_ID_SIZE = 16

_U32_LIMIT = 2**32
_COUNTER_LIMIT = 2**63
_LAST_CHUNK_BIT = 2**63
_NONCE = struct.Struct(">IQ")
_AAD_FIELDS = struct.Struct("<III")
_AUTH_FAILED = "authentication failed: tampered, truncated, reordered or spliced"


@functools.cache
def sm4_gcm_supported() -> bool:
    """Whether the OpenSSL linked into ``cryptography`` offers SM4 in GCM mode.

    Some builds (FIPS providers, trimmed distributions) leave SM4 out; callers use this to
    refuse ``--cipher sm4-gcm`` early and tests use it to skip.
    """
    try:
        _CipherContext(algorithms.SM4(bytes(16)), modes.GCM(bytes(NONCE_SIZE))).encryptor()
    except UnsupportedAlgorithm:
        return False
    return True


def _key_size(cipher: Cipher) -> int:
    try:
        return KEY_SIZES[Cipher(cipher)]
    except (KeyError, ValueError):
        raise UsageError(f"cipher {cipher!r} does not encrypt; choose aes-256-gcm or sm4-gcm") from None


def new_data_key(cipher: Cipher) -> bytes:
    """Return a fresh random data key (DEK) of the size ``cipher`` needs, from ``os.urandom``.

    Raises:
        UsageError: ``cipher`` is ``NONE`` or unknown.
    """
    return os.urandom(_key_size(cipher))


def chunk_nonce(entry_index: int, counter: int, last: bool) -> bytes:
    """Build the 96-bit STREAM nonce of one chunk.

    Layout: entry index (u32 big-endian) ‖ chunk counter (u64 big-endian) whose top bit is set
    on the entry's last chunk. Because every (entry, position, is-last) triple gives a distinct
    nonce under the package's one key, no nonce repeats, and a stream cut after any chunk but
    the real last one fails to authenticate.

    Raises:
        UsageError: ``entry_index`` is outside u32 or ``counter`` is outside ``[0, 2**63)``.
    """
    if not 0 <= entry_index < _U32_LIMIT:
        raise UsageError(f"entry index {entry_index} does not fit the 32-bit nonce field")
    if not 0 <= counter < _COUNTER_LIMIT:
        raise UsageError(f"chunk counter {counter} does not fit the 63-bit nonce field")
    return _NONCE.pack(entry_index, counter | (_LAST_CHUNK_BIT if last else 0))


def chunk_aad(package_id: bytes, entry_index: int, kind: int, codec: int, path: str) -> bytes:
    """Build the associated data of every chunk of one entry.

    Layout: package_id (16 bytes) ‖ entry index (u32 LE) ‖ kind (u32 LE) ‖ codec (u32 LE) ‖
    path (UTF-8, no terminator; it is the last field, so no length is needed). Binding these
    means a chunk sealed for one entry, package, codec or path does not open as another.

    Raises:
        UsageError: ``package_id`` is not 16 bytes or a number does not fit u32.
    """
    if len(package_id) != PACKAGE_ID_SIZE:
        raise UsageError(f"package_id must be {PACKAGE_ID_SIZE} bytes, got {len(package_id)}")
    for name, value in (("entry index", entry_index), ("kind", kind), ("codec", codec)):
        if not 0 <= value < _U32_LIMIT:
            raise UsageError(f"{name} {value} does not fit u32")
    return bytes(package_id) + _AAD_FIELDS.pack(entry_index, kind, codec) + path.encode("utf-8")


class Sealer:
    """Seals and opens chunks under one data key; one per package.

    Safe to share between threads: the AES-GCM object keeps no per-call state, and SM4-GCM
    builds a fresh cipher context for every call.
    """

    def __init__(self, cipher: Cipher, key: bytes) -> None:
        """Bind ``cipher`` and ``key``.

        Raises:
            UsageError: ``cipher`` is ``NONE``/unknown or ``key`` has the wrong length.
            UnsupportedError: SM4-GCM was asked for and the linked OpenSSL lacks it.
        """
        size = _key_size(cipher)
        if len(key) != size:
            raise UsageError(f"{Cipher(cipher).name} needs a {size}-byte key, got {len(key)} bytes")
        self.cipher = Cipher(cipher)
        self._key = bytes(key)
        self._aesgcm: AESGCM | None = None
        if self.cipher is Cipher.AES_256_GCM:
            self._aesgcm = AESGCM(self._key)
        elif not sm4_gcm_supported():
            raise UnsupportedError(
                "SM4-GCM is not available in the OpenSSL linked into the cryptography package",
                hint="use --cipher aes-256-gcm, or install a cryptography build whose OpenSSL enables SM4",
            )

    def __repr__(self) -> str:
        return f"Sealer({self.cipher.name})"

    @staticmethod
    def _check_nonce(nonce: bytes) -> None:
        if len(nonce) != NONCE_SIZE:
            raise UsageError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")

    def seal(self, nonce: bytes, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext``; return ciphertext ‖ 16-byte tag.

        Raises:
            UsageError: ``nonce`` is not 12 bytes.
        """
        self._check_nonce(nonce)
        if self._aesgcm is not None:
            return self._aesgcm.encrypt(nonce, plaintext, aad)
        encryptor = _CipherContext(algorithms.SM4(self._key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        body = encryptor.update(plaintext) + encryptor.finalize()
        return body + encryptor.tag

    def open(self, nonce: bytes, sealed: bytes | memoryview, aad: bytes) -> bytes:
        """Check and decrypt ciphertext ‖ tag made by :meth:`seal` with the same nonce and AAD.

        Raises:
            UsageError: ``nonce`` is not 12 bytes.
            IntegrityError: the tag does not verify or ``sealed`` is shorter than a tag.
        """
        self._check_nonce(nonce)
        if len(sealed) < TAG_SIZE:
            raise IntegrityError(f"{self.cipher.name} {_AUTH_FAILED} (sealed data shorter than its tag)")
        try:
            if self._aesgcm is not None:
                return self._aesgcm.decrypt(nonce, sealed, aad)
            view = memoryview(sealed)
            decryptor = _CipherContext(
                algorithms.SM4(self._key), modes.GCM(nonce, bytes(view[-TAG_SIZE:]), min_tag_length=TAG_SIZE)
            ).decryptor()
            decryptor.authenticate_additional_data(aad)
            return decryptor.update(view[:-TAG_SIZE]) + decryptor.finalize()
        except InvalidTag:
            raise IntegrityError(f"{self.cipher.name} {_AUTH_FAILED}") from None
