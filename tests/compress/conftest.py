"""Fixtures shared by the compress tests."""

from __future__ import annotations

from typing import Any

import pytest

from ptmpack.compress.quant.gptq import solver as gptq_solver


@pytest.fixture(params=["numpy", "torch"])
def xp(request: pytest.FixtureRequest) -> Any:
    """The GPTQ solver's array backend, once with numpy and once with torch (skipped without torch)."""
    if request.param == "numpy":
        return gptq_solver.NumpyBackend()
    torch = pytest.importorskip("torch")
    return gptq_solver.TorchBackend(torch, "cpu")
