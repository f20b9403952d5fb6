"""Communication operators of GB/T 42382.2 Tables 8-14: reduce, allreduce, reduce_scatter,
allgather, broadcast, send and recv.

Each kernel validates its attributes against the group it runs on (``nranks``
must equal the world size, ``root_id``/``peer`` must name a rank) and then calls
``ctx.comm``, a :class:`~ptmpack.ir.comm_backends.CommBackend`: the simulated group
or torch.distributed over gloo, which agree value for value. A run of one rank
without a backend treats the collectives as the identity, so a graph written for
a group also runs on a single process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ptmpack.errors import GraphError, UsageError
from ptmpack.ir.comm_backends import (
    REDUCE_TYPES,
    CommBackend,
    SimulatedGroup,
    check_peer,
    check_rank,
    check_reduce_type,
    numpy_dtype,
)
from ptmpack.ir.model import DTYPES, AttrType
from ptmpack.ir.registry import AttrDef, ExecContext, Slot, TensorType, Values, op

REDUCIBLE = tuple(d for d in DTYPES if d != "bool")
"""Dtypes a reduction accepts (booleans have no agreed sum; cast them first)."""

_REDUCE_TYPE = AttrDef("reduce_type", AttrType.STRING, "sum",
                       f"How values combine across ranks: {', '.join(REDUCE_TYPES)} (avg: floating dtypes only).")
_ROOT_ID = AttrDef("root_id", AttrType.INT, 0, "The rank that holds the result (reduce) or the source (broadcast).")
_NRANKS = AttrDef("nranks", AttrType.INT, doc="Number of ranks in the group; must equal the world size at run time.")
_PEER = AttrDef("peer", AttrType.INT, doc="The other rank of the point-to-point transfer.")


# ----- shared checks ------------------------------------------------------------------------


def _comm(ctx: ExecContext, where: str) -> CommBackend:
    """The backend of this run; a one-rank run without one gets a trivial group of one."""
    comm = ctx.comm
    if comm is None:
        if ctx.world_size == 1:
            return SimulatedGroup(1).comm(0)
        raise UsageError(f"{where}: the run has world_size {ctx.world_size} but no communication backend",
                         hint="run the graph on every rank with ptmpack.ir.comm_backends.run_collective")
    if comm.rank != ctx.rank or comm.world_size != ctx.world_size:
        raise UsageError(f"{where}: the context says rank {ctx.rank} of {ctx.world_size} but its backend is "
                         f"rank {comm.rank} of {comm.world_size}")
    return comm


def _check_nonnegative(attrs: Mapping[str, Any], name: str, where: str) -> int:
    value = int(attrs[name])
    if value < 0:
        raise GraphError(f"{where}: {name} must be a rank (≥ 0), got {value}")
    return value


def _check_nranks(attrs: Mapping[str, Any], where: str) -> int:
    nranks = int(attrs["nranks"])
    if nranks < 1:
        raise GraphError(f"{where}: nranks must be ≥ 1, got {nranks}")
    return nranks


def _nranks_matches(ctx: ExecContext, attrs: Mapping[str, Any], where: str) -> None:
    nranks = _check_nranks(attrs, where)
    if nranks != ctx.world_size:
        raise GraphError(f"{where}: nranks is {nranks} but the group has {ctx.world_size} rank(s)",
                         hint="set nranks to the number of ranks the graph runs on")


def _array(inputs: Values, where: str, reduce_type: str | None = None) -> np.ndarray:
    x = np.asarray(inputs["X"])
    if x.dtype.name not in DTYPES:
        raise GraphError(f"{where}: input X has dtype {x.dtype.name}, which the IR does not define")
    if reduce_type is not None:
        check_reduce_type(reduce_type, x.dtype.name, where)
    return x


def _first_dim(x: TensorType, where: str) -> int:
    if not x.shape:
        raise GraphError(f"{where}: X must have at least one dimension (the one split or concatenated)")
    return x.shape[0]


# ----- Table 8: reduce ------------------------------------------------------------------------


def _infer_reduce(inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    x: TensorType = inputs["X"]
    check_reduce_type(attrs["reduce_type"], x.dtype, "reduce")
    _check_nonnegative(attrs, "root_id", "reduce")
    return {"Y": x}


@op("reduce", table="Table 8",
    inputs=(Slot("X", "This rank's contribution.", dtypes=REDUCIBLE),),
    outputs=(Slot("Y", "On root_id: the elementwise reduction over all ranks; elsewhere: X unchanged."),),
    attributes=(_REDUCE_TYPE, _ROOT_ID), infer=_infer_reduce)
def reduce(ctx: ExecContext, inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Reduce X elementwise over the group onto rank root_id (sum, max, min, prod or avg)."""
    x = _array(inputs, "reduce", attrs["reduce_type"])
    check_rank(attrs["root_id"], ctx.world_size, "root_id", "reduce")
    return {"Y": _comm(ctx, "reduce").reduce(x, attrs["reduce_type"], attrs["root_id"])}


# ----- Table 9: allreduce -----------------------------------------------------------------------


