"""The transform ids of the codec field: how a chunk is rearranged before zstd (no numpy here).

Kept apart from the codec itself so that naming a codec (``inspect``) loads nothing heavy.
"""

from __future__ import annotations

import enum


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
