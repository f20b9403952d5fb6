"""Per-chunk codecs: zstd, optionally after the exponent-plane transform.

A chunked entry is cut into chunks of at most ``chunk_size`` raw bytes that are encoded
independently, so any chunk can be decoded alone. :func:`encode_chunk` turns one raw
chunk into its stored bytes, :func:`decode_chunk` reverses it and treats the stored bytes
as hostile: every length is checked before it is used, nothing larger than a small
multiple of the caller's ``raw_length`` is ever allocated, and any inconsistency raises
:class:`~ptmpack.errors.IntegrityError`. The byte layout is specified in docs/CODECS.md.
"""

from __future__ import annotations

import enum
import struct
import threading

import numpy as np
import zstandard

from ptmpack.codecs.planes import join_planes, split_planes
from ptmpack.errors import IntegrityError, UnsupportedError, UsageError
from ptmpack.format.spec import MAX_CHUNK_SIZE


class Transform(enum.IntEnum):
    """How a chunk is rearranged before zstd; stored in the entry's codec field, so frozen."""

    NONE = 0
    EXP_PLANES_16 = 1
    """2-byte floats (float16, bfloat16): two byte planes."""
    EXP_PLANES_32 = 2
    """4-byte floats (float32): four byte planes."""
    EXP_PLANES_64 = 3
    """8-byte floats (float64): eight byte planes."""

    @property
    def width(self) -> int:
        """Bytes per element the transform splits (0 for NONE)."""
        return _WIDTH[self]


_WIDTH = {Transform.NONE: 0, Transform.EXP_PLANES_16: 2, Transform.EXP_PLANES_32: 4, Transform.EXP_PLANES_64: 8}
_BY_WIDTH = {width: transform for transform, width in _WIDTH.items() if width}

MAX_RAW_LENGTH = MAX_CHUNK_SIZE
"""Largest raw chunk (SPEC §3: chunk ≤ 64 MiB); bounds every decode allocation."""
MIN_GAIN_DIVISOR = 100
"""choose_transform wants the transform to save at least 1/100 of the sample."""
MIN_LEVEL = -(1 << 17)
MAX_LEVEL = 22

PLANES_VERSION = 1
METHOD_RAW = 0
METHOD_ZSTD = 1
_HEAD = struct.Struct("<BB")  # framing version, plane count
_PLANE = struct.Struct("<BI")  # method, stored body length

# The exponent plane is a stream of nearly independent symbols from a small alphabet:
# Huffman coding of literals is what pays, and LZ matches cost more bits than they save.
# Measured on all-MiniLM-L6-v2 float32 exponent planes (1 MiB each): this "fast" setup
# with a 64-entry hash table and 7-byte minimum matches gives x3.02 at ~2.4 ms per plane;
# zstd -1 gives x2.75 (6 ms), -3 x2.45 (9 ms), -19 x3.01 (780 ms). target_length must stay
# 0: for the fast strategy it is an acceleration factor that turns Huffman off.
_EXPONENT_PARAMS = zstandard.ZstdCompressionParameters(
    window_log=17,
    chain_log=6,
    hash_log=6,
    search_log=1,
    min_match=7,
    target_length=0,
    strategy=zstandard.STRATEGY_FAST,
    write_checksum=1,
    write_content_size=1,
)
_EXPONENT = "exponent"  # key of the exponent-plane compressor in the per-thread cache

# zstandard contexts must not be shared between threads; the pack writer compresses
# chunks on a thread pool, so each thread keeps its own and reuses it (a fresh level-3
# context costs ~25 µs to set up, three times the coding of a 4 KiB chunk).
_local = threading.local()


def encode_chunk(raw: bytes | memoryview, transform: Transform, level: int) -> bytes:
    """The stored form of one raw chunk: zstd at ``level``, after ``transform``.

    With ``Transform.NONE`` the result is a single zstd frame that records the content
    size and a checksum. With a plane transform, the exponent plane is zstd-coded and
    each other plane is zstd-coded at ``level`` only where that makes it smaller, else
    stored raw; see docs/CODECS.md for the framing.

    Raises:
        UsageError: ``level`` is not a zstd level (1..22 or negative), ``transform`` is
            not a :class:`Transform`, or ``raw`` exceeds :data:`MAX_RAW_LENGTH`.
    """
    _check_level(level)
    transform = _as_transform(transform, UsageError)
    view = memoryview(raw).cast("B")
    if len(view) > MAX_RAW_LENGTH:
        raise UsageError(f"chunk of {len(view)} bytes exceeds the {MAX_RAW_LENGTH}-byte chunk limit")
    if transform is Transform.NONE:
        return _compressor(level).compress(view)
    return _encode_planes(view, transform.width, level)


