"""Properties every module operator (Tables 15-39, 50-56) must have, over the cases of its test module.

Each case builder draws valid inputs for one operator; here every operator's inferred
types must equal its kernel's outputs, a float16 run must track the float32 run, and the
registry entry must be documented and typed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptmpack.ir.registry import lookup
from tests._support.opcheck import check_float16, check_infer
from tests.ir.test_ir_modules import CASES as MODULE_CASES
from tests.ir.test_ir_multimodal import CASES as MULTIMODAL_CASES
from tests.ir.test_ir_tuning_rag import CASES as TUNING_RAG_CASES


def _inference_only(case: Callable[..., tuple]) -> Callable[..., tuple]:
    """Tuning and RAG cases build (inputs, attrs); every other case adds its training flag."""
    return lambda draw, rng: (*case(draw, rng), False)


CASES = {**MODULE_CASES, **MULTIMODAL_CASES, **{n: _inference_only(c) for n, c in TUNING_RAG_CASES.items()}}


@pytest.mark.parametrize("name", sorted(CASES))
@given(data=st.data())
def test_inferred_shapes_match_kernel(name: str, data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    inputs, attrs, training = CASES[name](data.draw, rng)
    check_infer(name, inputs, training, **attrs)


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=5)
@given(data=st.data())
def test_float16_compute(name: str, data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    inputs, attrs, training = CASES[name](data.draw, rng)
    check_float16(name, inputs, training, **attrs)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_operator_is_documented_and_typed(name: str) -> None:
    opdef = lookup(name)
    assert opdef is not None and len(opdef.doc) > 150
    assert opdef.table.startswith("Table ")
    assert all(s.dtypes for s in opdef.inputs)
    assert all(a.doc for a in opdef.attributes)
