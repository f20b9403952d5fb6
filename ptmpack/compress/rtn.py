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


BLOCK_ELEMENTS = 1 << 22
"""Weights quantized (and measured) per block of rows of about this many elements: rows are independent,
so the float32 temporaries of a block, not of the layer, bound the memory (16 MiB each)."""


def _row_blocks(rows: int, cols: int) -> range:
    step = max(32, (BLOCK_ELEMENTS // max(cols, 1)) // 32 * 32)
    return range(0, rows, step)


def scale_dtype_for(dtype: np.dtype) -> np.dtype:
    """The dtype scales are stored in for a weight of ``dtype``: its own float type, else float32."""
    dtype = np.dtype(dtype)
    return dtype if dtype in (np.float16, np.float32) or dtype.name == "bfloat16" else np.dtype(np.float32)


def quantize_rtn(weight: np.ndarray, bits: int, group_size: int, symmetric: bool = False,
                 scale_dtype: np.dtype | type | None = None) -> QuantizedWeight:
    """Quantize a ``[out, in]`` weight group-wise by round-to-nearest.

    ``scale_dtype`` defaults to :func:`scale_dtype_for` the weight's dtype. Computed in blocks
    of rows (:data:`BLOCK_ELEMENTS`); each row's result does not depend on the others.
    """
    out, cols = weight.shape
    groups = math.ceil(cols / group_size)
    scale_dtype = scale_dtype_for(weight.dtype) if scale_dtype is None else np.dtype(scale_dtype)
    pad = groups * group_size - cols
    codes = np.empty((out, cols), np.int8)
    scales = np.empty((out, groups), scale_dtype)
    zeros = None if symmetric else np.empty((out, groups), np.int8)
    step = _row_blocks(out, cols).step
    for r in range(0, out, step):
        w = weight[r:r + step].astype(np.float32)
        n = len(w)
        wg = np.pad(w, ((0, 0), (0, pad)), mode="edge") if pad else w
        wg = wg.reshape(n * groups, group_size)
        scale, zero = group_params(wg, bits, symmetric, scale_dtype)
        block = quantize_codes(wg, scale[:, None], zero[:, None], bits).reshape(n, groups * group_size)
        codes[r:r + n] = block[:, :cols]
        scales[r:r + n] = scale.reshape(n, groups)
        if zeros is not None:
            zeros[r:r + n] = zero.reshape(n, groups)
    return QuantizedWeight(codes, scales, zeros, bits, group_size)


def error_row(name: str, weight: np.ndarray, q: QuantizedWeight) -> dict[str, Any]:
    """The per-layer record of a quantized weight: relative Frobenius error and max |error| (by blocks of rows)."""
    rows, cols = q.shape
    sq_err = sq_w = 0.0
    max_abs = 0.0
    step = _row_blocks(rows, cols).step
    for r in range(0, rows, step):
        zero = None if q.zero_point is None else q.zero_point[r:r + step]
        part = QuantizedWeight(q.codes[r:r + step], q.scale[r:r + step], zero, q.bits, q.group_size, q.g_idx)
        w = weight[r:r + step].astype(np.float32)
        err = part.dequantize() - w
        sq_err += float(np.square(err, dtype=np.float64).sum())
        sq_w += float(np.square(w, dtype=np.float64).sum())
        if err.size:
            max_abs = max(max_abs, float(np.abs(err).max()))
    norm = math.sqrt(sq_w)
    return {"name": name, "shape": [rows, cols], "rel_error": math.sqrt(sq_err) / norm if norm else 0.0,
            "max_abs_error": max_abs}


def apply(tree: Path, ctx: Any) -> dict[str, Any]:
    """The ``--quant rtn`` step: quantize every target linear of the tree's model, one layer at a time.

    Each weight is read from disk when its turn comes, quantized, written into the rewritten
    safetensors file and dropped (:func:`ptmpack.compress.quantize.quantize_tree`), so memory
    holds one layer, whatever the size of the model.

    Raises:
        UsageError: a group size that does not divide a layer's input width.
        UnsupportedError: a model the IR converter does not know.
    """
    from ptmpack.compress.quantize import Target, group_of, quantize_tree

    def layer(t: Target, weight: np.ndarray, group: int) -> QuantizedWeight:
        return quantize_rtn(weight, ctx.spec.bits, group_of(t, group), ctx.spec.symmetric)

    return quantize_tree(tree, ctx, "rtn", layer=layer)