def decode_chunk(stored: bytes | memoryview, raw_length: int, transform: Transform) -> bytes:
    """The raw chunk of exactly ``raw_length`` bytes that ``stored`` encodes.

    ``raw_length`` comes from the manifest and bounds every allocation: a stored chunk
    that claims more (in a zstd frame header or a plane length) is rejected before
    anything is allocated for it. Zstd frames carry checksums, so damage inside them is
    caught here; a flipped bit in a raw plane or the tail decodes to wrong bytes of the
    right length, which the entry's sha256 (or the AEAD tag) catches.

    Raises:
        IntegrityError: ``stored`` is not a well-formed encoding of ``raw_length`` bytes
            (truncated, extended, damaged inside a zstd frame, or crafted), or
            ``raw_length`` is outside 0..MAX_RAW_LENGTH. The message does not know the
            entry or chunk index; callers add them.
        UnsupportedError: ``transform`` is an id this version does not know.
        UsageError: ``raw_length`` is not an int.
    """
    transform = _as_transform(transform, UnsupportedError)
    if isinstance(raw_length, bool) or not isinstance(raw_length, int):
        raise UsageError(f"raw_length must be an int, not {type(raw_length).__name__}")
    if not 0 <= raw_length <= MAX_RAW_LENGTH:
        raise _corrupt(f"raw length {raw_length} is outside 0..{MAX_RAW_LENGTH}")
    view = memoryview(stored).cast("B")
    if transform is Transform.NONE:
        return _unzstd(view, raw_length, "zstd frame")
    return _decode_planes(view, raw_length, transform.width)


def choose_transform(sample: bytes | memoryview, element_width: int | None, level: int) -> Transform:
    """The transform for an entry: the plane transform for ``element_width`` when it
    encodes ``sample`` smaller than plain zstd at ``level`` by at least 1% of the sample,
    else ``Transform.NONE``.

    The margin keeps incompressible data (random bytes, already compressed blobs) on
    NONE, where both encodings are stored blocks and differ only by framing overhead.

    ``element_width`` is the float size in bytes (4 for F32 safetensors, 2 for F16/BF16,
    8 for F64) or None when the entry is not known to hold floats; widths without a plane
    transform (1-byte floats, integers) get NONE. ``sample`` is encoded both ways as one
    chunk, so it is typically the entry's first chunk (at most MAX_RAW_LENGTH bytes).

    Raises:
        UsageError: ``element_width`` is not None or a positive int, or ``level`` or the
            sample size is invalid as for :func:`encode_chunk`.
    """
    _check_level(level)
    if element_width is not None and (
        isinstance(element_width, bool) or not isinstance(element_width, int) or element_width < 1
    ):
        raise UsageError(f"element width must be None or a positive number of bytes, not {element_width!r}")
    transform = _BY_WIDTH.get(element_width) if element_width is not None else None
    if transform is None:
        return Transform.NONE
    view = memoryview(sample).cast("B")
    saved = len(encode_chunk(view, Transform.NONE, level)) - len(encode_chunk(view, transform, level))
    return transform if saved >= len(view) // MIN_GAIN_DIVISOR else Transform.NONE


def _encode_planes(view: memoryview, width: int, level: int) -> bytes:
    """Header, plane table, plane bodies, raw tail (docs/CODECS.md, framing version 1)."""
    elements = len(view) // width
    table = [_HEAD.pack(PLANES_VERSION, width)]
    bodies: list[bytes | np.ndarray | memoryview] = []
    for k, plane in enumerate(split_planes(view, width)):
        packed = _compressor(_EXPONENT if k == width - 1 else level).compress(plane)
        if len(packed) < plane.size:
            table.append(_PLANE.pack(METHOD_ZSTD, len(packed)))
            bodies.append(packed)
        else:
            table.append(_PLANE.pack(METHOD_RAW, plane.size))
            bodies.append(plane)
    bodies.append(view[elements * width :])
    return b"".join([*table, *bodies])


