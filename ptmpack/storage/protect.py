"""Wire the crypto leaves into the container: the protection block, unlocking, signing.

The key-slot region of an encrypted package is a 4-byte protection header (u16
cipher id, u16 reserved zero) followed by the slot block of docs/CRYPTO.md; the
cipher must be known before any slot can be unwrapped, and slots bind it in
their associated data, so changing it fails authentication.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ptmpack.config import EncryptionSpec
from ptmpack.crypto.aead import Cipher, Sealer, new_data_key
from ptmpack.crypto.keyslots import (
    KeySlot,
    Opener,
    decode_slots,
    encode_slots,
    keyfile_slot,
    passphrase_slot,
    recipient_slot,
    unwrap_data_key,
)
from ptmpack.crypto.signing import SignatureBlock, sign, signed_message, verify_signature
from ptmpack.errors import IntegrityError, UnsupportedError
from ptmpack.format.reader import ChunkDecoder, Signature, Unlock
from ptmpack.format.records import FileHeader
from ptmpack.format.spec import Flags
from ptmpack.storage.pipeline import ChunkPipeline

_PROTECTION = struct.Struct("<HH")


def protect(spec: EncryptionSpec, package_id: bytes, level: int) -> tuple[ChunkPipeline, bytes]:
    """A fresh data key wrapped for every way in: the sealing pipeline and the key-slot region."""
    dek = new_data_key(spec.cipher)
    slots: list[KeySlot] = [
        *(passphrase_slot(dek, p, package_id, spec.cipher, log2_n=spec.scrypt_log2_n) for p in spec.passphrases),
        *(keyfile_slot(dek, k, package_id, spec.cipher) for k in spec.keks),
        *(recipient_slot(dek, r, package_id, spec.cipher) for r in spec.recipients),
    ]
    region = _PROTECTION.pack(spec.cipher, 0) + encode_slots(slots)
    return ChunkPipeline(package_id, level, Sealer(spec.cipher, dek)), region


def unlocker(opener: Opener | None, level: int = 3) -> Unlock:
    """The reader's unlock callback: opens the key slots with ``opener`` when the package is encrypted."""

    def unlock(header: FileHeader, region: bytes) -> ChunkDecoder:
        if not header.flags & Flags.ENCRYPTED:
            return ChunkPipeline(header.package_id, level).decode
        cipher, slots = read_protection(region)
        dek = unwrap_data_key(slots, opener or Opener(), header.package_id, cipher)
        return ChunkPipeline(header.package_id, level, Sealer(cipher, dek)).decode

    return unlock


def read_protection(region: bytes) -> tuple[Cipher, tuple[KeySlot, ...]]:
    """Parse the key-slot region: the cipher and the slots.

    Raises:
        IntegrityError: truncated or malformed. UnsupportedError: unknown cipher.
    """
    if len(region) < _PROTECTION.size:
        raise IntegrityError("key-slot region is truncated")
    cipher_id, reserved = _PROTECTION.unpack_from(region)
    if reserved:
        raise IntegrityError("key-slot region: reserved field is not zero")
    try:
        cipher = Cipher(cipher_id)
    except ValueError:
        raise UnsupportedError(f"package uses unknown cipher id {cipher_id}") from None
    if cipher == Cipher.NONE:
        raise IntegrityError("key-slot region names no cipher")
    return cipher, decode_slots(region[_PROTECTION.size:])


def signer(key: Ed25519PrivateKey, package_id: bytes) -> Callable[[bytes, bytes], bytes]:
    """The writer's signing callback: signs the manifest digest and the digest of the file before the signature."""

    def sign_package(manifest_sha256: bytes, prefix_sha256: bytes) -> bytes:
        return sign(key, signed_message(package_id, manifest_sha256, prefix_sha256)).to_bytes()

    return sign_package


def check_signature(sig: Signature, package_id: bytes, public: Ed25519PublicKey) -> None:
    """Verify a package signature; return None or raise IntegrityError."""
    block = SignatureBlock.from_bytes(sig.block)
    verify_signature(block, public, signed_message(package_id, sig.manifest_sha256, sig.prefix_sha256))


def signer_fingerprint(sig: Signature) -> str:
    """Hex fingerprint of the key that made a signature block (for reports)."""
    return SignatureBlock.from_bytes(sig.block).key_fingerprint.hex()
