"""Round-to-nearest group quantization: hand-computed cases and compressed-tensors' own quantizer."""

from __future__ import annotations

import numpy as np
import pytest

from ptmpack.compress.quant.linear import Target, choose_group_size, largest_valid_group
from ptmpack.compress.quant.rtn import quantize_rtn
from ptmpack.errors import UsageError


def test_asymmetric_hand_computed() -> None:
    # 2 bits: codes in [-2, 1]; min -1, max 2 -> scale 3/3 = 1, zero point -2 - (-1/1) = -1.
    q = quantize_rtn(np.array([[-1.0, 0.0, 0.4, 2.0]], np.float32), 2, 4)
    np.testing.assert_array_equal(q.scale, [[1.0]])
    np.testing.assert_array_equal(q.zero_point, [[-1]])
    np.testing.assert_array_equal(q.codes, [[-2, -1, -1, 1]])
    np.testing.assert_array_equal(q.dequantize(), [[-1.0, 0.0, 0.0, 2.0]])


def test_symmetric_hand_computed() -> None:
    # 4 bits: max |w| 7.5 -> scale 7.5 / (15 / 2) = 1; codes round(w) clamped to [-8, 7]; no zero point.
    q = quantize_rtn(np.array([[-3.0, 1.4, 0.0, 7.5]], np.float32), 4, 4, symmetric=True)
    assert q.zero_point is None
    np.testing.assert_array_equal(q.scale, [[1.0]])
    np.testing.assert_array_equal(q.codes, [[-3, 1, 0, 7]])


def test_zero_stays_representable_and_groups_are_independent() -> None:
    w = np.array([[1.0, 2.0, 3.0, 4.0, -8.0, -4.0, -2.0, -1.0]], np.float32)
    q = quantize_rtn(w, 4, 4)
    assert q.scale.shape == (1, 2)
    # Each group's range is widened to include 0, so a zero weight dequantizes to exactly 0.
    z = quantize_rtn(np.array([[0.0, 1.0, 2.0, 3.0]], np.float32), 4, 4)
    assert z.dequantize()[0, 0] == 0.0
    assert np.abs(q.dequantize() - w).max() <= q.scale.max() / 2 + 1e-6


@pytest.mark.torch
@pytest.mark.parametrize(("bits", "symmetric"), [(2, False), (3, False), (4, False), (4, True), (8, False), (8, True)])
def test_matches_compressed_tensors_quantizer(bits: int, symmetric: bool) -> None:
    torch = pytest.importorskip("torch")
    ct = pytest.importorskip("compressed_tensors.quantization")
    helpers = pytest.importorskip("compressed_tensors.quantization.utils.helpers")
    forward = pytest.importorskip("compressed_tensors.quantization.lifecycle.forward")
    w = np.random.default_rng(bits).normal(size=(16, 64)).astype(np.float32)
    ours = quantize_rtn(w, bits, 32, symmetric)
    args = ct.QuantizationArgs(num_bits=bits, symmetric=symmetric, strategy="group", group_size=32)
    t = torch.from_numpy(w).reshape(16, 2, 32)
    scale, zp = helpers.calculate_qparams(t.amin(-1), t.amax(-1), args)
    np.testing.assert_allclose(ours.scale, scale.numpy(), rtol=1e-6)
    if not symmetric:
        np.testing.assert_array_equal(ours.zero_point, zp.numpy())
    codes = forward.quantize(torch.from_numpy(w), scale, zp, args, dtype=torch.int8)
    np.testing.assert_array_equal(ours.codes, codes.numpy())


def _targets(*widths: int) -> list[Target]:
    return [Target(f"l{i}", f"l{i}.weight", f"op{i}", w, 8) for i, w in enumerate(widths)]


def test_group_size_must_divide_every_width_and_the_refusal_names_the_largest_valid() -> None:
    smollm = _targets(576, 576, 1536)
    with pytest.raises(UsageError) as err:
        choose_group_size(smollm, 128)
    assert err.value.exit_code == 2 and "--group-size 64" in err.value.diagnostics()
    assert choose_group_size(smollm, None) == 64
    assert choose_group_size(smollm, 64) == 64
    assert choose_group_size(_targets(384, 1536), None) == 128
    assert largest_valid_group([576, 1536], 128) == 64
