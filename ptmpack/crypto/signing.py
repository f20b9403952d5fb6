"""Ed25519 package signatures: the signed message, the signature block, sign and verify.

The signature covers a domain-separated message naming the package id, the SHA-256 of the
manifest (which in turn lists every entry's digest) and the SHA-256 of every byte of the
file before the signature block. The block records the signer's key fingerprint so a verifier can
tell "signed by another key" from "altered". Byte layouts are in ``docs/CRYPTO.md``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ptmpack.crypto.aead import PACKAGE_ID_SIZE
from ptmpack.crypto.keyslots import FINGERPRINT_SIZE, fingerprint
from ptmpack.errors import IntegrityError, UnsupportedError, UsageError

SIGNATURE_DOMAIN = b"ptmpack-signature-v1\0"
DIGEST_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
MAX_SIGNATURE_BLOCK = 16384


class SignatureAlgorithm(enum.IntEnum):
    """On-disk signature algorithm ids; frozen once released."""

    ED25519 = 1


_BLOCK_HEADER = struct.Struct("<HH")
_LENGTH = struct.Struct("<H")


def signed_message(package_id: bytes, manifest_sha256: bytes, prefix_sha256: bytes) -> bytes:
    """The exact bytes a package signature covers.

    Layout: ``SIGNATURE_DOMAIN`` ‖ package_id (16) ‖ manifest SHA-256 (32) ‖ SHA-256 of every
    byte of the file before the signature block (32). The prefix digest makes the signature
    cover the clear headers, key slots, padding and ciphertext too, so it can be checked
    without the data key and a key holder cannot alter anything (GCM alone is not
    key-committing). The domain prefix keeps a ptmpack signature from being valid for any
    other protocol that signs with the same key.

    Raises:
        UsageError: a field has the wrong length.
    """
    if len(package_id) != PACKAGE_ID_SIZE:
        raise UsageError(f"package_id must be {PACKAGE_ID_SIZE} bytes, got {len(package_id)}")
    for name, digest in (("manifest", manifest_sha256), ("prefix", prefix_sha256)):
        if len(digest) != DIGEST_SIZE:
            raise UsageError(f"{name} digest must be {DIGEST_SIZE} bytes, got {len(digest)}")
    return SIGNATURE_DOMAIN + bytes(package_id) + bytes(manifest_sha256) + bytes(prefix_sha256)


def key_fingerprint(public: Ed25519PublicKey) -> bytes:
    """First 8 bytes of SHA-256 of the raw 32-byte public key."""
    return fingerprint(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


@dataclass(frozen=True)
class SignatureBlock:
    """A signature as stored in the container: algorithm, signer fingerprint, signature."""

    algorithm: int
    key_fingerprint: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        """Serialize: algorithm u16 ‖ fingerprint length u16 ‖ fingerprint ‖ signature length
        u16 ‖ signature (little-endian). ``SignatureBlock.from_bytes(b.to_bytes()) == b``.

        Raises:
            UsageError: unknown algorithm or a field of the wrong length.
        """
        if (
            self.algorithm != SignatureAlgorithm.ED25519
            or len(self.key_fingerprint) != FINGERPRINT_SIZE
            or len(self.signature) != ED25519_SIGNATURE_SIZE
        ):
            raise UsageError(f"not a well-formed Ed25519 signature block: {self!r}")
        return b"".join(
            (
                _BLOCK_HEADER.pack(self.algorithm, len(self.key_fingerprint)),
                self.key_fingerprint,
                _LENGTH.pack(len(self.signature)),
                self.signature,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SignatureBlock:
        """Parse a block from an untrusted file.

        Raises:
            IntegrityError: truncated, oversized, wrong field lengths or trailing bytes.
            UnsupportedError: an algorithm this ptmpack does not know.
        """
        data = bytes(data)
        if len(data) > MAX_SIGNATURE_BLOCK:
            raise IntegrityError(f"signature block is {len(data)} bytes (at most {MAX_SIGNATURE_BLOCK})")
        if len(data) < _BLOCK_HEADER.size:
            raise IntegrityError(f"signature block is truncated ({len(data)} bytes)")
        algorithm, fp_length = _BLOCK_HEADER.unpack_from(data)
        if algorithm != SignatureAlgorithm.ED25519:
            raise UnsupportedError(f"signature algorithm {algorithm} is not supported (this ptmpack knows Ed25519)")
        offset = _BLOCK_HEADER.size
        if fp_length != FINGERPRINT_SIZE or len(data) < offset + fp_length + _LENGTH.size:
            raise IntegrityError("signature block is malformed: bad key fingerprint field")
        key_fp = data[offset : offset + fp_length]
        offset += fp_length
        (sig_length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if sig_length != ED25519_SIGNATURE_SIZE or len(data) != offset + sig_length:
            raise IntegrityError("signature block is malformed: bad signature length or trailing bytes")
        return cls(algorithm, key_fp, data[offset:])


def sign(private: Ed25519PrivateKey, message: bytes) -> SignatureBlock:
    """Sign ``message`` (from :func:`signed_message`) with ``private``."""
    return SignatureBlock(SignatureAlgorithm.ED25519, key_fingerprint(private.public_key()), private.sign(message))


def verify_signature(block: SignatureBlock, public: Ed25519PublicKey, message: bytes) -> None:
    """Check that ``block`` is a valid signature by ``public`` over ``message``; return None.

    Raises:
        IntegrityError: the block names another signer, or the signature does not verify.
        UnsupportedError: the block uses an algorithm this ptmpack does not know.
    """
    if block.algorithm != SignatureAlgorithm.ED25519:
        raise UnsupportedError(f"signature algorithm {block.algorithm} is not supported (this ptmpack knows Ed25519)")
    expected = key_fingerprint(public)
    if block.key_fingerprint != expected:
        raise IntegrityError(
            f"the package was signed by key fp {block.key_fingerprint.hex()}, not by the given key fp {expected.hex()}",
            hint="pass the signer's public key with --pubkey, or treat the package as untrusted",
        )
    try:
        public.verify(block.signature, message)
    except InvalidSignature:
        raise IntegrityError("signature does not verify: the package was altered or signed by another key") from None
