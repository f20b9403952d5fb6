"""The interface every communication backend implements, and the reduction semantics they share.

Reduction semantics: ``sum``/``prod`` wrap around for integers as two's complement
does; ``avg`` is the sum divided by the world size in the same dtype and is only
defined for floating dtypes; ``reduce`` leaves the input unchanged on non-root
ranks; ``reduce_scatter`` splits the reduced array into ``world_size`` equal
blocks along axis 0; ``allgather`` concatenates along axis 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import ml_dtypes
import numpy as np

from ptmpack.errors import GraphError

REDUCE_TYPES = ("sum", "max", "min", "prod", "avg")
"""Values of the ``reduce_type`` attribute."""
BACKENDS = ("simulated", "gloo")
"""Values of ``run_collective``'s ``backend``."""
DEFAULT_TIMEOUT_S = 60.0
LOOPBACK = "127.0.0.1"

_UFUNCS = {"sum": np.add, "avg": np.add, "prod": np.multiply, "max": np.maximum, "min": np.minimum}
BF16 = np.dtype(ml_dtypes.bfloat16)


class CommError(GraphError):
    """A communication operator could not complete on its group.

    The ranks called different collectives or disagreed on shape, dtype or root,
    they deadlocked, a peer failed, or the group timed out. It is a
    :class:`GraphError` (exit 5) because a graph that runs per rank must make the
    same calls in the same order on every rank.
    """


class CommBackend(Protocol):
    """What a communication kernel needs from ``ctx.comm``: this rank's view of its group.

    Every method is collective over the group except ``send``/``recv``, which pair
    up between two ranks. Arrays come back as new arrays with the input's dtype.
    """

    rank: int
    world_size: int

    def allreduce(self, array: np.ndarray, op: str) -> np.ndarray: ...
    def reduce(self, array: np.ndarray, op: str, root: int) -> np.ndarray: ...
    def reduce_scatter(self, array: np.ndarray, op: str) -> np.ndarray: ...
    def allgather(self, array: np.ndarray) -> np.ndarray: ...
    def broadcast(self, array: np.ndarray, root: int) -> np.ndarray: ...
    def send(self, array: np.ndarray, peer: int) -> None: ...
    def recv(self, peer: int, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray: ...


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of an IR dtype name (``bfloat16`` through ml_dtypes)."""
    return BF16 if name == "bfloat16" else np.dtype(name)


def check_reduce_type(op: str, dtype: str, where: str) -> None:
    """Raise unless ``op`` is a reduce type defined for values of ``dtype``.

    Raises:
        GraphError: an unknown reduce type, a reduction of booleans, or ``avg`` of integers
            (which would silently truncate).
    """
    if op not in REDUCE_TYPES:
        raise GraphError(f"{where}: reduce_type {op!r} is not one of {', '.join(REDUCE_TYPES)}")
    if dtype == "bool":
        raise GraphError(f"{where}: bool values cannot be reduced; cast them to an integer dtype first")
    if op == "avg" and not (dtype == "bfloat16" or np.issubdtype(np.dtype(dtype), np.floating)):
        raise GraphError(f"{where}: reduce_type 'avg' needs a floating dtype, got {dtype}",
                         hint="use 'sum' and divide, or cast to float first")


def check_rank(value: int, world_size: int, what: str, where: str) -> None:
    """Raise unless ``value`` (a root or peer) names a rank of a group of ``world_size``.

    Raises:
        GraphError: the rank is outside ``0..world_size-1``.
    """
    if not 0 <= value < world_size:
        raise GraphError(f"{where}: {what} {value} is outside the group of {world_size} rank(s) "
                         f"(0..{world_size - 1})")


def reduce_arrays(arrays: Sequence[np.ndarray], op: str) -> np.ndarray:
    """Reduce equal-shaped arrays elementwise in rank order, in their own dtype.

    This is the reference every backend must match; integer overflow wraps around.

    Raises:
        GraphError: ``op`` is not defined for the arrays' dtype (see :func:`check_reduce_type`).
    """
    first = np.asarray(arrays[0])
    check_reduce_type(op, first.dtype.name, "reduce")
    ufunc = _UFUNCS[op]
    with np.errstate(all="ignore"):
        acc = first.copy()
        for a in arrays[1:]:
            acc = ufunc(acc, a).astype(first.dtype, copy=False)
        if op == "avg":
            acc = (acc / np.asarray(len(arrays), dtype=first.dtype)).astype(first.dtype, copy=False)
    return acc


def split_rows(array: np.ndarray, parts: int, where: str) -> list[np.ndarray]:
    """``parts`` equal blocks of ``array`` along axis 0 (the reduce_scatter layout).

    Raises:
        GraphError: the array is 0-d or its first dimension is not divisible by ``parts``.
    """
    if array.ndim == 0 or array.shape[0] % parts:
        raise GraphError(f"{where}: the first dimension of shape {list(array.shape)} must be divisible by {parts}")
    return np.split(array, parts, axis=0)


def check_peer(peer: int, rank: int, world_size: int, where: str) -> None:
    """Raise unless ``peer`` is another rank of the group than ``rank``.

    Raises:
        GraphError: the peer is outside the group or is ``rank`` itself.
    """
    check_rank(peer, world_size, "peer", where)
    if peer == rank:
        raise GraphError(f"{where}: rank {rank} cannot exchange with itself (peer {peer})")