def _decode_planes(view: memoryview, raw_length: int, width: int) -> bytes:
    """Parse and check the plane framing, decode each plane, re-interleave, append the tail."""
    elements, tail = divmod(raw_length, width)
    table_end = _HEAD.size + width * _PLANE.size
    if len(view) < table_end:
        raise _corrupt(f"{len(view)} bytes is shorter than the {table_end}-byte plane table")
    version, count = _HEAD.unpack_from(view)
    if version != PLANES_VERSION:
        raise _corrupt(f"plane framing version {version}, expected {PLANES_VERSION}")
    if count != width:
        raise _corrupt(f"{count} byte planes where the transform has {width}")
    entries = [_PLANE.unpack_from(view, _HEAD.size + k * _PLANE.size) for k in range(width)]
    expected = table_end + sum(length for _, length in entries) + tail
    if expected != len(view):
        raise _corrupt(f"plane table and tail account for {expected} bytes, the chunk has {len(view)}")
    planes = []
    offset = table_end
    for k, (method, length) in enumerate(entries):
        body = view[offset : offset + length]
        offset += length
        if method == METHOD_RAW:
            if length != elements:
                raise _corrupt(f"raw plane {k} holds {length} bytes, expected {elements}")
            planes.append(np.frombuffer(body, dtype=np.uint8))
        elif method == METHOD_ZSTD:
            planes.append(np.frombuffer(_unzstd(body, elements, f"plane {k}"), dtype=np.uint8))
        else:
            raise _corrupt(f"plane {k} has unknown method {method}")
    out = np.empty(raw_length, dtype=np.uint8)
    join_planes(planes, out[: elements * width])
    out[elements * width :] = np.frombuffer(view[offset:], dtype=np.uint8)
    return out.tobytes()


def _unzstd(frame: memoryview, expected: int, what: str) -> bytes:
    """Decode one zstd frame that must hold exactly ``expected`` bytes and a checksum.

    The declared content size is checked before decompressing, because the zstandard
    binding sizes its output buffer from the frame header, not from a caller's limit.
    """
    try:
        params = zstandard.get_frame_parameters(frame)
        if params.content_size != expected or not params.has_checksum or params.dict_id:
            raise _corrupt(
                f"{what} header declares {_describe_size(params.content_size)} "
                f"(checksum {'on' if params.has_checksum else 'off'}, dictionary {params.dict_id}); "
                f"expected {expected} bytes, checksum on, no dictionary"
            )
        if expected:
            data = _decompressor().decompress(frame, allow_extra_data=False)
        else:
            # The binding returns b"" for an empty frame without reading it; a streaming
            # decoder reads the blocks and the checksum.
            stream = _decompressor().decompressobj()
            data = stream.decompress(frame)
            if not stream.eof or stream.unused_data:
                raise _corrupt(f"{what} is incomplete or has trailing bytes")
    except zstandard.ZstdError as exc:
        raise _corrupt(f"{what}: {exc}") from exc
    if len(data) != expected:
        raise _corrupt(f"{what} decoded to {len(data)} bytes, expected {expected}")
    return data


def _describe_size(content_size: int) -> str:
    if content_size == zstandard.CONTENTSIZE_UNKNOWN:
        return "no content size"
    return f"{content_size} bytes"


def _corrupt(detail: str) -> IntegrityError:
    return IntegrityError(
        f"corrupt chunk: {detail}",
        hint="the package is damaged or was tampered with; fetch it again and run `ptmpack verify`",
    )


def _check_level(level: int) -> None:
    if isinstance(level, bool) or not isinstance(level, int) or not (MIN_LEVEL <= level <= MAX_LEVEL) or level == 0:
        raise UsageError(
            f"zstd level {level!r} is out of range",
            hint=f"use 1..{MAX_LEVEL}, or a negative fast level down to {MIN_LEVEL}",
        )


def _as_transform(value: Transform | int, error: type[UsageError] | type[UnsupportedError]) -> Transform:
    try:
        return Transform(value)
    except ValueError:
        raise error(
            f"unknown chunk transform {value!r}", hint="known: " + ", ".join(t.name for t in Transform)
        ) from None


def _compressor(key: int | str) -> zstandard.ZstdCompressor:
    """This thread's compressor for a zstd level or for the exponent plane."""
    cache = _local.__dict__.setdefault("compressors", {})
    compressor = cache.get(key)
    if compressor is None:
        if key == _EXPONENT:
            compressor = zstandard.ZstdCompressor(compression_params=_EXPONENT_PARAMS)
        else:
            compressor = zstandard.ZstdCompressor(level=key, write_checksum=True, write_content_size=True)
        cache[key] = compressor
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor (its window limit stays zstd's default of 128 MiB)."""
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor
