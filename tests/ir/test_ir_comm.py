"""Communication operators (GB/T 42382.2 Tables 8-14) on the simulated group and on real gloo processes.

The simulated group is checked against hand-computed values and numpy; the gloo
runs (2 processes on 127.0.0.1) must give exactly what the simulated group gives
for the same inputs. Inputs are integer-valued so that float sums are exact in
any order. Functions run on ranks are module-level so that they pickle.
"""

from __future__ import annotations

import functools
import importlib.util
import multiprocessing
import operator
import threading
import time
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ptmpack.errors import GraphError, UsageError
from ptmpack.ir.comm_backends import (
    CommError,
    RemoteTraceback,
    SimulatedGroup,
    TorchDistributedBackend,
    check_peer,
    free_port,
    reduce_arrays,
    run_collective,
    spawn_ranks,
)
from ptmpack.ir.model import AttrType
from ptmpack.ir.registry import REQUIRED, ExecContext, TensorType, all_ops, lookup

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs PyTorch (pip install 'ptmpack[torch]')")
BF16 = np.dtype(ml_dtypes.bfloat16)


@pytest.fixture(scope="module", autouse=True)
def _load_registry() -> None:
    all_ops()  # load the op modules once here, not from several rank threads at a time


def call(ctx: ExecContext, name: str, inputs: Mapping[str, np.ndarray] | None = None, **attrs: Any) -> Any:
    """Run operator ``name`` as an executor would: resolve attributes, infer types, run, check the types."""
    opdef = lookup(name)
    assert opdef is not None
    resolved = opdef.resolve_attributes(attrs, f"node {name}")
    given_inputs = dict(inputs or {})
    types = opdef.infer({k: TensorType(v.dtype.name, v.shape) for k, v in given_inputs.items()}, resolved)
    out = opdef.kernel(ctx, given_inputs, resolved)
    assert set(out) == {s.name for s in opdef.outputs} == set(types)
    for slot, value in out.items():
        assert (value.dtype.name, value.shape) == (types[slot].dtype, types[slot].shape), (name, slot)
    return out.get("Y")


# ----- registry ---------------------------------------------------------------------------------

