"""Running a function on every rank of a group: threads for the simulated group, processes for gloo."""

from __future__ import annotations

import functools
import multiprocessing
import pickle
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ptmpack.errors import UsageError
from ptmpack.ir.comm_backends.base import BACKENDS, DEFAULT_TIMEOUT_S, CommError
from ptmpack.ir.comm_backends.gloo import TorchDistributedBackend, free_port, require_torch
from ptmpack.ir.comm_backends.simulated import SimulatedGroup
from ptmpack.ir.registry import ExecContext


def run_collective(world_size: int, fn: Callable[[ExecContext], Any], backend: str = "simulated", *,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Any]:
    """Run ``fn(ctx)`` on every rank of a new group and return the results in rank order.

    Each rank gets an :class:`ExecContext` with its ``rank``, ``world_size`` and
    ``comm``. ``backend="simulated"`` runs the ranks as threads of this process;
    ``backend="gloo"`` spawns ``world_size`` processes joined by torch.distributed
    over 127.0.0.1, so ``fn`` and its result must pickle (a module-level function,
    or a ``functools.partial`` of one) and a script calling this needs an
    ``if __name__ == "__main__":`` guard. Ranks still running after ``timeout_s``
    seconds are abandoned (threads) or killed (processes).

    Raises:
        UsageError: a bad world size, backend or timeout, torch missing for gloo, or an
            unpicklable ``fn``.
        CommError: the ranks deadlocked, disagreed, or timed out.
        PtmError: whatever ``fn`` raised on a rank, preferring the root cause over the
            ``CommError`` it caused on the other ranks.
    """
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise UsageError(f"world_size must be a positive integer, got {world_size!r}")
    if not timeout_s > 0:
        raise UsageError(f"timeout_s must be positive, got {timeout_s!r}")
    if backend == "simulated":
        return _run_threads(world_size, fn, timeout_s)
    if backend == "gloo":
        require_torch()
        entry = functools.partial(_gloo_rank, fn, free_port(), timeout_s)
        return spawn_ranks(world_size, entry, timeout_s)
    raise UsageError(f"unknown communication backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _root_cause(errors: dict[int, BaseException]) -> BaseException:
    """The error to raise: ``errors`` is in order of arrival, and a rank's failure is what makes the
    others fail (with a CommError, or whatever a caller wrapped it in), so the first non-CommError wins."""
    return next((e for e in errors.values() if not isinstance(e, CommError)), next(iter(errors.values())))


def _run_threads(world_size: int, fn: Callable[[ExecContext], Any], timeout_s: float) -> list[Any]:
    group = SimulatedGroup(world_size)
    results: list[Any] = [None] * world_size
    errors: dict[int, BaseException] = {}

    def body(rank: int) -> None:
        try:
            results[rank] = fn(ExecContext(rank=rank, world_size=world_size, comm=group.comm(rank)))
        except BaseException as exc:
            errors[rank] = exc
            group.abort(f"rank {rank} failed: {type(exc).__name__}: {exc}")
        else:
            group.finish(rank)

    threads = [threading.Thread(target=body, args=(r,), name=f"ptmpack-rank{r}", daemon=True)
               for r in range(world_size)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        status = group.status()
        group.abort(f"timed out after {timeout_s:g} s")
        raise CommError(f"the simulated group timed out after {timeout_s:g} s: {status}")
    if errors:
        raise _root_cause(errors)
    return results


def _gloo_rank(fn: Callable[[ExecContext], Any], port: int, timeout_s: float, rank: int, world_size: int) -> Any:
    """One process's body: join the gloo group, run ``fn``, always leave the group."""
    with TorchDistributedBackend(rank, world_size, port=port, timeout_s=timeout_s) as comm:
        return fn(ExecContext(rank=rank, world_size=world_size, comm=comm))


class RemoteTraceback(Exception):
    """The traceback of an exception raised in another process, attached as ``__cause__``."""

    def __str__(self) -> str:
        return str(self.args[0])


def _child_main(entry: Callable[[int, int], Any], rank: int, world_size: int, reports: Any) -> None:
    """Run ``entry(rank, world_size)`` in a spawned process and report (rank, ok, pickled payload, traceback)."""
    try:
        payload = pickle.dumps(entry(rank, world_size))
        reports.put((rank, True, payload, ""))
    except BaseException as exc:
        text = traceback.format_exc()
        try:
            payload = pickle.dumps(exc)
            pickle.loads(payload)
        except Exception:
            payload = pickle.dumps(CommError(f"rank {rank} failed: {type(exc).__name__}: {exc}"))
        reports.put((rank, False, payload, text))


def spawn_ranks(world_size: int, entry: Callable[[int, int], Any], timeout_s: float,
                grace_s: float = 2.0) -> list[Any]:
    """Run picklable ``entry(rank, world_size)`` in ``world_size`` spawned processes; results in rank order.

    Processes still running ``timeout_s`` after the start, or ``grace_s`` after the
    first rank failed, are killed; nothing is left behind.

    Raises:
        UsageError: ``entry`` cannot be pickled for the child processes.
        CommError: the group timed out, or a process died without reporting.
        Exception: what a rank raised (root cause first), with its remote traceback as ``__cause__``.
    """
    mp = multiprocessing.get_context("spawn")
    reports = mp.Queue()
    procs = [mp.Process(target=_child_main, args=(entry, r, world_size, reports), name=f"ptmpack-rank{r}",
                        daemon=True) for r in range(world_size)]
    results: dict[int, Any] = {}
    errors: dict[int, BaseException] = {}
    deadline = time.monotonic() + timeout_s
    failed_at: float | None = None
    dead_since: dict[int, float] = {}
    try:
        for p in procs:
            try:
                p.start()
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                raise UsageError(f"cannot send the rank function to a child process: {exc}",
                                 hint="pass a module-level function (or a functools.partial of one)") from exc
        while len(results) + len(errors) < world_size:
            now = time.monotonic()
            if failed_at is not None and now - failed_at > grace_s:
                break
            if now >= deadline:
                late = ", ".join(str(r) for r in range(world_size) if r not in results and r not in errors)
                raise CommError(f"the group of {world_size} processes timed out after {timeout_s:g} s; "
                                f"rank(s) {late} did not finish and were killed")
            try:
                rank, ok, payload, text = reports.get(timeout=0.1)
            except queue.Empty:
                _note_silent_deaths(procs, results, errors, dead_since)
                if errors and failed_at is None:
                    failed_at = time.monotonic()
                continue
            if ok:
                results[rank] = pickle.loads(payload)
            else:
                exc = pickle.loads(payload)
                exc.__cause__ = RemoteTraceback(f"\n--- rank {rank} ---\n{text}")
                errors[rank] = exc
                if failed_at is None:
                    failed_at = time.monotonic()
    finally:
        _stop(procs)
        reports.close()
    if errors:
        raise _root_cause(errors)
    return [results[r] for r in range(world_size)]


def _note_silent_deaths(procs: list[Any], results: dict[int, Any], errors: dict[int, BaseException],
                        dead_since: dict[int, float]) -> None:
    now = time.monotonic()
    for rank, p in enumerate(procs):
        if rank in results or rank in errors or p.exitcode is None:
            continue
        # A report put just before exiting may still be in the pipe: give it a second to arrive.
        if now - dead_since.setdefault(rank, now) > 1.0:
            errors[rank] = CommError(f"rank {rank} exited with code {p.exitcode} without a result")


def _stop(procs: list[Any]) -> None:
    started = [p for p in procs if p.pid is not None]
    for p in started:
        if p.is_alive():
            p.terminate()
    for p in started:
        p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join(2.0)
