"""Key slots: each wraps the package's data key (DEK) for one way in.

A package's DEK is wrapped once per recipient, in a slot of one of three kinds:

* ``PASSPHRASE``: KEK = scrypt(passphrase, random salt), parameters stored in the slot;
* ``KEYFILE``: KEK = the 32 random bytes of a key file, named by a short key id;
* ``X25519``: KEK = HKDF-SHA256 of an ephemeral-static X25519 exchange with a recipient's
  public key (as in age), named by the recipient's fingerprint.

Every wrap is AES-256-GCM under the KEK with a random nonce, and its associated data binds the
package id, the slot kind and the package cipher, so a slot copied into another package, or
relabelled, does not open. The slot block's bytes are documented in ``docs/CRYPTO.md``; it is
parsed as hostile input (every count and length bounded, every malformation an
:class:`IntegrityError`).
"""

from __future__ import annotations

import enum
import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ptmpack.crypto.aead import KEY_SIZES, NONCE_SIZE, PACKAGE_ID_SIZE, TAG_SIZE, Cipher
from ptmpack.errors import IntegrityError, KeyAccessError, UnsupportedError, UsageError


class SlotKind(enum.IntEnum):
    """On-disk key slot kinds; frozen once released."""

    PASSPHRASE = 1
    KEYFILE = 2
    X25519 = 3


SLOT_MAGIC = b"PTKS"
SLOT_VERSION = 1
MAX_SLOTS = 64
MAX_SLOT_BODY = 1024
KEK_SIZE = 32
SALT_SIZE = 16
FINGERPRINT_SIZE = 8
X25519_KEY_SIZE = 32
X25519_INFO = b"ptmpack x25519 v1"

# Bounds on scrypt parameters read from a file, so a hostile package cannot make a reader
# allocate or compute without limit: memory is 128·r·2**log2_n bytes, work ∝ p·r·2**log2_n.
MAX_SCRYPT_LOG2_N = 22
MAX_SCRYPT_R = 32
MAX_SCRYPT_P = 16
MAX_SCRYPT_MEMORY = 2**30
MAX_SCRYPT_WORK = 2**24

_HEADER = struct.Struct("<4sHH")
_SLOT_HEADER = struct.Struct("<HI")
_WRAP_AAD = struct.Struct("<II")
_SCRYPT_PARAMS = struct.Struct("<BBB")
_WRAPPED_SIZES = frozenset(size + TAG_SIZE for size in KEY_SIZES.values())


def fingerprint(data: bytes) -> bytes:
    """First 8 bytes of SHA-256 of ``data``: the short id of a key file or a raw public key."""
    return hashlib.sha256(data).digest()[:FINGERPRINT_SIZE]


@dataclass(frozen=True)
class PassphraseSlot:
    """DEK wrapped under scrypt(passphrase); ``log2_n``, ``r``, ``p`` are the scrypt cost."""

    kind: ClassVar[SlotKind] = SlotKind.PASSPHRASE
    salt: bytes
    log2_n: int
    r: int
    p: int
    nonce: bytes
    wrapped: bytes

    def describe(self) -> str:
        """How this slot is named in messages."""
        return "passphrase"

    def pack(self) -> bytes:
        """Slot body bytes: salt ‖ log2_n u8 ‖ r u8 ‖ p u8 ‖ nonce ‖ wrapped DEK."""
        return self.salt + _SCRYPT_PARAMS.pack(self.log2_n, self.r, self.p) + self.nonce + self.wrapped

    @classmethod
    def unpack(cls, body: bytes) -> PassphraseSlot:
        """Parse a body written by :meth:`pack`; ``unpack(s.pack()) == s``.

        Raises:
            IntegrityError: wrong length or scrypt parameters out of bounds.
        """
        fixed = SALT_SIZE + _SCRYPT_PARAMS.size + NONCE_SIZE
        _check_wrapped_length(len(body) - fixed, "passphrase")
        log2_n, r, p = _SCRYPT_PARAMS.unpack_from(body, SALT_SIZE)
        _check_scrypt_params(log2_n, r, p, IntegrityError)
        return cls(body[:SALT_SIZE], log2_n, r, p, body[fixed - NONCE_SIZE : fixed], body[fixed:])


@dataclass(frozen=True)
class KeyfileSlot:
    """DEK wrapped under a 32-byte key file; ``key_id`` = :func:`fingerprint` of that key."""

    kind: ClassVar[SlotKind] = SlotKind.KEYFILE
    key_id: bytes
    nonce: bytes
    wrapped: bytes

    def describe(self) -> str:
        """How this slot is named in messages."""
        return f"keyfile (id {self.key_id.hex()})"

    def pack(self) -> bytes:
        """Slot body bytes: key id ‖ nonce ‖ wrapped DEK."""
        return self.key_id + self.nonce + self.wrapped

    @classmethod
    def unpack(cls, body: bytes) -> KeyfileSlot:
        """Parse a body written by :meth:`pack`; ``unpack(s.pack()) == s``.

        Raises:
            IntegrityError: wrong length.
        """
        fixed = FINGERPRINT_SIZE + NONCE_SIZE
        _check_wrapped_length(len(body) - fixed, "keyfile")
        return cls(body[:FINGERPRINT_SIZE], body[FINGERPRINT_SIZE:fixed], body[fixed:])