SIGNATURES = {
    "reduce": ("Table 8", ["X"], ["Y"], {"reduce_type": "sum", "root_id": 0}),
    "allreduce": ("Table 9", ["X"], ["Y"], {"reduce_type": "sum"}),
    "reduce_scatter": ("Table 10", ["X"], ["Y"], {"reduce_type": "sum", "nranks": REQUIRED}),
    "allgather": ("Table 11", ["X"], ["Y"], {"nranks": REQUIRED}),
    "broadcast": ("Table 12", ["X"], ["Y"], {"root_id": 0}),
    "send": ("Table 13", ["X"], [], {"peer": REQUIRED}),
    "recv": ("Table 14", [], ["Y"], {"peer": REQUIRED, "dtype": REQUIRED, "shape": REQUIRED}),
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_registered_with_the_standards_slots_and_attributes(name: str) -> None:
    table, inputs, outputs, attrs = SIGNATURES[name]
    opdef = lookup(name)
    assert opdef is not None and opdef.table == table and opdef.doc
    assert [s.name for s in opdef.inputs] == inputs
    assert [s.name for s in opdef.outputs] == outputs
    assert {a.name: a.default for a in opdef.attributes} == attrs
    types = {a.name: a.type for a in opdef.attributes}
    assert all(types[k] is AttrType.INT for k in ("root_id", "nranks", "peer") if k in types)
    assert types.get("reduce_type", AttrType.STRING) is AttrType.STRING


def test_reductions_refuse_bool_inputs_by_slot_dtype() -> None:
    for name in ("reduce", "allreduce", "reduce_scatter"):
        dtypes = lookup(name).inputs[0].dtypes  # type: ignore[union-attr]
        assert dtypes is not None and "bool" not in dtypes and "bfloat16" in dtypes


# ----- shape inference --------------------------------------------------------------------------


def infer(name: str, inputs: Mapping[str, TensorType], **attrs: Any) -> dict[str, Any]:
    opdef = lookup(name)
    assert opdef is not None
    return opdef.infer(inputs, opdef.resolve_attributes(attrs, name))


def test_inference_of_shapes() -> None:
    x = TensorType("float32", (6, 4))
    assert infer("allreduce", {"X": x}) == {"Y": x}
    assert infer("reduce", {"X": x}, reduce_type="max", root_id=3) == {"Y": x}
    assert infer("broadcast", {"X": x}, root_id=1) == {"Y": x}
    assert infer("reduce_scatter", {"X": x}, nranks=3) == {"Y": TensorType("float32", (2, 4))}
    assert infer("allgather", {"X": x}, nranks=3) == {"Y": TensorType("float32", (18, 4))}
    unknown = TensorType("int64", (-1, 5))
    assert infer("reduce_scatter", {"X": unknown}, nranks=2) == {"Y": unknown}
    assert infer("allgather", {"X": unknown}, nranks=2) == {"Y": unknown}
    assert infer("send", {"X": x}, peer=1) == {}
    assert infer("recv", {}, peer=0, dtype="bfloat16", shape=[2, 3]) == {"Y": TensorType("bfloat16", (2, 3))}


@pytest.mark.parametrize(("name", "x", "attrs", "message"), [
    ("allreduce", TensorType("float32", (2,)), {"reduce_type": "mean"}, "reduce_type 'mean'"),
    ("allreduce", TensorType("int32", (2,)), {"reduce_type": "avg"}, "needs a floating dtype"),
    ("allreduce", TensorType("bool", (2,)), {}, "bool values cannot be reduced"),
    ("reduce", TensorType("float32", (2,)), {"root_id": -1}, "root_id must be a rank"),
    ("broadcast", TensorType("float32", (2,)), {"root_id": -2}, "root_id must be a rank"),
    ("reduce_scatter", TensorType("float32", (5, 2)), {"nranks": 2}, "not divisible by nranks 2"),
    ("reduce_scatter", TensorType("float32", ()), {"nranks": 1}, "at least one dimension"),
    ("reduce_scatter", TensorType("float32", (4,)), {"nranks": 0}, "nranks must be ≥ 1"),
    ("allgather", TensorType("float32", ()), {"nranks": 2}, "at least one dimension"),
    ("allgather", TensorType("float32", (2,)), {"nranks": -1}, "nranks must be ≥ 1"),
    ("send", TensorType("float32", (2,)), {"peer": -1}, "peer must be a rank"),
    ("recv", None, {"peer": 0, "dtype": "complex64", "shape": [2]}, "dtype 'complex64'"),
    ("recv", None, {"peer": 0, "dtype": "float32", "shape": [-1, 2]}, "must be fully known"),
])
def test_inference_rejects_bad_nodes(name: str, x: TensorType | None, attrs: dict[str, Any], message: str) -> None:
    with pytest.raises(GraphError, match=message):
        infer(name, {"X": x} if x is not None else {}, **attrs)


def test_attribute_types_are_checked() -> None:
    with pytest.raises(GraphError, match="reduce_type of allreduce must be string"):
        lookup("allreduce").resolve_attributes({"reduce_type": 1}, "n")  # type: ignore[union-attr]
    with pytest.raises(GraphError, match="needs attribute nranks"):
        lookup("allgather").resolve_attributes({}, "n")  # type: ignore[union-attr]


# ----- the simulated group: hand-computed values for 1, 2 and 3 ranks ---------------------------

BASE = np.array([1, -2, 3, -4, 5, -6])


def x_of(rank: int, dtype: str = "float32") -> np.ndarray:
    """Rank r contributes (r + 1) * [1, -2, 3, -4, 5, -6]."""
    return (BASE * (rank + 1)).astype(dtype)


EXPECTED = {  # elementwise over ranks 0..ws-1, computed by hand
    1: {"sum": [1, -2, 3, -4, 5, -6], "max": [1, -2, 3, -4, 5, -6], "min": [1, -2, 3, -4, 5, -6],
        "prod": [1, -2, 3, -4, 5, -6], "avg": [1, -2, 3, -4, 5, -6]},
    2: {"sum": [3, -6, 9, -12, 15, -18], "max": [2, -2, 6, -4, 10, -6], "min": [1, -4, 3, -8, 5, -12],
        "prod": [2, 8, 18, 32, 50, 72], "avg": [1.5, -3, 4.5, -6, 7.5, -9]},
    3: {"sum": [6, -12, 18, -24, 30, -36], "max": [3, -2, 9, -4, 15, -6], "min": [1, -6, 3, -12, 5, -18],
        "prod": [6, -48, 162, -384, 750, -1296], "avg": [2, -4, 6, -8, 10, -12]},
}
OPS = ("sum", "max", "min", "prod", "avg")


def _allreduce_all_ops(ctx: ExecContext) -> dict[str, np.ndarray]:
    return {op: call(ctx, "allreduce", {"X": x_of(ctx.rank)}, reduce_type=op) for op in OPS}


@pytest.mark.parametrize("ws", [1, 2, 3])
def test_allreduce_by_hand(ws: int) -> None:
    for got in run_collective(ws, _allreduce_all_ops):
        for op in OPS:
            np.testing.assert_array_equal(got[op], np.array(EXPECTED[ws][op], np.float32), err_msg=op)
            assert got[op].dtype == np.float32


def _reduce_to_last(ctx: ExecContext) -> dict[str, np.ndarray]:
    root = ctx.world_size - 1
    return {op: call(ctx, "reduce", {"X": x_of(ctx.rank)}, reduce_type=op, root_id=root) for op in OPS}


@pytest.mark.parametrize("ws", [1, 2, 3])
def test_reduce_by_hand(ws: int) -> None:
    results = run_collective(ws, _reduce_to_last)
    for rank, got in enumerate(results):
        for op in OPS:
            want = EXPECTED[ws][op] if rank == ws - 1 else x_of(rank)
            np.testing.assert_array_equal(got[op], np.array(want, np.float32), err_msg=f"{op} on rank {rank}")


def _reduce_scatter_all_ops(ctx: ExecContext) -> dict[str, np.ndarray]:
    return {op: call(ctx, "reduce_scatter", {"X": x_of(ctx.rank)}, reduce_type=op, nranks=ctx.world_size)
            for op in OPS}


def test_reduce_scatter_by_hand() -> None:
    r1 = run_collective(1, _reduce_scatter_all_ops)
    np.testing.assert_array_equal(r1[0]["sum"], [1, -2, 3, -4, 5, -6])
    r2 = run_collective(2, _reduce_scatter_all_ops)
    np.testing.assert_array_equal(r2[0]["sum"], [3, -6, 9])
    np.testing.assert_array_equal(r2[1]["sum"], [-12, 15, -18])
    np.testing.assert_array_equal(r2[1]["prod"], [32, 50, 72])
    r3 = run_collective(3, _reduce_scatter_all_ops)
    np.testing.assert_array_equal(r3[0]["sum"], [6, -12])
    np.testing.assert_array_equal(r3[1]["max"], [9, -4])
    np.testing.assert_array_equal(r3[2]["min"], [5, -18])
    np.testing.assert_array_equal(r3[2]["avg"], [10, -12])
    for ws, results in ((1, r1), (2, r2), (3, r3)):
        for rank, got in enumerate(results):
            for op in OPS:
                block = np.split(np.array(EXPECTED[ws][op], np.float32), ws)[rank]
                np.testing.assert_array_equal(got[op], block, err_msg=f"{op} ws={ws} rank={rank}")


def _allgather_rows(ctx: ExecContext) -> np.ndarray:
    return call(ctx, "allgather", {"X": x_of(ctx.rank, "int32").reshape(2, 3)}, nranks=ctx.world_size)


def test_allgather_by_hand() -> None:
    assert run_collective(1, _allgather_rows)[0].tolist() == [[1, -2, 3], [-4, 5, -6]]
    want3 = [[1, -2, 3], [-4, 5, -6], [2, -4, 6], [-8, 10, -12], [3, -6, 9], [-12, 15, -18]]
    for got in run_collective(3, _allgather_rows):
        assert got.dtype == np.int32 and got.tolist() == want3
    for got in run_collective(2, _allgather_rows):
        assert got.tolist() == want3[:4]


def _broadcast_from_last(ctx: ExecContext) -> np.ndarray:
    mine = x_of(ctx.rank, "int64") if ctx.rank == ctx.world_size - 1 else np.zeros(6, np.int64)
    return call(ctx, "broadcast", {"X": mine}, root_id=ctx.world_size - 1)


@pytest.mark.parametrize("ws", [1, 2, 3])
def test_broadcast_by_hand(ws: int) -> None:
    for got in run_collective(ws, _broadcast_from_last):
        assert got.tolist() == [ws * v for v in BASE.tolist()]


def _ring_shift(ctx: ExecContext) -> np.ndarray:
    """Pass each rank's value to the next rank; even ranks send first so the ring cannot deadlock."""
    right, left = (ctx.rank + 1) % ctx.world_size, (ctx.rank - 1) % ctx.world_size
    mine = x_of(ctx.rank, "int16").reshape(3, 2)
    if ctx.rank % 2 == 0:
        call(ctx, "send", {"X": mine}, peer=right)
        return call(ctx, "recv", peer=left, dtype="int16", shape=[3, 2])
    got = call(ctx, "recv", peer=left, dtype="int16", shape=[3, 2])
    call(ctx, "send", {"X": mine}, peer=right)
    return got


@pytest.mark.parametrize("ws", [2, 4])
def test_send_recv_ring(ws: int) -> None:
    for rank, got in enumerate(run_collective(ws, _ring_shift)):
        np.testing.assert_array_equal(got, x_of((rank - 1) % ws, "int16").reshape(3, 2))


def test_one_rank_without_a_backend_is_the_identity() -> None:
    ctx = ExecContext()
    x = x_of(0)
    for op in OPS:
        np.testing.assert_array_equal(call(ctx, "allreduce", {"X": x}, reduce_type=op), x)
    np.testing.assert_array_equal(call(ctx, "reduce", {"X": x}), x)
    np.testing.assert_array_equal(call(ctx, "reduce_scatter", {"X": x}, nranks=1), x)
    np.testing.assert_array_equal(call(ctx, "allgather", {"X": x}, nranks=1), x)
    np.testing.assert_array_equal(call(ctx, "broadcast", {"X": x}), x)


def test_low_precision_and_integer_dtypes_reduce_in_their_own_dtype() -> None:
    arrays = [np.array([250, 7], np.uint8), np.array([10, 9], np.uint8)]
    assert reduce_arrays(arrays, "sum").tolist() == [4, 16]  # wraps like two's complement
    halves = [np.array([2048, 1], np.float16), np.array([1, 1], np.float16)]
    assert reduce_arrays(halves, "sum").tolist() == [2048, 2]  # 2049 is not a float16
    bf = [np.array([1, 2], BF16), np.array([3, 4], BF16)]
    got = reduce_arrays(bf, "avg")
    assert got.dtype == BF16 and got.astype(np.float32).tolist() == [2, 3]


# ----- property tests against numpy -----------------------------------------------------------

REFERENCE = {"sum": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply}


def _run_op(name: str, arrays: list[np.ndarray], attrs: dict[str, Any]) -> list[Any]:
    def body(ctx: ExecContext) -> Any:
        filled = {k: (ctx.world_size if v == "ws" else v) for k, v in attrs.items()}
        return call(ctx, name, {"X": arrays[ctx.rank]}, **filled)

    return run_collective(len(arrays), body)


@st.composite
def group_inputs(draw: st.DrawFn, rows_multiple: bool = False) -> list[np.ndarray]:
    ws = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(["int32", "int64", "float64", "float32"]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4))
    if rows_multiple:
        shape = (shape[0] * ws, *shape[1:])
    elements = st.integers(-40, 40)
    return [draw(hnp.arrays(dtype, shape, elements=elements)) for _ in range(ws)]


