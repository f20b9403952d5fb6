"""The dtype leaf: bfloat16 widened by a bit shift equals ml_dtypes' own cast for every bit pattern."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ptmpack.tensors.dtypes import to_float32


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    nan = np.isnan(want)
    return bool(np.array_equal(np.isnan(got), nan) and np.array_equal(got[~nan].view(np.uint32),
                                                                        want[~nan].view(np.uint32)))


def test_every_bfloat16_bit_pattern_widens_as_ml_dtypes_casts_it() -> None:
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(ml_dtypes.bfloat16)  # ±0, subnormals, inf, NaN
    got = to_float32(every)
    assert got.dtype == np.float32 and _same(got, every.astype(np.float32))


@given(st.lists(st.integers(0, (1 << 16) - 1), min_size=1, max_size=64), st.integers(1, 4))
def test_slices_and_shapes_are_kept(values: list[int], step: int) -> None:
    a = np.asarray(values, np.uint16).view(ml_dtypes.bfloat16)[::step]  # a strided view, as a row slice may be
    got = to_float32(a)
    assert got.shape == a.shape and _same(got, a.astype(np.float32))
    got[...] = 0  # a copy: the source is untouched
    assert np.array_equal(a.view(np.uint16), np.asarray(values, np.uint16)[::step])


def test_other_dtypes_are_cast_and_copied() -> None:
    a = np.asarray([1.5, -2.25], np.float16)
    got = to_float32(a)
    assert got.dtype == np.float32 and got.tolist() == [1.5, -2.25]
    f = np.ones(3, np.float32)
    assert to_float32(f) is not f