def _infer_allreduce(inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    x: TensorType = inputs["X"]
    check_reduce_type(attrs["reduce_type"], x.dtype, "allreduce")
    return {"Y": x}


@op("allreduce", table="Table 9",
    inputs=(Slot("X", "This rank's contribution.", dtypes=REDUCIBLE),),
    outputs=(Slot("Y", "The elementwise reduction over all ranks, on every rank."),),
    attributes=(_REDUCE_TYPE,), infer=_infer_allreduce)
def allreduce(ctx: ExecContext, inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Reduce X elementwise over the group and give every rank the result."""
    x = _array(inputs, "allreduce", attrs["reduce_type"])
    return {"Y": _comm(ctx, "allreduce").allreduce(x, attrs["reduce_type"])}


# ----- Table 10: reduce_scatter -----------------------------------------------------------------


def _infer_reduce_scatter(inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    x: TensorType = inputs["X"]
    check_reduce_type(attrs["reduce_type"], x.dtype, "reduce_scatter")
    nranks = _check_nranks(attrs, "reduce_scatter")
    first = _first_dim(x, "reduce_scatter")
    if first >= 0 and first % nranks:
        raise GraphError(f"reduce_scatter: the first dimension of X ({first}) is not divisible by nranks {nranks}")
    return {"Y": TensorType(x.dtype, (first // nranks if first >= 0 else -1, *x.shape[1:]))}


@op("reduce_scatter", table="Table 10",
    inputs=(Slot("X", "This rank's contribution; its first dimension is divisible by nranks.", dtypes=REDUCIBLE),),
    outputs=(Slot("Y", "Block `rank` of the reduction, split into nranks equal blocks along axis 0."),),
    attributes=(_REDUCE_TYPE, _NRANKS), infer=_infer_reduce_scatter)
def reduce_scatter(ctx: ExecContext, inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Reduce X elementwise over the group, then give rank r the r-th of nranks blocks along axis 0."""
    x = _array(inputs, "reduce_scatter", attrs["reduce_type"])
    _nranks_matches(ctx, attrs, "reduce_scatter")
    return {"Y": _comm(ctx, "reduce_scatter").reduce_scatter(x, attrs["reduce_type"])}


# ----- Table 11: allgather ----------------------------------------------------------------------


def _infer_allgather(inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    x: TensorType = inputs["X"]
    nranks = _check_nranks(attrs, "allgather")
    first = _first_dim(x, "allgather")
    return {"Y": TensorType(x.dtype, (first * nranks if first >= 0 else -1, *x.shape[1:]))}


@op("allgather", table="Table 11",
    inputs=(Slot("X", "This rank's block; every rank's has the same shape and dtype."),),
    outputs=(Slot("Y", "The blocks of ranks 0..nranks-1 concatenated along axis 0, on every rank."),),
    attributes=(_NRANKS,), infer=_infer_allgather)
def allgather(ctx: ExecContext, inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Concatenate every rank's X along axis 0, in rank order, on every rank."""
    x = _array(inputs, "allgather")
    _nranks_matches(ctx, attrs, "allgather")
    if x.ndim == 0:
        raise GraphError("allgather: X must have at least one dimension (the one concatenated)")
    return {"Y": _comm(ctx, "allgather").allgather(x)}


# ----- Table 12: broadcast ----------------------------------------------------------------------


def _infer_broadcast(inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    _check_nonnegative(attrs, "root_id", "broadcast")
    return {"Y": inputs["X"]}


@op("broadcast", table="Table 12",
    inputs=(Slot("X", "The value on root_id; on other ranks, a buffer of the same shape and dtype."),),
    outputs=(Slot("Y", "root_id's X, on every rank."),),
    attributes=(_ROOT_ID,), infer=_infer_broadcast)
def broadcast(ctx: ExecContext, inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Copy X of rank root_id to every rank."""
    x = _array(inputs, "broadcast")
    check_rank(attrs["root_id"], ctx.world_size, "root_id", "broadcast")
    return {"Y": _comm(ctx, "broadcast").broadcast(x, attrs["root_id"])}


# ----- Tables 13 and 14: send and recv ----------------------------------------------------------


def _infer_send(inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    _check_nonnegative(attrs, "peer", "send")
    return {}


@op("send", table="Table 13",
    inputs=(Slot("X", "The value to send."),), outputs=(),
    attributes=(_PEER,), infer=_infer_send)
def send(ctx: ExecContext, inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Send X to rank peer, which runs a matching recv; returns once the peer has it (no outputs)."""
    x = _array(inputs, "send")
    check_peer(attrs["peer"], ctx.rank, ctx.world_size, "send")
    _comm(ctx, "send").send(x, attrs["peer"])
    return {}


def _recv_type(attrs: Mapping[str, Any]) -> TensorType:
    _check_nonnegative(attrs, "peer", "recv")
    if attrs["dtype"] not in DTYPES:
        raise GraphError(f"recv: dtype {attrs['dtype']!r} is not one of {', '.join(DTYPES)}")
    shape = tuple(attrs["shape"])
    if any(d < 0 for d in shape):
        raise GraphError(f"recv: shape {list(shape)} must be fully known (a receive buffer has a fixed size)")
    return TensorType(attrs["dtype"], shape)


def _infer_recv(inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {"Y": _recv_type(attrs)}


@op("recv", table="Table 14",
    inputs=(), outputs=(Slot("Y", "The value rank peer sent."),),
    attributes=(_PEER,
                AttrDef("dtype", AttrType.STRING, doc="The dtype of the value to receive."),
                AttrDef("shape", AttrType.INTS, doc="The shape of the value to receive (no -1).")),
    infer=_infer_recv)
def recv(ctx: ExecContext, inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Receive Y from rank peer's matching send; dtype and shape must be what the peer sends."""
    want = _recv_type(attrs)
    check_peer(attrs["peer"], ctx.rank, ctx.world_size, "recv")
    return {"Y": _comm(ctx, "recv").recv(attrs["peer"], numpy_dtype(want.dtype), want.shape)}
