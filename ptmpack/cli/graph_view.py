"""Draw an IR model as a rich Tree: graphs nested under their parents, each with its
variables (dtype, shape, parameter tensor) and operators (slots and attributes).

Rendering lives in the CLI, the only place that imports rich.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from rich.markup import escape
from rich.text import Text
from rich.tree import Tree

from ptmpack.api.ir import Attribute, AttrType, Graph, ModelStructure, OperatorNode, VariableNode

MAX_LIST = 8
"""List attribute values longer than this are shortened to their first items and a count."""


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("?" if d == -1 else str(d) for d in shape) + "]"


def _value(a: Attribute) -> str:
    if a.type is AttrType.GRAPH:
        return f"graph {a.value}"
    if isinstance(a.value, tuple):
        items = [repr(v) for v in a.value[:MAX_LIST]]
        more = f", … ({len(a.value)} items)" if len(a.value) > MAX_LIST else ""
        return "[" + ", ".join(items) + more + "]"
    return repr(a.value)


def variable_label(v: VariableNode) -> str:
    """One line for a variable: name, dtype and shape, and where a parameter's value lives."""
    text = f"[cyan]{escape(v.name)}[/] {v.dtype}{_shape(v.shape)}"
    if v.persistable:
        text += " [yellow]param[/]"
    if v.tensor is not None:
        text += f" ← {escape(v.tensor.file)}:{escape(v.tensor.name)}"
    return text


def operator_label(node: OperatorNode) -> str:
    """One line for an operator: name, type, its slots (inputs → outputs)."""
    def slots(m: Mapping[str, tuple[str, ...]]) -> str:
        return ", ".join(f"{s}={','.join(escape(n) for n in names)}" for s, names in m.items())

    return f"[bold]{escape(node.name)}[/] [magenta]{escape(node.type)}[/]({slots(node.inputs)}) → {slots(node.outputs)}"


def _graph_tree(model: ModelStructure, g: Graph, parent: Tree, seen: set[int]) -> None:
    seen.add(g.graph_id)
    title = "main graph" if g.parent_graph_id == -1 else "sub-graph"
    fwd = f", forward graph {g.forward_graph_id}" if g.forward_graph_id != -1 else ""
    node = parent.add(f"[bold green]{title} {g.graph_id}[/] ({len(g.variables)} variables, "
                      f"{len(g.operators)} operators{fwd})")
    if g.variables:
        vars_tree = node.add("variables")
        for v in g.variables:
            vars_tree.add(variable_label(v))
    if g.operators:
        ops_tree = node.add("operators")
        for o in g.operators:
            leaf = ops_tree.add(operator_label(o))
            for key, a in o.attributes.items():
                leaf.add(f"{escape(key)}: {a.type.value} = {escape(_value(a))}")
    for child in model.graphs:
        if child.parent_graph_id == g.graph_id and child.graph_id not in seen:
            _graph_tree(model, child, node, seen)


def show_model(model: ModelStructure) -> Tree:
    """A rich Tree of the model: name and interface at the root, graphs nested by parent.

    Graphs whose parent does not resolve (an invalid model) are listed at the top level, so
    the drawing never hides a graph.
    """
    root = Tree(f"[bold]{escape(model.name)}[/] v{escape(model.version)} (producer {escape(model.producer)}, "
                f"opset {model.opset_version})")
    if model.inputs:
        root.add("inputs: " + ", ".join(escape(n) for n in model.inputs))
    if model.outputs:
        root.add("outputs: " + ", ".join(escape(n) for n in model.outputs))
    if model.metadata:
        meta = root.add("metadata")
        for k, v in model.metadata.items():
            meta.add(f"{escape(k)}: {escape(v)}")
    seen: set[int] = set()
    ids = {g.graph_id for g in model.graphs}
    for g in model.graphs:
        if g.graph_id not in seen and (g.parent_graph_id == -1 or g.parent_graph_id not in ids):
            _graph_tree(model, g, root, seen)
    for g in model.graphs:  # parent cycles: still draw each graph once
        if g.graph_id not in seen:
            _graph_tree(model, g, root, seen)
    return root


def plain_lines(tree: Tree, depth: int = 0) -> Iterator[str]:
    """The tree as plain text, one node a line indented two spaces per level (no guides, no markup)."""
    from ptmpack.cli.output import clean

    label = tree.label if isinstance(tree.label, str) else str(tree.label)
    yield "  " * depth + clean(Text.from_markup(label).plain)
    for child in tree.children:
        yield from plain_lines(child, depth + 1)
