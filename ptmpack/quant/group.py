"""Quantizers for a weight delta Δ = B - A, and the lossless XOR of bit patterns.

Lossy (``bits`` 8, 4 or 2): Δ is taken in float32 and cut, in row-major order, into
groups of ``group_size`` elements. Each group gets one scale ``s`` and each element
an integer ``q = rint(Δ / s)`` in ``[-L, L]`` with ``L = 2^(bits-1) - 1`` (mid-tread:
a zero delta stays exactly zero, so untouched weights come back bit-exact). The
scale is ``max|Δ_g| / L`` rounded *up* to the stored precision, so no element is
clipped and ``|q·s - Δ| ≤ s/2`` holds for every element. Scales are stored as
float16 times a per-tensor power of two ``2^scale_exp`` when every non-zero scale
then fits float16's normal range, else as float32. Codes ``q + 2^(bits-1)`` (1 …
2^bits - 1; code 0 is never written) are packed little-endian within bytes.

Lossless (``bits`` 0): the XOR of the two tensors' bit patterns (NaN payloads, ±Inf
and -0.0 included), stored as ``W`` byte planes for a ``W``-byte dtype: plane ``k`` is
byte ``k`` of every element. Fine-tuning leaves sign and exponent mostly unchanged,
so the top planes are nearly all zero and compress away.

Dequantization is ``q.astype(float32) * scale`` (scale = ``float32(f16) · 2^e``, exact);
``apply`` and ``diff`` run the same numpy operations, so ``diff`` can record the digest
of what ``apply`` will produce. Work is done in blocks of :data:`BLOCK` elements so
the temporaries stay small whatever the tensor size. docs/RESIDUAL.md has the layout.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ptmpack.errors import IntegrityError, UsageError

BITS = (2, 4, 8)
"""Lossy bit widths, smallest first (the order ``--bits auto`` tries them)."""
DEFAULT_GROUP = 128
BLOCK = 1 << 20
"""Elements quantized per pass; a multiple of every group size diff accepts times 8."""
MAX_GROUP = 1 << 16
F16_MIN_NORMAL_EXP = -14
F16_TOP_EXP = 14
"""The largest scale of a tensor is stored as float16 in [2^14, 2^15) times 2^scale_exp."""


def check_group_size(group_size: int) -> int:
    """Group sizes are powers of two from 8 to 65536, so blocks and packed bytes align."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 8 \
            or group_size > MAX_GROUP or group_size & (group_size - 1):
        raise UsageError(f"group size {group_size!r} is not a power of two between 8 and {MAX_GROUP}")
    return group_size


def levels(bits: int) -> int:
    """``L``: the largest |q| at this bit width (127, 7, 1)."""
    if bits not in BITS:
        raise UsageError(f"unsupported bit width {bits}; choose one of {', '.join(map(str, BITS))}")
    return (1 << (bits - 1)) - 1


@dataclass(frozen=True)
class Scales:
    """A tensor's group scales as stored: ``values`` (float16 or float32) and ``exp``."""

    values: np.ndarray
    exp: int

    @property
    def dtype(self) -> str:
        return "F16" if self.values.dtype == np.float16 else "F32"

    def effective(self) -> np.ndarray:
        """The float32 scales dequantization multiplies by (exact: a power-of-two shift)."""
        return np.ldexp(self.values.astype(np.float32), np.int32(self.exp)).astype(np.float32)


def compact_scales(needed: np.ndarray) -> Scales:
    """Store float32 scales compactly, never smaller than ``needed`` (so nothing clips).

    float16 with a shared power-of-two exponent keeps 11 significant bits over a
    2^29 range of scales; a tensor whose non-zero scales spread wider keeps float32.
    """
    nonzero = needed[needed > 0]
    if nonzero.size == 0:
        return Scales(np.zeros(needed.shape, np.float16), 0)
    top = int(np.frexp(nonzero.max())[1]) - 1  # floor(log2(max))
    exp = top - F16_TOP_EXP
    if np.frexp(nonzero.min())[1] - 1 - exp < F16_MIN_NORMAL_EXP:
        return Scales(needed.astype(np.float32), 0)
    shifted = np.ldexp(needed, np.int32(-exp)).astype(np.float32)
    half = shifted.astype(np.float16)
    low = half.astype(np.float32) < shifted
    half[low] = np.nextafter(half[low], np.float16(np.inf))
    return Scales(half, exp)