@dataclass(frozen=True)
class X25519Slot:
    """DEK wrapped for one X25519 recipient through an ephemeral key pair made for this slot."""

    kind: ClassVar[SlotKind] = SlotKind.X25519
    ephemeral_public: bytes
    recipient_fingerprint: bytes
    nonce: bytes
    wrapped: bytes

    def describe(self) -> str:
        """How this slot is named in messages."""
        return f"x25519 recipient (fp {self.recipient_fingerprint.hex()})"

    def pack(self) -> bytes:
        """Slot body bytes: ephemeral public key ‖ recipient fingerprint ‖ nonce ‖ wrapped DEK."""
        return self.ephemeral_public + self.recipient_fingerprint + self.nonce + self.wrapped

    @classmethod
    def unpack(cls, body: bytes) -> X25519Slot:
        """Parse a body written by :meth:`pack`; ``unpack(s.pack()) == s``.

        Raises:
            IntegrityError: wrong length.
        """
        fp_end = X25519_KEY_SIZE + FINGERPRINT_SIZE
        fixed = fp_end + NONCE_SIZE
        _check_wrapped_length(len(body) - fixed, "x25519")
        return cls(body[:X25519_KEY_SIZE], body[X25519_KEY_SIZE:fp_end], body[fp_end:fixed], body[fixed:])


KeySlot = PassphraseSlot | KeyfileSlot | X25519Slot
_SLOT_CLASSES: dict[int, type[PassphraseSlot] | type[KeyfileSlot] | type[X25519Slot]] = {
    SlotKind.PASSPHRASE: PassphraseSlot,
    SlotKind.KEYFILE: KeyfileSlot,
    SlotKind.X25519: X25519Slot,
}


@dataclass(frozen=True)
class Opener:
    """The secrets a user offered to open a package; any subset may be given."""

    passphrase: bytes | None = None
    kek: bytes | None = None
    identity: X25519PrivateKey | None = None


def _check_wrapped_length(length: int, what: str) -> None:
    if length not in _WRAPPED_SIZES:
        raise IntegrityError(f"{what} key slot is malformed: wrapped key of {length} bytes")


def _check_scrypt_params(log2_n: int, r: int, p: int, error: type[IntegrityError] | type[UsageError]) -> None:
    memory = 128 * r * 2**log2_n
    if not (
        1 <= log2_n <= MAX_SCRYPT_LOG2_N
        and 1 <= r <= MAX_SCRYPT_R
        and 1 <= p <= MAX_SCRYPT_P
        and memory <= MAX_SCRYPT_MEMORY
        and p * r * 2**log2_n <= MAX_SCRYPT_WORK
    ):
        raise error(
            f"scrypt parameters log2_n={log2_n} r={r} p={p} are out of bounds "
            f"(log2_n 1..{MAX_SCRYPT_LOG2_N}, r 1..{MAX_SCRYPT_R}, p 1..{MAX_SCRYPT_P}, "
            f"memory ≤ {MAX_SCRYPT_MEMORY // 2**20} MiB, p·r·n ≤ 2**{MAX_SCRYPT_WORK.bit_length() - 1})"
        )


def _wrap_aad(package_id: bytes, kind: SlotKind, cipher: Cipher) -> bytes:
    if len(package_id) != PACKAGE_ID_SIZE:
        raise UsageError(f"package_id must be {PACKAGE_ID_SIZE} bytes, got {len(package_id)}")
    return bytes(package_id) + _WRAP_AAD.pack(kind, cipher)


def _wrap(kek: bytes, dek: bytes, package_id: bytes, kind: SlotKind, cipher: Cipher) -> tuple[bytes, bytes]:
    expected = KEY_SIZES.get(cipher)
    if expected is None or len(dek) != expected:
        raise UsageError(f"data key of {len(dek)} bytes does not suit cipher {Cipher(cipher).name}")
    nonce = os.urandom(NONCE_SIZE)
    return nonce, AESGCM(kek).encrypt(nonce, dek, _wrap_aad(package_id, kind, cipher))


