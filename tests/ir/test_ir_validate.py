"""The validator: one broken model per rule, named after its defect, each rejected with a message
naming the graph, the operator and the reason; valid models (with sub-graphs, custom ops,
packages) accepted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from ptmpack.errors import GraphError
from ptmpack.ir.check import check_model_file
from ptmpack.ir.model import Attribute, AttrType, Graph, ModelStructure, OperatorNode, TensorRef, VariableNode
from ptmpack.ir.validate import validate
from ptmpack.storage.package import open_package
from tests._support.irbuild import GraphBuilder, model, tiny_bert, tiny_llama
from tests._support.trees import write_tree

LLAMA, LLAMA_W = tiny_llama(layers=1)


def _main(m: ModelStructure) -> Graph:
    return m.graphs[0]


def _with_main(m: ModelStructure, **changes: object) -> ModelStructure:
    return replace(m, graphs=(replace(_main(m), **changes), *m.graphs[1:]))


def _op(m: ModelStructure, name: str) -> int:
    return next(i for i, o in enumerate(_main(m).operators) if o.name == name)


def _edit_op(m: ModelStructure, op_name: str, **changes: object) -> ModelStructure:
    ops = list(_main(m).operators)
    i = _op(m, op_name)
    ops[i] = replace(ops[i], **changes)
    return _with_main(m, operators=tuple(ops))


def _edit_var(m: ModelStructure, name: str, **changes: object) -> ModelStructure:
    return _with_main(m, variables=tuple(replace(v, **changes) if v.name == name else v for v in _main(m).variables))


def _attr(t: AttrType, v: object) -> Attribute:
    return Attribute(t, v)


def _subgraph_model(sub_parent: int = 0, call_target: int = 1, extra: tuple[Graph, ...] = ()) -> ModelStructure:
    main, sub = GraphBuilder(0), GraphBuilder(1, parent=sub_parent)
    x, y = main.var("x", "float32", (2,)), main.var("y", "float32", (2,))
    i, o = sub.var("i", "float32", (2,)), sub.var("o", "float32", (2,))
    sub.op("relu", {"X": i}, {"Y": o})
    main.op("call", {"X": [x]}, {"Y": [y]}, name="c", graph=_attr(AttrType.GRAPH, call_target), graph_inputs=["i"],
            graph_outputs=["o"])
    return replace(model(main, sub, inputs=[x], outputs=[y]), graphs=(main.graph(), sub.graph(), *extra))


DEFECTS: dict[str, tuple[Callable[[], ModelStructure], str]] = {
    "duplicate_graph_id": (lambda: replace(LLAMA, graphs=(*LLAMA.graphs, Graph(0, 0))), "graph id 0 is used twice"),
    "two_main_graphs": (lambda: replace(LLAMA, graphs=(*LLAMA.graphs, Graph(1))), "2 main graphs"),
    "dangling_parent": (lambda: replace(LLAMA, graphs=(*LLAMA.graphs, Graph(1, 7))), "graph 1: parent_graph_id 7 names no graph"),
    "dangling_forward": (lambda: replace(LLAMA, graphs=(*LLAMA.graphs, Graph(1, 0, 9))), "forward_graph_id 9"),
    "self_forward": (lambda: replace(LLAMA, graphs=(*LLAMA.graphs, Graph(1, 0, 1))), "refers to the graph itself"),
    "parent_cycle": (lambda: replace(LLAMA, graphs=(*LLAMA.graphs, Graph(1, 2), Graph(2, 1))), "loop"),
    "duplicate_variable": (lambda: _with_main(LLAMA, variables=(*_main(LLAMA).variables, _main(LLAMA).variables[0])),
                           "graph 0: variable 'ids' is declared twice"),
    "duplicate_operator_name": (lambda: _edit_op(LLAMA, "l0.k", name="l0.q"), "operator name 'l0.q' is used twice"),
    "model_input_not_declared": (lambda: replace(LLAMA, inputs=("tokens",)), "input 'tokens' is not a variable"),
    "model_output_never_produced": (lambda: _with_main(LLAMA, operators=_main(LLAMA).operators[:-1]),
                                    "model output 'logits' is produced by no operator"),
    "unknown_operator": (lambda: _edit_op(LLAMA, "l0.silu", type="swish"),
                         r"graph 0, operator 'l0.silu' \(swish\): unknown operator 'swish'"),
    "unknown_input_slot": (lambda: _edit_op(LLAMA, "l0.silu", inputs={"Input": ("l0.gate",)}),
                           r"operator 'l0.silu' \(silu\): silu has no input slot\(s\) Input"),
    "missing_required_slot": (lambda: _edit_op(LLAMA, "l0.q", inputs={"X": ("l0.x",)}), "required input slot W is missing"),
    "two_variables_in_single_slot": (lambda: _edit_op(LLAMA, "l0.silu", inputs={"X": ("l0.gate", "l0.up")}),
                                     "input slot X takes one variable, got 2"),
    "unknown_attribute": (lambda: _edit_op(LLAMA, "l0.silu", attributes={"beta": _attr(AttrType.FLOAT, 1.0)}),
                          "silu has no attribute"),
    "missing_required_attribute": (lambda: _edit_op(LLAMA, "l0.q_reshape", attributes={}), "needs attribute shape"),
    "attribute_of_wrong_type": (lambda: _edit_op(LLAMA, "l0.attn", attributes={"causal": _attr(AttrType.INT, 1)}),
                                "attribute causal is declared int; attention needs bool"),
    "undeclared_input": (lambda: _edit_op(LLAMA, "l0.silu", inputs={"X": ("ghost",)}), "'ghost', which is not a declared variable"),
    "read_before_produced": (lambda: _edit_op(LLAMA, "l0.silu", inputs={"X": ("l0.down",)}),
                             r"operator 'l0.silu' \(silu\): input X reads 'l0.down' before any operator produces it"),
    "reads_its_own_output": (lambda: _edit_op(LLAMA, "l0.silu", inputs={"X": ("l0.act",)}), "reads 'l0.act' before"),
    "produced_twice": (lambda: _edit_op(LLAMA, "l0.up", outputs={"Y": ("l0.gate",)}), "'l0.gate' is already produced"),
    "overwrites_model_input": (lambda: _edit_op(LLAMA, "embed", outputs={"Y": ("ids",)}), "'ids' is an input of the graph"),
    "writes_a_parameter": (lambda: _edit_op(LLAMA, "l0.silu", outputs={"Y": ("l0.wq",)}), "'l0.wq' is a parameter"),
    "undeclared_output": (lambda: _edit_op(LLAMA, "l0.silu", outputs={"Y": ("nowhere",)}), "'nowhere', which is not a variable"),
    "dtype_not_allowed": (lambda: _edit_var(LLAMA, "ids", dtype="float32"), "input X has dtype float32; embedding allows"),
    "declared_shape_disagrees": (lambda: _edit_var(LLAMA, "l0.gate", shape=(-1, -1, 7)),
                                 r"operator 'l0.gate' \(linear\): output Y 'l0.gate' is declared float32 \[-1, -1, 7\]"),
    "declared_rank_disagrees": (lambda: _edit_var(LLAMA, "l0.q_s", shape=(-1, -1, 16)), "is declared float32 \\[-1, -1, 16\\]"),
    "declared_dtype_disagrees": (lambda: _edit_var(LLAMA, "logits", dtype="float16"), "is declared float16"),
    "inconsistent_weight_shape": (lambda: _edit_var(LLAMA, "l0.wq", shape=(16, 8)), r"operator 'l0.q' \(linear\): linear in_features"),
    "graph_attribute_names_no_graph": (lambda: _subgraph_model(call_target=5), "names graph 5, which does not exist"),
    "graph_attribute_names_main_graph": (lambda: _subgraph_model(call_target=0), "names the main graph"),
    "recursive_sub_graph_calls": (lambda: _recursive(), "sub-graph calls recurse"),
    "call_binds_unknown_variable": (lambda: _edit_call(graph_inputs=_attr(AttrType.STRINGS, ("zzz",))), "graph_inputs names 'zzz'"),
    "call_output_never_made": (lambda: _edit_call(graph_outputs=_attr(AttrType.STRINGS, ("q",))), "'q', which is not a variable"),
}


def _edit_call(**attrs: Attribute) -> ModelStructure:
    m = _subgraph_model()
    call = _main(m).operators[0]
    return _with_main(m, operators=(replace(call, attributes={**call.attributes, **attrs}),))


def _recursive() -> ModelStructure:
    m = _subgraph_model()
    sub = m.graphs[1]
    loop = OperatorNode("call", "again", {"X": ("i",)}, {"Y": ("o2",)},
                        {"graph": _attr(AttrType.GRAPH, 1), "graph_inputs": _attr(AttrType.STRINGS, ("i",)),
                         "graph_outputs": _attr(AttrType.STRINGS, ("o",))})
    return replace(m, graphs=(m.graphs[0], replace(sub, variables=(*sub.variables, VariableNode("o2", "float32", (2,))),
                                                     operators=(*sub.operators, loop))))


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_each_broken_rule_is_reported(defect: str) -> None:
    make, message = DEFECTS[defect]
    with pytest.raises(GraphError, match=message) as err:
        validate(make())
    assert err.value.exit_code == 5


def test_valid_models_pass_without_warnings() -> None:
    assert validate(LLAMA) == []
    assert validate(tiny_bert()[0]) == []
    assert validate(_subgraph_model()) == []


def test_unused_variables_are_warnings() -> None:
    m = _with_main(LLAMA, variables=(*_main(LLAMA).variables, VariableNode("spare", "float32", (3,))))
    assert validate(m) == ["graph 0: variable 'spare' is declared but never used"]


def test_custom_operators_pass_with_declared_types() -> None:
    g = GraphBuilder()
    x, y, z = g.var("x", "float32", (2,)), g.var("y", "float16", (9,)), g.var("z", "float16", (9,))
    g.op("custom.vendor_op", {"Anything": x}, {"Out": y}, knob=3)
    g.op("relu", {"X": y}, {"Y": z})
    assert validate(model(g, inputs=[x], outputs=[z])) == []
    g.op("custom.", {"X": z}, {"Y": g.var("w", "float16", (9,))})
    with pytest.raises(GraphError, match=r"unknown operator 'custom\.'"):
        validate(model(g, inputs=[x], outputs=[z]))


def test_sub_graph_sees_ancestor_variables_but_not_siblings() -> None:
    m = _subgraph_model()
    main, sub = m.graphs
    reads_param = replace(sub, operators=(OperatorNode("add", "plus", {"A": ("i",), "B": ("x",)}, {"Y": ("o",)}),))
    assert validate(replace(m, graphs=(main, reads_param))) == []
    sibling = Graph(2, 0, -1, (VariableNode("secret", "float32", (2,), True),))
    reads_sibling = replace(sub, operators=(OperatorNode("add", "plus", {"A": ("i",), "B": ("secret",)}, {"Y": ("o",)}),))
    with pytest.raises(GraphError, match="graph 1, operator 'plus' \\(add\\): input B names 'secret'"):
        validate(replace(m, graphs=(main, reads_sibling, sibling)))


def test_backward_graph_reads_its_forward_graph() -> None:
    m = _subgraph_model()
    backward = Graph(2, 0, 1, (VariableNode("g", "float32", (2,)),),
                     (OperatorNode("relu", "grad", {"X": ("o",)}, {"Y": ("g",)}),))
    assert validate(replace(m, graphs=(*m.graphs, backward))) == []


def test_split_output_count_must_match() -> None:
    g = GraphBuilder()
    x = g.var("x", "float32", (4, 6))
    parts = [g.var(f"p{i}", "float32", (4, 2)) for i in range(3)]
    g.op("split", {"X": x}, {"Y": parts[:2]}, name="cut", axis=1, num=3)
    with pytest.raises(GraphError, match="makes 3 values but names 2"):
        validate(model(g, inputs=[x], outputs=parts[:2]))


def _package(root: Path, tensors: dict[str, np.ndarray], m: ModelStructure) -> Path:
    write_tree(root)
    save_file(tensors, str(root / "Model" / "model.safetensors"))
    (root / "Model" / "graph.json").write_bytes(m.dumps())
    return root


@pytest.mark.parametrize(("defect", "change", "message"), [
    ("tensor_missing", lambda w: w.pop("l0.wq"), "refers to tensor 'l0.wq'.*does not hold"),
    ("tensor_wrong_dtype", lambda w: w.update({"norm": w["norm"].astype(np.float16)}), "is declared float32 \\[16\\] but tensor 'norm' is F16"),
    ("tensor_wrong_shape", lambda w: w.update({"embed": w["embed"][:5]}), "tensor 'embed' is F32 \\[5, 16\\]"),
])
def test_package_tensors_are_checked(tmp_path: Path, defect: str, change: Callable[[dict[str, np.ndarray]], object],
                                     message: str) -> None:
    weights = dict(LLAMA_W)
    change(weights)
    root = _package(tmp_path / defect, weights, LLAMA)
    with open_package(root) as pkg, pytest.raises(GraphError, match=message):
        validate(LLAMA, package=pkg)
    with pytest.raises(GraphError, match=message):
        check_model_file(root)


def test_parameters_without_tensor_references(tmp_path: Path) -> None:
    m = _edit_var(LLAMA, "norm", tensor=None)
    m = _edit_var(m, "lm_head", tensor=TensorRef("Model/model.safetensors", "lm_head"))
    weights = {k: v for k, v in LLAMA_W.items() if k != "norm"}
    root = _package(tmp_path / "t", weights, m)
    report = check_model_file(root)
    assert report.warnings == ("graph 0: parameter 'norm' has no tensor in the package; it must be fed at run time",)
    assert report.tensors_checked == len(weights)
