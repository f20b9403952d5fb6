"""The numpy reference backend: a group of N ranks as threads of one process.

All state sits behind one condition variable, so the group knows exactly when
every live rank is blocked and can report the deadlock (naming each rank's wait)
instead of hanging. ``send`` has rendezvous semantics (it returns once the peer
has received), so a graph that would only work with buffering is reported too.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptmpack.errors import GraphError, UsageError
from ptmpack.ir.comm_backends.base import CommError, check_peer, check_rank, reduce_arrays, split_rows


@dataclass
class _Message:
    array: np.ndarray
    taken: bool = False


@dataclass(frozen=True)
class _Call:
    kind: str
    params: tuple[Any, ...]
    dtype: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        args = ", ".join(str(p) for p in self.params)
        return f"{self.kind}({args}) of {self.dtype}{list(self.shape)}"


class SimulatedGroup:
    """A group of ``world_size`` ranks in one process; :meth:`comm` gives each rank its backend.

    Every rank runs in its own thread (see :func:`run_collective`). All state sits
    behind one condition variable, so the group can tell exactly when every live rank
    is blocked: then it aborts with a :class:`CommError` naming each rank's wait,
    instead of hanging.
    """

    def __init__(self, world_size: int) -> None:
        if world_size < 1:
            raise UsageError(f"a group needs at least one rank, got world_size {world_size}")
        self.world_size = world_size
        self._cv = threading.Condition()
        self._generation = 0
        self._arrived: dict[int, tuple[_Call, np.ndarray]] = {}
        self._completed: dict[int, list[tuple[_Call, np.ndarray]]] = {}
        self._readers: dict[int, int] = {}
        self._mail: dict[tuple[int, int], deque[_Message]] = {}
        self._waiting: dict[int, tuple[str, Callable[[], bool]]] = {}
        self._done: set[int] = set()
        self._aborted: str | None = None

    def comm(self, rank: int) -> SimulatedComm:
        """The backend of ``rank``, to put in that rank's ``ExecContext.comm``."""
        check_rank(rank, self.world_size, "rank", "SimulatedGroup")
        return SimulatedComm(self, rank)

    def finish(self, rank: int) -> None:
        """Record that ``rank`` returned; ranks still waiting on it are then deadlocked."""
        with self._cv:
            self._done.add(rank)
            self._check_deadlock()

    def abort(self, reason: str) -> None:
        """Make every blocked and future call of the group raise :class:`CommError` with ``reason``."""
        with self._cv:
            if self._aborted is None:
                self._aborted = reason
            self._cv.notify_all()

    def status(self) -> str:
        """What each rank is doing now, e.g. ``rank 0 is running; rank 1 waits in recv from rank 0``."""
        with self._cv:
            return "; ".join(self._status(r) for r in range(self.world_size))

    # -- internals, all called with self._cv held ------------------------------------------

    def _wait(self, rank: int, what: str, ready: Callable[[], bool]) -> None:
        while True:
            if ready():
                return
            if self._aborted is not None:
                raise CommError(self._aborted)
            self._waiting[rank] = (what, ready)
            self._check_deadlock()
            if self._aborted is None:
                self._cv.wait()
            del self._waiting[rank]

    def _check_deadlock(self) -> None:
        if self._aborted is not None or not self._waiting:
            return
        live = [r for r in range(self.world_size) if r not in self._done]
        if all(r in self._waiting and not self._waiting[r][1]() for r in live):
            self._aborted = "deadlock: " + "; ".join(self._status(r) for r in range(self.world_size))
            self._cv.notify_all()

    def _status(self, rank: int) -> str:
        if rank in self._done:
            return f"rank {rank} has returned"
        if rank in self._waiting:
            return f"rank {rank} waits in {self._waiting[rank][0]}"
        return f"rank {rank} is running"

    def _collective(self, rank: int, call: _Call, array: np.ndarray) -> list[np.ndarray]:
        with self._cv:
            if self._aborted is not None:
                raise CommError(self._aborted)
            generation = self._generation
            self._arrived[rank] = (call, array)
            if len(self._arrived) == self.world_size:
                self._completed[generation] = [self._arrived[r] for r in range(self.world_size)]
                self._readers[generation] = 0
                self._arrived = {}
                self._generation += 1
                self._cv.notify_all()
            else:
                self._wait(rank, call.describe(), lambda: generation in self._completed)
            entries = self._completed[generation]
            self._readers[generation] += 1
            if self._readers[generation] == self.world_size:
                del self._completed[generation], self._readers[generation]
        calls = [c for c, _ in entries]
        if any(c != calls[0] for c in calls):
            listing = "; ".join(f"rank {r}: {c.describe()}" for r, c in enumerate(calls))
            raise CommError(f"the ranks made different collective calls: {listing}",
                            hint="every rank must run the same collective with the same root, reduce type, "
                                 "dtype and shape")
        return [a for _, a in entries]

    def _send(self, src: int, dst: int, array: np.ndarray) -> None:
        message = _Message(np.array(array, copy=True))
        with self._cv:
            self._mail.setdefault((src, dst), deque()).append(message)
            self._cv.notify_all()
            self._wait(src, f"send to rank {dst}", lambda: message.taken)

    def _recv(self, dst: int, src: int) -> np.ndarray:
        with self._cv:
            box = self._mail.setdefault((src, dst), deque())
            self._wait(dst, f"recv from rank {src}", lambda: bool(box))
            message = box.popleft()
            message.taken = True
            self._cv.notify_all()
        return message.array


