"""Helpers of the operator tests: run one kernel as the executor would, and check its shape
inference against what the kernel made."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ptmpack.ir.ops.numeric import ir_dtype
from ptmpack.ir.registry import ExecContext, TensorType, lookup


def run(name: str, inputs: Mapping[str, Any], training: bool = False, compute_dtype: str = "float32",
        **attrs: Any) -> dict[str, Any]:
    """Run operator ``name``'s kernel with every slot present (absent ones None) and defaults applied."""
    opdef = lookup(name)
    assert opdef is not None
    resolved = opdef.resolve_attributes(attrs, name)
    ctx = ExecContext(compute_dtype=compute_dtype, training=training)
    return opdef.kernel(ctx, {s.name: inputs.get(s.name) for s in opdef.inputs}, resolved)


def check_float16(name: str, inputs: Mapping[str, Any], training: bool = False, **attrs: Any) -> None:
    """A float16 run hands every floating-point output back in float16, close to the float32 run."""
    full = run(name, inputs, training, **attrs)
    half = run(name, inputs, training, "float16", **attrs)
    for k, v in half.items():
        v32 = np.asarray(full[k])
        if v32.dtype.kind == "f":
            assert np.asarray(v).dtype == np.float16, (name, k)
            scale = max(float(np.nanmax(np.abs(v32), initial=0.0)), 1.0)
            np.testing.assert_allclose(np.asarray(v, np.float32), v32, atol=5e-3 * scale, err_msg=f"{name}.{k}")
        else:
            np.testing.assert_array_equal(v, v32)


def check_infer(name: str, inputs: Mapping[str, Any], training: bool = False, **attrs: Any) -> dict[str, Any]:
    """Inference first (it must reject bad inputs before the kernel runs), then the kernel: the
    inferred types equal the outputs' exactly, and with every input's first dimension unknown
    (-1) inference still succeeds and stays compatible. Returns the kernel's outputs."""
    opdef = lookup(name)
    assert opdef is not None
    resolved = opdef.resolve_attributes(attrs, name)
    types = {s.name: (TensorType(ir_dtype(np.asarray(inputs[s.name]).dtype), tuple(np.shape(inputs[s.name])))
                      if inputs.get(s.name) is not None else None) for s in opdef.inputs}
    inferred = opdef.infer(types, resolved)
    outs = run(name, inputs, training, **attrs)
    assert set(inferred) == set(outs), name
    for k, v in outs.items():
        assert inferred[k] == TensorType(ir_dtype(np.asarray(v).dtype), np.shape(v)), (name, k)
    vague = {k: (TensorType(t.dtype, (-1, *t.shape[1:])) if t is not None and t.shape else t) for k, t in types.items()}
    for k, t in opdef.infer(vague, resolved).items():
        shape = np.shape(outs[k])
        assert len(t.shape) == len(shape) and all(d in (-1, e) for d, e in zip(t.shape, shape, strict=True)), (name, k)
    return outs


def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    """Standard normal float32 values times ``scale``."""
    return (rng.standard_normal(shape) * scale).astype(np.float32)
