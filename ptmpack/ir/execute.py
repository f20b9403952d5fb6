"""The numpy reference executor: run an IR model's main graph on given inputs.

Design, for models larger than the memory one wants to spend on them:

* operators run in graph order; each graph gets a plan once (resolved attributes, and for
  every operator the variables no later operator reads, which are dropped right after it),
  so at any time the executor holds the live activations plus the weights still to be used;
* parameters are read from the package on first use (``Package`` reads one tensor's bytes,
  zero-copy over mmap for raw entries), converted to the compute dtype if they are floats,
  kept while later operators need them and dropped after their last use;
* ``ExecContext.compute_dtype`` (float32, float16, or float64 for tests) is the dtype of
  floating-point activations; kernels accumulate in float32 and round at operator
  boundaries (see :mod:`ptmpack.ir.ops.numeric`);
* operators that run sub-graphs (``call``) find a runner in
  ``ctx.state[SUBGRAPH_RUNNER]``: it runs the sub-graph in a scope that sees the caller's
  variables, with the bound inputs, and returns the asked-for variables;
* a contiguous range of the main graph's operators runs on its own (:meth:`Executor.run_span`):
  given the variables live at its start (:meth:`Executor.live_at`) and the parameters it reads
  (:meth:`Executor.span_params`), it returns the variables live at its end. Calibration runs a
  model one decoder block at a time this way, holding one block's weights and activations.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ptmpack.errors import GraphError
from ptmpack.ir.model import AttrType, Graph, ModelStructure, OperatorNode, VariableNode
from ptmpack.ir.ops.basic_shape import SUBGRAPH_RUNNER
from ptmpack.ir.ops.numeric import COMPUTE_DTYPES, ir_dtype, is_float, is_float_array, np_dtype
from ptmpack.ir.registry import ExecContext, OpDef, lookup
from ptmpack.ir.validate import find_tensor, shapes_match, validate, where
from ptmpack.storage.package import Package
from ptmpack.tensors.dtypes import numpy_dtype

OPERATOR_HOOK = "ptmpack.operator_hook"
"""``ctx.state`` key of an optional ``hook(graph, node, inputs) -> inputs`` called before each kernel.

