"""Dtype and shape rules shared by the operator modules, and the compute-dtype policy of kernels.

Inference works on :class:`~ptmpack.ir.registry.TensorType` (dtype name, shape with -1 for
an unknown dimension); kernels work on numpy arrays. The helpers here keep both sides
consistent: :func:`broadcast_shapes` is numpy broadcasting that tolerates unknown dims,
:func:`promote` is the result dtype of mixing two inputs, and :func:`work`/:func:`out`
are the compute-dtype policy: kernels compute in float32 (float64 when the compute dtype is
float64) and hand floating-point results back in ``ctx.compute_dtype``, so a float16 run
stores float16 activations but accumulates in float32, as accelerators do.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np

from ptmpack.errors import GraphError
from ptmpack.ir.registry import ExecContext, TensorType

FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
INT_DTYPES = ("int64", "int32", "int16", "int8", "uint8")
INDEX_DTYPES = ("int64", "int32")
NUMERIC_DTYPES = FLOAT_DTYPES + INT_DTYPES
ALL_DTYPES = (*NUMERIC_DTYPES, "bool")
COMPUTE_DTYPES = ("float32", "float16", "float64")
"""Compute dtypes a run may ask for (``ExecContext.compute_dtype``)."""

_RANK = {"bool": 0, "uint8": 1, "int8": 1, "int16": 2, "int32": 3, "int64": 4,
         "float16": 5, "bfloat16": 5, "float32": 6, "float64": 7}


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of an IR dtype name (bfloat16 through ml_dtypes)."""
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def ir_dtype(dtype: np.dtype) -> str:
    """The IR dtype name of a numpy dtype.

    Raises:
        GraphError: numpy dtype with no IR name (complex, strings, fp8...).
    """
    name = "bfloat16" if dtype == np.dtype(ml_dtypes.bfloat16) else np.dtype(dtype).name
    if name not in _RANK:
        raise GraphError(f"dtype {name} has no IR name")
    return name


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


def promote(*dtypes: str) -> str:
    """The dtype of an elementwise result: the widest float if any input is a float, else the widest int.

    float16 with bfloat16 gives float32 (neither holds the other).
    """
    best = max(dtypes, key=lambda d: _RANK[d])
    if {"float16", "bfloat16"} <= set(dtypes) and best in ("float16", "bfloat16"):
        return "float32"
    return best


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
    """Numpy broadcasting of shapes in which -1 marks an unknown dimension.

    An unknown dim against a known one > 1 gives the known one (anything else would fail
    at run time); against 1 or another unknown it stays unknown.

    Raises:
        GraphError: two known dimensions > 1 differ.
    """
    rank = max((len(s) for s in shapes), default=0)
    out: list[int] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        known = {d for d in dims if d not in (-1, 1)}
        if len(known) > 1:
            raise GraphError(f"shapes {' and '.join(str(tuple(s)) for s in shapes)} do not broadcast")
        if known:
            out.append(known.pop())
        elif -1 in dims:
            out.append(-1)
        else:
            out.append(1)
    return tuple(out)


def norm_axis(axis: int, rank: int, what: str = "axis") -> int:
    """``axis`` as a non-negative index into a shape of ``rank`` dims.

    Raises:
        GraphError: out of range.
    """
    if not -rank <= axis < rank:
        raise GraphError(f"{what} {axis} is out of range for rank {rank}")
    return axis % rank


def dims_equal(a: int, b: int) -> bool:
    """Whether two dims can be the same (-1 matches anything)."""
    return a == -1 or b == -1 or a == b


def same_dim(a: int, b: int, what: str) -> int:
    """The known one of two dims that must agree.

    Raises:
        GraphError: both known and different.
    """
    if not dims_equal(a, b):
        raise GraphError(f"{what}: {a} != {b}")
    return a if a != -1 else b


def float_type(t: TensorType, shape: Sequence[int] | None = None) -> TensorType:
    """The result type of a float op on ``t``: its dtype if float, else float32."""
    return TensorType(t.dtype if is_float(t.dtype) else "float32", tuple(t.shape if shape is None else shape))


def work_dtype(ctx: ExecContext) -> np.dtype:
    """The dtype kernels compute in: float64 for a float64 run, float32 otherwise."""
    return np.dtype(np.float64 if ctx.compute_dtype == "float64" else np.float32)


def work(ctx: ExecContext, x: np.ndarray) -> np.ndarray:
    """``x`` in the working dtype (no copy when it already is)."""
    return np.asarray(x).astype(work_dtype(ctx), copy=False)


def out(ctx: ExecContext, y: np.ndarray) -> np.ndarray:
    """A floating-point result in the compute dtype (no copy when it already is)."""
    return np.asarray(y).astype(np_dtype(ctx.compute_dtype), copy=False)


def is_float_array(x: np.ndarray) -> bool:
    """Whether an array holds floating-point values (bfloat16 included)."""
    dt = np.asarray(x).dtype
    return dt.kind == "f" or dt == np.dtype(ml_dtypes.bfloat16)


def erf(x: np.ndarray) -> np.ndarray:
    """Vectorised error function (relative error < 1.2e-7 everywhere; numpy has none).

    Chebyshev fit of erfc from Numerical Recipes §6.2 evaluated in float64, which is
    enough for float32 results (torch's exact gelu agrees to ~1e-7).
    """
    z = np.abs(x.astype(np.float64))
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    erfc = t * np.exp(poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)