@given(group_inputs(), st.sampled_from(sorted(REFERENCE)))
def test_allreduce_matches_numpy(arrays: list[np.ndarray], op: str) -> None:
    want = REFERENCE[op].reduce(np.stack(arrays), axis=0).astype(arrays[0].dtype)
    for got in _run_op("allreduce", arrays, {"reduce_type": op}):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == arrays[0].dtype


@given(group_inputs())
def test_allreduce_avg_matches_numpy_mean(arrays: list[np.ndarray]) -> None:
    floats = [a.astype(np.float64) for a in arrays]
    for got in _run_op("allreduce", floats, {"reduce_type": "avg"}):
        np.testing.assert_allclose(got, np.stack(floats).mean(axis=0), rtol=1e-12)


@given(group_inputs())
def test_allgather_matches_numpy_concatenate(arrays: list[np.ndarray]) -> None:
    for got in _run_op("allgather", arrays, {"nranks": "ws"}):
        np.testing.assert_array_equal(got, np.concatenate(arrays, axis=0))


@given(group_inputs(rows_multiple=True), st.sampled_from(sorted(REFERENCE)))
def test_reduce_scatter_matches_numpy(arrays: list[np.ndarray], op: str) -> None:
    total = REFERENCE[op].reduce(np.stack(arrays), axis=0).astype(arrays[0].dtype)
    blocks = np.split(total, len(arrays), axis=0)
    for rank, got in enumerate(_run_op("reduce_scatter", arrays, {"reduce_type": op, "nranks": "ws"})):
        np.testing.assert_array_equal(got, blocks[rank])


