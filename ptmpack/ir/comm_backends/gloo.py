"""One rank of a real ``torch.distributed`` process group over gloo on the loopback interface.

torch is imported only when a group is opened; without it the backend says how to
install it.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np

from ptmpack.errors import GraphError, UsageError
from ptmpack.ir.comm_backends.base import (
    BF16,
    DEFAULT_TIMEOUT_S,
    LOOPBACK,
    CommError,
    check_peer,
    check_rank,
    check_reduce_type,
    split_rows,
)


def require_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        raise UsageError("the gloo backend needs PyTorch, which is not installed",
                         hint="pip install 'ptmpack[torch]', or use backend='simulated'")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TorchDistributedBackend:
    """One rank of a ``torch.distributed`` gloo process group on the loopback interface.

    Use as a context manager: entering joins the group (``init_process_group`` with a
    bounded timeout), leaving always destroys it. Arrays cross as CPU tensors;
    bfloat16 travels bit-for-bit, int16 (which gloo lacks) is widened to int32,
    which wraps identically. Failures of torch become :class:`CommError`.
    """

    def __init__(self, rank: int, world_size: int, *, port: int, host: str = LOOPBACK,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        check_rank(rank, world_size, "rank", "TorchDistributedBackend")
        self.rank = rank
        self.world_size = world_size
        self.port = port
        self.host = host
        self.timeout_s = timeout_s
        self._dist: Any = None
        self._torch: Any = None

    def __enter__(self) -> TorchDistributedBackend:
        require_torch()
        import torch
        import torch.distributed as dist

        if self.host == LOOPBACK:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo0" if sys.platform == "darwin" else "lo")
        try:
            dist.init_process_group("gloo", init_method=f"tcp://{self.host}:{self.port}", rank=self.rank,
                                    world_size=self.world_size, timeout=timedelta(seconds=self.timeout_s))
        except (RuntimeError, ValueError, TimeoutError) as exc:
            raise CommError(f"rank {self.rank} could not join the gloo group at {self.host}:{self.port}: {exc}",
                            hint="check that every rank uses the same port and world size") from exc
        self._torch, self._dist = torch, dist
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Leave and destroy the process group (idempotent)."""
        if self._dist is not None and self._dist.is_initialized():
            self._dist.destroy_process_group()
        self._dist = None

    # -- conversions ---------------------------------------------------------------------

    def _open_torch(self, what: str) -> Any:
        if self._dist is None:
            raise UsageError(f"{what}: the gloo backend is not open; use it as a context manager")
        return self._torch

    def _tensor(self, array: np.ndarray) -> Any:
        self._open_torch("gloo")
        a = np.ascontiguousarray(array)
        if a.dtype == BF16:
            return self._torch.from_numpy(a.view(np.int16).copy()).view(self._torch.bfloat16)
        if a.dtype == np.int16:
            a = a.astype(np.int32)
        return self._torch.from_numpy(a.copy())

    def _array(self, tensor: Any, dtype: np.dtype) -> np.ndarray:
        if dtype == BF16:
            return tensor.view(self._torch.int16).numpy().view(BF16)
        return tensor.numpy().astype(dtype, copy=False)

    def _op(self, op: str, dtype: np.dtype) -> Any:
        check_reduce_type(op, dtype.name, "gloo")
        ops = self._dist.ReduceOp
        return {"sum": ops.SUM, "avg": ops.SUM, "prod": ops.PRODUCT, "max": ops.MAX, "min": ops.MIN}[op]

    def _run(self, what: str, call: Callable[[], object]) -> None:
        self._open_torch(what)
        try:
            call()
        except RuntimeError as exc:
            raise CommError(f"{what} on rank {self.rank} failed in gloo: {exc}") from exc

    def _finish(self, tensor: Any, op: str, dtype: np.dtype) -> np.ndarray:
        if op == "avg":
            tensor = tensor / self.world_size
        return self._array(tensor, dtype)

    # -- the CommBackend interface -----------------------------------------------------------

    def allreduce(self, array: np.ndarray, op: str) -> np.ndarray:
        a = np.asarray(array)
        t = self._tensor(a)
        reduce_op = self._op(op, a.dtype)
        self._run("allreduce", lambda: self._dist.all_reduce(t, op=reduce_op))
        return self._finish(t, op, a.dtype)

    def reduce(self, array: np.ndarray, op: str, root: int) -> np.ndarray:
        a = np.asarray(array)
        check_rank(root, self.world_size, "root", "reduce")
        t = self._tensor(a)
        reduce_op = self._op(op, a.dtype)
        self._run("reduce", lambda: self._dist.reduce(t, dst=root, op=reduce_op))
        return self._finish(t, op, a.dtype) if self.rank == root else a.copy()

    def reduce_scatter(self, array: np.ndarray, op: str) -> np.ndarray:
        a = np.asarray(array)
        split_rows(a, self.world_size, "reduce_scatter")
        chunks = [c.contiguous() for c in self._tensor(a).chunk(self.world_size, dim=0)]
        out = self._torch.empty_like(chunks[self.rank])
        reduce_op = self._op(op, a.dtype)
        self._run("reduce_scatter", lambda: self._dist.reduce_scatter(out, chunks, op=reduce_op))
        return self._finish(out, op, a.dtype)

    def allgather(self, array: np.ndarray) -> np.ndarray:
        a = np.asarray(array)
        if a.ndim == 0:
            raise GraphError("allgather: a 0-d value has no axis 0 to concatenate along")
        t = self._tensor(a)
        parts = [self._torch.empty_like(t) for _ in range(self.world_size)]
        self._run("allgather", lambda: self._dist.all_gather(parts, t))
        return np.concatenate([self._array(p, a.dtype) for p in parts], axis=0)

    def broadcast(self, array: np.ndarray, root: int) -> np.ndarray:
        a = np.asarray(array)
        check_rank(root, self.world_size, "root", "broadcast")
        t = self._tensor(a)
        self._run("broadcast", lambda: self._dist.broadcast(t, src=root))
        return self._array(t, a.dtype)

    def send(self, array: np.ndarray, peer: int) -> None:
        check_peer(peer, self.rank, self.world_size, "send")
        t = self._tensor(np.asarray(array))
        self._run("send", lambda: self._dist.send(t, dst=peer))

    def recv(self, peer: int, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
        check_peer(peer, self.rank, self.world_size, "recv")
        dtype = np.dtype(dtype)
        t = self._tensor(np.zeros(tuple(shape), dtype))
        self._run("recv", lambda: self._dist.recv(t, src=peer))
        return self._array(t, dtype)
