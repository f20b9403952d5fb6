"""Tampering (issue 3): bit flips in every region of encrypted, signed and encrypted+signed packages,
and the structural attacks: chunk reordering, duplication, truncation, splicing between packages made
with the same key file, swapped entries, a stripped or replaced signature, and an insider (a holder of
the data key) forging a GCM tag collision under a publisher's signature.

Every tampered package must be refused: the library raises IntegrityError, KeyAccessError or
UnsupportedError, and the CLI (``verify``, ``unpack``) exits 3 or 4 — or 6 when the flip turns a
version, flag, codec, cipher or slot-kind field into one this ptmpack does not know, which a reader
cannot tell from a newer format — never 0 and never with a traceback.

Where a region is *not* covered, the test is an ``xfail(strict=True)`` naming the gap (see the
``BUG:`` reasons); it turns into a failure as soon as the gap is closed, so the marker can go.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher as RawCipher
from cryptography.hazmat.primitives.ciphers import algorithms, modes

from ptmpack import api, cli
from ptmpack.api import container as api_container
from ptmpack.config import EncryptionSpec
from ptmpack.crypto import keyfiles
from ptmpack.crypto.keyslots import Opener, unwrap_data_key
from ptmpack.errors import IntegrityError, KeyAccessError, UnsupportedError
from ptmpack.format import spec
from ptmpack.format.manifest import Manifest
from ptmpack.format.reader import PackageReader
from ptmpack.format.records import FileHeader, ModelHeader, Trailer
from ptmpack.storage.protect import read_protection, unlocker
from tests._support.trees import tree_files, write_tree

REFUSED = (IntegrityError, KeyAccessError, UnsupportedError)
REFUSED_CODES = {3, 4, 6}
KINDS = ("encrypted", "signed", "encrypted-signed")


# --------------------------------------------------------------------------- fixtures


@dataclass
class Setup:
    dir: Path
    tree: Path
    kek: bytes
    sign: Ed25519PrivateKey
    packages: dict[str, Path]

    def opener(self) -> Opener:
        return Opener(kek=self.kek)

    def path(self, name: str) -> str:
        return str(self.dir / name)


def _tree(root: Path) -> None:
    """The shared test tree plus two scripts of equal size (for swapping entries)."""
    write_tree(root)
    for name, word in (("a.sh", "alpha"), ("b.sh", "bravo")):
        (root / "Program" / "Scripts" / name).write_text(f"#!/bin/sh\necho {word}\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    d = tmp_path_factory.mktemp("tamper")
    keyfiles.keygen("symmetric", d / "sym")
    keyfiles.keygen("ed25519", d / "signer")
    keyfiles.keygen("ed25519", d / "mallory")
    kek = keyfiles.load_symmetric_key(d / "sym.key")
    sign = keyfiles.load_ed25519_private(d / "signer.key")
    tree = d / "tree"
    _tree(tree)
    enc = EncryptionSpec(keks=(kek,), scrypt_log2_n=10)
    zstd = spec.Compression.ZSTD
    configs = {
        "encrypted": api.PackConfig(compression=zstd, chunk_size=4096, encryption=enc),
        "signed": api.PackConfig(compression=zstd, chunk_size=4096, sign_key=sign),
        "encrypted-signed": api.PackConfig(compression=zstd, chunk_size=4096, encryption=enc, sign_key=sign),
        "encrypted-raw": api.PackConfig(chunk_size=4096, encryption=enc),
        "encrypted-raw-2": api.PackConfig(chunk_size=4096, encryption=enc),
        "signed-raw": api.PackConfig(sign_key=sign),
    }
    packages = {}
    for name, config in configs.items():
        packages[name] = d / f"{name}.ptm"
        api.pack(tree, packages[name], config)
    return Setup(d, tree, kek, sign, packages)


@pytest.fixture(scope="module")
def scratch() -> Path:
    """tmpfs when there is one: the sweeps write a tampered copy per flip."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = Path(tempfile.mkdtemp(prefix="ptmpack-tamper-", dir=base))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run ``ptmpack ARGS`` in process; return (exit code, stderr)."""
    monkeypatch.delenv(keyfiles.PASSPHRASE_ENV, raising=False)
    monkeypatch.delenv(keyfiles.KEY_FILE_ENV, raising=False)
    monkeypatch.setattr(api_container, "EncryptionSpec", functools.partial(EncryptionSpec, scrypt_log2_n=10))

    def run(*args: object) -> tuple[int, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            cli.main([str(a) for a in args])
        _, err = capsys.readouterr()
        assert "Traceback" not in err and "unexpected error" not in err, err
        return exc.value.code, err

    return run


# --------------------------------------------------------------------------- the region map


@dataclass(frozen=True)
class Region:
    cls: str
    """Region class: file_header, key_slots, header_padding, entry_header, entry_path, entry_padding,
    raw_data, chunk_prefix, chunk_body, gcm_tag, manifest, signature, trailer."""
    name: str
    start: int
    end: int


def regions(path: Path, opener: Opener) -> list[Region]:
    """Every byte range of a package, classified (found with the key, from the manifest)."""
    out: list[Region] = []
    with PackageReader(path, unlock=unlocker(opener)) as r:
        h, size = r.header, r.size
        out.append(Region("file_header", "file header", 0, FileHeader.SIZE))
        if h.keyslots_length:
            out.append(Region("key_slots", "key slots", FileHeader.SIZE, FileHeader.SIZE + h.keyslots_length))
        out.append(Region("header_padding", "header padding", FileHeader.SIZE + h.keyslots_length, h.header_size))
        for e in r.entries:
            ho, path_len = e.header_offset, 0 if r.encrypted else len(e.path.encode())
            out.append(Region("entry_header", f"entry {e.index} header", ho, ho + ModelHeader.SIZE))
            if path_len:
                out.append(Region("entry_path", f"entry {e.index} path", ho + 72, ho + 72 + path_len))
            out.append(Region("entry_padding", f"entry {e.index} padding", ho + 72 + path_len, e.data_offset))
            if not e.codec:
                out.append(Region("raw_data", f"entry {e.index} data", e.data_offset, e.data_offset + e.stored_length))
            for i, (off, length) in enumerate(e.chunks):
                s = e.data_offset + off
                tag = spec.AEAD_TAG_SIZE if r.encrypted else 0
                out.append(Region("chunk_prefix", f"entry {e.index} chunk {i} prefix", s, s + 4))
                out.append(Region("chunk_body", f"entry {e.index} chunk {i} body", s + 4, s + length - tag))
                if tag:
                    out.append(Region("gcm_tag", f"entry {e.index} chunk {i} tag", s + length - tag, s + length))
        t = r.trailer
        out.append(Region("manifest", "manifest", t.manifest_offset, t.manifest_offset + t.manifest_length))
        if t.signature_offset:
            out.append(Region("signature", "signature", t.signature_offset, size - Trailer.SIZE))
        out.append(Region("trailer", "trailer", size - Trailer.SIZE, size))
    return [g for g in out if g.end > g.start]


PADDING = ("header_padding", "entry_padding")


def positions(g: Region, every: bool) -> list[int]:
    """Every byte of small regions (headers, trailer, slots, signature), else both ends and a spread."""
    if every or g.end - g.start <= 96:
        picked = list(range(g.start, g.end))
    else:
        picked = sorted({g.start, g.start + 1, g.end - 2, g.end - 1, *range(g.start, g.end, (g.end - g.start) // 8)})
    return picked


def flipped(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    buf = bytearray(data)
    buf[pos] ^= mask
    return bytes(buf)


# --------------------------------------------------------------------------- the sweep


@pytest.mark.parametrize("kind", KINDS)
def test_every_covered_byte_flip_is_refused_by_verify(setup: Setup, scratch: Path, kind: str) -> None:
    """Flip one bit of every byte of every header, slot, tag, signature and trailer (and a spread of
    every chunk body and the manifest): ``verify`` with the key and the public key refuses each."""
    package = setup.packages[kind]
    data = package.read_bytes()
    pubkey = setup.sign.public_key() if "signed" in kind else None
    target = scratch / f"{kind}.ptm"
    missed: list[str] = []
    tried = 0
    all_regions = regions(package, setup.opener())
    headers = [g for g in all_regions if g.cls == "entry_header"]
    for g in all_regions:
        every = g.cls in ("file_header", "trailer", "signature", "key_slots") or g in (headers[0], headers[-1])
        for pos in positions(g, every=every):
            for mask in ((0x01, 0x80) if g.cls in ("file_header", "trailer") else (0x01,)):
                target.write_bytes(flipped(data, pos, mask))
                tried += 1
                try:
                    api.verify(target, opener=setup.opener(), pubkey=pubkey)
                except REFUSED:
                    continue
                missed.append(f"{g.name} +{pos - g.start} (mask {mask:#x})")
    assert tried > 400
    assert not missed, f"{len(missed)} flips accepted by verify: {missed[:20]}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_region_flip_is_refused_by_unpack(setup: Setup, scratch: Path, kind: str) -> None:
    """``unpack`` (with the key) refuses a flip in every region that protects the content, and leaves nothing."""
    package = setup.packages[kind]
    data = package.read_bytes()
    tmp_path = scratch / f"unpack-{kind}"
    tmp_path.mkdir()
    target = tmp_path / "t.ptm"
    missed: list[str] = []
    for g in regions(package, setup.opener()):
        if g.cls == "signature":  # unpack takes no --pubkey (test_unpack_can_require_a_signature)
            continue
        picks = positions(g, every=False)
        for pos in sorted({picks[0], picks[len(picks) // 2], picks[-1]}):
            target.write_bytes(flipped(data, pos))
            out = tmp_path / "out"
            try:
                api.unpack(target, out, opener=setup.opener())
            except REFUSED:
                assert not out.exists()
                continue
            shutil.rmtree(out)
            missed.append(f"{g.name} +{pos - g.start}")
    assert not missed, f"flips accepted by unpack: {missed}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ptmpack-tmp-")]


@pytest.mark.parametrize("kind", KINDS)
def test_cli_exit_codes_for_each_region_class(setup: Setup, tmp_path: Path, run_cli, kind: str) -> None:
    """One flip in the middle of each region class: ``verify`` and ``unpack`` exit 3/4(/6), never 0, no traceback."""
    package = setup.packages[kind]
    data = package.read_bytes()
    key = ["--key-file", setup.path("sym.key")] if "encrypted" in kind else []
    pub = ["--pubkey", setup.path("signer.pub")] if "signed" in kind else []
    seen: dict[str, Region] = {}
    for g in regions(package, setup.opener()):
        seen.setdefault(g.cls, g)
    assert set(seen) >= {"file_header", "entry_header", "chunk_body", "manifest", "trailer"}
    for cls, g in seen.items():
        pos = (g.start + g.end) // 2 if cls != "file_header" else 30  # the package id
        target = tmp_path / f"{cls}.ptm"
        target.write_bytes(flipped(data, pos))
        code, err = run_cli("verify", target, *key, *pub)
        assert code in REFUSED_CODES, f"verify accepted a flip in {g.name}: exit {code} {err}"
        if cls != "signature":
            code, err = run_cli("unpack", target, "-o", tmp_path / "out", *key)
            assert code in REFUSED_CODES, f"unpack accepted a flip in {g.name}: exit {code} {err}"
            assert not (tmp_path / "out").exists()


def test_real_cli_process_exit_code_on_a_flipped_tag(setup: Setup, tmp_path: Path) -> None:
    import subprocess
    import sys

    package = setup.packages["encrypted-signed"]
    tag = next(g for g in regions(package, setup.opener()) if g.cls == "gcm_tag")
    target = tmp_path / "t.ptm"
    target.write_bytes(flipped(package.read_bytes(), tag.start + 3))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTMPACK_")}
    p = subprocess.run([sys.executable, "-m", "ptmpack.cli", "unpack", str(target), "-o", str(tmp_path / "out"),
                        "--key-file", setup.path("sym.key")], capture_output=True, text=True, env=env, timeout=120,
                       check=False)
    assert p.returncode == 3, p.stderr
    assert "Traceback" not in p.stderr and "authentication failed" in p.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_padding_flip_is_detected(setup: Setup, tmp_path: Path, kind: str) -> None:
    """Padding must be zero (fixed in bb90ef6: before, nothing read it and flips verified OK)."""
    package = setup.packages[kind]
    data = package.read_bytes()
    pubkey = setup.sign.public_key() if "signed" in kind else None
    pads = [g for g in regions(package, setup.opener()) if g.cls in PADDING]
    accepted = []
    for g in pads:
        target = tmp_path / "t.ptm"
        target.write_bytes(flipped(data, (g.start + g.end) // 2, 0xFF))
        try:
            api.verify(target, opener=setup.opener(), pubkey=pubkey)
        except REFUSED:
            continue
        accepted.append(g.name)
    assert not accepted, f"padding flips accepted: {accepted}"


def test_minor_version_flip_is_detected(setup: Setup, tmp_path: Path) -> None:
    """The header's version_minor must equal the manifest's "version" (fixed in bb90ef6)."""
    package = setup.packages["encrypted-signed"]
    target = tmp_path / "t.ptm"
    target.write_bytes(flipped(package.read_bytes(), 10))
    with pytest.raises(REFUSED):
        api.verify(target, opener=setup.opener(), pubkey=setup.sign.public_key())


# --------------------------------------------------------------------------- keyless signature checks


@pytest.mark.parametrize("cls", ["file_header", "key_slots", "entry_header", "chunk_prefix", "chunk_body",
                                 "gcm_tag", "manifest", "signature", "trailer"])
def test_keyless_verify_refuses_flips(setup: Setup, tmp_path: Path, cls: str) -> None:
    """A signed, encrypted package checked with only the public key: each region class, several flips."""
    package = setup.packages["encrypted-signed"]
    data = package.read_bytes()
    offsets = {"file_header": [28, 30, 43], "entry_header": [8, 28, 30]}  # package id; kind, raw_length
    accepted = []
    for g in [g for g in regions(package, setup.opener()) if g.cls == cls][:3]:
        for off in offsets.get(cls, [(g.end - g.start) // 2]):
            target = tmp_path / "t.ptm"
            target.write_bytes(flipped(data, g.start + off, 0x02))
            try:
                api.verify(target, pubkey=setup.sign.public_key())
            except REFUSED:
                continue
            accepted.append(f"{g.name} +{off}")
    assert not accepted, f"keyless verify accepted {accepted}"


# --------------------------------------------------------------------------- structural attacks


def _chunks(package: Path, opener: Opener, path: str) -> list[tuple[int, int]]:
    """Absolute (start, length) of every chunk frame of one entry."""
    with PackageReader(package, unlock=unlocker(opener)) as r:
        e = next(e for e in r.entries if e.path == path)
        return [(e.data_offset + off, length) for off, length in e.chunks]


def _refused(setup: Setup, data: bytes, tmp_path: Path, *, pubkey: bool = False) -> None:
    target = tmp_path / "attack.ptm"
    target.write_bytes(data)
    with pytest.raises(REFUSED):
        api.verify(target, opener=setup.opener(), pubkey=setup.sign.public_key() if pubkey else None)
    with pytest.raises(REFUSED):
        api.unpack(target, tmp_path / "out", opener=setup.opener())
    assert not (tmp_path / "out").exists()


WEIGHTS = "Model/model.safetensors"


def test_chunk_reordering_and_duplication(setup: Setup, tmp_path: Path) -> None:
    package = setup.packages["encrypted-raw"]
    data = package.read_bytes()
    frames = _chunks(package, setup.opener(), WEIGHTS)
    assert len(frames) >= 3 and frames[0][1] == frames[1][1]
    (a, n), (b, _) = frames[0], frames[1]
    swapped = bytearray(data)
    swapped[a:a + n], swapped[b:b + n] = data[b:b + n], data[a:a + n]
    _refused(setup, bytes(swapped), tmp_path)
    duplicated = bytearray(data)
    duplicated[b:b + n] = data[a:a + n]
    _refused(setup, bytes(duplicated), tmp_path)


def test_truncation_at_every_chunk_boundary(setup: Setup, tmp_path: Path, run_cli) -> None:
    package = setup.packages["encrypted-signed"]
    data = package.read_bytes()
    boundaries = {g.end for g in regions(package, setup.opener())
                  if g.cls in ("chunk_body", "gcm_tag", "manifest", "signature", "key_slots")}
    boundaries |= {g.start for g in regions(package, setup.opener()) if g.cls in ("chunk_prefix", "entry_header")}
    boundaries.discard(len(data))
    assert len(boundaries) > 10
    for cut in sorted(boundaries):
        target = tmp_path / "cut.ptm"
        target.write_bytes(data[:cut])
        with pytest.raises(IntegrityError):
            api.verify(target, opener=setup.opener(), pubkey=setup.sign.public_key())
    for cut in sorted(boundaries)[:: max(1, len(boundaries) // 4)]:
        target.write_bytes(data[:cut])
        assert run_cli("unpack", target, "-o", tmp_path / "out", "--key-file", setup.path("sym.key"))[0] == 3
        assert run_cli("verify", target, "--pubkey", setup.path("signer.pub"))[0] == 3
    assert not (tmp_path / "out").exists()


def test_dropping_the_last_chunk_of_the_last_entry(setup: Setup, tmp_path: Path) -> None:
    """A cut at a chunk boundary with every plaintext length patched to match: the sealed manifest disagrees."""
    package = setup.packages["encrypted-raw"]
    data = package.read_bytes()
    with PackageReader(package, unlock=unlocker(setup.opener())) as r:
        e = max((e for e in r.entries if len(e.chunks) > 1), key=lambda e: e.index)
        trailer = r.trailer
    start, length = e.data_offset + e.chunks[-1][0], e.chunks[-1][1]
    buf = bytearray(data[:start] + data[start + length:])
    struct.pack_into("<Q", buf, e.header_offset + 20, e.stored_length - length)
    struct.pack_into("<Q", buf, e.header_offset + 28, (len(e.chunks) - 1) * e.chunk_size)
    m_off = trailer.manifest_offset - length
    buf[-Trailer.SIZE:] = Trailer(m_off, trailer.manifest_length, trailer.manifest_sha256, 0).pack()
    assert len(buf) == len(data) - length
    _refused(setup, bytes(buf), tmp_path)


def test_splicing_between_packages_made_with_the_same_key_file(setup: Setup, tmp_path: Path) -> None:
    a, b = setup.packages["encrypted-raw"], setup.packages["encrypted-raw-2"]
    da, db = a.read_bytes(), b.read_bytes()
    assert len(da) == len(db), "same tree, same key file, no compression: same layout"
    fa, fb = _chunks(a, setup.opener(), WEIGHTS), _chunks(b, setup.opener(), WEIGHTS)
    assert fa == fb
    start, length = fb[1]
    one_chunk = db[:start] + da[start:start + length] + db[start + length:]
    _refused(setup, one_chunk, tmp_path)
    with PackageReader(b, unlock=unlocker(setup.opener())) as r:
        e = next(e for e in r.entries if e.path == WEIGHTS)
        slots_end = FileHeader.SIZE + r.header.keyslots_length
        m_off = r.trailer.manifest_offset
    whole_entry = db[:e.data_offset] + da[e.data_offset:e.data_offset + e.stored_length] + db[e.data_offset + e.stored_length:]
    _refused(setup, whole_entry, tmp_path)
    slots = db[:FileHeader.SIZE] + da[FileHeader.SIZE:slots_end] + db[slots_end:]
    _refused(setup, slots, tmp_path)
    manifest = fix_trailer(db[:m_off] + da[m_off:])
    _refused(setup, manifest, tmp_path)
    # and the slot block alone, moved into the other package, opens nothing there
    _, slots_a = read_protection(da[FileHeader.SIZE:slots_end])
    with pytest.raises(IntegrityError, match="altered or copied"):
        unwrap_data_key(slots_a, setup.opener(), db[28:44], read_protection(db[FileHeader.SIZE:slots_end])[0])


def fix_trailer(data: bytes) -> bytes:
    m_off, m_len, _sha, s_off, magic = spec.TRAILER.unpack_from(data, len(data) - Trailer.SIZE)
    digest = hashlib.sha256(data[m_off:m_off + m_len]).digest()
    return data[:-Trailer.SIZE] + spec.TRAILER.pack(m_off, m_len, digest, s_off, magic)


@pytest.mark.parametrize("kind", ["encrypted-raw", "signed-raw"])
def test_swapping_whole_entries_or_their_data(setup: Setup, tmp_path: Path, kind: str) -> None:
    package = setup.packages[kind]
    data = package.read_bytes()
    with PackageReader(package, unlock=unlocker(setup.opener())) as r:
        ea = next(e for e in r.entries if e.path == "Program/Scripts/a.sh")
        eb = next(e for e in r.entries if e.path == "Program/Scripts/b.sh")
    assert ea.raw_length == eb.raw_length and ea.stored_length == eb.stored_length
    first, second = sorted((ea, eb), key=lambda e: e.index)
    assert second.index == first.index + 1
    # swap the data only
    buf = bytearray(data)
    n = first.stored_length
    buf[first.data_offset:first.data_offset + n] = data[second.data_offset:second.data_offset + n]
    buf[second.data_offset:second.data_offset + n] = data[first.data_offset:first.data_offset + n]
    _refused(setup, bytes(buf), tmp_path, pubkey="signed" in kind)
    # swap header + data
    whole_a = data[first.header_offset:first.data_offset + n]
    whole_b = data[second.header_offset:second.data_offset + n]
    if len(whole_a) == len(whole_b):
        buf = bytearray(data)
        buf[first.header_offset:first.header_offset + len(whole_a)] = whole_b
        buf[second.header_offset:second.header_offset + len(whole_b)] = whole_a
        _refused(setup, bytes(buf), tmp_path, pubkey="signed" in kind)


def _strip_signature(data: bytes) -> bytes:
    m_off, m_len, sha, s_off, magic = spec.TRAILER.unpack_from(data, len(data) - Trailer.SIZE)
    assert s_off
    buf = bytearray(data[:s_off] + spec.TRAILER.pack(m_off, m_len, sha, 0, magic))
    flags = struct.unpack_from("<I", buf, 12)[0]
    struct.pack_into("<I", buf, 12, flags & ~spec.Flags.SIGNED)
    return bytes(buf)


def test_stripped_signature_with_pubkey_is_refused(setup: Setup, tmp_path: Path, run_cli) -> None:
    for kind in ("encrypted-signed", "signed-raw"):
        data = _strip_signature(setup.packages[kind].read_bytes())
        if kind == "signed-raw":  # plaintext manifest: the attacker can fix its flags and digest too
            m_off, m_len, *_ = spec.TRAILER.unpack_from(data, len(data) - Trailer.SIZE)
            manifest = data[m_off:m_off + m_len]
            flags = Manifest.from_json(manifest).flags
            patched = manifest.replace(f'"flags":{flags}'.encode(), f'"flags":{flags & ~2}'.encode())
            assert patched != manifest
            data = fix_trailer(data[:m_off] + patched + data[m_off + m_len:])
            target = tmp_path / f"{kind}.ptm"
            target.write_bytes(data)
            api.verify(target)  # a consistent, unsigned package...
        target = tmp_path / f"{kind}.ptm"
        target.write_bytes(data)
        key = ["--key-file", setup.path("sym.key")] if "encrypted" in kind else []
        code, err = run_cli("verify", target, *key, "--pubkey", setup.path("signer.pub"))
        assert code == 3, err  # ...that --pubkey refuses
        code, err = run_cli("verify", target, "--pubkey", setup.path("signer.pub"))
        assert code == 3 and "not signed" in err, err


def test_replaced_signature_is_refused(setup: Setup, tmp_path: Path, run_cli) -> None:
    """An attacker re-signs the package with their own key: the publisher's public key refuses it."""
    from ptmpack.storage.protect import signer

    package = setup.packages["encrypted-signed"]
    data = package.read_bytes()
    m_off, m_len, sha, s_off, magic = spec.TRAILER.unpack_from(data, len(data) - Trailer.SIZE)
    with PackageReader(package, unlock=unlocker(setup.opener())) as r:
        sig = r.signature()
        package_id = r.header.package_id
    mallory = keyfiles.load_ed25519_private(setup.dir / "mallory.key")
    block = signer(mallory, package_id)(sha, sig.prefix_sha256)
    target = tmp_path / "t.ptm"
    target.write_bytes(data[:s_off] + block + spec.TRAILER.pack(m_off, m_len, sha, s_off, magic))
    code, err = run_cli("verify", target, "--pubkey", setup.path("signer.pub"))
    assert code == 3 and "signed by key fp" in err
    assert run_cli("verify", target, "--pubkey", setup.path("mallory.pub"))[0] == 0


def test_unpack_can_require_a_signature(setup: Setup, tmp_path: Path, run_cli) -> None:
    package = setup.packages["encrypted-signed"]
    code, err = run_cli("unpack", package, "-o", tmp_path / "ok", "--key-file", setup.path("sym.key"),
                        "--pubkey", setup.path("signer.pub"))
    assert code == 0, err
    code, err = run_cli("unpack", package, "-o", tmp_path / "bad", "--key-file", setup.path("sym.key"),
                        "--pubkey", setup.path("mallory.pub"))
    assert code == 3, err


# --------------------------------------------------------------------------- an insider with the data key


def _gf_mult(x: int, y: int) -> int:
    """Multiplication in GF(2^128) with GCM's bit order (NIST SP 800-38D, algorithm 1)."""
    r = 0xE1 << 120
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ r if v & 1 else v >> 1
    return z


def forge_collision(dek: bytes, sealed: bytes, block_j: int, delta_j: bytes, block_k: int) -> bytes:
    """Change ciphertext block ``block_j`` by ``delta_j`` and block ``block_k`` so the GCM tag stays valid.

    GHASH is linear: a change d_j at block j and d_k at block k cancel when d_k = d_j · H^(k-j). Anyone
    holding the data key knows H = AES_K(0^128) — every recipient of a multi-recipient package does.
    """
    enc = RawCipher(algorithms.AES(dek), modes.ECB()).encryptor()
    h = int.from_bytes(enc.update(bytes(16)) + enc.finalize(), "big")
    power = 1 << 127  # the GF(2^128) one, in GCM's reflected bit order
    for _ in range(block_k - block_j):
        power = _gf_mult(power, h)
    d_j = int.from_bytes(delta_j, "big")
    d_k = _gf_mult(d_j, power)
    body = bytearray(sealed)
    for block, delta in ((block_j, d_j), (block_k, d_k)):
        piece = int.from_bytes(body[16 * block:16 * block + 16], "big") ^ delta
        body[16 * block:16 * block + 16] = piece.to_bytes(16, "big")
    return bytes(body)


@pytest.fixture(scope="module")
def insider(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A publisher signs a package for two recipients; recipient Alice alters it without breaking any tag."""
    d = tmp_path_factory.mktemp("insider")
    keyfiles.keygen("x25519", d / "alice")
    keyfiles.keygen("x25519", d / "bob")
    enc = EncryptionSpec(recipients=(keyfiles.load_x25519_public(d / "alice.pub"),
                                     keyfiles.load_x25519_public(d / "bob.pub")))
    original = d / "published.ptm"
    api.pack(setup.tree, original, api.PackConfig(chunk_size=4096, encryption=enc, sign_key=setup.sign))
    alice = Opener(identity=keyfiles.load_x25519_private(d / "alice.key"))
    data = original.read_bytes()
    cipher, slots = read_protection(data[FileHeader.SIZE:FileHeader.SIZE + struct.unpack_from("<I", data, 44)[0]])
    dek = unwrap_data_key(slots, alice, data[28:44], cipher)
    with PackageReader(original, unlock=unlocker(alice)) as r:
        e = next(e for e in r.entries if e.path == WEIGHTS)
        weights_begin = next(t for t in e.tensors if t.name == "encoder.weight").begin
    start, length = e.data_offset + e.chunks[0][0], e.chunks[0][1]
    sealed = data[start + 4:start + length]
    j = weights_begin // 16 + 2  # a block inside encoder.weight
    delta = bytes(3) + b"\x40" + bytes(12)  # flips the exponent of one float32
    forged = forge_collision(dek, sealed, j, delta, j + 5)
    assert forged[-16:] == sealed[-16:]
    tampered = d / "tampered.ptm"
    tampered.write_bytes(data[:start + 4] + forged + data[start + length:])
    bob = ["--identity", str(d / "bob.key")]
    return {"original": original, "tampered": tampered, "bob": bob, "dir": d}


def test_insider_forgery_keeps_every_tag_valid(insider: dict) -> None:
    """The attack is real: Bob's key decrypts the tampered package and gets different weights."""
    from ptmpack.storage.package import open_package

    bob = Opener(identity=keyfiles.load_x25519_private(insider["dir"] / "bob.key"))
    with open_package(insider["original"], bob) as a, open_package(insider["tampered"], bob) as b:
        assert (a.read_tensor("encoder.weight") != b.read_tensor("encoder.weight")).any()


def test_insider_forgery_is_refused_by_keyed_verify(insider: dict, setup: Setup, run_cli) -> None:
    code, err = run_cli("verify", insider["tampered"], *insider["bob"], "--pubkey", setup.path("signer.pub"))
    assert code == 3 and ("signature does not verify" in err or "sha256 mismatch" in err), err


def test_insider_forgery_is_refused_by_unpack(insider: dict, tmp_path: Path, run_cli) -> None:
    code, err = run_cli("unpack", insider["tampered"], "-o", tmp_path / "out", *insider["bob"])
    assert code == 3, err


def test_insider_forgery_is_refused_by_keyless_verify(insider: dict, setup: Setup, run_cli) -> None:
    code, err = run_cli("verify", insider["tampered"], "--pubkey", setup.path("signer.pub"))
    assert code == 3, err


def test_untampered_packages_pass(setup: Setup, tmp_path: Path, run_cli) -> None:
    """The control: every package of the sweep verifies and unpacks as made."""
    for kind, package in setup.packages.items():
        key = ["--key-file", setup.path("sym.key")] if "encrypted" in kind else []
        pub = ["--pubkey", setup.path("signer.pub")] if "signed" in kind else []
        assert run_cli("verify", package, *key, *pub)[0] == 0
        assert run_cli("unpack", package, "-o", tmp_path / kind, *key)[0] == 0
        assert tree_files(tmp_path / kind) == tree_files(setup.tree)
