"""Round-to-nearest (RTN) group quantization of linear weights, as compressed-tensors defines it.

Per group of ``group_size`` input columns of each output row, from the group's min and max
(both widened to include 0, so zero is exactly representable):

* asymmetric (default): ``scale = (max - min) / (2^bits - 1)``, ``zero_point = round(clamp(qmin - min/scale))``;
* symmetric (``--sym``): ``scale = max(|min|, |max|) / ((2^bits - 1) / 2)``, ``zero_point = 0``;

a zero scale becomes the dtype's epsilon; then ``q = clamp(round(w / scale + zero_point), qmin, qmax)``
with ``[qmin, qmax] = [-2^(bits-1), 2^(bits-1) - 1]``. These are compressed-tensors' min-max
observer and quantizer, so a weight this module quantizes dequantizes identically there.
Scales are rounded to the dtype they are stored in *before* the codes are computed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.storage import QuantizedWeight, qrange


def group_params(w: np.ndarray, bits: int, symmetric: bool, scale_dtype: np.dtype | type = np.float32
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of each row of ``w`` (``[rows, cols]``, one group per row).

    Returns float32 scales (already rounded through ``scale_dtype``) and float32 integral zero points.
    """
    lo, hi = qrange(bits)
    w = w.astype(np.float32, copy=False)
    wmin = np.minimum(w.min(axis=1), 0.0)
    wmax = np.maximum(w.max(axis=1), 0.0)
    if symmetric:
        scale = np.maximum(-wmin, wmax) / np.float32((hi - lo) / 2)
        zero = np.zeros_like(scale)
    else:
        scale = (wmax - wmin) / np.float32(hi - lo)
        with np.errstate(divide="ignore", invalid="ignore"):
            zero = np.clip(lo - wmin / scale, lo, hi)
        zero = np.where(scale > 0, zero, 0.0)
    eps = np.finfo(np.dtype(scale_dtype) if np.dtype(scale_dtype).kind == "f" else np.float32).eps
    scale = np.where(scale == 0, np.float32(eps), scale).astype(scale_dtype).astype(np.float32)
    return scale, np.round(zero).astype(np.float32)


def quantize_codes(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    """Codes ``clamp(round(w / scale + zero), qmin, qmax)``; ``scale``/``zero`` broadcast against ``w``."""
    lo, hi = qrange(bits)
    return np.clip(np.round(w.astype(np.float32) / scale + zero), lo, hi)


def quantize_rtn(weight: np.ndarray, bits: int, group_size: int, symmetric: bool = False,
                 scale_dtype: np.dtype | type | None = None) -> QuantizedWeight:
    """Quantize a ``[out, in]`` weight group-wise by round-to-nearest.

    ``scale_dtype`` defaults to the weight's dtype (float32 for integer or float64 inputs).
    """
    out, cols = weight.shape
    groups = math.ceil(cols / group_size)
    if scale_dtype is None:
        scale_dtype = weight.dtype if weight.dtype in (np.float16, np.float32) or weight.dtype.name == "bfloat16" \
            else np.float32
    w = weight.astype(np.float32)
    pad = groups * group_size - cols
    wg = np.pad(w, ((0, 0), (0, pad)), mode="edge") if pad else w
    wg = wg.reshape(out * groups, group_size)
    scale, zero = group_params(wg, bits, symmetric, scale_dtype)
    codes = quantize_codes(wg, scale[:, None], zero[:, None], bits).reshape(out, groups * group_size)[:, :cols]
    return QuantizedWeight(codes.astype(np.int8), scale.reshape(out, groups).astype(scale_dtype),
                           None if symmetric else zero.reshape(out, groups).astype(np.int8), bits, group_size)


def error_row(name: str, weight: np.ndarray, q: QuantizedWeight) -> dict[str, Any]:
    """The per-layer record of a quantized weight: relative Frobenius error and max |error|."""
    w = weight.astype(np.float32)
    err = q.dequantize() - w
    norm = float(np.linalg.norm(w))
    return {"name": name, "shape": list(w.shape), "rel_error": float(np.linalg.norm(err)) / norm if norm else 0.0,
            "max_abs_error": float(np.abs(err).max()) if err.size else 0.0}


def apply(tree: Path, ctx: Any) -> dict[str, Any]:
    """The ``--quant rtn`` step: quantize every target linear of the tree's model in place.

    Raises:
        UsageError: a group size that does not divide a layer's input width.
        UnsupportedError: a model the IR converter does not know.
    """
    from ptmpack.compress.quantize import ModelTensors, Target, quantize_tree

    def run(targets: list[Target], tensors: ModelTensors, group: int) -> dict[str, QuantizedWeight]:
        done: dict[str, QuantizedWeight] = {}
        for i, t in enumerate(targets):
            w = tensors[t.weight]
            done[t.prefix] = quantize_rtn(w.T if t.transposed else w, ctx.spec.bits, group, ctx.spec.symmetric)
            ctx.progress("rtn", i + 1, len(targets))
        return done

    return quantize_tree(tree, ctx, "rtn", run)