class SimulatedComm:
    """One rank's :class:`CommBackend` on a :class:`SimulatedGroup`."""

    def __init__(self, group: SimulatedGroup, rank: int) -> None:
        self.group = group
        self.rank = rank
        self.world_size = group.world_size

    def _gather(self, kind: str, params: tuple[Any, ...], array: np.ndarray) -> list[np.ndarray]:
        a = np.array(array, copy=True)  # the caller may reuse its buffer before slower ranks read it
        return self.group._collective(self.rank, _Call(kind, params, a.dtype.name, a.shape), a)

    def allreduce(self, array: np.ndarray, op: str) -> np.ndarray:
        return reduce_arrays(self._gather("allreduce", (op,), array), op)

    def reduce(self, array: np.ndarray, op: str, root: int) -> np.ndarray:
        check_rank(root, self.world_size, "root", "reduce")
        arrays = self._gather("reduce", (op, root), array)
        return reduce_arrays(arrays, op) if self.rank == root else arrays[self.rank].copy()

    def reduce_scatter(self, array: np.ndarray, op: str) -> np.ndarray:
        split_rows(np.asarray(array), self.world_size, "reduce_scatter")
        total = reduce_arrays(self._gather("reduce_scatter", (op,), array), op)
        return split_rows(total, self.world_size, "reduce_scatter")[self.rank].copy()

    def allgather(self, array: np.ndarray) -> np.ndarray:
        if np.ndim(array) == 0:
            raise GraphError("allgather: a 0-d value has no axis 0 to concatenate along")
        return np.concatenate(self._gather("allgather", (), array), axis=0)

    def broadcast(self, array: np.ndarray, root: int) -> np.ndarray:
        check_rank(root, self.world_size, "root", "broadcast")
        return self._gather("broadcast", (root,), array)[root].copy()

    def send(self, array: np.ndarray, peer: int) -> None:
        check_peer(peer, self.rank, self.world_size, "send")
        self.group._send(self.rank, peer, np.asarray(array))

    def recv(self, peer: int, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
        check_peer(peer, self.rank, self.world_size, "recv")
        got = self.group._recv(self.rank, peer)
        if got.dtype != np.dtype(dtype) or got.shape != tuple(shape):
            raise CommError(f"recv on rank {self.rank}: rank {peer} sent {got.dtype.name}{list(got.shape)}, "
                            f"but the receiver expects {np.dtype(dtype).name}{list(shape)}")
        return got