# ----- errors -------------------------------------------------------------------------------


def _gather_with_nranks(nranks: int, ctx: ExecContext) -> np.ndarray:
    return call(ctx, "allgather", {"X": x_of(ctx.rank)}, nranks=nranks)


def _scatter_with_nranks(nranks: int, ctx: ExecContext) -> np.ndarray:
    return call(ctx, "reduce_scatter", {"X": x_of(ctx.rank)}, nranks=nranks)


@pytest.mark.parametrize("body", [_gather_with_nranks, _scatter_with_nranks])
def test_nranks_must_match_the_group(body: Any) -> None:
    with pytest.raises(GraphError, match="nranks is 3 but the group has 2 rank"):
        run_collective(2, functools.partial(body, 3))


def _reduce_to(root: int, ctx: ExecContext) -> np.ndarray:
    return call(ctx, "reduce", {"X": x_of(ctx.rank)}, root_id=root)


def _broadcast_from(root: int, ctx: ExecContext) -> np.ndarray:
    return call(ctx, "broadcast", {"X": x_of(ctx.rank)}, root_id=root)


@pytest.mark.parametrize("body", [_reduce_to, _broadcast_from])
def test_root_must_be_in_the_group(body: Any) -> None:
    with pytest.raises(GraphError, match=r"root_id 2 is outside the group of 2 rank\(s\) \(0..1\)"):
        run_collective(2, functools.partial(body, 2))


