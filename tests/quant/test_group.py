"""The delta quantizer and the lossless XOR: error bounds, bit packing, exactness (property tests)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ptmpack.errors import IntegrityError, UsageError
from ptmpack.quant import group as qz
from ptmpack.residual.codec import dequantize, quantize_delta, xor_decode, xor_encode

GROUPS = st.sampled_from([8, 32, 128, 1024])
BITS = st.sampled_from(qz.BITS)
finite32 = st.floats(-1e6, 1e6, width=32, allow_nan=False, allow_infinity=False)


@given(bits=BITS, codes=st.data())
def test_pack_unpack_round_trip(bits: int, codes: st.DataObject) -> None:
    n = codes.draw(st.integers(0, 300))
    values = codes.draw(hnp.arrays(np.uint8, n, elements=st.integers(0, (1 << bits) - 1)))
    packed = qz.pack_codes(values, bits)
    assert packed.size == qz.packed_size(n, bits)
    assert np.array_equal(qz.unpack_codes(packed, bits, n), values)


@given(bits=BITS, group=GROUPS, delta=hnp.arrays(np.float32, st.integers(1, 700), elements=finite32),
       magnitude=st.sampled_from([1e-30, 1e-6, 1.0, 1e6]))
def test_error_at_most_half_a_scale(bits: int, group: int, delta: np.ndarray, magnitude: float) -> None:
    """|Q(Δ) - Δ| ≤ s/2 for every element, s the stored (effective) scale of its group; nothing clips."""
    d = (delta.astype(np.float64) * magnitude).astype(np.float32)
    a = np.zeros_like(d)
    q = quantize_delta(a, d, bits, group)
    assert q is not None
    eff = q.scales.effective()
    needed = qz.group_maxima(d, group) / np.float32(qz.levels(bits))
    assert (eff >= needed).all(), "a stored scale below max|Δ|/L would clip"
    result = np.concatenate(list(dequantize(a, q.packed, q.scales, bits, group, "t")))
    per_element = np.repeat(eff, group)[: d.size].astype(np.float64)
    err = np.abs(result.astype(np.float64) - d.astype(np.float64))
    assert (err <= per_element / 2 * (1 + 1e-6) + np.finfo(np.float32).smallest_subnormal).all()
    assert q.stats.max_abs == pytest.approx(err.max(), rel=1e-6, abs=1e-45)


@given(bits=BITS, group=GROUPS, base=hnp.arrays(np.float32, 300, elements=finite32),
       mask=hnp.arrays(np.bool_, 300))
def test_zero_delta_stays_exact(bits: int, group: int, base: np.ndarray, mask: np.ndarray) -> None:
    """Elements whose delta is zero come back bit-exact, -0.0 included (mid-tread levels include 0)."""
    base[::7] = np.float32(-0.0)
    target = base.copy()
    target[mask] += np.float32(0.5)
    q = quantize_delta(base, target, bits, group)
    assert q is not None
    result = np.concatenate(list(dequantize(base, q.packed, q.scales, bits, group, "t")))
    changed = target != base
    assert np.array_equal(result[~changed].view(np.uint32), base[~changed].view(np.uint32))


def test_relative_error_per_bit_width() -> None:
    """On Gaussian deltas: each extra bit pair cuts the error about 4x (8 bits: under 1%)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal(1 << 16).astype(np.float32) * 0.05
    b = a + rng.standard_normal(a.size).astype(np.float32) * 1e-3
    errors = {bits: quantize_delta(a, b, bits, 128).stats.rel_fro for bits in qz.BITS}  # type: ignore[union-attr]
    assert errors[8] < 0.01
    assert errors[4] < 0.2
    assert errors[2] < 0.8
    assert errors[8] < errors[4] / 8 < errors[2] / 8


def test_scales_float16_with_shared_exponent_when_the_range_fits() -> None:
    needed = np.array([1e-7, 3e-6, 0.0, 2.5e-5], np.float32)
    s = qz.compact_scales(needed)
    assert s.dtype == "F16"
    assert (s.effective() >= needed).all()
    assert np.allclose(s.effective(), needed, rtol=1e-3)


def test_scales_fall_back_to_float32_over_a_huge_range() -> None:
    needed = np.array([1e-30, 1.0], np.float32)
    s = qz.compact_scales(needed)
    assert s.dtype == "F32" and s.exp == 0
    assert np.array_equal(s.effective(), needed)


def test_all_zero_scales() -> None:
    s = qz.compact_scales(np.zeros(4, np.float32))
    assert s.dtype == "F16" and not s.effective().any()


def test_non_finite_delta_is_refused() -> None:
    a = np.array([1.0, np.inf, 2.0], np.float32)
    b = np.array([1.5, np.inf, 2.0], np.float32)
    assert quantize_delta(a, b, 8, 8) is None


def test_code_zero_means_damage() -> None:
    with pytest.raises(IntegrityError, match="code 0"):
        qz.levels_of(np.array([128, 0], np.uint8), 8, "t")


@pytest.mark.parametrize("group", [0, 7, 100, 1 << 17, True])
def test_bad_group_sizes(group: int) -> None:
    with pytest.raises(UsageError):
        qz.check_group_size(group)


SPECIALS = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -2.5, 1e-40]


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64, np.int64, np.bool_, np.uint8])
def test_xor_round_trip_is_bit_exact(dtype: type) -> None:
    rng = np.random.default_rng(1)
    if np.dtype(dtype).kind == "f" or dtype is ml_dtypes.bfloat16:
        a = np.array(SPECIALS + list(rng.standard_normal(50)), np.float64).astype(dtype)
        b = np.array(SPECIALS[::-1] + list(rng.standard_normal(50)), np.float64).astype(dtype)
        nan_payload = np.frombuffer(np.array([0x7FF0000000000123], np.uint64).tobytes(), np.float64)
        b[3] = nan_payload.astype(dtype)[0] if dtype is np.float64 else b[3]
    else:
        a = rng.integers(0, 2, 58).astype(dtype)
        b = rng.integers(0, 2, 58).astype(dtype)
    planes = xor_encode(a, b)
    assert planes.shape == (a.dtype.itemsize, a.size)
    assert xor_decode(a, planes).tobytes() == b.tobytes()


@given(hnp.arrays(np.uint32, st.integers(0, 200)), hnp.arrays(np.uint32, st.integers(0, 200)))
def test_xor_any_bit_patterns(x: np.ndarray, y: np.ndarray) -> None:
    n = min(x.size, y.size)
    a, b = x[:n].view(np.float32), y[:n].view(np.float32)
    assert xor_decode(a, xor_encode(a, b)).tobytes() == b.tobytes()
