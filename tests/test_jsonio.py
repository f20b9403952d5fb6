"""The one strict JSON loader: every hostile document fails with the caller's error class."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptmpack.errors import GraphError, IntegrityError, MetadataError
from ptmpack.jsonio import MAX_DEPTH, Fields, loads_strict

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(JSON)
def test_round_trips_what_json_dumps_writes(doc: object) -> None:
    assert loads_strict(json.dumps(doc).encode(), "doc") == doc


@pytest.mark.parametrize("raw, why", [
    (b'{"a": 1, "a": 2}', "duplicate key"),
    (b'{"a": NaN}', "NaN"),
    (b'[Infinity]', "Infinity"),
    (b"1" * 21, "21 digits"),
    (b"[1e999]", "overflows"),
    (b"\xff{}", "not UTF-8"),
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper"),
    (b"[" * 100_000, "nested deeper"),
    (b'{"a": [1, 2}', "not valid JSON"),
])
def test_hostile_documents_raise_the_callers_error(raw: bytes, why: str) -> None:
    with pytest.raises(IntegrityError, match=why):
        loads_strict(raw, "manifest")
    with pytest.raises(GraphError):
        loads_strict(raw, "graph.json", error=GraphError)
    with pytest.raises(MetadataError):
        loads_strict(raw, "x.json", error=lambda m: MetadataError("x.json", "$", m))


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    doc = {"s": "[" * (MAX_DEPTH * 2)}
    assert loads_strict(json.dumps(doc).encode(), "doc") == doc


def test_fields_check_types_and_name_the_path() -> None:
    f = Fields({"n": 3, "b": True, "h": "ab" * 32, "o": {"x": "y"}, "l": [1, 2]}, "$", GraphError)
    assert f.get("n", int) == 3 and f.uint("n", 4) == 3 and f.uints("l") == [1, 2]
    assert f.sha256_hex("h") == "ab" * 32 and f.obj("o").get("x", str) == "y"
    assert f.optional("missing", int) is None
    with pytest.raises(GraphError, match=r"\$\.b: expected int, got a boolean"):
        f.get("b", int)
    with pytest.raises(GraphError, match=r"\$: missing field 'z'"):
        f.get("z", str)
    with pytest.raises(GraphError, match="out of range"):
        f.uint("n", 3)
    with pytest.raises(GraphError, match="sha256"):
        Fields({"h": "AB" * 32}, "$", GraphError).sha256_hex("h")