def test_peers_must_be_other_ranks_of_the_group() -> None:
    with pytest.raises(GraphError, match="cannot exchange with itself"):
        run_collective(2, lambda ctx: call(ctx, "send", {"X": x_of(0)}, peer=ctx.rank))
    with pytest.raises(GraphError, match="peer 5 is outside the group"):
        run_collective(2, lambda ctx: call(ctx, "recv", peer=5, dtype="float32", shape=[6]))


def test_recv_must_match_what_the_peer_sends() -> None:
    def body(ctx: ExecContext) -> Any:
        if ctx.rank == 0:
            return call(ctx, "send", {"X": x_of(0)}, peer=1)
        return call(ctx, "recv", peer=0, dtype="float64", shape=[6])

    with pytest.raises(CommError, match=r"rank 0 sent float32\[6\], but the receiver expects float64\[6\]"):
        run_collective(2, body)


def test_ranks_making_different_calls_fail_on_every_rank() -> None:
    def body(ctx: ExecContext) -> Any:
        return call(ctx, "allreduce", {"X": x_of(ctx.rank)[: 6 - 2 * ctx.rank]})

    with pytest.raises(CommError, match=r"rank 0: allreduce\(sum\) of float32\[6\]; rank 1: .*float32\[4\]"):
        run_collective(2, body)


