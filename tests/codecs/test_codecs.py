"""Chunk codecs: round trips, the documented byte layout, hostile stored bytes, the ratio goal."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from ptmpack.codecs import MAX_RAW_LENGTH, Transform, choose_transform, decode_chunk, encode_chunk
from ptmpack.codecs.chunk import METHOD_RAW, METHOD_ZSTD
from ptmpack.codecs.planes import BLOCK
from ptmpack.errors import IntegrityError, UnsupportedError, UsageError

PLANE_TRANSFORMS = [Transform.EXP_PLANES_16, Transform.EXP_PLANES_32, Transform.EXP_PLANES_64]
FLOAT_DTYPES = {  # dtype -> transform made for it
    np.dtype(np.float16): Transform.EXP_PLANES_16,
    np.dtype(ml_dtypes.bfloat16): Transform.EXP_PLANES_16,
    np.dtype(np.float32): Transform.EXP_PLANES_32,
    np.dtype(np.float64): Transform.EXP_PLANES_64,
}
# Bit patterns that must survive exactly: ±inf, -0.0, quiet and signalling NaNs with
# payloads, the all-ones NaN, the smallest subnormal.
SPECIAL_BITS = {
    np.dtype(np.float16): [0x7C00, 0xFC00, 0x8000, 0x7E01, 0x7C01, 0xFFFF, 0x0001],
    np.dtype(ml_dtypes.bfloat16): [0x7F80, 0xFF80, 0x8000, 0x7FC1, 0x7F81, 0xFFFF, 0x0001],
    np.dtype(np.float32): [0x7F800000, 0xFF800000, 0x80000000, 0x7FC00001, 0x7F800001, 0xFFFFFFFF, 1],
    np.dtype(np.float64): [
        0x7FF0000000000000,
        0xFFF0000000000000,
        0x8000000000000000,
        0x7FF8000000000001,
        0x7FF0000000000001,
        0xFFFFFFFFFFFFFFFF,
        1,
    ],
}
LEVELS = [-5, 1, 3]
LENGTHS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 1023, 1024, 1025]),
    st.integers(0, 400_000),
)


def weights(dtype: np.dtype, count: int, seed: int, specials: bool = True) -> bytes:
    """Weight-like values (normal, std 0.02) of ``dtype``, some replaced by special bit patterns."""
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal(count) * 0.02).astype(dtype)
    if specials and count:
        bits = values.view(f"<u{dtype.itemsize}")
        where = rng.integers(0, count, size=max(1, count // 50))
        bits[where] = rng.choice(np.array(SPECIAL_BITS[dtype], dtype=bits.dtype), size=where.size)
    return values.tobytes()


# --- round trips ---------------------------------------------------------------------------


@given(raw=st.binary(max_size=3000), transform=st.sampled_from(Transform), level=st.sampled_from(LEVELS))
def test_any_bytes_round_trip(raw: bytes, transform: Transform, level: int) -> None:
    assert decode_chunk(encode_chunk(raw, transform, level), len(raw), transform) == raw


@given(
    dtype=st.sampled_from(list(FLOAT_DTYPES)),
    length=LENGTHS,
    seed=st.integers(0, 2**32 - 1),
    transform=st.sampled_from(Transform),
    level=st.sampled_from(LEVELS),
)
def test_float_bytes_round_trip_bitwise(
    dtype: np.dtype, length: int, seed: int, transform: Transform, level: int
) -> None:
    """Any length (odd tails included) of any float dtype, NaN payloads and -0.0 included,
    under every transform, not just the one made for the dtype."""
    raw = weights(dtype, length // dtype.itemsize + 1, seed)[:length]
    assert decode_chunk(encode_chunk(raw, transform, level), length, transform) == raw


@pytest.mark.parametrize("transform", PLANE_TRANSFORMS)
@pytest.mark.parametrize("extra", [0, 1, 3, 7])
def test_multi_block_chunks_round_trip(transform: Transform, extra: int) -> None:
    """Chunks spanning several transform blocks, ending exactly on and just past a block."""
    dtype = next(d for d, t in FLOAT_DTYPES.items() if t is transform)
    raw = weights(dtype, 2 * BLOCK, seed=extra) + bytes(range(extra))
    stored = encode_chunk(raw, transform, 3)
    assert len(stored) < len(raw)
    assert decode_chunk(stored, len(raw), transform) == raw


@pytest.mark.parametrize("level", [19, 22, -(1 << 17)])
def test_extreme_levels_round_trip(level: int) -> None:
    raw = weights(np.dtype(np.float32), 5000, seed=1)
    for transform in Transform:
        assert decode_chunk(encode_chunk(raw, transform, level), len(raw), transform) == raw


def test_memoryview_input_and_zero_length() -> None:
    raw = weights(np.dtype(np.float32), 1000, seed=2)
    view = memoryview(np.frombuffer(raw, dtype=np.float32))  # a float-formatted view
    for transform in Transform:
        assert decode_chunk(memoryview(encode_chunk(view, transform, 3)), len(raw), transform) == raw
        assert decode_chunk(encode_chunk(b"", transform, 3), 0, transform) == b""


def test_threads_share_nothing() -> None:
    chunks = [weights(np.dtype(np.float32), 50_000, seed=s) for s in range(16)]

    def round_trip(raw: bytes) -> bool:
        return decode_chunk(encode_chunk(raw, Transform.EXP_PLANES_32, 3), len(raw), Transform.EXP_PLANES_32) == raw

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(round_trip, chunks))


# --- the documented format -----------------------------------------------------------------


def test_transform_ids_are_frozen() -> None:
    assert {t.name: (int(t), t.width) for t in Transform} == {
        "NONE": (0, 0),
        "EXP_PLANES_16": (1, 2),
        "EXP_PLANES_32": (2, 4),
        "EXP_PLANES_64": (3, 8),
    }


def test_golden_plane_chunk_from_docs() -> None:
    """The worked example of docs/CODECS.md §3.3, byte for byte."""
    raw = struct.pack("<ff", 1.0, -2.0) + b"\x01"
    golden = bytes.fromhex("0104" + "0002000000" * 4 + "0001" + "0000" + "0000" + "7f80" + "01")
    assert encode_chunk(raw, Transform.EXP_PLANES_32, 3) == golden
    assert decode_chunk(golden, len(raw), Transform.EXP_PLANES_32) == raw


def test_plain_chunk_is_one_checked_zstd_frame() -> None:
    raw = weights(np.dtype(np.float32), 10_000, seed=3)
    stored = encode_chunk(raw, Transform.NONE, 3)
    params = zstandard.get_frame_parameters(stored)
    assert (params.content_size, params.has_checksum, params.dict_id) == (len(raw), True, 0)
    assert zstandard.ZstdDecompressor().decompress(stored, allow_extra_data=False) == raw


def parse_planes(stored: bytes, width: int) -> list[tuple[int, int, int]]:
    """(method, start, end) of each plane body, read as docs/CODECS.md §3.2 specifies."""
    assert stored[:2] == bytes([1, width])
    table = [struct.unpack_from("<BI", stored, 2 + 5 * k) for k in range(width)]
    bodies, offset = [], 2 + 5 * width
    for method, length in table:
        bodies.append((method, offset, offset + length))
        offset += length
    return bodies


def test_float32_weights_compress_only_the_exponent_plane() -> None:
    raw = weights(np.dtype(np.float32), 200_000, seed=4, specials=False)
    stored = encode_chunk(raw, Transform.EXP_PLANES_32, 3)
    methods = [method for method, _, _ in parse_planes(stored, 4)]
    assert methods == [METHOD_RAW, METHOD_RAW, METHOD_RAW, METHOD_ZSTD]
    assert len(stored) < 0.85 * len(raw)


# --- hostile stored bytes ------------------------------------------------------------------


@given(stored=st.binary(max_size=400), raw_length=st.integers(0, 1 << 20), transform=st.sampled_from(Transform))
def test_random_bytes_raise_only_integrity_error(stored: bytes, raw_length: int, transform: Transform) -> None:
    try:
        out = decode_chunk(stored, raw_length, transform)
    except IntegrityError:
        return
    assert len(out) == raw_length


@given(
    transform=st.sampled_from(PLANE_TRANSFORMS),
    raw_length=st.integers(0, 64),
    planes=st.lists(st.tuples(st.integers(0, 3), st.binary(max_size=20)), min_size=8, max_size=8),
    lengths=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 24), min_size=8, max_size=8),
    tail=st.binary(max_size=8),
)
def test_crafted_plane_tables_raise_only_integrity_error(
    transform: Transform, raw_length: int, planes: list[tuple[int, bytes]], lengths: list[int], tail: bytes
) -> None:
    """Well-formed-looking plane tables with lying methods and lengths get past the first checks."""
    width = transform.width
    table = b"".join(struct.pack("<BI", method, length) for (method, _), length in zip(planes, lengths, strict=True))
    stored = bytes([1, width]) + table[: 5 * width] + b"".join(body for _, body in planes[:width]) + tail
    try:
        out = decode_chunk(stored, raw_length, transform)
    except IntegrityError:
        return
    assert len(out) == raw_length


@given(data=st.data(), transform=st.sampled_from(Transform))
def test_overwritten_bytes_raise_integrity_error_or_keep_the_length(data: st.DataObject, transform: Transform) -> None:
    raw = weights(np.dtype(np.float32), 3000, seed=5)
    stored = bytearray(encode_chunk(raw, transform, 3))
    for _ in range(data.draw(st.integers(1, 4))):
        stored[data.draw(st.integers(0, len(stored) - 1))] = data.draw(st.integers(0, 255))
    try:
        out = decode_chunk(bytes(stored), len(raw), transform)
    except IntegrityError:
        return
    assert len(out) == len(raw)


@pytest.mark.parametrize("transform", list(Transform))
def test_every_truncation_and_extension_is_corrupt(transform: Transform) -> None:
    raw = weights(np.dtype(np.float32), 700, seed=6) + b"\x05\x06\x07"
    stored = encode_chunk(raw, transform, 3)
    for cut in range(len(stored)):
        with pytest.raises(IntegrityError, match="corrupt chunk"):
            decode_chunk(stored[:cut], len(raw), transform)
    with pytest.raises(IntegrityError):
        decode_chunk(stored + b"\x00", len(raw), transform)
    for wrong in (len(raw) - 1, len(raw) + 1):
        with pytest.raises(IntegrityError):
            decode_chunk(stored, wrong, transform)


@pytest.mark.parametrize("transform", list(Transform))
def test_every_bit_flip_is_caught_or_confined_to_raw_bytes(transform: Transform) -> None:
    """zstd frames carry checksums, so a flip there (or in the plane table) is an IntegrityError
    unless zstd ignores that bit; a flip in a raw plane or the tail changes exactly one bit."""
    raw = weights(np.dtype(np.float32), 600, seed=7, specials=False) + b"\x09\x08"
    stored = encode_chunk(raw, transform, 3)
    raw_ranges = []
    if transform is not Transform.NONE:
        bodies = parse_planes(stored, transform.width)
        raw_ranges = [(start, end) for method, start, end in bodies if method == METHOD_RAW]
        raw_ranges.append((bodies[-1][2], len(stored)))  # the tail
        assert raw_ranges and any(method == METHOD_ZSTD for method, _, _ in bodies)
    original = np.frombuffer(raw, dtype=np.uint8)
    for bit in range(8 * len(stored)):
        flipped = bytearray(stored)
        flipped[bit // 8] ^= 1 << (bit % 8)
        in_raw = any(start <= bit // 8 < end for start, end in raw_ranges)
        try:
            out = decode_chunk(bytes(flipped), len(raw), transform)
        except IntegrityError:
            assert not in_raw, f"flip of bit {bit} in a raw region was reported corrupt"
            continue
        changed = np.unpackbits(np.frombuffer(out, dtype=np.uint8) ^ original).sum()
        assert changed == (1 if in_raw else 0), f"flip of bit {bit} changed {changed} output bits"


def frame(content: bytes, **kwargs: object) -> bytes:
    return zstandard.ZstdCompressor(level=3, **kwargs).compress(content)


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param(frame(b"x" * 100, write_content_size=False, write_checksum=True), id="no-content-size"),
        pytest.param(frame(b"x" * 100, write_checksum=False), id="no-checksum"),
        pytest.param(frame(b"x" * 50, write_checksum=True) * 2, id="two-frames"),
        pytest.param(frame(b"x" * 100, write_checksum=True) + b"\x00", id="trailing-byte"),
        pytest.param(struct.pack("<II", 0x184D2A50, 100) + b"x" * 100, id="skippable-frame"),
        pytest.param(frame(b"x" * 99, write_checksum=True), id="content-size-short"),
        pytest.param(frame(b"x" * 101, write_checksum=True), id="content-size-long"),
    ],
)
def test_nonconforming_zstd_frames_are_corrupt(stored: bytes) -> None:
    with pytest.raises(IntegrityError, match="corrupt chunk"):
        decode_chunk(stored, 100, Transform.NONE)


def test_empty_chunk_frame_is_read_to_its_end() -> None:
    """zstandard returns b"" for an empty frame without reading it; the codec must not."""
    empty = encode_chunk(b"", Transform.NONE, 3)
    assert decode_chunk(empty, 0, Transform.NONE) == b""
    for bad in (empty + b"\x00", empty[:-1], empty[:-4] + b"\xde\xad\xbe\xef"):
        with pytest.raises(IntegrityError):
            decode_chunk(bad, 0, Transform.NONE)


def peak_allocation(call: Callable[[], object]) -> int:
    """Peak bytes traced (Python and numpy allocations) while ``call()`` raises IntegrityError."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(IntegrityError):
            call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_oversized_claims_allocate_nothing() -> None:
    # A zstd header that declares 1 GiB of content (single segment, checksum, 8-byte size).
    bomb = bytes.fromhex("28b52ffd") + bytes([0xE4]) + struct.pack("<Q", 1 << 30) + bytes.fromhex("030000")
    assert zstandard.get_frame_parameters(bomb).content_size == 1 << 30
    assert peak_allocation(lambda: decode_chunk(bomb, 1000, Transform.NONE)) < 1 << 20
    assert peak_allocation(lambda: decode_chunk(bomb, 1 << 30, Transform.NONE)) < 1 << 20
    # A small honest frame under a manifest that claims a full 64 MiB chunk.
    small = encode_chunk(b"y" * 1000, Transform.NONE, 3)
    assert peak_allocation(lambda: decode_chunk(small, MAX_RAW_LENGTH, Transform.NONE)) < 1 << 20
    # A plane table claiming 4 GiB planes, and one whose zstd plane declares 1 GiB.
    huge = bytes([1, 4]) + struct.pack("<BI", METHOD_RAW, 2**32 - 1) * 4
    assert peak_allocation(lambda: decode_chunk(huge, 1000, Transform.EXP_PLANES_32)) < 1 << 20
    lying = bytes([1, 2]) + struct.pack("<BI", METHOD_RAW, 500) + struct.pack("<BI", METHOD_ZSTD, len(bomb))
    lying += bytes(500) + bomb
    assert peak_allocation(lambda: decode_chunk(lying, 1000, Transform.EXP_PLANES_16)) < 1 << 20


