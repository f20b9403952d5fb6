"""Tests of ptmpack.crypto: AEAD chunks, key slots, signatures and key files.

Golden hex values were produced once by this code and are hard-coded so that any drift in a
construction (nonce, AAD, KDF, slot layout, signed message) fails loudly; the SM4-GCM vector of
RFC 8998 appendix A.1 checks the cipher itself against an outside reference.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import stat
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptmpack.crypto import aead, keyfiles, keyslots, signing
from ptmpack.crypto.aead import Cipher, Sealer, chunk_aad, chunk_nonce, new_data_key, sm4_gcm_supported
from ptmpack.crypto.keyslots import (
    KeyfileSlot,
    Opener,
    PassphraseSlot,
    SlotKind,
    X25519Slot,
    decode_slots,
    encode_slots,
    keyfile_slot,
    passphrase_slot,
    recipient_slot,
    unwrap_data_key,
)
from ptmpack.crypto.signing import SignatureBlock, sign, signed_message, verify_signature
from ptmpack.errors import IntegrityError, KeyAccessError, PtmError, UnsupportedError, UsageError

needs_sm4 = pytest.mark.skipif(not sm4_gcm_supported(), reason="the linked OpenSSL has no SM4-GCM")
CIPHERS = [Cipher.AES_256_GCM, pytest.param(Cipher.SM4_GCM, marks=needs_sm4)]

PACKAGE_ID = bytes(range(16))
OTHER_PACKAGE_ID = bytes(range(1, 17))
FAST = {"log2_n": 10}  # scrypt cost for tests only


def sealer_for(cipher: Cipher) -> Sealer:
    return Sealer(cipher, bytes(range(aead.KEY_SIZES[cipher])))


# --------------------------------------------------------------------------- nonce and AAD


def test_chunk_nonce_layout() -> None:
    assert chunk_nonce(1, 2, False).hex() == "000000010000000000000002"
    assert chunk_nonce(1, 2, True).hex() == "000000018000000000000002"
    assert chunk_nonce(0, 0, False) == bytes(12)
    assert chunk_nonce(2**32 - 1, 2**63 - 1, True) == b"\xff" * 12
    assert len({chunk_nonce(e, c, last) for e in range(3) for c in range(3) for last in (False, True)}) == 18


@pytest.mark.parametrize(("entry", "counter"), [(-1, 0), (2**32, 0), (0, -1), (0, 2**63)])
def test_chunk_nonce_rejects_out_of_range(entry: int, counter: int) -> None:
    with pytest.raises(UsageError):
        chunk_nonce(entry, counter, False)


def test_chunk_aad_layout() -> None:
    aad = chunk_aad(PACKAGE_ID, 1, 1, 0x0101, "Model/model.safetensors")
    assert aad.hex() == ("000102030405060708090a0b0c0d0e0f010000000100000001010000" + b"Model/model.safetensors".hex())
    assert chunk_aad(PACKAGE_ID, 0, 3, 0, "Meta-info/é.json").endswith("é.json".encode())


@pytest.mark.parametrize(
    "args",
    [
        (bytes(15), 0, 1, 0, "a"),
        (PACKAGE_ID, 2**32, 1, 0, "a"),
        (PACKAGE_ID, 0, -1, 0, "a"),
        (PACKAGE_ID, 0, 1, 2**32, "a"),
    ],
)
def test_chunk_aad_rejects_bad_fields(args: tuple) -> None:
    with pytest.raises(UsageError):
        chunk_aad(*args)


# --------------------------------------------------------------------------- seal / open

KAT_NONCE = chunk_nonce(1, 2, False)
KAT_AAD = chunk_aad(PACKAGE_ID, 1, 1, 0x0101, "Model/model.safetensors")
KAT_PLAINTEXT = b"ptmpack known-answer test"


def test_aes_256_gcm_known_answer() -> None:
    sealed = sealer_for(Cipher.AES_256_GCM).seal(KAT_NONCE, KAT_PLAINTEXT, KAT_AAD)
    assert sealed.hex() == "a0dc398b7a26892774c3dce1bd77aff77cca6c45a3907afc5f6eb782cc0afbc84fdb66ae6dffe6fc47"


@needs_sm4
def test_sm4_gcm_known_answer() -> None:
    sealed = sealer_for(Cipher.SM4_GCM).seal(KAT_NONCE, KAT_PLAINTEXT, KAT_AAD)
    assert sealed.hex() == "4896daff605811b57bef2243fde8c2451f42cda3a6b960a81661930e5f72d8abb3df1da9b4e063a01f"


@needs_sm4
def test_sm4_gcm_rfc8998_vector() -> None:
    sealer = Sealer(Cipher.SM4_GCM, bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
    nonce = bytes.fromhex("00001234567800000000ABCD")
    aad = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
    plaintext = bytes.fromhex("".join(c * 16 for c in "ABCDEFEA"))
    expected = bytes.fromhex(
        "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
        "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
        "83DE3541E4C2B58177E065A9BF7B62EC"
    )
    assert sealer.seal(nonce, plaintext, aad) == expected
    assert sealer.open(nonce, expected, aad) == plaintext


def test_sm4_unavailable_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aead, "sm4_gcm_supported", lambda: False)
    with pytest.raises(UnsupportedError, match="SM4-GCM is not available"):
        Sealer(Cipher.SM4_GCM, bytes(16))


@pytest.mark.parametrize("cipher", CIPHERS)
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plaintext=st.binary(max_size=3000), aad=st.binary(max_size=200), nonce=st.binary(min_size=12, max_size=12))
def test_seal_open_round_trip(cipher: Cipher, plaintext: bytes, aad: bytes, nonce: bytes) -> None:
    sealer = sealer_for(cipher)
    sealed = sealer.seal(nonce, memoryview(plaintext), aad)
    assert len(sealed) == len(plaintext) + aead.TAG_SIZE
    assert sealer.open(nonce, sealed, aad) == plaintext
    assert sealer.open(nonce, memoryview(sealed), aad) == plaintext


def _flips(data: bytes):
    for index in range(len(data)):
        for mask in (0x01, 0x80):
            flipped = bytearray(data)
            flipped[index] ^= mask
            yield bytes(flipped)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_every_single_byte_flip_fails(cipher: Cipher) -> None:
    sealer = sealer_for(cipher)
    sealed = sealer.seal(KAT_NONCE, KAT_PLAINTEXT, KAT_AAD)
    for bad in _flips(sealed):
        with pytest.raises(IntegrityError, match="tampered, truncated, reordered or spliced"):
            sealer.open(KAT_NONCE, bad, KAT_AAD)
    for bad_aad in _flips(KAT_AAD):
        with pytest.raises(IntegrityError):
            sealer.open(KAT_NONCE, sealed, bad_aad)
    for bad_nonce in _flips(KAT_NONCE):
        with pytest.raises(IntegrityError):
            sealer.open(bad_nonce, sealed, KAT_AAD)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_truncation_extension_and_stream_misuse_fail(cipher: Cipher) -> None:
    sealer = sealer_for(cipher)
    sealed = sealer.seal(KAT_NONCE, KAT_PLAINTEXT, KAT_AAD)
    for length in range(len(sealed)):
        with pytest.raises(IntegrityError):
            sealer.open(KAT_NONCE, sealed[:length], KAT_AAD)
    with pytest.raises(IntegrityError):
        sealer.open(KAT_NONCE, sealed + b"\0", KAT_AAD)
    # a non-final chunk presented as the last one (a truncated stream), or moved, fails
    with pytest.raises(IntegrityError):
        sealer.open(chunk_nonce(1, 2, True), sealed, KAT_AAD)
    with pytest.raises(IntegrityError):
        sealer.open(chunk_nonce(1, 3, False), sealed, KAT_AAD)
    with pytest.raises(IntegrityError):
        sealer.open(chunk_nonce(2, 2, False), sealed, KAT_AAD)


def test_sealer_rejects_bad_keys_and_nonces() -> None:
    with pytest.raises(UsageError):
        Sealer(Cipher.NONE, b"")
    with pytest.raises(UsageError):
        Sealer(Cipher.AES_256_GCM, bytes(16))
    with pytest.raises(UsageError):
        Sealer(7, bytes(32))  # type: ignore[arg-type]
    sealer = sealer_for(Cipher.AES_256_GCM)
    with pytest.raises(UsageError):
        sealer.seal(bytes(11), b"x", b"")
    with pytest.raises(UsageError):
        sealer.open(bytes(13), bytes(32), b"")


def test_new_data_key() -> None:
    assert len(new_data_key(Cipher.AES_256_GCM)) == 32
    assert len(new_data_key(Cipher.SM4_GCM)) == 16
    assert new_data_key(Cipher.AES_256_GCM) != new_data_key(Cipher.AES_256_GCM)
    with pytest.raises(UsageError):
        new_data_key(Cipher.NONE)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_sealer_is_thread_safe(cipher: Cipher) -> None:
    sealer = sealer_for(cipher)
    jobs = [(chunk_nonce(i % 7, i, i == 199), os.urandom(1000 + i), f"aad{i}".encode()) for i in range(200)]
    expected = [sealer.seal(*job) for job in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        sealed = list(pool.map(lambda job: sealer.seal(*job), jobs))
        opened = list(
            pool.map(lambda pair: sealer.open(pair[0][0], pair[1], pair[0][2]), zip(jobs, sealed, strict=True))
        )
    assert sealed == expected
    assert opened == [job[1] for job in jobs]


# --------------------------------------------------------------------------- key slots

GOLDEN_DEK = bytes(range(200, 232))
GOLDEN_PASSPHRASE = b"correct horse"
GOLDEN_KEK = bytes(range(32, 64))
GOLDEN_IDENTITY = X25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
GOLDEN_SLOTS = bytes.fromhex(
    "50544b530100030001004f00000016f18bc898e55c5fbcff8357521788250a08016cac8dfa7fd314cf7e365cbf200f9355"
    "0211442dbd46c610acbfa60a20a799df4352d40252e7a9d7f3c279b3ad1dd0cdb8a8f277b0e383dcfaad63cd02004400"
    "000072dbb7336c7678003da4851121568d861efb01dfd7f2faeb62a006acf86639abaa0e4e69e26bb897b6b3c9c609a706"
    "6f335024ad1a5fd75751d597e6a19430d0cfffa1830300640000001408541bf21138fbdf9a02f8931d2f39055de15db523"
    "42f1f848fa6ed42dde6867ca2ffd6fe9efab44a6a7ccfb50be8c6022c936d5834ef3d285b40deb620d2f63effd34842668"
    "4e96d6f71735f47608cdbaea8260fee5417e133f1e39b51472189609a7"
)


def test_golden_slot_block_decodes_and_opens() -> None:
    slots = decode_slots(GOLDEN_SLOTS)
    assert [s.kind for s in slots] == [SlotKind.PASSPHRASE, SlotKind.KEYFILE, SlotKind.X25519]
    assert encode_slots(slots) == GOLDEN_SLOTS
    assert (slots[0].log2_n, slots[0].r, slots[0].p) == (10, 8, 1)
    for opener in (Opener(passphrase=GOLDEN_PASSPHRASE), Opener(kek=GOLDEN_KEK), Opener(identity=GOLDEN_IDENTITY)):
        assert unwrap_data_key(slots, opener, PACKAGE_ID, Cipher.AES_256_GCM) == GOLDEN_DEK


def _all_slots(dek: bytes, cipher: Cipher, package_id: bytes = PACKAGE_ID) -> list:
    return [
        passphrase_slot(dek, GOLDEN_PASSPHRASE, package_id, cipher, **FAST),
        keyfile_slot(dek, GOLDEN_KEK, package_id, cipher),
        recipient_slot(dek, GOLDEN_IDENTITY.public_key(), package_id, cipher),
    ]


@pytest.mark.parametrize("cipher", [Cipher.AES_256_GCM, Cipher.SM4_GCM])
def test_slot_round_trip_all_kinds(cipher: Cipher) -> None:
    dek = new_data_key(cipher)
    slots = decode_slots(encode_slots(_all_slots(dek, cipher)))
    for opener in (
        Opener(passphrase=GOLDEN_PASSPHRASE),
        Opener(kek=GOLDEN_KEK),
        Opener(identity=GOLDEN_IDENTITY),
        Opener(passphrase=b"wrong", kek=GOLDEN_KEK),
    ):
        assert unwrap_data_key(slots, opener, PACKAGE_ID, cipher) == dek


def test_no_opener_lists_slots_and_options() -> None:
    slots = decode_slots(GOLDEN_SLOTS)
    with pytest.raises(KeyAccessError) as info:
        unwrap_data_key(slots, Opener(), PACKAGE_ID, Cipher.AES_256_GCM)
    message = str(info.value)
    assert message.startswith("package is encrypted; it has slots: passphrase, keyfile (id ")
    assert "x25519 recipient (fp " in message
    assert "--passphrase-file, --key-file or --identity" in message


def test_wrong_secrets_are_key_errors_naming_slots() -> None:
    slots = decode_slots(GOLDEN_SLOTS)
    other_kek = bytes(32)
    cases = {
        Opener(passphrase=b"wrong horse"): "the passphrase did not open any passphrase slot",
        Opener(kek=other_kek): f"no keyfile slot has id {keyslots.fingerprint(other_kek).hex()}",
        Opener(identity=X25519PrivateKey.generate()): "no x25519 slot is for identity fp",
    }
    for opener, reason in cases.items():
        with pytest.raises(KeyAccessError) as info:
            unwrap_data_key(slots, opener, PACKAGE_ID, Cipher.AES_256_GCM)
        assert reason in str(info.value)
        assert "passphrase, keyfile (id " in str(info.value)


def test_missing_slot_kind_is_named() -> None:
    slots = [keyfile_slot(GOLDEN_DEK, GOLDEN_KEK, PACKAGE_ID, Cipher.AES_256_GCM)]
    with pytest.raises(KeyAccessError, match="no passphrase slot"):
        unwrap_data_key(slots, Opener(passphrase=b"pw"), PACKAGE_ID, Cipher.AES_256_GCM)
    with pytest.raises(KeyAccessError, match="32 bytes"):
        unwrap_data_key(slots, Opener(kek=b"short"), PACKAGE_ID, Cipher.AES_256_GCM)


def test_slot_moved_to_another_package_fails() -> None:
    slots = decode_slots(GOLDEN_SLOTS)
    with pytest.raises(IntegrityError, match="copied from another package"):
        unwrap_data_key(slots, Opener(kek=GOLDEN_KEK), OTHER_PACKAGE_ID, Cipher.AES_256_GCM)
    with pytest.raises(IntegrityError, match="copied from another package"):
        unwrap_data_key(slots, Opener(identity=GOLDEN_IDENTITY), OTHER_PACKAGE_ID, Cipher.AES_256_GCM)
    with pytest.raises(KeyAccessError):  # a passphrase slot cannot tell a wrong passphrase from a move
        unwrap_data_key(slots, Opener(passphrase=GOLDEN_PASSPHRASE), OTHER_PACKAGE_ID, Cipher.AES_256_GCM)


def test_slot_bound_to_kind_and_cipher() -> None:
    slot = keyfile_slot(bytes(16), GOLDEN_KEK, PACKAGE_ID, Cipher.SM4_GCM)
    with pytest.raises(IntegrityError):  # wrapped length does not suit AES
        unwrap_data_key([slot], Opener(kek=GOLDEN_KEK), PACKAGE_ID, Cipher.AES_256_GCM)
    aes_slot = keyfile_slot(GOLDEN_DEK, GOLDEN_KEK, PACKAGE_ID, Cipher.AES_256_GCM)
    tampered = replace(aes_slot, wrapped=bytes([aes_slot.wrapped[0] ^ 1]) + aes_slot.wrapped[1:])
    with pytest.raises(IntegrityError, match="fails authentication"):
        unwrap_data_key([tampered], Opener(kek=GOLDEN_KEK), PACKAGE_ID, Cipher.AES_256_GCM)


def test_multiple_recipients() -> None:
    alice, bob, carol = (X25519PrivateKey.generate() for _ in range(3))
    slots = decode_slots(
        encode_slots([recipient_slot(GOLDEN_DEK, k.public_key(), PACKAGE_ID, Cipher.AES_256_GCM) for k in (alice, bob)])
    )
    for identity in (alice, bob):
        assert unwrap_data_key(slots, Opener(identity=identity), PACKAGE_ID, Cipher.AES_256_GCM) == GOLDEN_DEK
    with pytest.raises(KeyAccessError, match="no x25519 slot is for identity"):
        unwrap_data_key(slots, Opener(identity=carol), PACKAGE_ID, Cipher.AES_256_GCM)


def test_slot_creation_rejects_bad_input() -> None:
    with pytest.raises(UsageError):
        passphrase_slot(GOLDEN_DEK, b"", PACKAGE_ID, Cipher.AES_256_GCM, **FAST)
    with pytest.raises(UsageError):
        passphrase_slot(GOLDEN_DEK, b"pw", PACKAGE_ID, Cipher.AES_256_GCM, log2_n=23)
    with pytest.raises(UsageError):
        keyfile_slot(GOLDEN_DEK, bytes(31), PACKAGE_ID, Cipher.AES_256_GCM)
    with pytest.raises(UsageError):
        keyfile_slot(bytes(16), GOLDEN_KEK, PACKAGE_ID, Cipher.AES_256_GCM)
    with pytest.raises(UsageError):
        keyfile_slot(GOLDEN_DEK, GOLDEN_KEK, bytes(8), Cipher.AES_256_GCM)
    with pytest.raises(KeyAccessError, match="degenerate"):
        recipient_slot(GOLDEN_DEK, X25519PublicKey.from_public_bytes(bytes(32)), PACKAGE_ID, Cipher.AES_256_GCM)
    with pytest.raises(UsageError):
        encode_slots([])


def test_degenerate_ephemeral_key_is_integrity_error() -> None:
    slot = recipient_slot(GOLDEN_DEK, GOLDEN_IDENTITY.public_key(), PACKAGE_ID, Cipher.AES_256_GCM)
    bad = replace(slot, ephemeral_public=bytes(32))
    with pytest.raises(IntegrityError, match="degenerate"):
        unwrap_data_key([bad], Opener(identity=GOLDEN_IDENTITY), PACKAGE_ID, Cipher.AES_256_GCM)


def _block(*slots: tuple[int, bytes], version: int = 1, count: int | None = None) -> bytes:
    head = struct.pack("<4sHH", b"PTKS", version, len(slots) if count is None else count)
    return head + b"".join(struct.pack("<HI", kind, len(body)) + body for kind, body in slots)


def _passphrase_body(log2_n: int, r: int, p: int) -> bytes:
    return bytes(16) + bytes([log2_n, r, p]) + bytes(12) + bytes(48)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", IntegrityError),
        (b"PTKS\x01\x00", IntegrityError),
        (b"XXXX" + GOLDEN_SLOTS[4:], IntegrityError),
        (_block(version=2, count=1), UnsupportedError),
        (_block(count=0), IntegrityError),
        (_block(count=65), IntegrityError),
        (_block(count=1), IntegrityError),
        (_block((9, bytes(68))), UnsupportedError),
        (_block((2, bytes(67))), IntegrityError),
        (_block((2, bytes(68))) + b"\0", IntegrityError),
        (_block((2, bytes(68)))[:-1], IntegrityError),
        (struct.pack("<4sHH", b"PTKS", 1, 1) + struct.pack("<HI", 2, 2**32 - 1), IntegrityError),
        (_block((1, _passphrase_body(23, 8, 1))), IntegrityError),
        (_block((1, _passphrase_body(17, 33, 1))), IntegrityError),
        (_block((1, _passphrase_body(17, 8, 17))), IntegrityError),
        (_block((1, _passphrase_body(22, 8, 1))), IntegrityError),  # 4 GiB of scrypt memory
        (_block((1, _passphrase_body(20, 8, 4))), IntegrityError),  # too much scrypt work
        (_block((1, _passphrase_body(0, 8, 1))), IntegrityError),
    ],
)
def test_decode_slots_rejects_malformed(data: bytes, error: type[PtmError]) -> None:
    with pytest.raises(error):
        decode_slots(data)


def _fixed(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


_wrapped = st.sampled_from([32, 48]).flatmap(_fixed)
_slot_strategy = st.one_of(
    st.builds(
        PassphraseSlot,
        _fixed(16),
        st.integers(1, 15),
        st.integers(1, 8),
        st.integers(1, 4),
        _fixed(12),
        _wrapped,
    ),
    st.builds(KeyfileSlot, _fixed(8), _fixed(12), _wrapped),
    st.builds(X25519Slot, _fixed(32), _fixed(8), _fixed(12), _wrapped),
)


@given(st.lists(_slot_strategy, min_size=1, max_size=64))
def test_encode_decode_slots_round_trip(slots: list) -> None:
    assert decode_slots(encode_slots(slots)) == tuple(slots)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_decode_slots_random_bytes_raise_only_ptm_errors(data: bytes) -> None:
    for candidate in (data, b"PTKS\x01\x00" + data):
        with contextlib.suppress(PtmError):
            decode_slots(candidate)


@settings(max_examples=300)
@given(st.integers(0, len(GOLDEN_SLOTS) - 1), st.integers(1, 255), st.integers(0, len(GOLDEN_SLOTS)))
def test_mutated_golden_block_raises_only_ptm_errors(index: int, mask: int, cut: int) -> None:
    mutated = bytearray(GOLDEN_SLOTS)
    mutated[index] ^= mask
    for candidate in (bytes(mutated), GOLDEN_SLOTS[:cut]):
        with contextlib.suppress(PtmError):
            slots = decode_slots(candidate)
            unwrap_data_key(slots, Opener(kek=GOLDEN_KEK, identity=GOLDEN_IDENTITY), PACKAGE_ID, Cipher.AES_256_GCM)


# --------------------------------------------------------------------------- signing

SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(96, 128)))
MANIFEST_DIGEST = hashlib.sha256(b"manifest").digest()
PREFIX_DIGEST = bytes(32)
"""The golden signature below was made over a zero prefix digest."""
GOLDEN_SIGNATURE = bytes.fromhex(
    "0100080068894d58f18f2c344000629c32dc2debd265ceab44a47f96b96d2ba76e5034415a5b9cb60090a51f672b8cd4"
    "319aa3b795cebf918a621bf5f031157653ab0ae872f1854affe2bb6acb0a"
)


def test_signed_message_layout() -> None:
    message = signed_message(PACKAGE_ID, MANIFEST_DIGEST, PREFIX_DIGEST)
    assert message == b"ptmpack-signature-v1\0" + PACKAGE_ID + MANIFEST_DIGEST + PREFIX_DIGEST
    prefix = hashlib.sha256(b"prefix").digest()
    assert signed_message(PACKAGE_ID, MANIFEST_DIGEST, prefix).endswith(prefix)
    for bad in ((bytes(15), MANIFEST_DIGEST, PREFIX_DIGEST), (PACKAGE_ID, bytes(31), PREFIX_DIGEST),
                (PACKAGE_ID, MANIFEST_DIGEST, b"x")):
        with pytest.raises(UsageError):
            signed_message(*bad)


def test_signature_golden_and_round_trip() -> None:
    message = signed_message(PACKAGE_ID, MANIFEST_DIGEST, PREFIX_DIGEST)
    block = sign(SIGNING_KEY, message)
    assert block.to_bytes() == GOLDEN_SIGNATURE
    assert SignatureBlock.from_bytes(GOLDEN_SIGNATURE) == block
    verify_signature(SignatureBlock.from_bytes(GOLDEN_SIGNATURE), SIGNING_KEY.public_key(), message)


def test_bad_signature_is_integrity_error() -> None:
    message = signed_message(PACKAGE_ID, MANIFEST_DIGEST, PREFIX_DIGEST)
    block = sign(SIGNING_KEY, message)
    public = SIGNING_KEY.public_key()
    other_message = signed_message(PACKAGE_ID, hashlib.sha256(b"other").digest(), PREFIX_DIGEST)
    with pytest.raises(IntegrityError, match="signature does not verify: the package was altered"):
        verify_signature(block, public, other_message)
    forged = replace(block, signature=bytes([block.signature[0] ^ 1]) + block.signature[1:])
    with pytest.raises(IntegrityError, match="signature does not verify"):
        verify_signature(forged, public, message)


def test_wrong_signer_names_both_fingerprints() -> None:
    message = signed_message(PACKAGE_ID, MANIFEST_DIGEST, PREFIX_DIGEST)
    block = sign(SIGNING_KEY, message)
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(IntegrityError) as info:
        verify_signature(block, other, message)
    text = str(info.value)
    assert f"signed by key fp {signing.key_fingerprint(SIGNING_KEY.public_key()).hex()}" in text
    assert f"not by the given key fp {signing.key_fingerprint(other).hex()}" in text


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", IntegrityError),
        (GOLDEN_SIGNATURE[:-1], IntegrityError),
        (GOLDEN_SIGNATURE + b"\0", IntegrityError),
        (b"\x02\x00" + GOLDEN_SIGNATURE[2:], UnsupportedError),
        (GOLDEN_SIGNATURE[:2] + b"\x09\x00" + GOLDEN_SIGNATURE[4:], IntegrityError),
        (bytes(20000), IntegrityError),
    ],
)
def test_signature_block_rejects_malformed(data: bytes, error: type[PtmError]) -> None:
    with pytest.raises(error):
        SignatureBlock.from_bytes(data)


@given(st.binary(max_size=200))
def test_signature_block_random_bytes_raise_only_ptm_errors(data: bytes) -> None:
    with contextlib.suppress(PtmError):
        SignatureBlock.from_bytes(data)


# --------------------------------------------------------------------------- key files


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_symmetric(tmp_path: Path) -> None:
    (key_path,) = keyfiles.keygen("symmetric", tmp_path / "k")
    assert key_path == tmp_path / "k.key"
    assert _mode(key_path) == 0o600
    assert len(base64.b64decode(key_path.read_bytes())) == 32
    assert len(keyfiles.load_symmetric_key(key_path)) == 32


@pytest.mark.parametrize("kind", ["x25519", "ed25519"])
def test_keygen_pairs(tmp_path: Path, kind: str) -> None:
    secret, public = keyfiles.keygen(kind, tmp_path / "dev")
    assert (secret.name, public.name) == ("dev.key", "dev.pub")
    assert (_mode(secret), _mode(public)) == (0o600, 0o644)
    raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if kind == "x25519":
        pair = (keyfiles.load_x25519_private(secret), keyfiles.load_x25519_public(public))
    else:
        pair = (keyfiles.load_ed25519_private(secret), keyfiles.load_ed25519_public(public))
    assert pair[0].public_key().public_bytes(*raw) == pair[1].public_bytes(*raw)


def test_keygen_refuses_overwrite_and_leaves_no_half_pair(tmp_path: Path) -> None:
    (tmp_path / "a.key").write_text("keep")
    with pytest.raises(UsageError, match="already exists"):
        keyfiles.keygen("ed25519", tmp_path / "a")
    assert (tmp_path / "a.key").read_text() == "keep"
    assert not (tmp_path / "a.pub").exists()
    (tmp_path / "b.pub").write_text("keep")
    with pytest.raises(UsageError, match="already exists"):
        keyfiles.keygen("x25519", tmp_path / "b")
    assert not (tmp_path / "b.key").exists()
    with pytest.raises(UsageError, match="already exists"):
        keyfiles.keygen("symmetric", tmp_path / "a")
    with pytest.raises(UsageError, match="unknown key type"):
        keyfiles.keygen("rsa", tmp_path / "c")
    with pytest.raises(UsageError, match="cannot create"):
        keyfiles.keygen("symmetric", tmp_path / "missing-dir" / "k")


def test_keygen_cleans_up_when_public_half_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = keyfiles._create_exclusive

    def fail_on_pub(path: Path, data: bytes, mode: int) -> None:
        if path.suffix == ".pub":
            raise UsageError("simulated failure")
        real(path, data, mode)

    monkeypatch.setattr(keyfiles, "_create_exclusive", fail_on_pub)
    with pytest.raises(UsageError, match="simulated"):
        keyfiles.keygen("x25519", tmp_path / "k")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    keyfiles.keygen("x25519", tmp_path / "x")
    keyfiles.keygen("ed25519", tmp_path / "ed")
    keyfiles.keygen("symmetric", tmp_path / "sym")
    return tmp_path


@pytest.mark.parametrize(
    ("loader", "file", "message"),
    [
        (keyfiles.load_x25519_public, "ed.pub", "is an Ed25519 public key; --recipient needs an X25519 public key"),
        (keyfiles.load_x25519_private, "ed.key", "is an Ed25519 private key; --identity needs an X25519 private key"),
        (keyfiles.load_ed25519_public, "x.pub", "is an X25519 public key; --pubkey needs an Ed25519 public key"),
        (keyfiles.load_ed25519_private, "x.key", "is an X25519 private key; --sign-key needs an Ed25519 private key"),
        (keyfiles.load_x25519_private, "x.pub", "is a public key; --identity needs an X25519 private key"),
        (keyfiles.load_ed25519_public, "ed.key", "is a private key; --pubkey needs an Ed25519 public key"),
        (keyfiles.load_x25519_public, "sym.key", "is not a PEM key"),
        (keyfiles.load_ed25519_private, "nope.key", "cannot read"),
        (keyfiles.load_symmetric_key, "x.key", "is a PEM key"),
        (keyfiles.load_symmetric_key, "nope.key", "cannot read"),
    ],
)
def test_loaders_reject_wrong_files(key_dir: Path, loader, file: str, message: str) -> None:
    with pytest.raises(KeyAccessError) as info:
        loader(key_dir / file)
    assert str(key_dir / file) in str(info.value)
    assert message in str(info.value)


def test_loaders_reject_foreign_and_protected_keys(tmp_path: Path) -> None:
    ec_key = generate_private_key(SECP256R1())
    (tmp_path / "ec.key").write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(KeyAccessError, match="is an EC private key; --identity needs an X25519 private key"):
        keyfiles.load_x25519_private(tmp_path / "ec.key")
    locked = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "locked.key").write_bytes(locked)
    with pytest.raises(KeyAccessError, match="password-protected"):
        keyfiles.load_ed25519_private(tmp_path / "locked.key")
    (tmp_path / "big.pub").write_bytes(b"x" * (keyfiles.MAX_KEY_FILE + 1))
    with pytest.raises(KeyAccessError, match="larger than"):
        keyfiles.load_ed25519_public(tmp_path / "big.pub")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (base64.b64encode(bytes(16)) + b"\n", "decodes to 16 bytes"),
        (b"not base64 at all!\n", "is not base64"),
        (b"", "decodes to 0 bytes"),
    ],
)
def test_load_symmetric_key_rejects_bad_content(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(KeyAccessError, match=message):
        keyfiles.load_symmetric_key(path)


def test_load_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    for content, expected in ((b"pw\n", b"pw"), (b"pw\n\n", b"pw\n"), (b"pw\r\n", b"pw"), (b" pw ", b" pw ")):
        path.write_bytes(content)
        assert keyfiles.load_passphrase(path) == expected
    for empty in (b"", b"\n"):
        path.write_bytes(empty)
        with pytest.raises(KeyAccessError, match="is empty"):
            keyfiles.load_passphrase(path)
    with pytest.raises(KeyAccessError, match="cannot read"):
        keyfiles.load_passphrase(tmp_path / "missing")


def test_environment_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PTMPACK_PASSPHRASE", raising=False)
    monkeypatch.delenv("PTMPACK_KEY_FILE", raising=False)
    assert keyfiles.passphrase_from_env() is None
    assert keyfiles.key_file_from_env() is None
    monkeypatch.setenv("PTMPACK_PASSPHRASE", "sésame")
    monkeypatch.setenv("PTMPACK_KEY_FILE", "keys/sym.key")
    assert keyfiles.passphrase_from_env() == "sésame".encode()
    assert keyfiles.key_file_from_env() == Path("keys/sym.key")
    monkeypatch.setenv("PTMPACK_PASSPHRASE", "")
    with pytest.raises(KeyAccessError, match="set but empty"):
        keyfiles.passphrase_from_env()