def test_deadlocks_are_reported_not_hung() -> None:
    def both_send(ctx: ExecContext) -> Any:
        call(ctx, "send", {"X": x_of(0)}, peer=1 - ctx.rank)

    start = time.monotonic()
    with pytest.raises(CommError, match="deadlock: rank 0 waits in send to rank 1; rank 1 waits in send to rank 0"):
        run_collective(2, both_send)

    def rank0_only(ctx: ExecContext) -> Any:
        return call(ctx, "allreduce", {"X": x_of(0)}) if ctx.rank == 0 else None

    with pytest.raises(CommError, match=r"rank 0 waits in allreduce\(sum\) of float32\[6\]; rank 1 has returned"):
        run_collective(2, rank0_only)
    assert time.monotonic() - start < 5


def test_a_failing_rank_raises_its_own_error_and_frees_the_others() -> None:
    def body(ctx: ExecContext) -> Any:
        if ctx.rank == 1:
            raise ValueError("rank 1 broke")
        return call(ctx, "allreduce", {"X": x_of(0)})

    with pytest.raises(ValueError, match="rank 1 broke"):
        run_collective(3, body, timeout_s=10)


def test_simulated_timeout() -> None:
    release = threading.Event()

    def body(ctx: ExecContext) -> Any:
        if ctx.rank == 0:
            release.wait(5)
        return call(ctx, "allreduce", {"X": x_of(0)})

    try:
        # rank 1 is normally already blocked in the allreduce; on a loaded machine it may still be running
        with pytest.raises(CommError, match=r"timed out after 1 s: rank 0 is running; rank 1 (waits in allreduce|is running)"):
            run_collective(2, body, timeout_s=1.0)
    finally:
        release.set()


def test_kernels_need_a_matching_backend() -> None:
    with pytest.raises(UsageError, match="world_size 2 but no communication backend"):
        call(ExecContext(rank=0, world_size=2), "allreduce", {"X": x_of(0)})
    group = SimulatedGroup(2)
    with pytest.raises(UsageError, match="rank 0 of 2 but its backend is rank 1 of 2"):
        call(ExecContext(rank=0, world_size=2, comm=group.comm(1)), "allreduce", {"X": x_of(0)})


def test_the_gloo_backend_must_be_opened_first() -> None:
    backend = TorchDistributedBackend(0, 2, port=free_port())
    with pytest.raises(UsageError, match="not open; use it as a context manager"):
        backend.allreduce(x_of(0), "sum")
    with pytest.raises(GraphError, match="rank 2 is outside the group"):
        TorchDistributedBackend(2, 2, port=1)


def test_run_collective_rejects_bad_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="world_size must be a positive integer"):
        run_collective(0, _allgather_rows)
    with pytest.raises(UsageError, match="unknown communication backend 'mpi'"):
        run_collective(2, _allgather_rows, backend="mpi")
    with pytest.raises(UsageError, match="timeout_s must be positive"):
        run_collective(2, _allgather_rows, timeout_s=0)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(UsageError, match="needs PyTorch") as info:
        run_collective(2, _allgather_rows, backend="gloo")
    assert "pip install" in info.value.diagnostics()


# ----- spawned processes (no torch needed) -------------------------------------------------------


def _sleep_then_return(seconds: float, rank: int, world_size: int) -> int:
    time.sleep(seconds)
    return rank


def test_spawned_ranks_return_results_in_rank_order() -> None:
    # stdlib and ptmpack entries keep the children light: they need not import this module
    assert spawn_ranks(3, operator.add, timeout_s=30) == [3, 4, 5]


def test_spawned_ranks_raise_the_failing_ranks_error_with_its_traceback() -> None:
    with pytest.raises(GraphError, match=r"node n7: rank 1 cannot exchange with itself \(peer 1\)") as info:
        spawn_ranks(2, functools.partial(check_peer, 1, where="node n7"), timeout_s=30)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "check_peer" in str(info.value.__cause__)


def test_spawned_ranks_are_killed_on_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(CommError, match=r"timed out after 3 s; rank\(s\) 0, 1 did not finish and were killed"):
        spawn_ranks(2, functools.partial(_sleep_then_return, 600.0), timeout_s=3)
    assert time.monotonic() - start < 10
    assert multiprocessing.active_children() == []


def test_unpicklable_rank_functions_are_a_usage_error() -> None:
    with pytest.raises(UsageError, match="cannot send the rank function") as info:
        spawn_ranks(2, lambda rank, ws: rank, timeout_s=10)
    assert "module-level function" in info.value.diagnostics()


