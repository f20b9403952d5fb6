"""Dense int32 bit packing of small signed integers: compressed-tensors' ``pack_to_int32`` layout.

Signed ``bits``-bit values (1 ≤ bits ≤ 8) are offset to unsigned codes ``v + 2^(bits-1)``;
each row is cut into runs of 32 codes, and a run fills exactly ``bits`` little-endian int32
words, code ``i`` at bit ``i·bits`` of the run (so at 3, 5, 6 or 7 bits a code may straddle
two words); the last run is zero-padded and only ``ceil(n·bits/32)`` words are kept.
``packed_dim=0`` packs along the first axis instead (compressed-tensors packs zero points so).
This is bit for bit what compressed-tensors 0.20 writes and reads; the tests check it.
"""

from __future__ import annotations

import math

import numpy as np

from ptmpack.errors import IntegrityError, UsageError


def qrange(bits: int) -> tuple[int, int]:
    """The signed integer range of ``bits``-bit codes: ``(-2^(bits-1), 2^(bits-1) - 1)``."""
    if not 1 <= bits <= 8:
        raise UsageError(f"bit width {bits} is outside 1..8")
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def pack_int(values: np.ndarray, bits: int, packed_dim: int = 1) -> np.ndarray:
    """Pack signed ``bits``-bit integers of a 2-D array into int32 along ``packed_dim``.

    The inverse of :func:`unpack_int`; the layout of compressed-tensors' ``pack_to_int32``.

    Raises:
        UsageError: not 2-D, a bit width outside 1..8, or a value outside the signed range.
    """
    lo, hi = qrange(bits)
    v = np.asarray(values)
    if v.ndim != 2:
        raise UsageError(f"only 2-D arrays are packed, got shape {v.shape}")
    if v.size and (int(v.min()) < lo or int(v.max()) > hi):
        raise UsageError(f"values outside [{lo}, {hi}] cannot be packed in {bits} bits")
    if packed_dim == 0:
        v = v.T
    rows, cols = v.shape
    words = math.ceil(cols * bits / 32)
    runs = math.ceil(cols / 32)
    if 8 % bits == 0:  # whole codes per byte, bytes in little-endian word order: pack bytes, view as words
        per = 8 // bits
        u8 = np.zeros((rows, runs * 32), np.uint8)
        u8[:, :cols] = (v.astype(np.int16) - lo).astype(np.uint8)  # offset to unsigned; every value fits
        u8 = u8.reshape(rows, runs * 32 // per, per)
        packed = u8[:, :, 0].copy()
        for i in range(1, per):
            packed |= u8[:, :, i] << np.uint8(i * bits)
        out = packed.view("<i4")[:, :words].astype(np.int32, copy=False)
        return np.ascontiguousarray(out.T if packed_dim == 0 else out)
    u = np.zeros((rows, runs * 32), np.uint64)
    u[:, :cols] = (v.astype(np.int64) - lo).astype(np.uint64)
    u = u.reshape(rows * runs, 32)
    acc = np.zeros((rows * runs, bits + 1), np.uint64)
    for i in range(32):
        word, offset = divmod(i * bits, 32)
        shifted = u[:, i] << np.uint64(offset)
        acc[:, word] |= shifted & np.uint64(0xFFFFFFFF)
        acc[:, word + 1] |= shifted >> np.uint64(32)
    out = acc[:, :bits].astype(np.uint32).reshape(rows, runs * bits)[:, :words].view(np.int32)
    return np.ascontiguousarray(out.T if packed_dim == 0 else out)


def unpack_int(packed: np.ndarray, bits: int, count: int, packed_dim: int = 1) -> np.ndarray:
    """The signed int8 values of a packed int32 array; ``count`` values along ``packed_dim``.

    Raises:
        IntegrityError: not a 2-D int32 array, or too few words for ``count`` values.
    """
    lo, _ = qrange(bits)
    p = np.asarray(packed)
    if p.ndim != 2 or p.dtype != np.int32:
        raise IntegrityError(f"packed weights must be a 2-D int32 array, got {p.dtype} {list(p.shape)}")
    if packed_dim == 0:
        p = p.T
    rows, words = p.shape
    if words != math.ceil(count * bits / 32):
        raise IntegrityError(f"{words} packed words per row do not hold {count} {bits}-bit values")
    runs = math.ceil(count / 32)
    w = np.zeros((rows, runs * bits), np.uint64)
    w[:, :words] = p.view(np.uint32)
    out = np.empty((rows, runs, 32), np.int8)
    mask = np.uint64((1 << bits) - 1)
    base = np.arange(runs) * bits
    for i in range(32):
        word, offset = divmod(i * bits, 32)
        combined = w[:, base + word]
        if offset + bits > 32:  # straddles into the next word of the same run (32·bits bits fill a run exactly)
            combined = combined | (w[:, base + word + 1] << np.uint64(32))
        out[:, :, i] = ((combined >> np.uint64(offset)) & mask).astype(np.int16) + lo
    result = out.reshape(rows, runs * 32)[:, :count]
    return np.ascontiguousarray(result.T if packed_dim == 0 else result)
