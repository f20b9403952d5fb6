"""General operators that move, select or create data: reshape, transpose, concat, split, gather,
slice, squeeze, unsqueeze, cast, constant, fill_like, arange_like, and ``call`` (run a sub-graph).

Registered by importing :mod:`ptmpack.ir.ops.basic`. None of them does arithmetic, so their
results keep the input dtype (``cast``, ``constant`` and ``fill_like`` choose theirs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ptmpack.errors import GraphError
from ptmpack.ir.model import DTYPES, AttrType
from ptmpack.ir.ops.numeric import INDEX_DTYPES, ir_dtype, norm_axis, np_dtype, same_dim
from ptmpack.ir.registry import REQUIRED, AttrDef, ExecContext, Slot, TensorType, Values, op

T = TensorType
Attrs = Mapping[str, Any]
_X = Slot("X", "input tensor")
_Y = Slot("Y", "result")

SUBGRAPH_RUNNER = "ptmpack.ir.run_subgraph"
"""Key of ``ExecContext.state`` under which the executor puts its sub-graph runner:
``runner(graph_id, feeds: dict[name, array], outputs: list[name]) -> dict[name, array]``."""


def reshape_shape(shape: Sequence[int], target: Sequence[int]) -> tuple[int, ...]:
    """The shape ``reshape`` gives: 0 copies the input dim at that index, one -1 is inferred.

    Input dims may be -1 (unknown); the result then has -1 where it cannot be known.

    Raises:
        GraphError: more than one -1, a 0 past the input rank, a negative dim, or sizes that differ.
    """
    if list(target).count(-1) > 1 or any(d < -1 for d in target):
        raise GraphError(f"reshape target {tuple(target)} may hold one -1 and no other negative dim")
    dims: list[int] = []
    for i, d in enumerate(target):
        if d == 0:
            if i >= len(shape):
                raise GraphError(f"reshape target {tuple(target)}: 0 at index {i} copies nothing from {tuple(shape)}")
            dims.append(shape[i])
        else:
            dims.append(d)
    known_in = -1 not in shape
    total = int(np.prod(shape)) if known_in else -1
    rest = [d for i, d in enumerate(dims) if target[i] != -1]
    if -1 in target:
        at = list(target).index(-1)
        if known_in and -1 not in rest:
            part = int(np.prod(rest))
            if part == 0 or total % part:
                raise GraphError(f"cannot reshape {tuple(shape)} into {tuple(target)}")
            dims[at] = total // part
    elif known_in and -1 not in dims and int(np.prod(dims)) != total:
        raise GraphError(f"cannot reshape {tuple(shape)} ({total} elements) into {tuple(target)}")
    return tuple(dims)


@op("reshape", table="basic", inputs=[_X], outputs=[_Y],
    attributes=[AttrDef("shape", AttrType.INTS, REQUIRED, "target shape; 0 copies the input dim, one -1 is inferred")],
    infer=lambda i, a: {"Y": T(i["X"].dtype, reshape_shape(i["X"].shape, a["shape"]))})
def _reshape(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = X with a new shape and the same elements in row-major order (Paddle's 0 = copy, -1 = infer)."""
    x = inputs["X"]
    return {"Y": np.reshape(x, reshape_shape(x.shape, attrs["shape"]))}


def _perm(attrs: Attrs, rank: int) -> tuple[int, ...]:
    perm = tuple(attrs["perm"]) or tuple(reversed(range(rank)))
    if sorted(norm_axis(p, rank, "perm entry") for p in perm) != list(range(rank)):
        raise GraphError(f"perm {perm} is not a permutation of {rank} axes")
    return tuple(p % rank for p in perm)


@op("transpose", table="basic", inputs=[_X], outputs=[_Y],
    attributes=[AttrDef("perm", AttrType.INTS, (), "output axis i is input axis perm[i]; empty reverses")],
    infer=lambda i, a: {"Y": T(i["X"].dtype, tuple(i["X"].shape[p] for p in _perm(a, len(i["X"].shape))))})