def _unwrap(kek: bytes, slot: KeySlot, package_id: bytes, cipher: Cipher) -> bytes | None:
    """The DEK in ``slot`` under ``kek``, or None when the tag does not verify."""
    if len(slot.wrapped) != KEY_SIZES[cipher] + TAG_SIZE:
        raise IntegrityError(f"{slot.describe()} key slot does not hold a {Cipher(cipher).name} key")
    try:
        return AESGCM(kek).decrypt(slot.nonce, slot.wrapped, _wrap_aad(package_id, slot.kind, cipher))
    except InvalidTag:
        return None


def _scrypt_kek(passphrase: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=KEK_SIZE, n=2**log2_n, r=r, p=p).derive(passphrase)


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _x25519_kek(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEK_SIZE, salt=ephemeral_public + recipient_public, info=X25519_INFO)
    return hkdf.derive(shared)


def passphrase_slot(
    dek: bytes, passphrase: bytes, package_id: bytes, cipher: Cipher, *, log2_n: int = 17, r: int = 8, p: int = 1
) -> PassphraseSlot:
    """Wrap ``dek`` under a key derived from ``passphrase`` with scrypt (n = 2**log2_n, r, p).

    The default cost (n = 2**17, r = 8: 128 MiB, about half a second) slows guessing; tests
    pass a smaller ``log2_n``.

    Raises:
        UsageError: empty passphrase, parameters out of bounds, or a DEK/package id of the
            wrong size.
    """
    if not passphrase:
        raise UsageError("the passphrase is empty")
    _check_scrypt_params(log2_n, r, p, UsageError)
    salt = os.urandom(SALT_SIZE)
    kek = _scrypt_kek(passphrase, salt, log2_n, r, p)
    nonce, wrapped = _wrap(kek, dek, package_id, SlotKind.PASSPHRASE, cipher)
    return PassphraseSlot(salt, log2_n, r, p, nonce, wrapped)


def keyfile_slot(dek: bytes, kek: bytes, package_id: bytes, cipher: Cipher) -> KeyfileSlot:
    """Wrap ``dek`` under the 32-byte key-file key ``kek``.

    Raises:
        UsageError: ``kek`` is not 32 bytes, or a DEK/package id of the wrong size.
    """
    if len(kek) != KEK_SIZE:
        raise UsageError(f"a key file key must be {KEK_SIZE} bytes, got {len(kek)}")
    nonce, wrapped = _wrap(kek, dek, package_id, SlotKind.KEYFILE, cipher)
    return KeyfileSlot(fingerprint(kek), nonce, wrapped)


def recipient_slot(dek: bytes, recipient: X25519PublicKey, package_id: bytes, cipher: Cipher) -> X25519Slot:
    """Wrap ``dek`` for the holder of the private key matching ``recipient``.

    A fresh ephemeral key pair is made per slot and its private half discarded, so only the
    recipient can redo the exchange.

    Raises:
        KeyAccessError: ``recipient`` is a degenerate (low-order) public key.
        UsageError: a DEK/package id of the wrong size.
    """
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = _raw_public(ephemeral.public_key())
    recipient_public = _raw_public(recipient)
    try:
        shared = ephemeral.exchange(recipient)
    except ValueError:
        raise KeyAccessError(
            f"recipient public key (fp {fingerprint(recipient_public).hex()}) is degenerate and cannot receive a key"
        ) from None
    kek = _x25519_kek(shared, ephemeral_public, recipient_public)
    nonce, wrapped = _wrap(kek, dek, package_id, SlotKind.X25519, cipher)
    return X25519Slot(ephemeral_public, fingerprint(recipient_public), nonce, wrapped)


def encode_slots(slots: Sequence[KeySlot]) -> bytes:
    """Serialize slots to the slot block of ``docs/CRYPTO.md``; ``decode_slots`` inverts it.

    Raises:
        UsageError: no slots, or more than 64.
    """
    if not 1 <= len(slots) <= MAX_SLOTS:
        raise UsageError(f"an encrypted package needs 1 to {MAX_SLOTS} key slots, got {len(slots)}")
    parts = [_HEADER.pack(SLOT_MAGIC, SLOT_VERSION, len(slots))]
    for slot in slots:
        body = slot.pack()
        parts.append(_SLOT_HEADER.pack(slot.kind, len(body)))
        parts.append(body)
    return b"".join(parts)


