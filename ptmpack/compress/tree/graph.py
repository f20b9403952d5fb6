"""Small edits of a chapter-6 IR model that :mod:`ptmpack.ir.convert_hf` cannot express by itself.

The structure steps rebuild ``Model/graph.json`` from config.json + safetensors whenever they can;
a few results have no Hugging Face spelling (a normalization folded away, an explicit
``unified_norm``, activation fake-quant). Those are applied to the converter's graph here, on
the frozen IR records, and the result is validated before it is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ptmpack.errors import GraphError
from ptmpack.ir.model import Attribute, Graph, ModelStructure, OperatorNode, TensorRef, VariableNode
from ptmpack.ir.registry import lookup


def consumers(graph: Graph) -> dict[str, list[tuple[OperatorNode, str]]]:
    """Variable name → the (operator, input slot) pairs that read it."""
    found: dict[str, list[tuple[OperatorNode, str]]] = {}
    for node in graph.operators:
        for slot, names in node.inputs.items():
            for n in names:
                found.setdefault(n, []).append((node, slot))
    return found


def op_by_name(graph: Graph, name: str) -> OperatorNode:
    for node in graph.operators:
        if node.name == name:
            return node
    raise GraphError(f"the graph has no operator {name!r}")


def _with(model: ModelStructure, graph: Graph) -> ModelStructure:
    graphs = tuple(graph if g.graph_id == graph.graph_id else g for g in model.graphs)
    return dataclasses.replace(model, graphs=graphs)


def bypass(model: ModelStructure, op_name: str, *, through: str = "X", out: str = "Y") -> ModelStructure:
    """Remove operator ``op_name``; whatever read its ``out`` reads its ``through`` input instead.

    Raises:
        GraphError: no such operator, or its output is a model output.
    """
    g = model.main_graph
    node = op_by_name(g, op_name)
    src, dst = node.inputs[through][0], node.outputs[out][0]
    if dst in model.outputs:
        raise GraphError(f"{op_name}: its output {dst!r} is a model output and cannot be bypassed")
    gone = {n for names in node.outputs.values() for n in names}
    ops = tuple(dataclasses.replace(o, inputs={k: tuple(src if n == dst else n for n in v) for k, v in o.inputs.items()})
                for o in g.operators if o.name != op_name)
    variables = tuple(v for v in g.variables if v.name not in gone)
    return _with(model, dataclasses.replace(g, operators=ops, variables=variables))


def replace_op(model: ModelStructure, op_name: str, op_type: str, inputs: Mapping[str, Sequence[str]],
               params: Sequence[VariableNode] = (), **attrs: Any) -> ModelStructure:
    """Swap operator ``op_name`` for an ``op_type`` node of the same name writing the same ``Y``.

    ``params`` are new parameter variables to declare; every other output slot the new type has
    is declared as ``<op_name>.<slot>`` with its inferred type.

    Raises:
        GraphError: unknown operator type or attribute.
    """
    g = model.main_graph
    old = op_by_name(g, op_name)
    node, extra = _typed_node(g, op_type, op_name, inputs, params, attrs, old.outputs["Y"])
    dropped = {n for s, names in old.outputs.items() if s != "Y" for n in names}
    ops = tuple(node if o.name == op_name else o for o in g.operators)
    variables = tuple(v for v in g.variables if v.name not in dropped) + tuple(params) + tuple(extra)
    return _with(model, dataclasses.replace(g, operators=ops, variables=variables))


def _typed_node(g: Graph, op_type: str, name: str, inputs: Mapping[str, Sequence[str]],
                params: Sequence[VariableNode], attrs: Mapping[str, Any],
                y: tuple[str, ...] | None) -> tuple[OperatorNode, list[VariableNode]]:
    """An ``op_type`` node named ``name`` reading ``inputs``, and the variables its outputs need declared.

    ``Y`` is written to ``y`` when given (already declared), else to a new ``<name>.Y``; every other
    output slot the type infers is declared as ``<name>.<slot>`` with its inferred type.

    Raises:
        GraphError: unknown operator type or attribute, inputs of the wrong shape, or no ``Y`` to write.
    """
    from ptmpack.ir.registry import TensorType

    opdef = lookup(op_type)
    if opdef is None:
        raise GraphError(f"unknown operator type {op_type!r}")
    declared = {**g.variable_map(), **{p.name: p for p in params}}
    types = {s: TensorType(declared[v[0]].dtype, declared[v[0]].shape) for s, v in inputs.items()}
    resolved = opdef.resolve_attributes(dict(attrs), f"operator {name!r}")
    inferred = opdef.infer({s.name: types.get(s.name) for s in opdef.inputs}, resolved)
    new_vars: list[VariableNode] = []
    if y is None:
        t = inferred.get("Y")
        if t is None:
            raise GraphError(f"operator {name!r} ({op_type}) infers no Y output to insert")
        y = (f"{name}.Y",)
        new_vars.append(VariableNode(y[0], t.dtype, tuple(t.shape)))
    outputs: dict[str, tuple[str, ...]] = {"Y": y}
    for slot, t in inferred.items():
        if slot != "Y" and t is not None:
            outputs[slot] = (f"{name}.{slot}",)
            new_vars.append(VariableNode(f"{name}.{slot}", t.dtype, tuple(t.shape)))
    typed = {k: Attribute(opdef.attribute(k).type, v) for k, v in attrs.items()}  # type: ignore[union-attr]
    return OperatorNode(op_type, name, {k: tuple(v) for k, v in inputs.items()}, outputs, typed), new_vars


def param(name: str, dtype: str, shape: Sequence[int], file: str = "Model/model.safetensors") -> VariableNode:
    """A parameter variable backed by tensor ``name`` of ``file``."""
    return VariableNode(name, dtype, tuple(shape), True, TensorRef(file, name))


def checked(model: ModelStructure) -> ModelStructure:
    """``model`` after :func:`ptmpack.ir.validate.validate` accepted it.

    Raises:
        GraphError: the edited model breaks an IR rule.
    """
    from ptmpack.ir.validate import validate

    validate(model)
    return model


def insert(model: ModelStructure, op_type: str, name: str, inputs: Mapping[str, Sequence[str]], *, redirect: str,
           readers: set[str] | None = None, params: Sequence[VariableNode] = (), **attrs: Any) -> ModelStructure:
    """Insert operator ``name`` reading ``inputs``; its ``Y`` (``<name>.Y``) replaces ``redirect`` for ``readers``.

    ``readers`` are operator names (None: every operator that read ``redirect``). The new node goes
    right after the producer of ``redirect``; ``params`` are new parameter variables to declare.

    Raises:
        GraphError: unknown operator type or attribute, or inputs of the wrong shape.
    """
    g = model.main_graph
    node, new_vars = _typed_node(g, op_type, name, inputs, params, attrs, None)
    y = node.outputs["Y"][0]
    ops = [dataclasses.replace(o, inputs={k: tuple(y if n == redirect else n for n in v) for k, v in o.inputs.items()})
           if (readers is None or o.name in readers) else o for o in g.operators]
    produced_at = [i for i, o in enumerate(ops) if any(redirect in names for names in o.outputs.values())]
    at = produced_at[0] + 1 if produced_at else 0
    ops.insert(at, node)
    variables = tuple(g.variables) + tuple(params) + tuple(new_vars)
    return _with(model, dataclasses.replace(g, operators=tuple(ops), variables=variables))


def retype(model: ModelStructure, params: Mapping[str, Sequence[int]],
           attrs: Mapping[str, Mapping[str, Any]] = {}) -> ModelStructure:
    """Give parameters new shapes and operators new attribute values, then re-infer every operator's outputs.

    How a pruned checkpoint (per-layer head counts or FFN widths the converter's config cannot
    say) gets a graph: build it for the unpruned shapes, then call this with the real ones.

    Raises:
        GraphError: the new shapes do not fit the operators.
    """
    from ptmpack.ir.registry import TensorType

    g = model.main_graph
    variables = {v.name: (dataclasses.replace(v, shape=tuple(params[v.name])) if v.name in params else v)
                 for v in g.variables}
    types = {n: TensorType(v.dtype, v.shape) for n, v in variables.items()}
    ops = []
    for node in g.operators:
        if node.name in attrs:
            opdef0 = lookup(node.type)
            assert opdef0 is not None
            extra = {k: Attribute(opdef0.attribute(k).type, v) for k, v in attrs[node.name].items()}  # type: ignore[union-attr]
            node = dataclasses.replace(node, attributes={**node.attributes, **extra})
        opdef = lookup(node.type)
        if opdef is None:
            raise GraphError(f"unknown operator type {node.type!r}")
        given = {k: a.value for k, a in node.attributes.items()}
        resolved = opdef.resolve_attributes(given, f"operator {node.name!r}")
        args = {s.name: ([types[n] for n in node.inputs.get(s.name, ())] if s.variadic else
                         (types[node.inputs[s.name][0]] if node.inputs.get(s.name) else None)) for s in opdef.inputs}
        inferred = opdef.infer(args, resolved)
        for slot, names in node.outputs.items():
            got = inferred.get(slot)
            values = list(got) if isinstance(got, (list, tuple)) else [got]
            for n, t in zip(names, values, strict=False):
                if t is not None:
                    variables[n] = dataclasses.replace(variables[n], dtype=t.dtype, shape=tuple(t.shape))
                    types[n] = TensorType(t.dtype, tuple(t.shape))
        ops.append(node)
    return _with(model, dataclasses.replace(g, operators=tuple(ops), variables=tuple(variables.values())))