# ----- torch.distributed over gloo: must equal the simulated group -------------------------------


def _values(rank: int, dtype: str, shape: tuple[int, ...] = (6,)) -> np.ndarray:
    """Small integer values, alternating in sign for signed dtypes, distinct per rank."""
    n = int(np.prod(shape))
    v = np.arange(1, n + 1) + 3 * rank
    if dtype not in ("uint8", "bool"):
        v = v * np.where(np.arange(n) % 2, -1, 1)
    return (v % 2 == 0).reshape(shape) if dtype == "bool" else v.astype(numpy_dtype_of(dtype)).reshape(shape)


def numpy_dtype_of(name: str) -> np.dtype:
    return BF16 if name == "bfloat16" else np.dtype(name)


def _every_op(ctx: ExecContext) -> dict[str, np.ndarray]:
    """One program touching every operator, dtype and reduce type; run on 2 ranks."""
    r, ws = ctx.rank, ctx.world_size
    out: dict[str, np.ndarray] = {}
    for dtype in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8"):
        out[f"allreduce.sum.{dtype}"] = call(ctx, "allreduce", {"X": _values(r, dtype, (2, 3))})
    for op in ("max", "min", "prod"):
        for dtype in ("float32", "int32", "int16", "uint8"):
            out[f"allreduce.{op}.{dtype}"] = call(ctx, "allreduce", {"X": _values(r, dtype)}, reduce_type=op)
    for dtype in ("float32", "float16", "bfloat16"):
        out[f"allreduce.avg.{dtype}"] = call(ctx, "allreduce", {"X": _values(r, dtype)}, reduce_type="avg")
    for root in (0, 1):
        for op in ("sum", "max"):
            out[f"reduce.{op}.{root}"] = call(ctx, "reduce", {"X": _values(r, "float32", (3, 2))},
                                              reduce_type=op, root_id=root)
    for op in ("sum", "min", "avg"):
        out[f"reduce_scatter.{op}"] = call(ctx, "reduce_scatter", {"X": _values(r, "float32", (4, 3))},
                                           reduce_type=op, nranks=ws)
    out["reduce_scatter.prod.int64"] = call(ctx, "reduce_scatter", {"X": _values(r, "int64")},
                                            reduce_type="prod", nranks=ws)
    for dtype in ("float32", "bfloat16", "bool", "int16"):
        out[f"allgather.{dtype}"] = call(ctx, "allgather", {"X": _values(r, dtype, (1, 3))}, nranks=ws)
    for dtype in ("float32", "int8", "bool", "bfloat16"):
        out[f"broadcast.{dtype}"] = call(ctx, "broadcast", {"X": _values(r, dtype, (2, 2))}, root_id=1)
    for name, attrs in (("allgather", {"nranks": 3}), ("broadcast", {"root_id": 2})):
        try:
            call(ctx, name, {"X": _values(r, "float32")}, **attrs)
        except GraphError as exc:  # raised before any communication; the group stays usable
            out[f"error.{name}"] = np.array(exc.message)
    peer = 1 - r
    if r == 0:
        call(ctx, "send", {"X": _values(0, "float32", (2, 3))}, peer=peer)
        out["recv"] = call(ctx, "recv", peer=peer, dtype="bfloat16", shape=[4])
    else:
        out["recv"] = call(ctx, "recv", peer=peer, dtype="float32", shape=[2, 3])
        call(ctx, "send", {"X": _values(1, "bfloat16", (4,))}, peer=peer)
    return out


