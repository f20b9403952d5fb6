"""Check an IR model against the rules of GB/T 42382.2 §6.1 and the operator registry.

``validate`` raises :class:`GraphError` at the first broken rule, naming the graph, the
operator (name and type) and the reason; it returns warnings for things that are legal but
suspicious (unused variables, parameters that must be fed). The rules, in order:

1. graph ids are unique; exactly one main graph (``parent_graph_id`` -1); every parent and
   forward reference resolves, and parent links form a tree rooted at the main graph;
2. variable names and operator names are unique within each graph; the model's inputs and
   outputs are variables of the main graph;
3. every operator type is registered (or namespaced ``custom.``); its slots match the
   definition (required present, none unknown, one variable per non-variadic slot); its
   attributes have the declared types; GRAPH attributes name existing sub-graphs and
   sub-graph calls do not recurse;
4. data flow: every input is a declared variable visible from the operator's graph (its own,
   an ancestor's, or its forward graph's) that is a model input, a parameter, a sub-graph
   input bound by a ``call``, or the output of an earlier operator; every variable is
   produced at most once, by an operator of its own graph — so the graph is acyclic;
5. input dtypes are allowed by the slot; inferred output types agree with the declared
   ones (same dtype and rank; -1 matches any dimension);
6. with a package, every parameter with a tensor reference names an existing tensor of the
   declared dtype and shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ptmpack.errors import GraphError
from ptmpack.format.manifest import TensorRecord
from ptmpack.ir.model import AttrType, Graph, ModelStructure, OperatorNode, TensorRef, VariableNode
from ptmpack.ir.registry import OpDef, TensorType, lookup
from ptmpack.storage.package import FileInfo, Package

GRAPH_FILE = "Model/graph.json"
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
"""safetensors dtype names → IR dtype names (the others have no IR dtype)."""


def where(graph: Graph, node: OperatorNode | None = None) -> str:
    """How messages name a place: ``graph 0, operator 'ln1' (layer_norm)``."""
    return f"graph {graph.graph_id}" + (f", operator {node.name!r} ({node.type})" if node else "")


def shapes_match(declared: tuple[int, ...], actual: tuple[int, ...]) -> bool:
    """Same rank and every dimension equal where both are known (-1 matches anything)."""
    return len(declared) == len(actual) and all(a == -1 or b == -1 or a == b for a, b in zip(declared, actual, strict=True))


def find_tensor(package: Package, ref: TensorRef) -> tuple[FileInfo, TensorRecord] | None:
    """The tensor a reference names: file as given, or relative to ``Model/``; None when absent."""
    for path in (ref.file, f"Model/{ref.file}"):
        for f in package.files:
            if f.path == path and f.tensors:
                hit = next((t for t in f.tensors if t.name == ref.name), None)
                if hit is not None:
                    return f, hit
    return None


def graph_tree(model: ModelStructure) -> dict[int, Graph]:
    """The graphs by id after checking rule 1 (unique ids, one root, references resolve, no cycles).

    Raises:
        GraphError: a broken rule.
    """
    graphs: dict[int, Graph] = {}
    for g in model.graphs:
        if g.graph_id in graphs:
            raise GraphError(f"model {model.name!r}: graph id {g.graph_id} is used twice")
        graphs[g.graph_id] = g
    model.main_graph  # noqa: B018  (raises unless exactly one root)
    for g in model.graphs:
        for kind, ref in (("parent_graph_id", g.parent_graph_id), ("forward_graph_id", g.forward_graph_id)):
            if ref != -1 and ref not in graphs:
                raise GraphError(f"graph {g.graph_id}: {kind} {ref} names no graph")
            if ref == g.graph_id:
                raise GraphError(f"graph {g.graph_id}: {kind} refers to the graph itself")
        seen = {g.graph_id}
        p = g.parent_graph_id
        while p != -1:
            if p in seen:
                raise GraphError(f"graph {g.graph_id}: parent links loop through graph {p} instead of reaching the main graph")
            seen.add(p)
            p = graphs[p].parent_graph_id
    return graphs


class _Checker:
    """State of one validation: types known so far per graph, and which variables are read."""

    def __init__(self, model: ModelStructure) -> None:
        self.model = model
        self.graphs = graph_tree(model)
        self.vars: dict[int, dict[str, VariableNode]] = {}
        for g in model.graphs:
            self.vars[g.graph_id] = {}
            for v in g.variables:
                if v.name in self.vars[g.graph_id]:
                    raise GraphError(f"{where(g)}: variable {v.name!r} is declared twice")
                self.vars[g.graph_id][v.name] = v
            names = [o.name for o in g.operators]
            dup = next((n for n in names if names.count(n) > 1), None)
            if dup is not None:
                raise GraphError(f"{where(g)}: operator name {dup!r} is used twice")
        self.types: dict[int, dict[str, TensorType]] = {
            gid: {n: TensorType(v.dtype, v.shape) for n, v in vs.items()} for gid, vs in self.vars.items()}
        self.read: set[tuple[int, str]] = set()
        self.bound: dict[int, set[str]] = {gid: set() for gid in self.graphs}
        self.calls: dict[int, set[int]] = {gid: set() for gid in self.graphs}

    def scope(self, g: Graph) -> list[int]:
        """Graph ids whose variables ``g`` sees, nearest first: itself, its ancestors, its forward graph's chain."""
        out: list[int] = []
        for start in (g.graph_id, g.forward_graph_id):
            gid = start
            while gid != -1 and gid not in out:
                out.append(gid)
                gid = self.graphs[gid].parent_graph_id
        return out

    def resolve(self, g: Graph, name: str) -> tuple[int, VariableNode] | None:
        return next(((gid, self.vars[gid][name]) for gid in self.scope(g) if name in self.vars[gid]), None)

    def order(self) -> list[Graph]:
        """Graphs parents first, so ancestor types are known before a sub-graph reads them."""
        main = self.model.main_graph
        out, queue = [], [main]
        while queue:
            g = queue.pop(0)
            out.append(g)
            queue.extend(c for c in self.model.graphs if c.parent_graph_id == g.graph_id)
        return out

    def run(self) -> list[str]:
        main = self.model.main_graph
        for kind, names in (("input", self.model.inputs), ("output", self.model.outputs)):
            for n in names:
                if n not in self.vars[main.graph_id]:
                    raise GraphError(f"model {self.model.name!r}: {kind} {n!r} is not a variable of the main graph")
        for g in self.model.graphs:
            self.prescan_calls(g)
        self.check_recursion()
        for g in self.order():
            self.check_graph(g)
        return self.warnings()

    def prescan_calls(self, g: Graph) -> None:
        """Collect GRAPH attribute targets and the sub-graph inputs ``call`` operators bind."""
        for node in g.operators:
            for key, a in node.attributes.items():
                if a.type is not AttrType.GRAPH:
                    continue
                if a.value not in self.graphs:
                    raise GraphError(f"{where(g, node)}: attribute {key} names graph {a.value}, which does not exist")
                if self.graphs[a.value].parent_graph_id == -1:
                    raise GraphError(f"{where(g, node)}: attribute {key} names the main graph")
                self.calls[g.graph_id].add(a.value)
                bound = node.attributes.get("graph_inputs")
                if node.type == "call" and bound is not None and bound.type is AttrType.STRINGS:
                    self.bound[a.value].update(bound.value)

    def check_recursion(self) -> None:
        state: dict[int, int] = {}

        def visit(gid: int, path: list[int]) -> None:
            state[gid] = 1
            for callee in self.calls[gid]:
                if state.get(callee) == 1:
                    cycle = " → ".join(str(i) for i in [*path, gid, callee])
                    raise GraphError(f"graph {gid}: sub-graph calls recurse ({cycle})")
                if callee not in state:
                    visit(callee, [*path, gid])
            state[gid] = 2

        for gid in self.graphs:
            if gid not in state:
                visit(gid, [])

    def check_graph(self, g: Graph) -> None:
        own = self.vars[g.graph_id]
        main = g.parent_graph_id == -1
        ready = {n for n, v in own.items() if v.persistable} | self.bound[g.graph_id]
        if main:
            ready |= set(self.model.inputs)
        shadowed = set(own)
        for gid in self.scope(g)[1:]:
            ready |= set(self.vars[gid]) - shadowed
            shadowed |= set(self.vars[gid])
        produced: set[str] = set()
        for node in g.operators:
            self.check_node(g, node, ready, produced)
        if main:
            for n in self.model.outputs:
                if n not in ready and n not in produced:
                    raise GraphError(f"{where(g)}: model output {n!r} is produced by no operator")

    def check_node(self, g: Graph, node: OperatorNode, ready: set[str], produced: set[str]) -> None:
        at = where(g, node)
        try:
            opdef = lookup(node.type)
        except GraphError as exc:
            raise GraphError(f"{at}: {exc}") from None
        in_types: dict[str, Any] = {}
        for slot, names in node.inputs.items():
            types = []
            for n in names:
                hit = self.resolve(g, n)
                if hit is None:
                    raise GraphError(f"{at}: input {slot} names {n!r}, which is not a declared variable in scope")
                if n not in ready:
                    raise GraphError(f"{at}: input {slot} reads {n!r} before any operator produces it "
                                     "(and it is not a model input, a parameter or a bound sub-graph input)")
                self.read.add((hit[0], n))
                types.append(self.types[hit[0]][n])
            in_types[slot] = types
        for slot, names in node.outputs.items():
            for n in names:
                v = self.vars[g.graph_id].get(n)
                if v is None:
                    raise GraphError(f"{at}: output {slot} names {n!r}, which is not a variable of graph {g.graph_id}")
                if n in produced:
                    raise GraphError(f"{at}: output {n!r} is already produced by an earlier operator")
                if (n in self.model.inputs and g.parent_graph_id == -1) or n in self.bound[g.graph_id]:
                    raise GraphError(f"{at}: output {n!r} is an input of the graph and cannot be overwritten")
                if v.persistable and not (opdef is not None and opdef.training):
                    raise GraphError(f"{at}: output {n!r} is a parameter; only training operators update parameters")
        if opdef is not None:
            inferred = self.check_typed(g, node, opdef, in_types)
            if node.type == "call":
                inferred = self.check_call(g, node, in_types)
            self.merge_outputs(g, node, inferred)
        for names in node.outputs.values():
            produced.update(names)
            ready.update(names)

    def check_typed(self, g: Graph, node: OperatorNode, opdef: OpDef, in_types: dict[str, list[TensorType]]) -> dict[str, Any]:
        at = where(g, node)
        for kind, slots, given in (("input", opdef.inputs, node.inputs), ("output", opdef.outputs, node.outputs)):
            known = {s.name for s in slots}
            unknown = sorted(set(given) - known)
            if unknown:
                raise GraphError(f"{at}: {node.type} has no {kind} slot(s) {', '.join(unknown)}",
                                 hint=f"its {kind} slots are {', '.join(sorted(known)) or 'none'}")
            for s in slots:
                count = len(given.get(s.name, ()))
                if count == 0 and not s.optional:
                    raise GraphError(f"{at}: required {kind} slot {s.name} is missing")
                if count > 1 and not s.variadic:
                    raise GraphError(f"{at}: {kind} slot {s.name} takes one variable, got {count}")
        for s in opdef.inputs:
            for t in in_types.get(s.name, ()):
                if s.dtypes is not None and t.dtype not in s.dtypes:
                    raise GraphError(f"{at}: input {s.name} has dtype {t.dtype}; {node.type} allows {', '.join(s.dtypes)}")
        for key, a in node.attributes.items():
            d = opdef.attribute(key)
            if d is not None and d.type is not a.type:
                raise GraphError(f"{at}: attribute {key} is declared {a.type.value}; {node.type} needs {d.type.value}")
        attrs = opdef.resolve_attributes({k: a.value for k, a in node.attributes.items()}, at)
        args: dict[str, Any] = {}
        for s in opdef.inputs:
            types = in_types.get(s.name, [])
            args[s.name] = types if s.variadic else (types[0] if types else None)
        try:
            return opdef.infer(args, attrs)
        except GraphError as exc:
            raise GraphError(f"{at}: {exc.message}") from None
        except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError, OverflowError) as exc:
            raise GraphError(f"{at}: shape inference failed: {type(exc).__name__}: {exc}") from None

    def check_call(self, g: Graph, node: OperatorNode, in_types: dict[str, list[TensorType]]) -> dict[str, Any]:
        """A ``call`` binds X to the sub-graph's graph_inputs and returns its graph_outputs as Y."""
        at = where(g, node)
        sub = node.attributes["graph"].value
        sub_vars = self.vars[sub]
        xs, ins = in_types.get("X", []), node.attributes.get("graph_inputs")
        outs = node.attributes["graph_outputs"].value
        ins = ins.value if ins is not None else ()
        if len(xs) != len(ins) or len(node.outputs.get("Y", ())) != len(outs):
            raise GraphError(f"{at}: binds {len(ins)} graph_inputs and {len(outs)} graph_outputs "
                             f"but has {len(xs)} inputs X and {len(node.outputs.get('Y', ()))} outputs Y")
        for n, t in zip(ins, xs, strict=True):
            v = sub_vars.get(n)
            if v is None:
                raise GraphError(f"{at}: graph_inputs names {n!r}, which is not a variable of graph {sub}")
            if v.dtype != t.dtype or not shapes_match(v.shape, t.shape):
                raise GraphError(f"{at}: input {t} does not fit sub-graph variable {n!r} ({v.dtype} {list(v.shape)})")
        missing = [n for n in outs if n not in sub_vars]
        if missing:
            raise GraphError(f"{at}: graph_outputs names {missing[0]!r}, which is not a variable of graph {sub}")
        producers = {n for o in self.graphs[sub].operators for names in o.outputs.values() for n in names}
        unmade = [n for n in outs if n not in producers and n not in ins and not sub_vars[n].persistable]
        if unmade:
            raise GraphError(f"{at}: graph_outputs {unmade[0]!r} is produced by no operator of graph {sub}")
        return {"Y": [TensorType(sub_vars[n].dtype, sub_vars[n].shape) for n in outs]}

    def merge_outputs(self, g: Graph, node: OperatorNode, inferred: Mapping[str, Any]) -> None:
        at = where(g, node)
        for slot, names in node.outputs.items():
            got = inferred.get(slot)
            if got is None:
                continue
            got_list = list(got) if isinstance(got, (list, tuple)) else [got]
            if len(got_list) != len(names):
                raise GraphError(f"{at}: output slot {slot} makes {len(got_list)} values but names {len(names)} variables")
            for n, t in zip(names, got_list, strict=True):
                v = self.vars[g.graph_id][n]
                if t.dtype != v.dtype or not shapes_match(v.shape, t.shape):
                    raise GraphError(f"{at}: output {slot} {n!r} is declared {v.dtype} {list(v.shape)} "
                                     f"but the operator makes {t.dtype} {list(t.shape)}")
                self.types[g.graph_id][n] = TensorType(v.dtype, tuple(
                    d if d != -1 else i for d, i in zip(v.shape, t.shape, strict=True)))

    def warnings(self) -> list[str]:
        out = []
        main = self.model.main_graph.graph_id
        interface = set(self.model.inputs) | set(self.model.outputs)
        for g in self.model.graphs:
            produced = {n for o in g.operators for names in o.outputs.values() for n in names}
            for v in g.variables:
                used = (g.graph_id, v.name) in self.read or v.name in produced
                if not used and not (g.graph_id == main and v.name in interface):
                    out.append(f"graph {g.graph_id}: variable {v.name!r} is declared but never used")
        return out


