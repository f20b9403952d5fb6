"""Encode one changed tensor against its base, and decode it back: the part diff and apply share.

:func:`quantize_delta` runs two passes over the tensor in blocks (group maxima,
then codes and error statistics) and returns the packed codes, the compact scales
and the achieved error. :func:`dequantize` is the *only* reconstruction, used by
``apply`` and by ``diff`` to record the digest of what ``apply`` will produce.
:func:`xor_encode`/:func:`xor_decode` are the lossless pair.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ptmpack.quant.group import (
    BITS,
    BLOCK,
    ZERO_STATS,
    ErrorStats,
    Scales,
    blocks,
    codes_of,
    compact_scales,
    dequantize_block,
    error_of,
    group_maxima,
    levels,
    levels_of,
    pack_codes,
    packed_size,
    quantize_block,
    unpack_codes,
    unxor_planes,
    xor_planes,
)

LOSSY_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
"""Tensor dtypes a delta may quantize; every other changed tensor is stored lossless."""


def work_dtype(dtype: np.dtype) -> np.dtype:
    """Where A + Q(Δ) is added: float32, or float64 for float64 tensors (so Δ = 0 stays exact)."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def delta_block(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Δ = B - A of a block, as float32 (subtracted in the work dtype)."""
    w = work_dtype(a.dtype)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite deltas are detected by the caller
        return (b.astype(w, copy=False) - a.astype(w, copy=False)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Quantized:
    """A quantized delta: packed codes, compact scales and what it achieved."""

    bits: int
    group_size: int
    scales: Scales
    packed: np.ndarray
    stats: ErrorStats
    base_sq: float
    """‖A‖² (float64), so the record can state ‖Δ‖/‖A‖."""

    @property
    def delta_rel(self) -> float:
        return (self.stats.delta_sq / self.base_sq) ** 0.5 if self.base_sq else 0.0


def quantize_delta(a: np.ndarray, b: np.ndarray, bits: int, group_size: int) -> Quantized | None:
    """Quantize Δ = B - A (flat arrays of one float dtype) per group at ``bits``.

    Returns None when Δ has a non-finite element (NaN/Inf in A or B, or overflow),
    which only the lossless mode can carry.
    """
    L = levels(bits)
    n = a.size
    maxima = []
    for s, e in blocks(n):
        d = delta_block(a[s:e], b[s:e])
        if not np.isfinite(d).all():
            return None
        maxima.append(group_maxima(d, group_size))
    needed = (np.concatenate(maxima) if maxima else np.zeros(0, np.float32)) / np.float32(L)
    scales = compact_scales(needed.astype(np.float32))
    eff = scales.effective()
    packed = np.empty(packed_size(n, bits), np.uint8)
    stats, base_sq = ZERO_STATS, 0.0
    for s, e in blocks(n):
        d = delta_block(a[s:e], b[s:e])
        sc = eff[s // group_size: -(-e // group_size)]
        q = quantize_block(d, sc, bits, group_size)
        packed[s * bits // 8: packed_size(e, bits)] = pack_codes(codes_of(q, bits), bits)
        stats += error_of(dequantize_block(q, sc, group_size), d)
        a32 = a[s:e].astype(np.float32, copy=False)
        base_sq += float(np.dot(a32, a32))  # informative (‖Δ‖/‖A‖): float32 BLAS accumulation is enough
    return Quantized(bits, group_size, scales, packed, stats, base_sq)


def dequantize(a: np.ndarray, packed: np.ndarray, scales: Scales, bits: int, group_size: int,
               where: str) -> Iterator[np.ndarray]:
    """B' = A + Q(Δ), block by block, in A's dtype.

    Raises:
        IntegrityError: a stored code is 0 (never written: the delta is damaged).
    """
    assert bits in BITS and BLOCK % (8 * group_size) == 0
    eff = scales.effective()
    w = work_dtype(a.dtype)
    for s, e in blocks(a.size):
        codes = unpack_codes(packed[s * bits // 8: packed_size(e, bits)], bits, e - s)
        q = levels_of(codes, bits, where)
        deq = dequantize_block(q, eff[s // group_size: -(-e // group_size)], group_size)
        out = a[s:e].astype(w)
        # Only where q != 0: adding +0.0 would turn an A of -0.0 into +0.0.
        np.add(out, deq.astype(w, copy=False), out=out, where=q != 0)
        yield out.astype(a.dtype, copy=False)


def squared_error(result: np.ndarray, b: np.ndarray) -> float:
    """‖B' - B‖² of a block, in float64: what the final cast to the tensor dtype adds shows here."""
    w = work_dtype(b.dtype)
    err = result.astype(w, copy=False) - b.astype(w, copy=False)
    return float(np.dot(err, err))


def xor_encode(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Byte planes ``[W, n]`` of bits(A) XOR bits(B)."""
    return xor_planes(a, b)


def xor_decode(a: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """The bytes of B (flat uint8) from A and the XOR planes."""
    return unxor_planes(a, planes)