def decode_slots(data: bytes) -> tuple[KeySlot, ...]:
    """Parse a slot block from an untrusted file.

    Raises:
        IntegrityError: bad magic, a count of 0 or over 64, a length past the end or over the
            per-slot bound, a malformed body, or trailing bytes.
        UnsupportedError: a newer block version or an unknown slot kind.
    """
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise IntegrityError(f"key slot block is truncated ({len(data)} bytes)")
    magic, version, count = _HEADER.unpack_from(data)
    if magic != SLOT_MAGIC:
        raise IntegrityError(f"key slot block has bad magic {magic!r}")
    if version != SLOT_VERSION:
        raise UnsupportedError(f"key slot block version {version} is not supported (this ptmpack reads version 1)")
    if not 1 <= count <= MAX_SLOTS:
        raise IntegrityError(f"key slot block claims {count} slots (1 to {MAX_SLOTS} allowed)")
    slots: list[KeySlot] = []
    offset = _HEADER.size
    for index in range(count):
        if len(data) - offset < _SLOT_HEADER.size:
            raise IntegrityError(f"key slot {index} is truncated at offset {offset}")
        kind, length = _SLOT_HEADER.unpack_from(data, offset)
        offset += _SLOT_HEADER.size
        if length > MAX_SLOT_BODY or length > len(data) - offset:
            raise IntegrityError(f"key slot {index} claims {length} bytes at offset {offset}; the block is too short")
        slot_class = _SLOT_CLASSES.get(kind)
        if slot_class is None:
            raise UnsupportedError(f"key slot {index} has unknown kind {kind}; a newer ptmpack may read it")
        slots.append(slot_class.unpack(data[offset : offset + length]))
        offset += length
    if offset != len(data):
        raise IntegrityError(f"key slot block has {len(data) - offset} trailing bytes")
    return tuple(slots)


def describe_slots(slots: Sequence[KeySlot]) -> str:
    """Comma-separated names of ``slots`` for messages, e.g. ``passphrase, keyfile (id …)``."""
    return ", ".join(slot.describe() for slot in slots)


def unwrap_data_key(slots: Sequence[KeySlot], opener: Opener, package_id: bytes, cipher: Cipher) -> bytes:
    """Recover the DEK from the first slot the opener's secrets open.

    Only slots of the kinds the opener holds are tried; key-file and X25519 slots only when
    their id matches, and those before the (slow) passphrase slots.

    Raises:
        KeyAccessError: no secret given, or none of them opens a slot; the message lists the
            slots present and why each secret failed.
        IntegrityError: a slot whose key id matches the given key fails to authenticate (the
            slot was altered or copied from another package), or a slot is malformed.
        UsageError: ``cipher`` does not encrypt.
    """
    if cipher not in KEY_SIZES:
        raise UsageError(f"cipher {cipher!r} does not encrypt")
    if opener.passphrase is None and opener.kek is None and opener.identity is None:
        raise KeyAccessError(
            f"package is encrypted; it has slots: {describe_slots(slots)}; give --passphrase-file, --key-file or --identity"
        )
    reasons: list[str] = []
    tampered: list[str] = []

    def attempt(kek: bytes, slot: KeySlot) -> bytes | None:
        dek = _unwrap(kek, slot, package_id, cipher)
        if dek is None and slot.kind is not SlotKind.PASSPHRASE:
            tampered.append(slot.describe())
        return dek

    if opener.kek is not None:
        if len(opener.kek) != KEK_SIZE:
            raise KeyAccessError(f"a key file key must be {KEK_SIZE} bytes, got {len(opener.kek)}")
        key_id = fingerprint(opener.kek)
        matching = [s for s in slots if isinstance(s, KeyfileSlot) and s.key_id == key_id]
        for slot in matching:
            if (dek := attempt(opener.kek, slot)) is not None:
                return dek
        if not matching:
            reasons.append(f"no keyfile slot has id {key_id.hex()} (the key file given)")

    if opener.identity is not None:
        recipient_public = _raw_public(opener.identity.public_key())
        recipient_fp = fingerprint(recipient_public)
        matching_x = [s for s in slots if isinstance(s, X25519Slot) and s.recipient_fingerprint == recipient_fp]
        for slot in matching_x:
            try:
                shared = opener.identity.exchange(X25519PublicKey.from_public_bytes(slot.ephemeral_public))
            except ValueError:
                raise IntegrityError(f"{slot.describe()} key slot holds a degenerate ephemeral key") from None
            kek = _x25519_kek(shared, slot.ephemeral_public, recipient_public)
            if (dek := attempt(kek, slot)) is not None:
                return dek
        if not matching_x:
            reasons.append(f"no x25519 slot is for identity fp {recipient_fp.hex()} (the identity given)")

    if opener.passphrase is not None:
        matching_p = [s for s in slots if isinstance(s, PassphraseSlot)]
        for slot in matching_p:
            kek = _scrypt_kek(opener.passphrase, slot.salt, slot.log2_n, slot.r, slot.p)
            if (dek := attempt(kek, slot)) is not None:
                return dek
        reasons.append("the passphrase did not open any passphrase slot" if matching_p else "no passphrase slot")

    if tampered:
        raise IntegrityError(
            f"key slot {', '.join(tampered)} matches the key given but fails authentication: "
            "the slot was altered or copied from another package"
        )
    raise KeyAccessError(f"no key slot opened: {'; '.join(reasons)}; the package has slots: {describe_slots(slots)}")