Calibration uses it (GPTQ collects a linear's inputs and swaps in the quantized weight before
the layer runs, so later layers see the quantized model's activations); it may raise to stop a run.
"""
_KERNEL_ERRORS = (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError, OverflowError, FloatingPointError)


@dataclass(frozen=True)
class _Step:
    node: OperatorNode
    opdef: OpDef
    attrs: dict[str, Any]
    free: tuple[str, ...]
    """Variables of this graph no later operator reads: dropped after this step."""


class _Scope:
    """The values of one graph run; lookups fall back to the enclosing (calling) scope."""

    def __init__(self, graph: Graph, parent: _Scope | None) -> None:
        self.graph = graph
        self.parent = parent
        self.declared = graph.variable_map()
        self.values: dict[str, np.ndarray] = {}


class Executor:
    """Runs one model; reusable across runs (plans are built once, weights are read per run)."""

    def __init__(self, model: ModelStructure, package: Package | None = None, ctx: ExecContext | None = None,
                 *, check: bool = True) -> None:
        self.model = model
        self.package = package
        self.ctx = ctx or ExecContext()
        if self.ctx.compute_dtype not in COMPUTE_DTYPES:
            raise GraphError(f"compute dtype {self.ctx.compute_dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
        if check:
            validate(model)
        self.graphs = {g.graph_id: g for g in model.graphs}
        self._plans: dict[int, list[_Step]] = {}
        self._free_reads: dict[int, set[str]] = {}
        self._params: dict[tuple[int, str], np.ndarray] = {}
        self._fed_params: dict[str, np.ndarray] = {}

    # ---- planning ---------------------------------------------------------------------

    def free_reads(self, gid: int) -> set[str]:
        """Names a graph (and the sub-graphs it calls) reads without declaring them: the caller's."""
        if gid not in self._free_reads:
            self._free_reads[gid] = set()  # guards against recursion (the validator rejects it anyway)
            g = self.graphs[gid]
            declared = g.variable_map()
            self._free_reads[gid] = {n for node in g.operators for n in self._reads(node) if n not in declared}
        return self._free_reads[gid]

    def _reads(self, node: OperatorNode) -> set[str]:
        names = {n for ns in node.inputs.values() for n in ns}
        for a in node.attributes.values():
            if a.type is AttrType.GRAPH and a.value in self.graphs:
                names |= self.free_reads(a.value)
        return names

    def plan(self, gid: int) -> list[_Step]:
        if gid in self._plans:
            return self._plans[gid]
        g = self.graphs[gid]
        last: dict[str, int] = {}
        for i, node in enumerate(g.operators):
            for n in self._reads(node):
                last[n] = i
        steps = []
        for i, node in enumerate(g.operators):
            at = where(g, node)
            try:
                opdef = lookup(node.type)
            except GraphError as exc:
                raise GraphError(f"{at}: {exc.message}") from None
            if opdef is None:
                raise GraphError(f"{at}: custom operator has no kernel in ptmpack; it cannot be run")
            attrs = opdef.resolve_attributes({k: a.value for k, a in node.attributes.items()}, at)
            free = tuple(n for n, j in last.items() if j == i)
            steps.append(_Step(node, opdef, attrs, free))
        self._plans[gid] = steps
        return steps

    # ---- values -----------------------------------------------------------------------

    def _to_compute(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np_dtype(self.ctx.compute_dtype), copy=False) if is_float_array(x) else x

    def _param(self, gid: int, v: VariableNode) -> np.ndarray:
        key = (gid, v.name)
        if key in self._params:
            return self._params[key]
        if v.name in self._fed_params:
            value = self._fed_params[v.name]
            if not shapes_match(v.shape, value.shape):
                raise GraphError(f"graph {gid}: parameter {v.name!r} fed with shape {list(value.shape)}; "
                                 f"declared {list(v.shape)}")
        elif self.package is not None and (v.tensor is not None or any(t.name == v.name for _, t in self.package.tensors())):
            value = self._read_tensor(gid, v)
        else:
            raise GraphError(f"graph {gid}: parameter {v.name!r} has no value: feed it or run with the package")
        value = self._to_compute(value)
        if gid != self.model.main_graph.graph_id:
            self._params[key] = value  # sub-graphs may be called again: keep their weights for the run
        return value

    def _read_tensor(self, gid: int, v: VariableNode) -> np.ndarray:
        assert self.package is not None
        if v.tensor is not None:
            hit = find_tensor(self.package, v.tensor)
            if hit is None:
                raise GraphError(f"graph {gid}: tensor {v.tensor.name!r} of {v.name!r} is not in the package")
            f, rec = hit
            raw = self.package.read_range(f, rec.begin, rec.end)
            value = np.frombuffer(raw, dtype=numpy_dtype(rec.dtype)).reshape(rec.shape)
        else:
            value = self.package.read_tensor(v.name)
        if ir_dtype(value.dtype) != v.dtype or not shapes_match(v.shape, value.shape):
            raise GraphError(f"graph {gid}: parameter {v.name!r} is declared {v.dtype} {list(v.shape)} "
                             f"but its tensor is {ir_dtype(value.dtype)} {list(value.shape)}")
        return value

    def _get(self, scope: _Scope, name: str) -> np.ndarray:
        s: _Scope | None = scope
        while s is not None:
            if name in s.values:
                return s.values[name]
            v = s.declared.get(name)
            if v is not None and v.persistable:
                value = self._param(s.graph.graph_id, v)
                s.values[name] = value
                return value
            if v is not None:
                raise GraphError(f"graph {s.graph.graph_id}: variable {name!r} is read before it has a value")
            s = s.parent
        raise GraphError(f"graph {scope.graph.graph_id}: no variable {name!r} in scope")

    def _feed(self, v: VariableNode, value: Any) -> np.ndarray:
        x = np.asarray(value)
        if not shapes_match(v.shape, x.shape):
            raise GraphError(f"input {v.name!r} has shape {list(x.shape)}; the model declares {list(v.shape)}")
        if is_float(v.dtype):
            if not (is_float_array(x) or x.dtype.kind in "iub"):
                raise GraphError(f"input {v.name!r} must be numeric, got {x.dtype}")
            return self._to_compute(x)
        if x.dtype.kind not in "iub" or (v.dtype == "bool") != (x.dtype.kind == "b"):
            raise GraphError(f"input {v.name!r} must be {v.dtype}, got {x.dtype}")
        return x.astype(np_dtype(v.dtype), copy=False)

    # ---- running ----------------------------------------------------------------------

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the main graph; return the asked-for variables (default: the model's outputs).

        Raises:
            GraphError: a missing or ill-shaped input, a missing parameter, or a kernel failure
                (naming the graph and operator).
        """
        wanted = list(outputs) if outputs is not None else list(self.model.outputs)  # run_span checks them
        persistable = {v.name for g in self.model.graphs for v in g.variables if v.persistable}
        params = {n: np.asarray(value) for n, value in feeds.items() if n not in self.model.inputs and n in persistable}
        unknown = [n for n in feeds if n not in self.model.inputs and n not in persistable]
        if unknown:
            raise GraphError(f"feed {unknown[0]!r} is neither a model input nor a parameter")
        values = self.feed_inputs({n: v for n, v in feeds.items() if n in self.model.inputs})
        return self.run_span(0, len(self.model.main_graph.operators), values, wanted, params)

    def feed_inputs(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The model inputs ``feeds`` checked against their declarations and converted (floats to the compute dtype).

        Raises:
            GraphError: a missing, unknown or ill-shaped input.
        """
        declared = self.model.main_graph.variable_map()
        missing = [n for n in self.model.inputs if n not in feeds]
        if missing:
            raise GraphError(f"model input(s) {', '.join(missing)} not given")
        extra = [n for n in feeds if n not in self.model.inputs]
        if extra:
            raise GraphError(f"feed {extra[0]!r} is not a model input")
        return {n: self._feed(declared[n], value) for n, value in feeds.items()}

    def span_params(self, start: int, stop: int) -> list[str]:
        """The main graph's parameters read by its operators ``[start, stop)`` (sub-graphs they call included), in
        order of first use: what a caller holds to run that span with :meth:`run_span`."""
        declared = self.model.main_graph.variable_map()
        found: dict[str, None] = {}
        for node in self.model.main_graph.operators[start:stop]:
            for n in sorted(self._reads(node)):
                v = declared.get(n)
                if v is not None and v.persistable:
                    found[n] = None
        return list(found)

    def live_at(self, cut: int) -> list[str]:
        """The main graph's activations (model inputs and operator outputs, not parameters) that have a value
        before operator ``cut`` and are read by an operator at or after it, or are model outputs: the state a
        span starting at ``cut`` needs (:meth:`run_span`)."""
        ops = self.model.main_graph.operators
        made = list(self.model.inputs) + [n for node in ops[:cut] for names in node.outputs.values() for n in names]
        later = {n for node in ops[cut:] for n in self._reads(node)} | set(self.model.outputs)
        return [n for n in dict.fromkeys(made) if n in later]

    def run_span(self, start: int, stop: int, values: Mapping[str, np.ndarray], outputs: Collection[str],
                 params: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Run the main graph's operators ``[start, stop)`` and return the variables ``outputs``.

        ``values`` holds the activations live at ``start`` (model inputs already through
        :meth:`feed_inputs`; the :meth:`live_at` set of a previous span's end); ``params`` gives
        parameters by name (others are read from the package). Activations are dropped after their
        last use as in :meth:`run`, so a span holds its own activations and weights only.

        Raises:
            GraphError: a missing value or parameter, or a kernel failure (naming the graph and operator).
        """
        main = self.model.main_graph
        declared = main.variable_map()
        scope = _Scope(main, None)
        scope.values.update(values)
        self._params.clear()
        self._fed_params = dict(params or {})
        try:
            for n in outputs:
                if n not in declared:
                    raise GraphError(f"requested output {n!r} is not a variable of the main graph")
            self._run_steps(scope, keep=set(outputs), steps=self.plan(main.graph_id)[start:stop])
            return {n: self._get(scope, n) for n in outputs}
        finally:
            self._params.clear()
            self._fed_params = {}

    def run_graph(self, gid: int, feeds: Mapping[str, np.ndarray], outputs: Sequence[str], parent: _Scope) -> dict[str, np.ndarray]:
        """Run sub-graph ``gid`` with bound inputs in a scope enclosed by ``parent``."""
        if gid not in self.graphs:
            raise GraphError(f"no graph {gid} to call")
        scope = _Scope(self.graphs[gid], parent)
        scope.values.update(feeds)
        self._run_steps(scope, keep=set(outputs))
        return {n: self._get(scope, n) for n in outputs}

    def _run_steps(self, scope: _Scope, keep: set[str], steps: Sequence[_Step] | None = None) -> None:
        g = scope.graph
        for step in self.plan(g.graph_id) if steps is None else steps:
            node, opdef = step.node, step.opdef
            inputs: dict[str, Any] = {}
            for s in opdef.inputs:
                names = node.inputs.get(s.name, ())
                values = [self._get(scope, n) for n in names]
                inputs[s.name] = values if s.variadic else (values[0] if values else None)
            hook = self.ctx.state.get(OPERATOR_HOOK)
            if hook is not None:
                inputs = hook(g, node, inputs)
            self.ctx.state[SUBGRAPH_RUNNER] = partial(self.run_graph, parent=scope)
            try:
                result = opdef.kernel(self.ctx, inputs, step.attrs)
            except GraphError as exc:
                # Keep the subclass (e.g. CommError) and its hint; only add where it happened.
                raise type(exc)(f"{where(g, node)}: {exc.message}", hint=exc.hint) from exc
            except _KERNEL_ERRORS as exc:
                raise GraphError(f"{where(g, node)}: kernel failed: {type(exc).__name__}: {exc}") from None
            finally:
                self.ctx.state.pop(SUBGRAPH_RUNNER, None)
            del inputs
            for slot, names in node.outputs.items():
                if slot not in result:
                    raise GraphError(f"{where(g, node)}: the kernel made no output {slot}")
                got = result[slot]
                values = list(got) if isinstance(got, (list, tuple)) else [got]
                if len(values) != len(names):
                    raise GraphError(f"{where(g, node)}: output {slot} made {len(values)} values for {len(names)} variables")
                for n, value in zip(names, values, strict=True):
                    scope.values[n] = value
            for n in step.free:
                if n not in keep:
                    scope.values.pop(n, None)


def run(model: ModelStructure, feeds: Mapping[str, Any], *, package: Package | None = None,
        ctx: ExecContext | None = None, outputs: Sequence[str] | None = None, check: bool = True) -> dict[str, np.ndarray]:
    """Run ``model`` on ``feeds`` (model inputs by name; parameters may be fed too).

    Weights come from ``package`` as the operators need them; ``ctx.compute_dtype`` picks
    float32 (default) or float16 activations. ``check`` validates the model first.

    Raises:
        GraphError: an invalid model, bad feeds, a missing parameter or a failing kernel.
    """
    return Executor(model, package, ctx, check=check).run(feeds, outputs)
