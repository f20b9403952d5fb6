"""Exponent byte planes: the bit transform behind the ``EXP_PLANES_*`` chunk transforms.

An IEEE-754 float of ``W`` bytes is ``sign | exponent | mantissa`` from the top bit down.
In trained weights the exponent is highly predictable (weights cluster within a few
octaves), while the mantissa bits are close to random. Zstd on the interleaved bytes
cannot exploit that, because every byte mixes a little exponent with a lot of noise.

Rotating each element left by one bit moves the sign to bit 0, so the bits become
``exponent | mantissa | sign`` and the top byte holds the exponent's top 8 bits:
exactly the exponent for float32 and bfloat16, the 5 exponent bits plus 3 mantissa
bits for float16, the top 8 of 11 exponent bits for float64. Splitting the rotated
elements into byte planes (plane ``k`` is byte ``k`` of every element in little-endian
order, so plane ``W - 1`` is the exponent plane) then gives one plane that compresses
about 3x and ``W - 1`` planes that are nearly incompressible and can be stored raw.

Both directions are numpy operations over blocks of elements: one shift and one narrowing
copy per plane and block, never a Python loop over elements.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_UINT: dict[int, np.dtype] = {2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}

WIDTHS = frozenset(_UINT)
"""Element widths in bytes that have a plane transform."""

BLOCK = 1 << 17
"""Elements per pass: the shifted temporaries (at most 1 MiB) stay in cache, which measured
about twice as fast as whole-chunk passes on 4 MiB chunks."""


def split_planes(data: memoryview, width: int) -> np.ndarray:
    """The ``width`` byte planes of the rotated elements in ``data``, as rows of a 2-D array.

    Only the first ``len(data) // width`` whole elements are split; the caller keeps
    the remaining tail bytes. Row ``k`` (a contiguous ``uint8`` row with one byte per
    element) is byte ``k`` of ``rotl(element, 1)``, counting from the least significant
    byte, so ``join_planes(split_planes(d, w), out)`` restores ``d`` bit for bit, NaN
    payloads and negative zero included.
    """
    uint = _UINT[width]
    bits = 8 * width
    x = np.frombuffer(data, dtype=uint, count=len(data) // width)
    planes = np.empty((width, x.size), dtype=np.uint8)
    scratch = np.empty(min(BLOCK, x.size), dtype=uint)
    low = np.empty_like(scratch)
    for start in range(0, x.size, BLOCK):
        block = x[start : start + BLOCK]
        s = scratch[: block.size]
        lo = low[: block.size]
        np.right_shift(block, bits - 1, out=s)  # the sign, moving to bit 0
        np.left_shift(block, 1, out=lo)
        lo |= s
        planes[0, start : start + block.size] = lo  # the narrowing assignment keeps bits 0..7
        for k in range(1, width):
            # Byte k of rotl(x, 1) is bits 8k-1 .. 8k+6 of x.
            np.right_shift(block, 8 * k - 1, out=s)
            planes[k, start : start + block.size] = s
    return planes


def join_planes(planes: Sequence[np.ndarray], out: np.ndarray) -> None:
    """Interleave byte planes back into elements, writing them into ``out``.

    ``planes`` holds ``W`` equal-length ``uint8`` arrays as made by :func:`split_planes`
    (``W`` in :data:`WIDTHS`); ``out`` is a contiguous ``uint8`` array of exactly
    ``W * len(planes[0])`` bytes. Writing in place lets the decoder place the tail
    after the elements without another copy.
    """
    width = len(planes)
    uint = _UINT[width]
    bits = 8 * width
    x = out.view(uint)
    scratch = np.empty(min(BLOCK, x.size), dtype=uint)
    for start in range(0, x.size, BLOCK):
        block = x[start : start + BLOCK]
        end = start + block.size
        s = scratch[: block.size]
        np.left_shift(planes[-1][start:end], bits - 8, out=block, dtype=uint)
        for k in range(width - 2, -1, -1):
            np.left_shift(planes[k][start:end], 8 * k, out=s, dtype=uint)
            block |= s
        # Undo the rotation: rotr(x, 1).
        np.left_shift(block, bits - 1, out=s)
        block >>= 1
        block |= s