def _transpose(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = X with its axes permuted (numpy.transpose)."""
    return {"Y": np.transpose(inputs["X"], _perm(attrs, inputs["X"].ndim))}


def _concat_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    xs = inputs["X"]
    if not xs:
        raise GraphError("concat needs at least one input")
    rank = len(xs[0].shape)
    axis = norm_axis(attrs["axis"], rank)
    dims = list(xs[0].shape)
    for x in xs[1:]:
        if len(x.shape) != rank or x.dtype != xs[0].dtype:
            raise GraphError(f"concat inputs differ in rank or dtype: {xs[0]} vs {x}")
        for i in range(rank):
            if i != axis:
                dims[i] = same_dim(dims[i], x.shape[i], f"concat dim {i}")
    dims[axis] = -1 if any(x.shape[axis] == -1 for x in xs) else sum(x.shape[axis] for x in xs)
    return {"Y": T(xs[0].dtype, tuple(dims))}


@op("concat", table="basic", inputs=[Slot("X", "tensors joined in order", variadic=True)], outputs=[_Y],
    attributes=[AttrDef("axis", AttrType.INT, 0, "axis joined along")], infer=_concat_infer)
def _concat(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = the X tensors joined along ``axis`` (numpy.concatenate)."""
    return {"Y": np.concatenate(list(inputs["X"]), axis=attrs["axis"])}


def split_sizes(dim: int, attrs: Attrs) -> list[int]:
    """Part sizes along the split axis (-1 where the dim is unknown and parts are equal)."""
    if attrs["sections"]:
        sections = list(attrs["sections"])
        if sections.count(-1) > 1 or any(s < -1 for s in sections):
            raise GraphError(f"split sections {sections} may hold one -1 and no other negative size")
        if -1 in sections and dim != -1:
            sections[sections.index(-1)] = dim - sum(s for s in sections if s != -1)
        if dim != -1 and (sum(sections) != dim or min(sections) < 0):
            raise GraphError(f"split sections {list(attrs['sections'])} do not add up to {dim}")
        return sections
    if attrs["num"] <= 0:
        raise GraphError("split needs sections or num > 0")
    if dim != -1 and dim % attrs["num"]:
        raise GraphError(f"split of {dim} into {attrs['num']} equal parts")
    return [-1 if dim == -1 else dim // attrs["num"]] * attrs["num"]


def _split_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    x = inputs["X"]
    axis = norm_axis(attrs["axis"], len(x.shape))
    shapes = [tuple(s if i == axis else d for i, d in enumerate(x.shape)) for s in split_sizes(x.shape[axis], attrs)]
    return {"Y": [T(x.dtype, s) for s in shapes]}


@op("split", table="basic", inputs=[_X], outputs=[Slot("Y", "the parts, in order", variadic=True)],
    attributes=[AttrDef("axis", AttrType.INT, 0, "axis split along"),
                AttrDef("sections", AttrType.INTS, (), "part sizes (one may be -1: the rest)"),
                AttrDef("num", AttrType.INT, 0, "number of equal parts, when sections is empty")],
    infer=_split_infer)
def _split(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = X cut along ``axis`` into parts of the given sizes, or into ``num`` equal parts."""
    x = inputs["X"]
    sizes = split_sizes(x.shape[attrs["axis"]], attrs)
    return {"Y": np.split(x, np.cumsum(sizes)[:-1], axis=attrs["axis"])}


def _gather_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    x, idx = inputs["X"], inputs["Indices"]
    axis = norm_axis(attrs["axis"], len(x.shape))
    return {"Y": T(x.dtype, (*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))}


@op("gather", table="basic", infer=_gather_infer,
    inputs=[_X, Slot("Indices", "positions along axis (negative counts from the end)", dtypes=INDEX_DTYPES)],
    outputs=[Slot("Y", "X.shape[:axis] + Indices.shape + X.shape[axis+1:]")],
    attributes=[AttrDef("axis", AttrType.INT, 0, "axis indexed")])
def _gather(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = X indexed along ``axis`` by every element of Indices (numpy.take)."""
    x, idx = inputs["X"], np.asarray(inputs["Indices"])
    n = x.shape[attrs["axis"]]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise GraphError(f"gather index out of range [{-n}, {n})")
    return {"Y": np.take(x, idx, axis=attrs["axis"])}


def _slices(shape: Sequence[int], attrs: Attrs) -> dict[int, slice]:
    starts, ends = attrs["starts"], attrs["ends"]
    axes = attrs["axes"] or tuple(range(len(starts)))
    steps = attrs["steps"] or (1,) * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
        raise GraphError("slice starts, ends, axes and steps must have one entry per axis, steps nonzero")
    out = {norm_axis(a, len(shape)): slice(s, e, st) for a, s, e, st in zip(axes, starts, ends, steps, strict=True)}
    if len(out) != len(axes):
        raise GraphError(f"slice axes {tuple(axes)} repeat an axis")
    return out


def _slice_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    x = inputs["X"]
    sl = _slices(x.shape, attrs)
    shape = tuple(-1 if d == -1 and i in sl else len(range(*sl[i].indices(d))) if i in sl else d
                  for i, d in enumerate(x.shape))
    return {"Y": T(x.dtype, shape)}


@op("slice", table="basic", inputs=[_X], outputs=[_Y], infer=_slice_infer,
    attributes=[AttrDef("starts", AttrType.INTS, REQUIRED, "first index per axis (negative from the end)"),
                AttrDef("ends", AttrType.INTS, REQUIRED, "end index per axis, exclusive, clamped to the dim"),
                AttrDef("axes", AttrType.INTS, (), "axes sliced; empty means 0..len(starts)-1"),
                AttrDef("steps", AttrType.INTS, (), "step per axis; empty means 1")])
def _slice(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = X[starts:ends:steps] on the given axes, Python slice semantics (ends clamp)."""
    x = inputs["X"]
    sl = _slices(x.shape, attrs)
    return {"Y": x[tuple(sl.get(i, slice(None)) for i in range(x.ndim))]}


def _squeeze_axes(shape: Sequence[int], axes: Sequence[int]) -> set[int]:
    if not axes:
        if -1 in shape:
            raise GraphError(f"squeeze of {tuple(shape)} with unknown dims needs explicit axes")
        return {i for i, d in enumerate(shape) if d == 1}
    picked = {norm_axis(a, len(shape)) for a in axes}
    if any(shape[a] not in (1, -1) for a in picked):
        raise GraphError(f"squeeze axes {tuple(axes)} of {tuple(shape)} are not all size 1")
    return picked


@op("squeeze", table="basic", inputs=[_X], outputs=[_Y],
    attributes=[AttrDef("axes", AttrType.INTS, (), "size-1 axes removed; empty removes all size-1 axes")],
    infer=lambda i, a: {"Y": T(i["X"].dtype, tuple(
        d for k, d in enumerate(i["X"].shape) if k not in _squeeze_axes(i["X"].shape, a["axes"])))})
def _squeeze(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = X without the given size-1 axes."""
    x = inputs["X"]
    return {"Y": np.squeeze(x, axis=tuple(sorted(_squeeze_axes(x.shape, attrs["axes"]))))}


def unsqueeze_shape(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, ...]:
    """``shape`` with size-1 axes inserted at ``axes`` (indices into the result, as in ONNX)."""
    rank = len(shape) + len(axes)
    picked = {norm_axis(a, rank) for a in axes}
    if len(picked) != len(axes):
        raise GraphError(f"unsqueeze axes {tuple(axes)} repeat an axis")
    rest = iter(shape)
    return tuple(1 if i in picked else next(rest) for i in range(rank))


@op("unsqueeze", table="basic", inputs=[_X], outputs=[_Y],
    attributes=[AttrDef("axes", AttrType.INTS, REQUIRED, "positions of the new size-1 axes in Y")],
    infer=lambda i, a: {"Y": T(i["X"].dtype, unsqueeze_shape(i["X"].shape, a["axes"]))})
def _unsqueeze(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = X with size-1 axes inserted (torch.unsqueeze for several axes at once)."""
    return {"Y": np.reshape(inputs["X"], unsqueeze_shape(inputs["X"].shape, attrs["axes"]))}


def _dtype_attr(name: str) -> str:
    if name not in DTYPES:
        raise GraphError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return name


@op("cast", table="basic", inputs=[_X], outputs=[_Y],
    attributes=[AttrDef("dtype", AttrType.STRING, REQUIRED, "target dtype")],
    infer=lambda i, a: {"Y": T(_dtype_attr(a["dtype"]), i["X"].shape)})
def _cast(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = X converted to ``dtype`` exactly (floats truncate toward zero when cast to integers)."""
    return {"Y": np.asarray(inputs["X"]).astype(np_dtype(_dtype_attr(attrs["dtype"])), copy=False)}


def _made(ctx: ExecContext, value: np.ndarray, dtype: str) -> np.ndarray:
    """Created values take exactly their declared dtype (like ``cast``, unlike computed results)."""
    return value.astype(np_dtype(dtype))


def _constant_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    n = int(np.prod(attrs["shape"]))
    if any(d < 0 for d in attrs["shape"]) or len(attrs["value"]) not in (1, n):
        raise GraphError(f"constant of shape {tuple(attrs['shape'])} needs 1 or {n} values, has {len(attrs['value'])}")
    return {"Y": T(_dtype_attr(attrs["dtype"]), tuple(attrs["shape"]))}


@op("constant", table="basic", inputs=[], outputs=[_Y], infer=_constant_infer,
    attributes=[AttrDef("value", AttrType.FLOATS, REQUIRED, "the values in row-major order, or one fill value"),
                AttrDef("shape", AttrType.INTS, (), "shape of Y; empty is a scalar"),
                AttrDef("dtype", AttrType.STRING, "float32", "dtype of Y")])
def _constant(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = a tensor given inline (small constants: scales, eps, index lists)."""
    _constant_infer(inputs, attrs)
    v = np.asarray(attrs["value"], dtype=np.float64)
    return {"Y": _made(ctx, np.broadcast_to(v, tuple(attrs["shape"])).copy() if v.size == 1 else
                       v.reshape(tuple(attrs["shape"])), attrs["dtype"])}


@op("fill_like", table="basic", inputs=[_X], outputs=[_Y],
    attributes=[AttrDef("value", AttrType.FLOAT, 0.0, "fill value"),
                AttrDef("dtype", AttrType.STRING, "", "dtype of Y; empty keeps X's")],
    infer=lambda i, a: {"Y": T(_dtype_attr(a["dtype"]) if a["dtype"] else i["X"].dtype, i["X"].shape)})
def _fill_like(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = a tensor of X's shape filled with ``value`` (zeros for BERT's default token_type_ids)."""
    x = inputs["X"]
    return {"Y": _made(ctx, np.full(x.shape, attrs["value"]), _dtype_attr(attrs["dtype"] or ir_dtype(x.dtype)))}


def _arange_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    x = inputs["X"]
    return {"Y": T("int64", (x.shape[norm_axis(attrs["axis"], len(x.shape))],))}


@op("arange_like", table="basic", inputs=[_X], outputs=[Slot("Y", "int64 [X.shape[axis]]")], infer=_arange_infer,
    attributes=[AttrDef("axis", AttrType.INT, -1, "axis of X whose length is counted"),
                AttrDef("start", AttrType.INT, 0, "first value")])
def _arange_like(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = start, start+1, …, one per position of X along ``axis`` (BERT's position_ids)."""
    n = inputs["X"].shape[attrs["axis"]]
    return {"Y": np.arange(attrs["start"], attrs["start"] + n, dtype=np.int64)}


@op("call", table="basic", infer=lambda i, a: {},
    inputs=[Slot("X", "values bound, in order, to the sub-graph variables graph_inputs", optional=True, variadic=True)],
    outputs=[Slot("Y", "the sub-graph variables graph_outputs, in order", variadic=True)],
    attributes=[AttrDef("graph", AttrType.GRAPH, REQUIRED, "graph_id of the sub-graph run"),
                AttrDef("graph_inputs", AttrType.STRINGS, (), "sub-graph variables that receive X"),
                AttrDef("graph_outputs", AttrType.STRINGS, REQUIRED, "sub-graph variables returned as Y")])
def _call(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Run a sub-graph (a fused node, a reusable block) and return some of its variables.

    The sub-graph's operators may also read variables of the graphs enclosing the call.
    Output types are the sub-graph variables' declared types (the validator checks them there).
    """
    runner = ctx.state.get(SUBGRAPH_RUNNER)
    if runner is None:
        raise GraphError("call needs the IR executor (no sub-graph runner in the execution context)")
    xs = list(inputs["X"] or ())
    if len(xs) != len(attrs["graph_inputs"]):
        raise GraphError(f"call binds {len(attrs['graph_inputs'])} graph_inputs but has {len(xs)} inputs X")
    results = runner(attrs["graph"], dict(zip(attrs["graph_inputs"], xs, strict=True)), list(attrs["graph_outputs"]))
    return {"Y": [results[n] for n in attrs["graph_outputs"]]}
