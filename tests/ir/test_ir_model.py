"""The IR data model: lossless JSON round trip, and schemas/ir.schema.json agreeing with model.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from ptmpack.errors import GraphError
from ptmpack.ir.model import DTYPES, Attribute, AttrType, Graph, ModelStructure, OperatorNode, TensorRef, VariableNode

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "ir.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)

names = st.text(min_size=1, max_size=8)
ints = st.integers(-(2**40), 2**40)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
attr_values = {
    AttrType.INT: ints, AttrType.FLOAT: floats, AttrType.STRING: st.text(max_size=6), AttrType.BOOL: st.booleans(),
    AttrType.INTS: st.lists(ints, max_size=4), AttrType.FLOATS: st.lists(floats, max_size=4),
    AttrType.STRINGS: st.lists(st.text(max_size=4), max_size=4), AttrType.BOOLS: st.lists(st.booleans(), max_size=4),
    AttrType.GRAPH: st.integers(0, 100),
}
attributes = st.sampled_from(list(AttrType)).flatmap(lambda t: attr_values[t].map(lambda v: Attribute(t, v)))
variables = st.builds(VariableNode, names, st.sampled_from(DTYPES), st.lists(st.integers(-1, 64), max_size=4).map(tuple),
                      st.booleans(), st.none() | st.builds(TensorRef, names, names))
slots = st.dictionaries(names, st.lists(names, min_size=0, max_size=3).map(tuple), max_size=3)
operators = st.builds(OperatorNode, names, names, slots, slots, st.dictionaries(names, attributes, max_size=3))


@st.composite
def models(draw: st.DrawFn) -> ModelStructure:
    n = draw(st.integers(1, 3))
    graphs = tuple(
        Graph(i, -1 if i == 0 else draw(st.integers(0, i - 1)), draw(st.integers(-1, n - 1)),
              tuple(draw(st.lists(variables, max_size=3))), tuple(draw(st.lists(operators, max_size=3))))
        for i in range(n))
    return ModelStructure(draw(st.text(max_size=8)), graphs, tuple(draw(st.lists(names, max_size=2))),
                          tuple(draw(st.lists(names, max_size=2))), draw(st.text(max_size=4)), draw(st.text(max_size=4)),
                          draw(st.integers(0, 5)), draw(st.dictionaries(names, st.text(max_size=5), max_size=2)))


@given(models())
def test_json_round_trip_is_lossless(m: ModelStructure) -> None:
    assert ModelStructure.from_json(m.to_json()) == m
    assert ModelStructure.loads(m.dumps()) == m
    assert ModelStructure.loads(m.dumps()).dumps() == m.dumps()


@given(models())
def test_generated_models_validate_against_the_schema(m: ModelStructure) -> None:
    VALIDATOR.validate(m.to_json())
    VALIDATOR.validate(json.loads(m.dumps()))


def _base() -> dict[str, Any]:
    g = Graph(0, -1, -1, (VariableNode("x", "float32", (-1, 4)), VariableNode("w", "float32", (4, 4), True, TensorRef("m.safetensors", "w"))),
              (OperatorNode("relu", "r", {"X": ("x",)}, {"Y": ("y",)}, {"k": Attribute(AttrType.INT, 1)}),))
    return ModelStructure("m", (g,), ("x",), ("y",)).to_json()


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node = doc
    for p in path[:-1]:
        node = node[p]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


_DELETE = object()
G, V, OP = ("graphs", 0), ("graphs", 0, "variables", 0), ("graphs", 0, "operators", 0)
MUTATIONS = {
    "ok_extension_field_at_top": (("x-vendor",), {"a": 1}),
    "ok_extension_field_in_variable": ((*V, "x-note"), "hi"),
    "missing_format": (("format",), _DELETE),
    "wrong_format": (("format",), "onnx"),
    "future_ir_version": (("ir_version",), 2),
    "unknown_top_field": (("flavour",), 1),
    "empty_graph_list": (("graphs",), []),
    "metadata_not_strings": (("metadata",), {"a": 1}),
    "inputs_not_strings": (("inputs",), [1]),
    "opset_is_string": (("opset_version",), "1"),
    "negative_graph_id": ((*G, "graph_id"), -1),
    "parent_below_minus_one": ((*G, "parent_graph_id"), -2),
    "graph_id_is_bool": ((*G, "graph_id"), True),
    "unknown_graph_field": ((*G, "blocks"), []),
    "bad_dtype": ((*V, "dtype"), "float8"),
    "shape_dim_below_minus_one": ((*V, "shape"), [-2]),
    "shape_not_list": ((*V, "shape"), 4),
    "empty_variable_name": ((*V, "name"), ""),
    "persistable_not_bool": ((*V, "persistable"), 1),
    "tensor_missing_name": ((*V, "tensor"), {"file": "m.safetensors"}),
    "empty_operator_type": ((*OP, "type"), ""),
    "operator_name_missing": ((*OP, "name"), _DELETE),
    "slot_not_list": ((*OP, "inputs", "X"), "x"),
    "slot_with_empty_name": ((*OP, "inputs", "X"), [""]),
    "attribute_wrong_value_type": ((*OP, "attributes", "k", "value"), "one"),
    "attribute_bool_as_int": ((*OP, "attributes", "k", "value"), True),
    "attribute_unknown_type": ((*OP, "attributes", "k", "type"), "tensor"),
    "attribute_extra_field": ((*OP, "attributes", "k", "x-doc"), "no"),
    "attribute_negative_graph": ((*OP, "attributes", "k"), {"type": "graph", "value": -1}),
    "attribute_floats_with_string": ((*OP, "attributes", "k"), {"type": "floats", "value": [1.0, "2"]}),
    "ok_attribute_float_given_as_int": ((*OP, "attributes", "k"), {"type": "float", "value": 2}),
    "ok_attribute_strings": ((*OP, "attributes", "k"), {"type": "strings", "value": ["a", ""]}),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_schema_and_model_agree_on_each_defect(case: str) -> None:
    path, value = MUTATIONS[case]
    doc = _set(_base(), path, value)
    schema_ok = VALIDATOR.is_valid(doc)
    try:
        ModelStructure.from_json(doc)
        model_ok = True
    except GraphError:
        model_ok = False
    assert schema_ok == model_ok == case.startswith("ok_"), (case, schema_ok, model_ok)


def test_loads_rejects_non_json() -> None:
    with pytest.raises(GraphError, match="not UTF-8 JSON"):
        ModelStructure.loads(b"\xff{")
    with pytest.raises(GraphError, match="expected an object"):
        ModelStructure.loads(b"[]")


def test_main_graph_must_be_unique() -> None:
    m = ModelStructure("two", (Graph(0), Graph(1)))
    with pytest.raises(GraphError, match="2 main graphs"):
        m.main_graph  # noqa: B018
    with pytest.raises(GraphError, match="no graph 7"):
        ModelStructure("one", (Graph(0),)).graph(7)


def _generator() -> object:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "docs" / "gen_ir_ops.py"
    spec = importlib.util.spec_from_file_location("gen_ir_ops", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_operator_reference_documents_every_registered_operator(tmp_path: Path) -> None:
    from ptmpack.ir.registry import all_ops

    gen = _generator()
    text = gen.render()  # type: ignore[attr-defined]
    for o in all_ops():
        assert f"### `{o.name}`" in text, o.name
        assert o.doc, f"operator {o.name} has no docstring"
    out = tmp_path / "IR-OPS.md"
    assert gen.main(["--output", str(out)]) == 0  # type: ignore[attr-defined]
    assert gen.main(["--check", "--output", str(out)]) == 0  # type: ignore[attr-defined]
    out.write_text("stale")
    assert gen.main(["--check", "--output", str(out)]) == 1  # type: ignore[attr-defined]


def test_committed_operator_reference_is_current() -> None:
    """docs/IR-OPS.md must be regenerated (python docs/gen_ir_ops.py) when an operator changes."""
    assert _generator().main(["--check"]) == 0  # type: ignore[attr-defined]
