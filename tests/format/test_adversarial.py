"""Hostile inputs: truncated, bit-flipped, random and crafted packages, and hostile source trees.

The rule everywhere: reading a bad package raises a :class:`ptmpack.errors.PtmError`
subclass (anything else is a bug), allocates nothing from an unchecked length, and a
failed unpack leaves no target directory, no ``.ptmpack-tmp-*`` leftovers and nothing
written outside the target. Packing a bad tree raises InvalidTreeError (exit code 5)
and writes nothing.

Crafted packages come from :mod:`tests.badwriter`, which writes the bytes itself from
the struct layouts in ``ptmpack.format.spec``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import socket
import struct
import tracemalloc
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptmpack import api
from ptmpack.errors import (
    IntegrityError,
    InvalidTreeError,
    KeyAccessError,
    MetadataError,
    PtmError,
    UnsupportedError,
)
from ptmpack.format import spec
from ptmpack.format.manifest import Manifest
from ptmpack.storage.package import open_package
from tests._support import badwriter as bw
from tests._support.trees import tree_files, write_tree

MEMORY_LIMIT = 64 * 1024 * 1024
ZDATA = random.Random("zdata").randbytes(4096 * 2) + b"tail" * 512
"""Content of crafted zstd entries: three chunks of 4096 bytes, all different."""
TEMP_PREFIX = ".ptmpack-tmp-"

# ---------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Packed:
    """A package made by the library from the conftest tree, and what is known about its bytes."""

    name: str
    path: Path
    blob: bytes
    manifest: Manifest
    tree: Path

    def padding(self) -> list[range]:
        """Alignment padding: after the file header, and between each entry's path and its data."""
        ranges = [range(spec.FILE_HEADER.size, self.manifest.entries[0].header_offset)]
        for e in self.manifest.entries:
            ranges.append(range(e.header_offset + spec.MODEL_HEADER.size + len(e.path.encode()), e.data_offset))
        return [r for r in ranges if len(r)]

    def chunk_bodies(self) -> list[range]:
        """The stored bodies of zstd chunks (after each 4-byte frame prefix)."""
        return [range(e.data_offset + off + 4, e.data_offset + off + length)
                for e in self.manifest.entries for off, length in e.chunks]

    def boundaries(self) -> list[int]:
        """Every record boundary of the file, in order."""
        size = len(self.blob)
        points = {0, len(spec.MAGIC), spec.FILE_HEADER.size, self.manifest.entries[0].header_offset}
        for e in self.manifest.entries:
            path_end = e.header_offset + spec.MODEL_HEADER.size + len(e.path.encode())
            points |= {e.header_offset, e.header_offset + 4, e.header_offset + spec.MODEL_HEADER.size, path_end,
                       e.data_offset, e.data_offset + e.stored_length}
            for off, length in e.chunks:
                points |= {e.data_offset + off, e.data_offset + off + 4, e.data_offset + off + length}
        m_off = self.manifest.entries[-1].data_offset + self.manifest.entries[-1].stored_length
        points |= {m_off, m_off + 1, size - spec.TRAILER.size - 1, size - spec.TRAILER.size,
                   size - spec.TRAILER.size + 8, size - 8, size - 1}
        return sorted(p for p in points if 0 <= p < size)


def _in(pos: int, ranges: list[range]) -> bool:
    return any(pos in r for r in ranges)


def expect_ptm_error(fn: Callable[..., object], *args: object, **kwargs: object) -> PtmError:
    """Call ``fn``; it must raise a PtmError. Any other exception, or none, fails the test."""
    try:
        fn(*args, **kwargs)
    except PtmError as exc:
        return exc
    except Exception as exc:
        pytest.fail(f"{fn.__name__} raised {type(exc).__name__} (not a PtmError): {exc}")
    pytest.fail(f"{fn.__name__} accepted a bad package")