@pytest.mark.parametrize("raw_length", [-1, MAX_RAW_LENGTH + 1, 1 << 62])
def test_raw_length_outside_the_chunk_limit_is_corrupt(raw_length: int) -> None:
    with pytest.raises(IntegrityError, match="raw length"):
        decode_chunk(b"", raw_length, Transform.NONE)


# --- parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 23, -(1 << 17) - 1, True, 3.0, "3"])
def test_bad_levels_are_usage_errors(level: object) -> None:
    with pytest.raises(UsageError, match="zstd level"):
        encode_chunk(b"abcd", Transform.NONE, level)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="zstd level"):
        choose_transform(b"abcd", 4, level)  # type: ignore[arg-type]


def test_bad_parameters() -> None:
    with pytest.raises(UsageError, match="transform"):
        encode_chunk(b"abcd", 9, 3)  # type: ignore[arg-type]
    with pytest.raises(UnsupportedError, match="transform"):
        decode_chunk(b"abcd", 4, 9)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="raw_length"):
        decode_chunk(b"abcd", 4.0, Transform.NONE)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="chunk limit"):
        encode_chunk(bytes(MAX_RAW_LENGTH + 1), Transform.NONE, 1)
    for width in (0, -4, True, 4.0):
        with pytest.raises(UsageError, match="element width"):
            choose_transform(b"abcd", width, 3)  # type: ignore[arg-type]


