"""ptmpack's GPTQ solver reproduces llm-compressor 0.14's ``quantize_weight`` (fixture made by bench/gptq_golden.py).

The fixture holds seeded ``W`` ``[32, 192]`` and ``H`` with one dead input (column 7) and, per
case, llm-compressor's observer scale/zero point and its dequantized GPTQ output ``Q``
(block 128, dampening 0.01). The solvers agree bit for bit, with one deliberate difference:
llm-compressor's observer takes the group range from the original weight, dead input
included, while ptmpack (like the original GPTQ code) zeroes the dead inputs first, so a
dead weight that is its group's extreme does not widen that group's scale. The rows where
the two rules give different group parameters are computed independently below and checked
for exactly that; every other row must be identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptmpack.compress.quant.gptq.solver import gptq_quantize
from ptmpack.compress.quant.observer import group_params

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "gptq" / "llmcompressor_golden.npz"


def _load() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(FIXTURE) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, json.loads(bytes(arrays.pop("meta")).decode())


ARRAYS, META = _load()


def _rows_where_dead_input_sets_the_range(w: np.ndarray, dead: int, bits: int, group: int, symmetric: bool
                                          ) -> np.ndarray:
    g = dead // group
    block = w[:, g * group:(g + 1) * group]
    zeroed = block.copy()
    zeroed[:, dead % group] = 0.0
    s_orig, z_orig = group_params(block, bits, symmetric)
    s_zero, z_zero = group_params(zeroed, bits, symmetric)
    return (s_orig != s_zero) | (z_orig != z_zero)


def test_the_fixture_has_a_dead_input_and_every_case() -> None:
    h = ARRAYS["H"]
    assert h[META["dead"], META["dead"]] == 0.0
    assert np.count_nonzero(np.diag(h) == 0) == 1
    assert set(META["cases"]) == {"w4_g64_asym_static", "w3_g64_asym_static", "w4_g64_sym_none", "w2_g32_asym_static"}


@pytest.mark.parametrize("case", sorted(META["cases"]))
def test_solver_reproduces_llm_compressor(xp: Any, case: str) -> None:
    c = META["cases"][case]
    w, h = ARRAYS["W"], ARRAYS["H"]
    q = gptq_quantize(w, h, c["bits"], c["group"], c["symmetric"], act_order=c["actorder"] == "static", xp=xp)
    theirs_q, theirs_scale = ARRAYS[f"{case}/Q"], ARRAYS[f"{case}/scale"]
    theirs_zero = ARRAYS[f"{case}/zero_point"]
    ours_q = q.dequantize(np.float32)
    ours_zero = np.zeros_like(theirs_zero) if q.zero_point is None else q.zero_point.astype(np.float32)

    differ = _rows_where_dead_input_sets_the_range(w, META["dead"], c["bits"], c["group"], c["symmetric"])
    same = ~differ
    assert same.sum() >= len(w) - 2  # the fixture is not mostly exceptions
    np.testing.assert_array_equal(ours_q[same], theirs_q[same])
    np.testing.assert_array_equal(q.scale[same], theirs_scale[same])
    np.testing.assert_array_equal(ours_zero[same], theirs_zero[same])
    # The dead input's weight is zero in both, and where it set the group's range, ptmpack's range is narrower.
    np.testing.assert_array_equal(ours_q[:, META["dead"]], 0.0)
    np.testing.assert_array_equal(theirs_q[:, META["dead"]], 0.0)
    g = META["dead"] // c["group"]
    assert np.all(q.scale[differ, g] < theirs_scale[differ, g])