def read_everything(path: Path) -> None:
    """Open a package and read every file and every tensor through the public read API."""
    with open_package(path) as pkg:
        for f in pkg.files:
            for _ in pkg.iter_file(f.path):
                pass
        for _name, _arr in pkg.iter_tensors():
            pass


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``root`` with its mode and (for files) content."""
    out: dict[str, tuple[int, bytes | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = p.lstat()
            out[str(p.relative_to(root))] = (st_.st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return out


def assert_unpack_fails_cleanly(package: Path, work: Path) -> PtmError:
    """Unpack into ``work/out`` must raise a PtmError and leave ``work`` exactly as it was."""
    before = snapshot(work)
    exc = expect_ptm_error(api.unpack, package, work / "out")
    assert snapshot(work) == before, "a failed unpack changed the directory around its target"
    assert not (work / "out").exists()
    return exc


def only_ptm_errors(fn: Callable[..., object], *args: object, **kwargs: object) -> None:
    """Call ``fn``; success or a PtmError are fine, any other exception fails the test."""
    try:
        fn(*args, **kwargs)
    except PtmError:
        pass
    except Exception as exc:
        pytest.fail(f"{fn.__name__} raised {type(exc).__name__} (not a PtmError): {exc}")


def assert_unpack_contained(package: Path, work: Path) -> None:
    """Unpack into ``work/out`` may succeed or raise a PtmError; either way nothing outside
    ``work/out`` changes, and on failure ``work/out`` does not exist."""
    before = snapshot(work)
    try:
        api.unpack(package, work / "out")
    except PtmError:
        assert not (work / "out").exists()
    except Exception as exc:
        pytest.fail(f"unpack raised {type(exc).__name__} (not a PtmError): {exc}")
    after = {k: v for k, v in snapshot(work).items() if k != "out" and not k.startswith("out/")}
    assert after == before
    if (work / "out").exists():
        shutil.rmtree(work / "out")


def write(path: Path, blob: bytes) -> Path:
    """Write ``blob`` to a fresh inode (truncating a file the reader mmapped is slow)."""
    path.unlink(missing_ok=True)
    path.write_bytes(blob)
    return path


# ---------------------------------------------------------------- packages made by the library

CONFIGS = {"raw": api.PackConfig(), "zstd": api.PackConfig(compression=spec.Compression.ZSTD, chunk_size=4096)}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def packed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Packed:
    base = tmp_path_factory.mktemp(f"packed-{request.param}")
    write_tree(base / "tree")
    path = base / f"{request.param}.ptm"
    manifest = api.pack(base / "tree", path, CONFIGS[request.param], package_id=bytes(range(16))).manifest
    return Packed(request.param, path, path.read_bytes(), manifest, base / "tree")


def test_library_package_layout_is_as_expected(packed: Packed) -> None:
    api.verify(packed.path)
    assert len(packed.manifest.entries) == 6
    if packed.name == "zstd":
        assert sum(len(e.chunks) for e in packed.manifest.entries) > 5
    covered = sum(len(r) for r in packed.padding())
    assert 0 < covered < len(packed.blob)


def test_truncation_at_every_record_boundary(packed: Packed, tmp_path: Path) -> None:
    points = packed.boundaries()
    assert len(points) > 30
    bad = tmp_path / "cut.ptm"
    for n in points:
        write(bad, packed.blob[:n])
        exc = expect_ptm_error(api.verify, bad)
        assert isinstance(exc, IntegrityError), (n, exc)
        expect_ptm_error(read_everything, bad)
        expect_ptm_error(api.inspect, bad)


def test_truncation_keeping_the_trailer(packed: Packed, tmp_path: Path) -> None:
    """Data cut out of the middle while the 64-byte trailer is kept: the offsets no longer fit."""
    bad = tmp_path / "cut.ptm"
    trailer = packed.blob[-spec.TRAILER.size:]
    for n in packed.boundaries():
        if n >= len(packed.blob) - spec.TRAILER.size:
            continue
        write(bad, packed.blob[:n] + trailer)
        expect_ptm_error(api.verify, bad)


def test_truncation_at_random_points(packed: Packed, tmp_path: Path) -> None:
    rng = random.Random(f"truncate-{packed.name}")
    bad = tmp_path / "cut.ptm"
    work = tmp_path / "work"
    work.mkdir()
    for i, n in enumerate(sorted(rng.sample(range(len(packed.blob)), 50))):
        write(bad, packed.blob[:n])
        expect_ptm_error(api.verify, bad)
        if i % 10 == 0:
            assert_unpack_fails_cleanly(bad, work)


def _flip_outcome(bad: Path) -> PtmError | None:
    try:
        api.verify(bad)
    except PtmError as exc:
        return exc
    except Exception as exc:
        pytest.fail(f"verify raised {type(exc).__name__} (not a PtmError): {exc}")
    return None


def test_random_bit_flips_are_detected_outside_padding(packed: Packed, tmp_path: Path) -> None:
    """200 seeded flips: half anywhere, half outside the padding (padding is most of a small file).

    A flip outside the padding must fail ``verify``. A flip inside the padding may pass,
    but then the unpacked tree must still be byte-exact. (Zero padding is not covered by
    any digest today.) The same holds inside a zstd chunk body: only the decoded bytes
    are digested (zstd checksum, entry sha256), so a flip zstd ignores (the frame
    header's unused bit, an unused Huffman weight) passes with the content intact.
    """
    rng = random.Random(f"flip-{packed.name}")
    padding = packed.padding()
    tolerated = padding + packed.chunk_bodies()
    covered = [p for p in range(len(packed.blob)) if not _in(p, padding)]
    positions = [rng.randrange(len(packed.blob)) for _ in range(100)] + rng.sample(covered, 100)
    bad = tmp_path / "flip.ptm"
    work = tmp_path / "work"
    work.mkdir()
    missed = []
    for i, pos in enumerate(positions):
        blob = bytearray(packed.blob)
        blob[pos] ^= 1 << rng.randrange(8)
        write(bad, bytes(blob))
        exc = _flip_outcome(bad)
        if exc is None:
            if not _in(pos, tolerated):
                missed.append(pos)
                continue
            if i % 10 == 0 or not _in(pos, padding):  # every undetected zstd-body flip is checked
                api.unpack(bad, work / f"ok{i}")
                assert tree_files(work / f"ok{i}") == tree_files(packed.tree)
        elif i % 8 == 0:
            assert_unpack_fails_cleanly(bad, work)
    assert not missed, f"flips at offsets {missed} outside the padding verified cleanly"


def test_every_bit_of_the_fixed_records_is_covered(packed: Packed, tmp_path: Path) -> None:
    """Each bit of the file header, the first entry header and path, and the trailer.

    The zstd package differs from the raw one only in its entry headers (codec, chunk
    size), so there only the entry header is walked, to keep the test fast.
    """
    e0 = packed.manifest.entries[0]
    path_end = e0.header_offset + spec.MODEL_HEADER.size + len(e0.path.encode())
    size = len(packed.blob)
    regions = [range(e0.header_offset, path_end)]
    if packed.name == "raw":
        # bytes 10-11 (version_minor) have their own test below
        regions += [range(0, 10), range(12, spec.FILE_HEADER.size), range(size - 64, size)]
    bad = tmp_path / "flip.ptm"
    missed = []
    for region in regions:
        for pos in region:
            for bit in range(8):
                blob = bytearray(packed.blob)
                blob[pos] ^= 1 << bit
                write(bad, bytes(blob))
                if _flip_outcome(bad) is None:
                    missed.append(f"{pos}.{bit}")
    assert not missed, f"bit flips at (offset.bit) {missed} verified cleanly"


def test_header_minor_version_must_match_the_manifest(packed: Packed, tmp_path: Path) -> None:
    """FORMAT.md: the manifest's ``version`` is "same as the file header". A reader ignores
    what a newer minor adds, but a header minor that disagrees with the manifest's is a
    corrupt file; today any value of bytes 10-11 verifies cleanly."""
    bad = tmp_path / "minor.ptm"
    missed = []
    for minor in (1, 2, 0x80, 0xFFFF):
        blob = bytearray(packed.blob)
        blob[10:12] = minor.to_bytes(2, "little")
        write(bad, bytes(blob))
        if _flip_outcome(bad) is None:
            missed.append(minor)
    assert not missed, f"header version_minor {missed} with manifest version [1, 0] verified cleanly"


def test_flips_in_padding_keep_content_intact(packed: Packed, tmp_path: Path) -> None:
    """Fill every padding byte with 0xFF: whatever verify says, content read back is intact."""
    blob = bytearray(packed.blob)
    for r in packed.padding():
        blob[r.start:r.stop] = b"\xff" * len(r)
    bad = write(tmp_path / "pad.ptm", bytes(blob))
    try:
        api.verify(bad)
    except PtmError:
        return
    api.unpack(bad, tmp_path / "out")
    assert tree_files(tmp_path / "out") == tree_files(packed.tree)


def test_corrupt_last_entry_leaves_no_target_and_no_temp(packed: Packed, tmp_path: Path) -> None:
    """Unpack writes the first entries, then meets a bad digest in the last one."""
    last = packed.manifest.entries[-1]
    pos = last.data_offset + last.stored_length - 1
    blob = bytearray(packed.blob)
    blob[pos] ^= 0x01
    work = tmp_path / "work"
    work.mkdir()
    bad = write(work / "bad.ptm", bytes(blob))
    exc = assert_unpack_fails_cleanly(bad, work)
    assert isinstance(exc, IntegrityError)
    assert exc.exit_code == 3


def test_failed_forced_unpack_keeps_the_existing_target(packed: Packed, tmp_path: Path) -> None:
    last = packed.manifest.entries[-1]
    blob = bytearray(packed.blob)
    blob[last.data_offset] ^= 0x80
    bad = write(tmp_path / "bad.ptm", bytes(blob))
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    expect_ptm_error(api.unpack, bad, target, force=True)
    assert snapshot(tmp_path) == before


def test_encrypted_package_flips_and_truncations(tmp_path: Path) -> None:
    """An encrypted zstd package: every flip outside the padding, and every truncation,
    fails with the right key (AEAD tags, sealed manifest, key slots, cross-checks)."""
    from ptmpack.config import EncryptionSpec
    from ptmpack.crypto.keyslots import Opener

    write_tree(tmp_path / "tree")
    kek = bytes(range(32))
    out = tmp_path / "enc.ptm"
    config = api.PackConfig(compression=spec.Compression.ZSTD, chunk_size=4096, encryption=EncryptionSpec(keks=(kek,)))
    manifest = api.pack(tmp_path / "tree", out, config).manifest
    blob = out.read_bytes()
    opener = Opener(kek=kek)
    api.verify(out, opener=opener)
    slots_end = spec.FILE_HEADER.size + int.from_bytes(blob[44:48], "little")
    header = spec.align_up(slots_end)
    padding = [range(slots_end, header)]
    padding += [range(e.header_offset + spec.MODEL_HEADER.size, e.data_offset) for e in manifest.entries]
    covered = [p for p in range(len(blob)) if not _in(p, padding) and p not in (10, 11)]
    rng = random.Random("encrypted")
    bad = tmp_path / "bad.ptm"
    missed = []
    for pos in rng.sample(covered, 60):
        mutated = bytearray(blob)
        mutated[pos] ^= 1 << rng.randrange(8)
        write(bad, bytes(mutated))
        try:
            api.verify(bad, opener=opener)
        except PtmError:
            continue
        missed.append(pos)
    assert not missed, f"flips at {missed} verified cleanly"
    for n in (0, 52, header, header + 72, manifest.entries[2].data_offset + 10, len(blob) - 64, len(blob) - 1):
        write(bad, blob[:n])
        expect_ptm_error(api.verify, bad, opener=opener)
        expect_ptm_error(api.unpack, bad, tmp_path / "never", opener=opener)
        assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------- random bytes


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=9000), head=st.booleans(), tail=st.booleans())
def test_random_bytes_raise_only_ptm_errors(tmp_path: Path, data: bytes, head: bool, tail: bool) -> None:
    blob = (spec.MAGIC if head else b"") + data + (spec.END_MAGIC if tail else b"")
    bad = write(tmp_path / "random.ptm", blob)
    expect_ptm_error(api.verify, bad)
    expect_ptm_error(read_everything, bad)


def test_random_files_with_valid_magics_and_trailer_shape(tmp_path: Path) -> None:
    """Random files whose header and trailer parse, pointing at random manifests."""
    rng = random.Random("random-files")
    bad = tmp_path / "random.ptm"
    for _ in range(60):
        body = rng.randbytes(rng.randrange(0, 20000))
        m_off = rng.choice([4096, spec.FILE_HEADER.size, rng.randrange(0, len(body) + 4096 + 1)])
        m_len = max(0, len(body) + 4096 - m_off)
        header = spec.FILE_HEADER.pack(spec.MAGIC, 1, 0, rng.choice([0, 8]), 0, rng.randrange(4), 0,
                                       rng.randbytes(16), 0, 4096)
        blob = (header + b"\0" * (4096 - len(header)) + body)
        trailer = spec.TRAILER.pack(m_off, m_len, hashlib.sha256(blob[m_off:m_off + m_len]).digest(), 0,
                                    spec.END_MAGIC)
        write(bad, blob + trailer)
        expect_ptm_error(api.verify, bad)
        expect_ptm_error(read_everything, bad)


# ---------------------------------------------------------------- crafted packages


def test_badwriter_default_package_is_valid(tmp_path: Path) -> None:
    """The hostile cases below each differ from this valid file by one defect."""
    good = write(tmp_path / "good.ptm", bw.build().blob)
    report = api.verify(good)
    assert report.entries == 4
    api.unpack(good, tmp_path / "out")
    assert (tmp_path / "out" / "Model" / "w.bin").read_bytes() == bytes(range(256)) * 4
    good_z = write(tmp_path / "good-z.ptm", _build_with_entry(_zstd_entry()))
    api.verify(good_z)
    with open_package(good_z) as pkg:
        assert pkg.read_file("Model/w.bin") == ZDATA


def _entries_with(*extra: bw.BadEntry) -> list[bw.BadEntry]:
    return [*bw.metadata_entries(), *extra]


def _path_case(path: str) -> Callable[[], bytes]:
    return lambda: bw.build(_entries_with(bw.BadEntry(path, b"evil"))).blob


def _zstd_entry(**kw: object) -> bw.BadEntry:
    """A valid three-chunk zstd entry (frames made with zstandard directly), with overrides."""
    fields = {"codec": 1, "chunk_size": 4096, "frames": bw.zstd_frames(ZDATA, 4096)}
    fields.update(kw)
    return bw.BadEntry("Model/w.bin", ZDATA, **fields)  # type: ignore[arg-type]


def _build_with_entry(entry: bw.BadEntry, **kw: object) -> bytes:
    return bw.build(_entries_with(entry), flags=int(spec.Flags.COMPRESSED) if entry.codec else 0, **kw).blob


def _zstd_bomb() -> bytes:
    """A 64 MiB run of zeros in one small zstd frame that declares its size."""
    cctx = zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=True)
    return cctx.compress(bytes(64 * 1024 * 1024))


def _keyslot_region(count: int, slot_len: int) -> bytes:
    return struct.pack("<HH", 1, 0) + struct.pack("<4sHH", b"PTKS", 1, count) + struct.pack("<HI", 2, slot_len)


def _encrypted_shell(region: bytes, **kw: object) -> bytes:
    entries = [bw.BadEntry("Model/w.bin", b"x" * 10, codec=0x101, chunk_size=4096, frames=[b"\0" * 26])]
    return bw.build(entries, flags=int(spec.Flags.ENCRYPTED), keyslots=region, **kw).blob


def _overlap() -> bytes:
    good = bw.build()
    entries = bw.good_entries()
    entries[3].manifest = {"header_offset": good.header_offsets[2], "data_offset": good.data_offsets[2]}
    return bw.build(entries).blob


def _deep_manifest() -> bytes:
    return bw.build(manifest_bytes=b"[" * 200_000 + b"]" * 200_000).blob


def _manifest_with(**top: object) -> Callable[[], bytes]:
    return lambda: bw.build(manifest=top).blob


def _header_case(**fields: object) -> Callable[[], bytes]:
    def make() -> bytes:
        entries = bw.good_entries()
        entries[3].header = dict(fields)
        return bw.build(entries).blob
    return make


def _manifest_entry_case(**fields: object) -> Callable[[], bytes]:
    def make() -> bytes:
        entries = bw.good_entries()
        entries[3].manifest = dict(fields)
        return bw.build(entries).blob
    return make


def _data_flip() -> bytes:
    entries = bw.good_entries()
    entries[3].manifest = {"sha256": hashlib.sha256(b"other").hexdigest()}
    entries[3].header = {"sha256": hashlib.sha256(b"other").digest()}
    return bw.build(entries).blob


def _gap_between_entries() -> bytes:
    good = bw.build()
    blob = bytearray(good.blob)
    # Move entry 3 (and everything after it) 4096 bytes later and say so in the manifest:
    # self-consistent, but entries must be contiguous.
    at = good.header_offsets[3]
    moved = bytes(blob[:at]) + bytes(4096) + bytes(blob[at:])
    body = json.loads(good.manifest)
    body["entries"][3]["header_offset"] += 4096
    body["entries"][3]["data_offset"] += 4096
    manifest = bw.canonical_json(body)
    m_off = good.manifest_offset + 4096
    return moved[:m_off] + manifest + spec.TRAILER.pack(m_off, len(manifest), hashlib.sha256(manifest).digest(), 0,
                                                        spec.END_MAGIC)


def _signature_without_flag() -> bytes:
    return bw.build(signature=b"S" * 100).blob


def _signed_flag_without_signature() -> bytes:
    return bw.build(flags=int(spec.Flags.SIGNED)).blob


def _lying_tensor_table(**tensor: object) -> Callable[[], bytes]:
    def make() -> bytes:
        entries = bw.good_entries()
        entries[3].tensors = [{"name": "t", "dtype": "F32", "shape": [1], "begin": 0, "end": 4, **tensor}]
        return bw.build(entries).blob
    return make


def _path_escaped(json_text: str) -> Callable[[], bytes]:
    """A manifest path spelled with a JSON escape (``json_text`` is the literal JSON string body)."""
    def make() -> bytes:
        good = bw.build(_entries_with(bw.BadEntry("Model/PLACEHOLDER", b"evil")))
        body = good.manifest.replace(b'"Model/PLACEHOLDER"', b'"' + json_text.encode("ascii") + b'"')
        return bw.build(_entries_with(bw.BadEntry("Model/PLACEHOLDER", b"evil")), manifest_bytes=body).blob
    return make


def _safetensors_bytes() -> tuple[bytes, list[dict[str, object]]]:
    import numpy as np
    from safetensors.numpy import save

    data = save({"a": np.arange(4, dtype=np.float32), "b": np.ones((2, 3), dtype=np.float16)})
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    table = []
    for name in ("a", "b"):
        begin, end = header[name]["data_offsets"]
        table.append({"name": name, "dtype": header[name]["dtype"], "shape": header[name]["shape"],
                      "begin": 8 + n + begin, "end": 8 + n + end})
    table.sort(key=lambda t: t["begin"])
    return data, table


def _lying_safetensors(*, drop: bool = False, cut: int | None = None, **fields: object) -> Callable[[], bytes]:
    """A real safetensors entry whose manifest tensor table lies about the first tensor."""
    def make() -> bytes:
        data, table = _safetensors_bytes()
        table[0].update(fields)
        if cut is not None:
            table[0]["end"] = table[0]["begin"] + cut
        if drop:
            table = table[1:]
        entry = bw.BadEntry("Model/model.safetensors", data, tensors=table)
        return bw.build(_entries_with(entry)).blob
    return make


def _invalid_metadata() -> bytes:
    entries = bw.good_entries()
    entries[0] = bw.BadEntry("Meta-info/managementinfo.json", json.dumps({"name": "x"}).encode())
    return bw.build(entries).blob


def _metadata_not_json() -> bytes:
    entries = bw.good_entries()
    entries[1] = bw.BadEntry("Meta-info/technicalinfo.json", b"{not json")
    return bw.build(entries).blob


def _no_metadata() -> bytes:
    return bw.build([bw.BadEntry("Model/w.bin", b"data")]).blob


def _duplicate_manifest_key() -> bytes:
    body = bw.build().manifest
    assert body.startswith(b"{")
    return bw.build(manifest_bytes=b'{"flags":1,' + body[1:]).blob


def _huge_int_manifest() -> bytes:
    body = bw.build().manifest
    return bw.build(manifest_bytes=body.replace(b'"flags":0', b'"flags":' + b"9" * 5000)).blob


HOSTILE: dict[str, Callable[[], bytes]] = {
    # paths: duplicates, clashes, traversal (in both the header and the manifest)
    "duplicate_path": lambda: bw.build(_entries_with(bw.BadEntry("Model/a", b"1"), bw.BadEntry("Model/a", b"2"))).blob,
    "duplicate_path_case": lambda: bw.build(_entries_with(bw.BadEntry("Model/A", b"1"),
                                                          bw.BadEntry("Model/a", b"2"))).blob,
    "file_is_also_dir": lambda: bw.build(_entries_with(bw.BadEntry("Model/a", b"1"),
                                                       bw.BadEntry("Model/a/b", b"2"))).blob,
    "traversal_dotdot": _path_case("../x"),
    "traversal_nested": _path_case("Model/../../x"),
    "traversal_absolute": _path_case("/etc/passwd"),
    "traversal_backslash": _path_case("Model\\..\\x"),
    "path_nul": _path_case("Model/a\x00b"),
    "path_drive": _path_case("C:/x"),
    "path_empty_component": _path_case("Model//x"),
    "path_dot": _path_case("Model/./x"),
    "path_not_nfc": _path_case(unicodedata.normalize("NFD", "Model/\u00e9")),
    "path_wrong_root": _path_case("Extra/x"),
    "path_root_only": _path_case("Model"),
    "path_surrogate_raw": _path_case("Model/\udcff"),
    "path_surrogate_escaped": _path_escaped(r"Model/\udcff"),
    "path_c0_escaped": _path_escaped(r"Model/a\u001bb"),
    "path_too_long": _path_case("Model/" + "a/" * 2046),
    "path_kind_mismatch": _manifest_entry_case(kind="meta"),
    "traversal_manifest_only": _manifest_entry_case(path="../w.bin"),
    "traversal_header_only": lambda: bw.build(
        [*bw.good_entries()[:3], bw.BadEntry("Model/w.bin", b"abc", header_path=b"../../w.bin\0")]).blob,
    # absurd lengths
    "manifest_length_2_63": lambda: bw.build(trailer={"manifest_length": 2**63}).blob,
    "manifest_length_cap_plus_1": lambda: bw.build(trailer={"manifest_length": spec.MAX_MANIFEST_BYTES + 1}).blob,
    "manifest_length_past_file": lambda: bw.build(trailer={"manifest_length": 10**8}).blob,
    "manifest_offset_max": lambda: bw.build(trailer={"manifest_offset": 2**64 - 1}).blob,
    "manifest_offset_in_header": lambda: bw.build(trailer={"manifest_offset": 100}).blob,
    "stored_length_max_header": _header_case(stored_length=2**64 - 1),
    "stored_length_max_both": lambda: bw.build([*bw.good_entries()[:3], bw.BadEntry(
        "Model/w.bin", b"abc", header={"stored_length": 2**64 - 1, "raw_length": 2**64 - 1},
        manifest={"stored_length": 2**64 - 1, "raw_length": 2**64 - 1})]).blob,
    "raw_length_max_manifest": _manifest_entry_case(raw_length=2**64 - 1),
    "path_length_max_header": _header_case(path_length=2**32 - 1),
    "path_length_4096_header": _header_case(path_length=4096),
    "chunk_size_huge_header": _header_case(chunk_size=2**32 - 1),
    "chunk_frame_2_32": lambda: _build_with_entry(_zstd_entry(prefixes={0: 2**32 - 1})),
    "chunk_frame_one_past": lambda: _build_with_entry(_zstd_entry(
        prefixes={i: len(f) + 1 for i, f in enumerate(bw.zstd_frames(ZDATA, 4096))})),
    "chunk_frame_one_short": lambda: _build_with_entry(_zstd_entry(
        prefixes={i: len(f) - 1 for i, f in enumerate(bw.zstd_frames(ZDATA, 4096))})),
    "chunk_frame_zero": lambda: _build_with_entry(_zstd_entry(prefixes={1: 0})),
    "chunk_frames_swapped": lambda: _build_with_entry(_zstd_entry(
        frames=[bw.zstd_frames(ZDATA, 4096)[i] for i in (1, 0, 2)])),
    "chunk_frame_truncated_body": lambda: _build_with_entry(_zstd_entry(
        frames=[f[:-1] for f in bw.zstd_frames(ZDATA, 4096)])),
    "chunk_count_wrong": lambda: _build_with_entry(_zstd_entry(
        frames=bw.zstd_frames(ZDATA, 4096)[:2])),
    "chunk_table_huge": lambda: _build_with_entry(_zstd_entry(manifest={"chunks": [[0, 2**32 + 3]],
                                                                        "stored_length": 2**32 + 3})),
    "chunk_zstd_bomb": lambda: _build_with_entry(bw.BadEntry(
        "Model/w.bin", b"z" * 4096, codec=1, chunk_size=4096, frames=[_zstd_bomb()])),
    "chunk_undeclared_size": lambda: _build_with_entry(bw.BadEntry(
        "Model/w.bin", b"z" * 4096, codec=1, chunk_size=4096,
        frames=[zstandard.ZstdCompressor(write_content_size=False, write_checksum=True).compressobj().compress(
            b"z" * 4096) + zstandard.ZstdCompressor(write_content_size=False).compressobj().flush()])),
    "chunk_unknown_compression": lambda: _build_with_entry(_zstd_entry(codec=7)),
    "chunk_unknown_transform": lambda: _build_with_entry(_zstd_entry(codec=0x090001)),
    "chunk_sealed_unencrypted": lambda: _build_with_entry(_zstd_entry(codec=0x0101)),
    "entry_count_1e9": lambda: bw.build(header={"entry_count": 10**9}).blob,
    "entry_count_max": lambda: bw.build(header={"entry_count": spec.MAX_ENTRIES}).blob,
    "entry_count_2_32": lambda: bw.build(header={"entry_count": 2**32 - 1}).blob,
    "model_count_wrong": lambda: bw.build(header={"model_count": 1}).blob,
    "keyslots_length_huge": lambda: bw.build(header={"flags": 1, "keyslots_length": 2**32 - 1}).blob,
    "keyslots_past_file": lambda: bw.build(header={
        "flags": 1, "keyslots_length": spec.MAX_KEYSLOTS_BYTES,
        "header_size": spec.align_up(spec.FILE_HEADER.size + spec.MAX_KEYSLOTS_BYTES)}).blob,
    "keyslot_body_huge": lambda: _encrypted_shell(_keyslot_region(1, 2**32 - 1)),
    "keyslot_count_huge": lambda: _encrypted_shell(_keyslot_region(65535, 40)),
    "keyslot_cipher_unknown": lambda: _encrypted_shell(struct.pack("<HH", 99, 0) + b"\0" * 20),
    # layout and cross-checks
    "overlapping_entries": _overlap,
    "gap_between_entries": _gap_between_entries,
    "header_magic": _header_case(magic=b"EVIL"),
    "header_index": _header_case(entry_index=7),
    "header_kind": _header_case(kind=2),
    "header_kind_unknown": _header_case(kind=9),
    "header_codec": _header_case(codec=1, chunk_size=4096),
    "header_codec_reserved": _header_case(codec=0x80000000),
    "header_raw_length": _header_case(raw_length=5),
    "header_sha256": _header_case(sha256=b"\1" * 32),
    "header_chunk_size": _header_case(chunk_size=4096),
    "manifest_package_id": _manifest_with(package_id="00" * 16),
    "manifest_flags": _manifest_with(flags=int(spec.Flags.COMPRESSED)),
    "manifest_version_2": _manifest_with(version=[2, 0]),
    "manifest_entries_missing": _manifest_with(entries=[]),
    "manifest_not_json": lambda: bw.build(manifest_bytes=b"{not json").blob,
    "manifest_empty": lambda: bw.build(manifest_bytes=b"").blob,
    "manifest_deep": _deep_manifest,
    "manifest_digest": lambda: bw.build(trailer={"manifest_sha256": bytes(32)}).blob,
    "manifest_entry_index": _manifest_entry_case(index=9),
    "manifest_entry_offsets": _manifest_entry_case(data_offset=0),
    "manifest_entry_codec": _manifest_entry_case(codec=1, chunk_size=4096),
    "data_digest": _data_flip,
    "file_major_2": lambda: bw.build(header={"major": 2}).blob,
    "file_unknown_flag": lambda: bw.build(header={"flags": 64}, manifest={"flags": 64}).blob,
    "file_reserved": lambda: bw.build(header={"reserved": 1}).blob,
    "file_magic": lambda: bw.build(header={"magic": b"PTMPACK!"}).blob,
    "trailer_magic": lambda: bw.build(trailer={"magic": b"PTMEND!!"}).blob,
    "signature_without_flag": _signature_without_flag,
    "signed_flag_without_signature": _signed_flag_without_signature,
    "encrypted_flag_without_slots": lambda: bw.build(header={"flags": 1}, manifest={"flags": 1}).blob,
    "tensor_range_outside_entry": _lying_tensor_table(end=10**6),
    "tensor_table_unknown_dtype": _lying_safetensors(dtype="F99"),
    "tensor_table_missing": _lying_safetensors(drop=True),
    "metadata_invalid": _invalid_metadata,
    "metadata_not_json": _metadata_not_json,
}

BUGS = {
    "manifest_huge_int": _huge_int_manifest,
    "manifest_duplicate_key": _duplicate_manifest_key,
    "tensor_shape_lies": _lying_safetensors(shape=[10**6]),
    "tensor_table_dtype": _lying_safetensors(dtype="F64"),
    "tensor_partial_element": _lying_safetensors(shape=[1], cut=13),
    "tensor_table_on_non_safetensors": _lying_tensor_table(shape=[10**6]),
    "metadata_missing": _no_metadata,
}
"""Hostile cases the library does not yet reject with a PtmError (see the reply to the lead)."""

EXPECTED_CLASS: dict[str, type[PtmError]] = {
    "manifest_version_2": UnsupportedError,
    "file_major_2": UnsupportedError,
    "file_unknown_flag": UnsupportedError,
    "chunk_unknown_transform": UnsupportedError,
    "header_codec_reserved": UnsupportedError,
    "metadata_invalid": MetadataError,
    "metadata_not_json": MetadataError,
    "keyslot_cipher_unknown": UnsupportedError,
    "chunk_unknown_compression": UnsupportedError,
}

VERIFY_ONLY = {"metadata_invalid", "metadata_not_json", "metadata_missing", "tensor_table_dtype", "tensor_table_missing",
               "tensor_table_unknown_dtype", "tensor_shape_lies", "tensor_partial_element",
               "tensor_table_on_non_safetensors"}
"""Defects in what the bytes mean, not in the container: only ``verify`` must find them; reading
and unpacking may succeed (they must still raise nothing but PtmErrors and stay in the target)."""
"""Cases with a specific error class; the rest must be IntegrityError or InvalidTreeError (a path rule)."""


def _check_hostile(name: str, make: Callable[[], bytes], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    bad = write(work / f"{name}.ptm", make())
    tracemalloc.start()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        exc = expect_ptm_error(api.verify, bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    assert peak < MEMORY_LIMIT, f"verify allocated {peak} bytes"
    assert rss_growth < MEMORY_LIMIT, f"peak RSS grew by {rss_growth} bytes"
    expected = EXPECTED_CLASS.get(name)
    if expected is not None:
        assert isinstance(exc, expected), f"{type(exc).__name__}: {exc}"
    else:
        assert isinstance(exc, (IntegrityError, InvalidTreeError, KeyAccessError)), f"{type(exc).__name__}: {exc}"
        assert not isinstance(exc, MetadataError) or name.startswith("metadata")
    # Every read path raises only PtmErrors; unpack leaves nothing behind anywhere.
    if name in VERIFY_ONLY:
        only_ptm_errors(read_everything, bad)
    else:
        expect_ptm_error(read_everything, bad)
    only_ptm_errors(api.inspect, bad, tensors=True)
    if name in VERIFY_ONLY:
        assert_unpack_contained(bad, work)
    else:
        assert_unpack_fails_cleanly(bad, work)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_package_is_rejected(name: str, tmp_path: Path) -> None:
    _check_hostile(name, HOSTILE[name], tmp_path)


@pytest.mark.parametrize("name", sorted(BUGS))
def test_hostile_package_is_rejected_known_gaps(name: str, tmp_path: Path) -> None:
    """Same rule as above; each of these fails today (library bugs reported to the lead)."""
    _check_hostile(name, BUGS[name], tmp_path)


def test_hostile_major_version_is_exit_code_6(tmp_path: Path) -> None:
    bad = write(tmp_path / "v2.ptm", bw.build(header={"major": 2}).blob)
    exc = expect_ptm_error(api.verify, bad)
    assert isinstance(exc, UnsupportedError) and exc.exit_code == 6


def test_overlong_name_component_is_refused(tmp_path: Path) -> None:
    """A path component over 255 bytes (the common NAME_MAX) breaks the path rules: a package
    carrying one is refused before anything is written."""
    blob = bw.build([*bw.metadata_entries(), bw.BadEntry("Model/" + "n" * 300, b"x")]).blob
    work = tmp_path / "work"
    work.mkdir()
    bad = write(work / "long.ptm", blob)
    assert isinstance(expect_ptm_error(api.verify, bad), InvalidTreeError)
    assert_unpack_fails_cleanly(bad, work)


def test_unpack_never_writes_outside_target(tmp_path: Path) -> None:
    """Traversal names aimed at real paths next to the target, including an absolute one."""
    work = tmp_path / "work"
    work.mkdir()
    victim = work / "victim"
    names = ["../victim", "Model/../../victim", str(victim), "Model/../victim", "Model\\..\\..\\victim"]
    for i, name in enumerate(names):
        bad = write(work / f"t{i}.ptm", bw.build(_entries_with(bw.BadEntry(name, b"pwned"))).blob)
        assert_unpack_fails_cleanly(bad, work)
        assert not victim.exists()
    assert not (tmp_path / "victim").exists()


def test_absurd_lengths_do_not_allocate(tmp_path: Path) -> None:
    """Direct check with tracemalloc on the reader for the largest declared lengths."""
    cases = ["manifest_length_2_63", "stored_length_max_both", "chunk_frame_2_32", "entry_count_1e9",
             "keyslot_body_huge", "chunk_table_huge", "chunk_zstd_bomb", "keyslots_length_huge"]
    blobs = {name: HOSTILE[name]() for name in cases}
    for name, blob in blobs.items():
        bad = write(tmp_path / f"{name}.ptm", blob)
        tracemalloc.start()
        try:
            expect_ptm_error(read_everything, bad)
            expect_ptm_error(api.verify, bad)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < MEMORY_LIMIT, f"{name}: reading allocated {peak} bytes"


# ---------------------------------------------------------------- hostile source trees


def _fresh_tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write_tree(root)
    return root


def _symlink_file(root: Path) -> None:
    (root / "Model" / "link.bin").symlink_to(root / "Model" / "config.json")


def _symlink_outside(root: Path) -> None:
    secret = root.parent / "secret.txt"
    secret.write_text("secret")
    (root / "Model" / "leak.txt").symlink_to(secret)


def _symlink_dir(root: Path) -> None:
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "x.bin").write_bytes(b"x")
    (root / "Model" / "sub").symlink_to(outside, target_is_directory=True)


def _symlink_top(root: Path) -> None:
    real = root.parent / "real-program"
    (root / "Program").rename(real)
    (root / "Program").symlink_to(real, target_is_directory=True)


def _dangling(root: Path) -> None:
    (root / "Model" / "dangling").symlink_to(root / "nowhere")


def _fifo(root: Path) -> None:
    os.mkfifo(root / "Model" / "pipe")


def _socket(root: Path) -> None:
    cwd = os.getcwd()
    os.chdir(root / "Program")
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind("sock")
        s.close()
    finally:
        os.chdir(cwd)


def _device(root: Path) -> None:
    try:
        os.mknod(root / "Model" / "null", 0o600 | 0o020000, os.makedev(1, 3))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot create a device node here: {exc}")


def _top_file(root: Path) -> None:
    (root / "README.md").write_text("hi")


def _top_dir(root: Path) -> None:
    (root / "Extra").mkdir()
    (root / "Extra" / "x").write_text("x")


def _rm(rel: str) -> Callable[[Path], None]:
    def remove(root: Path) -> None:
        target = root / rel
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    return remove


def _meta(rel: str, content: bytes) -> Callable[[Path], None]:
    return lambda root: (root / "Meta-info" / rel).write_bytes(content)


def _meta_edit(rel: str, **fields: object) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        p = root / "Meta-info" / rel
        doc = json.loads(p.read_text())
        for k, v in fields.items():
            if v is None:
                doc.pop(k)
            else:
                doc[k] = v
        p.write_text(json.dumps(doc))
    return edit


def _named(name: str) -> Callable[[Path], None]:
    return lambda root: (root / "Model" / name).write_bytes(b"x")


def _meta_info_is_file(root: Path) -> None:
    _rm("Meta-info")(root)
    (root / "Meta-info").write_text("{}")


BAD_TREES: dict[str, Callable[[Path], None]] = {
    "symlink_to_file": _symlink_file,
    "symlink_outside": _symlink_outside,
    "symlink_to_dir": _symlink_dir,
    "symlink_top_dir": _symlink_top,
    "symlink_dangling": _dangling,
    "fifo": _fifo,
    "socket": _socket,
    "device": _device,
    "file_at_top": _top_file,
    "unknown_top_dir": _top_dir,
    "missing_model": _rm("Model"),
    "missing_managementinfo": _rm("Meta-info/managementinfo.json"),
    "missing_technicalinfo": _rm("Meta-info/technicalinfo.json"),
    "missing_meta_info": _rm("Meta-info"),
    "meta_info_is_file": _meta_info_is_file,
    "metadata_not_json": _meta("managementinfo.json", b"{nope"),
    "metadata_not_utf8": _meta("technicalinfo.json", b'{"framework": "\xff"}'),
    "metadata_duplicate_key": _meta("managementinfo.json", b'{"name": "a", "name": "b"}'),
    "metadata_nan": _meta("technicalinfo.json", b'{"framework": NaN}'),
    "metadata_not_object": _meta("managementinfo.json", b"[]"),
    "metadata_missing_field": _meta_edit("managementinfo.json", model_id=None),
    "metadata_bad_version": _meta_edit("managementinfo.json", version="v1"),
    "metadata_unknown_field": _meta_edit("technicalinfo.json", foo=1),
    "metadata_bad_task": _meta_edit("technicalinfo.json", task={"type": "chat"}),
    "name_backslash": _named("a\\b"),
    "name_newline": _named("a\nb"),
    "name_not_nfc": _named(unicodedata.normalize("NFD", "caf\u00e9")),
    "names_clash_by_case": lambda root: (_named("W.bin")(root), _named("w.bin")(root)),
}


@pytest.mark.parametrize("name", sorted(BAD_TREES))
def test_bad_source_tree_is_refused_and_nothing_written(name: str, tmp_path: Path) -> None:
    root = _fresh_tree(tmp_path)
    BAD_TREES[name](root)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    exc = expect_ptm_error(api.pack, root, out_dir / "m.ptm")
    assert isinstance(exc, InvalidTreeError), f"{type(exc).__name__}: {exc}"
    assert exc.exit_code == 5
    if name.startswith("metadata"):
        assert isinstance(exc, MetadataError)
    assert list(out_dir.iterdir()) == []
    with pytest.raises(PtmError):
        api.verify(root)


def test_source_that_is_not_a_directory(tmp_path: Path) -> None:
    f = write(tmp_path / "file", b"x")
    exc = expect_ptm_error(api.pack, f, tmp_path / "m.ptm")
    assert isinstance(exc, InvalidTreeError)
    assert not (tmp_path / "m.ptm").exists()
