"""The compressed-tensors pack-quantized layout: bit packing, tensor names, config block."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptmpack.compress.quant.pack_quantized import (
    QuantizedWeight,
    pack_int,
    quantization_config,
    quantized_prefixes,
    read_quantized_linear,
    unpack_int,
    write_quantized_linear,
)
from ptmpack.compress.quant.rtn import quantize_rtn
from ptmpack.errors import IntegrityError, UsageError


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), rows=st.integers(1, 9), cols=st.integers(1, 100), dim=st.sampled_from([0, 1]),
       seed=st.integers(0, 2**32 - 1))
def test_pack_round_trips(bits: int, rows: int, cols: int, dim: int, seed: int) -> None:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    v = np.random.default_rng(seed).integers(lo, hi + 1, size=(rows, cols)).astype(np.int8)
    packed = pack_int(v, bits, dim)
    n = v.shape[dim]
    assert packed.dtype == np.int32
    assert packed.shape[dim] == math.ceil(n * bits / 32) and packed.shape[1 - dim] == v.shape[1 - dim]
    np.testing.assert_array_equal(unpack_int(packed, bits, n, dim), v)


@pytest.mark.torch
@pytest.mark.parametrize("bits", range(1, 9))
def test_packing_is_compressed_tensors_bit_for_bit(bits: int) -> None:
    torch = pytest.importorskip("torch")
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    rng = np.random.default_rng(bits)
    for shape in ((40, 100), (64, 33), (37, 64)):
        v = rng.integers(lo, hi + 1, size=shape).astype(np.int8)
        for dim in (0, 1):
            ours = pack_int(v, bits, dim)
            theirs = helpers.pack_to_int32(torch.from_numpy(v), bits, dim).numpy()
            np.testing.assert_array_equal(ours, theirs)
            back = helpers.unpack_from_int32(torch.from_numpy(ours), bits, torch.Size(shape), dim).numpy()
            np.testing.assert_array_equal(back, v)


def test_pack_refuses_out_of_range_and_unpack_wrong_width() -> None:
    with pytest.raises(UsageError):
        pack_int(np.array([[8]], np.int8), 4)
    with pytest.raises(IntegrityError):
        unpack_int(np.zeros((2, 3), np.int32), 4, 64)
    with pytest.raises(IntegrityError):
        unpack_int(np.zeros((2, 8), np.int64), 4, 64)


@pytest.mark.parametrize("symmetric", [False, True])
def test_write_read_round_trip(symmetric: bool) -> None:
    w = np.random.default_rng(1).normal(size=(48, 128)).astype(np.float32)
    q = quantize_rtn(w, 3, 32, symmetric)
    tensors: dict[str, np.ndarray] = {"layer.weight": w, "layer.bias": np.zeros(48, np.float32)}
    write_quantized_linear(tensors, "layer", q)
    assert "layer.weight" not in tensors and "layer.bias" in tensors
    assert tensors["layer.weight_packed"].shape == (48, 12)
    assert tensors["layer.weight_scale"].shape == (48, 4)
    assert ("layer.weight_zero_point" in tensors) is not symmetric
    if not symmetric:
        assert tensors["layer.weight_zero_point"].shape == (math.ceil(48 * 3 / 32), 4)
    np.testing.assert_array_equal(tensors["layer.weight_shape"], [48, 128])
    assert quantized_prefixes(tensors) == ["layer"]
    back = read_quantized_linear(tensors, "layer", 3)
    np.testing.assert_array_equal(back.codes, q.codes)
    np.testing.assert_array_equal(back.dequantize(), q.dequantize())


def test_g_idx_is_honoured_when_present() -> None:
    codes = np.array([[1, -1, 1, -1]], np.int8)
    q = QuantizedWeight(codes, np.array([[1.0, 10.0]], np.float32), None, 2, 2, g_idx=np.array([0, 1, 1, 0]))
    np.testing.assert_array_equal(q.dequantize(), [[1.0, -10.0, 10.0, -1.0]])
    tensors: dict[str, np.ndarray] = {}
    write_quantized_linear(tensors, "x", q)
    np.testing.assert_array_equal(read_quantized_linear(tensors, "x", 2).dequantize(), q.dequantize())


def test_quantization_config_validates_with_compressed_tensors() -> None:
    ct = pytest.importorskip("compressed_tensors.quantization")
    doc = quantization_config(4, 64, False, ["lm_head"])
    config = ct.QuantizationConfig.model_validate(doc)
    weights = config.config_groups["group_0"].weights
    assert (weights.num_bits, weights.group_size, weights.symmetric, weights.strategy) == (4, 64, False, "group")
    assert config.format == "pack-quantized" and config.ignore == ["lm_head"]