def check_package_tensors(model: ModelStructure, package: Package) -> tuple[int, list[str]]:
    """Rule 6: parameters against the package's tensors; returns (tensors checked, warnings).

    Raises:
        GraphError: a referenced tensor is missing or has another dtype or shape.
    """
    checked, warnings = 0, []
    names = {t.name for _, t in package.tensors()}
    for g in model.graphs:
        for v in g.variables:
            if v.tensor is None:
                if v.persistable and v.name not in names:
                    warnings.append(f"graph {g.graph_id}: parameter {v.name!r} has no tensor in the package; "
                                    "it must be fed at run time")
                continue
            hit = find_tensor(package, v.tensor)
            if hit is None:
                raise GraphError(f"graph {g.graph_id}: variable {v.name!r} refers to tensor {v.tensor.name!r} "
                                 f"in {v.tensor.file!r}, which the package does not hold")
            rec = hit[1]
            dtype = SAFETENSORS_DTYPES.get(rec.dtype)
            if dtype != v.dtype or not shapes_match(v.shape, tuple(rec.shape)):
                raise GraphError(f"graph {g.graph_id}: variable {v.name!r} is declared {v.dtype} {list(v.shape)} "
                                 f"but tensor {rec.name!r} is {rec.dtype} {list(rec.shape)}")
            checked += 1
    return checked, warnings


def validate(model: ModelStructure, *, package: Package | None = None) -> list[str]:
    """Check ``model`` against the IR rules (see the module docstring); return warnings.

    Raises:
        GraphError: the first broken rule, naming the graph, the operator and the reason.
    """
    warnings = _Checker(model).run()
    if package is not None:
        warnings += check_package_tensors(model, package)[1]
    return warnings