# --- choosing the transform ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(FLOAT_DTYPES))
def test_choose_transform_picks_planes_for_weight_like_floats(dtype: np.dtype) -> None:
    sample = weights(dtype, (1 << 20) // dtype.itemsize, seed=8, specials=False)
    assert choose_transform(sample, dtype.itemsize, 3) is FLOAT_DTYPES[dtype]


def test_choose_transform_keeps_none_where_planes_do_not_pay() -> None:
    noise = np.random.default_rng(9).bytes(1 << 20)
    for width in (2, 4, 8):
        assert choose_transform(noise, width, 3) is Transform.NONE
    floats = weights(np.dtype(np.float32), 100_000, seed=10)
    assert choose_transform(floats, None, 3) is Transform.NONE  # not known to be floats
    assert choose_transform(floats, 1, 3) is Transform.NONE  # fp8 / int8: no plane transform
    assert choose_transform(b"", 4, 3) is Transform.NONE


# --- real weights --------------------------------------------------------------------------


@pytest.mark.realweights
def test_minilm_float32_ratio_goal() -> None:
    """SPEC §3: on real float32 weights the planes reach at least 1.1x plain zstd -3's ratio."""
    from tests._support.realweights import minilm_dir

    data = memoryview((minilm_dir() / "model.safetensors").read_bytes())
    size = 4 << 20
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    assert choose_transform(chunks[0], 4, 3) is Transform.EXP_PLANES_32
    plain = sum(len(encode_chunk(c, Transform.NONE, 3)) for c in chunks)
    planes = 0
    for chunk in chunks:
        stored = encode_chunk(chunk, Transform.EXP_PLANES_32, 3)
        assert decode_chunk(stored, len(chunk), Transform.EXP_PLANES_32) == chunk
        planes += len(stored)
    zstd_ratio, planes_ratio = len(data) / plain, len(data) / planes
    assert planes_ratio >= 1.1 * zstd_ratio, (zstd_ratio, planes_ratio)