@pytest.mark.torch
@needs_torch
def test_gloo_equals_the_simulated_group() -> None:
    simulated = run_collective(2, _every_op)
    real = run_collective(2, _every_op, backend="gloo", timeout_s=60)
    for rank in (0, 1):
        assert sorted(real[rank]) == sorted(simulated[rank])
        for key, want in simulated[rank].items():
            got = real[rank][key]
            assert got.dtype == want.dtype and got.shape == want.shape, (rank, key)
            if key.startswith("error."):
                assert got == want
            else:
                np.testing.assert_array_equal(got.astype(np.float64), want.astype(np.float64),
                                              err_msg=f"{key} rank {rank}")
    # spot checks against hand-computed values
    assert simulated[1]["allreduce.sum.int8"].ravel().tolist() == [5, -7, 9, -11, 13, -15]
    assert simulated[0]["recv"].astype(np.float32).tolist() == [4, -5, 6, -7]
    assert simulated[0]["broadcast.int8"].ravel().tolist() == [4, -5, 6, -7]
    assert "nranks is 3 but the group has 2 rank" in str(real[0]["error.allgather"])
    assert "root_id 2 is outside the group" in str(real[1]["error.broadcast"])
    assert multiprocessing.active_children() == []


# ----- whole graphs through the executor ------------------------------------------------------------


def _graph_model(ws: int, rank: int) -> Any:
    """Rank ``rank``'s model: collectives shared by every rank, then a rank-specific send or recv."""
    from ptmpack.ir.model import Attribute, Graph, ModelStructure, OperatorNode, VariableNode

    def node(kind: str, name: str, inputs: dict[str, str], outputs: dict[str, str], **attrs: Any) -> OperatorNode:
        kinds = {str: AttrType.STRING, int: AttrType.INT, list: AttrType.INTS}
        typed = {k: Attribute(kinds[type(v)], v) for k, v in attrs.items()}
        return OperatorNode(kind, name, {k: (v,) for k, v in inputs.items()}, {k: (v,) for k, v in outputs.items()},
                            typed)

    f32 = functools.partial(VariableNode, dtype="float32")
    variables = [f32("X", shape=(2 * ws, 2)), f32("S", shape=(2 * ws, 2)), f32("P", shape=(2, 2)),
                 f32("G", shape=(2 * ws, 2)), f32("B", shape=(2 * ws, 2)), f32("M", shape=(2 * ws, 2))]
    ops = [node("allreduce", "sum_all", {"X": "X"}, {"Y": "S"}),
           node("reduce_scatter", "max_scatter", {"X": "S"}, {"Y": "P"}, reduce_type="max", nranks=ws),
           node("allgather", "gather", {"X": "P"}, {"Y": "G"}, nranks=ws),
           node("broadcast", "from_last", {"X": "X"}, {"Y": "B"}, root_id=ws - 1),
           node("reduce", "min_to_0", {"X": "X"}, {"Y": "M"}, reduce_type="min", root_id=0)]
    outputs = ["S", "P", "G", "B", "M"]
    if rank == 0:
        ops.append(node("send", "to_1", {"X": "X"}, {}, peer=1))
    elif rank == 1:
        variables.append(f32("R", shape=(2 * ws, 2)))
        ops.append(node("recv", "from_0", {}, {"Y": "R"}, peer=0, dtype="float32", shape=[2 * ws, 2]))
        outputs.append("R")
    return ModelStructure(name=f"rank{rank}", graphs=(Graph(0, variables=tuple(variables), operators=tuple(ops)),),
                          inputs=("X",), outputs=tuple(outputs))


def _run_graph(ctx: ExecContext) -> dict[str, np.ndarray]:
    from ptmpack.ir import execute

    x = np.arange(4 * ctx.world_size, dtype=np.float32).reshape(-1, 2) * (ctx.rank + 1)
    return execute.run(_graph_model(ctx.world_size, ctx.rank), {"X": x}, ctx=ctx)


def test_models_with_communication_operators_run_through_the_executor() -> None:
    ws = 2
    results = run_collective(ws, _run_graph)
    x = [np.arange(8, dtype=np.float32).reshape(4, 2) * (r + 1) for r in range(ws)]
    total = x[0] + x[1]
    for rank, got in enumerate(results):
        np.testing.assert_array_equal(got["S"], total)
        np.testing.assert_array_equal(got["P"], np.split(total, ws)[rank])  # max of equal copies
        np.testing.assert_array_equal(got["G"], total)
        np.testing.assert_array_equal(got["B"], x[1])
        np.testing.assert_array_equal(got["M"], x[0] if rank == 0 else x[rank])  # non-root: X unchanged
    np.testing.assert_array_equal(results[1]["R"], x[0])