@dataclass(frozen=True)
class ErrorStats:
    """How far Q(Δ) is from Δ: max |error|, ‖Q(Δ)-Δ‖² and ‖Δ‖² (block sums added in float64)."""

    max_abs: float
    err_sq: float
    delta_sq: float

    @property
    def rel_fro(self) -> float:
        """‖Q(Δ)-Δ‖ / ‖Δ‖ (0 when Δ = 0)."""
        return math.sqrt(self.err_sq / self.delta_sq) if self.delta_sq else 0.0

    def __add__(self, other: ErrorStats) -> ErrorStats:
        return ErrorStats(max(self.max_abs, other.max_abs), self.err_sq + other.err_sq, self.delta_sq + other.delta_sq)


ZERO_STATS = ErrorStats(0.0, 0.0, 0.0)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-bit codes little-endian into bytes (last byte zero-filled)."""
    per = 8 // bits
    if bits == 8:
        return codes.astype(np.uint8)
    pad = -codes.size % per
    c = np.concatenate([codes.astype(np.uint8), np.zeros(pad, np.uint8)]) if pad else codes.astype(np.uint8)
    c = c.reshape(-1, per)
    out = c[:, 0].copy()
    for i in range(1, per):
        out |= c[:, i] << np.uint8(i * bits)
    return out


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first ``count`` codes of ``packed`` (the inverse of :func:`pack_codes`)."""
    if bits == 8:
        return packed[:count]
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    out = np.empty((packed.size, per), np.uint8)
    for i in range(per):
        np.bitwise_and(packed >> np.uint8(i * bits), mask, out=out[:, i])
    return out.reshape(-1)[:count]


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def group_maxima(delta: np.ndarray, group_size: int) -> np.ndarray:
    """max |Δ| per group of a flat float32 block (the last group may be short)."""
    n = delta.size
    full = n - n % group_size
    parts = [np.abs(delta[:full].reshape(-1, group_size)).max(axis=1)] if full else []
    if n > full:
        parts.append(np.abs(delta[full:]).max(keepdims=True))
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def _per_element(scales: np.ndarray, n: int, group_size: int) -> np.ndarray:
    return np.repeat(scales, group_size)[:n]


def quantize_block(delta: np.ndarray, scales: np.ndarray, bits: int, group_size: int) -> np.ndarray:
    """Integer levels q (int16) of a float32 block given the effective scale of each of its groups."""
    L = levels(bits)
    s = _per_element(scales, delta.size, group_size)
    q = np.divide(delta, s, out=np.zeros_like(delta), where=s > 0)
    np.rint(q, out=q)
    np.clip(q, -L, L, out=q)
    return q.astype(np.int16)


def dequantize_block(q: np.ndarray, scales: np.ndarray, group_size: int) -> np.ndarray:
    """Q(Δ) of a block: ``q * scale`` in float32 (the one definition diff and apply share)."""
    return q.astype(np.float32) * _per_element(scales, q.size, group_size)


def codes_of(q: np.ndarray, bits: int) -> np.ndarray:
    return (q + (1 << (bits - 1))).astype(np.uint8)


def levels_of(codes: np.ndarray, bits: int, where: str) -> np.ndarray:
    """Integer levels from stored codes; code 0 is never written, so it means damage."""
    if codes.size and not codes.all():
        raise IntegrityError(f"{where}: quantized code 0 found (never written): the delta is corrupt")
    return codes.astype(np.int16) - np.int16(1 << (bits - 1))


def blocks(n: int, block: int = BLOCK) -> Iterator[tuple[int, int]]:
    """[start, end) element ranges of at most ``block`` elements."""
    for start in range(0, n, block):
        yield start, min(n, start + block)


def as_float32(data: np.ndarray) -> np.ndarray:
    return data.astype(np.float32, copy=False)


def error_of(deq: np.ndarray, delta: np.ndarray) -> ErrorStats:
    """Error statistics of one float32 block (dot products per block, summed across blocks in float64)."""
    if not delta.size:
        return ZERO_STATS
    err = deq - delta
    return ErrorStats(float(np.abs(err).max()), float(np.dot(err, err)), float(np.dot(delta, delta)))


def xor_planes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The byte planes (shape ``[W, n]``) of ``bits(a) XOR bits(b)`` for same-width arrays."""
    width = a.dtype.itemsize
    x = np.bitwise_xor(a.view(np.uint8).reshape(-1, width), b.view(np.uint8).reshape(-1, width))
    return np.ascontiguousarray(x.T)


def unxor_planes(a: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """The bytes of B from A and the XOR planes (inverse of :func:`xor_planes`)."""
    width = a.dtype.itemsize
    return np.bitwise_xor(a.view(np.uint8).reshape(-1, width), planes.T).reshape(-1)
