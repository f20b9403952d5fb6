"""The GPTQ solver: identity Hessian = RTN, error feedback helps, act-order, torch-optional paths."""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np
import pytest

from ptmpack.compress.quant.gptq import solver as gptq_solver
from ptmpack.compress.quant.gptq.solver import NotPositiveDefinite, backend, gptq_quantize
from ptmpack.compress.quant.rtn import quantize_rtn


def _correlated_inputs(n: int, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(cols, cols)) / np.sqrt(cols) + np.eye(cols)
    return (rng.normal(size=(n, cols)) @ mix * rng.uniform(0.2, 3.0, size=cols)).astype(np.float32)


@pytest.mark.parametrize(("bits", "group", "symmetric"), [(4, 32, False), (3, 64, True), (2, 16, False)])
def test_identity_hessian_without_damping_is_rtn(xp: Any, bits: int, group: int, symmetric: bool) -> None:
    w = np.random.default_rng(bits).normal(size=(24, 256)).astype(np.float32)
    g = gptq_quantize(w, np.eye(256, dtype=np.float32), bits, group, symmetric, damp=0.0, xp=xp)
    r = quantize_rtn(w, bits, group, symmetric)
    np.testing.assert_array_equal(g.codes, r.codes)
    np.testing.assert_array_equal(g.scale, r.scale)
    if not symmetric:
        np.testing.assert_array_equal(g.zero_point, r.zero_point)


@pytest.mark.parametrize("act_order", [False, True])
def test_error_feedback_lowers_the_output_error(xp: Any, act_order: bool) -> None:
    x = _correlated_inputs(2048, 128)
    w = np.random.default_rng(3).normal(size=(32, 128)).astype(np.float32)
    h = (x.T @ x) * (2 / len(x))
    g = gptq_quantize(w, h, 3, 32, act_order=act_order, xp=xp)
    r = quantize_rtn(w, 3, 32)

    def out_err(q: Any) -> float:
        return float(np.linalg.norm(x @ (q.dequantize() - w).T))

    assert out_err(g) < 0.9 * out_err(r)
    assert g.g_idx is None  # static groups: contiguous, nothing to store


def test_dead_inputs_are_zeroed(xp: Any) -> None:
    x = _correlated_inputs(512, 64)
    x[:, 5] = 0.0
    w = np.random.default_rng(4).normal(size=(8, 64)).astype(np.float32)
    g = gptq_quantize(w, (x.T @ x) * (2 / len(x)), 4, 32, xp=xp)
    np.testing.assert_array_equal(g.dequantize()[:, 5], 0.0)


def test_numpy_and_torch_agree() -> None:
    torch = pytest.importorskip("torch")
    x = _correlated_inputs(1024, 128, seed=7)
    w = np.random.default_rng(7).normal(size=(16, 128)).astype(np.float32)
    h = (x.T @ x) * (2 / len(x))
    a = gptq_quantize(w, h, 4, 64, xp=gptq_solver.NumpyBackend())
    b = gptq_quantize(w, h, 4, 64, xp=gptq_solver.TorchBackend(torch, "cpu"))
    assert np.mean(a.codes != b.codes) < 0.01  # float32 summation order may flip a rare tie
    np.testing.assert_allclose(a.dequantize(), b.dequantize(), atol=float(a.scale.max()) * 1.01)


def test_backend_without_torch_is_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_torch(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "torch" or name.startswith("torch."):
            raise ImportError("no torch here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert backend("cpu").name == "numpy"
    from ptmpack.errors import UnsupportedError

    with pytest.raises(UnsupportedError):
        backend("cuda")
    w = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    q = gptq_quantize(w, np.eye(64, dtype=np.float32), 4, 32, damp=0.0)
    np.testing.assert_array_equal(q.codes, quantize_rtn(w, 4, 32).codes)


def test_backend_with_torch_is_torch() -> None:
    pytest.importorskip("torch")
    assert backend("cpu").name == "torch"


def test_non_finite_hessian_is_refused(xp: Any) -> None:
    h = np.full((32, 32), np.nan, np.float32)
    with pytest.raises(NotPositiveDefinite):
        gptq_quantize(np.ones((4, 32), np.float32), h, 4, 32, xp=xp)
