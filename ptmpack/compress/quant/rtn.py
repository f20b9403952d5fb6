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

from ptmpack.compress.quant.pack_quantized import QuantizedWeight, qrange


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
    x = np.divide(w, scale, dtype=np.float32)
    x += zero
    np.rint(x, out=x)  # round half to even, as np.round and torch.round
    return np.clip(x, lo, hi, out=x)


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
    return _quantize(weight, bits, group_size, symmetric, scale_dtype, None)


def quantize_rtn_measured(name: str, weight: np.ndarray, bits: int, group_size: int, symmetric: bool = False
                          ) -> tuple[QuantizedWeight, dict[str, Any]]:
    """:func:`quantize_rtn` and its :func:`error_row`, the error measured on each block while it is at hand."""
    sums = [0.0, 0.0, 0.0]
    q = _quantize(weight, bits, group_size, symmetric, None, sums)
    return q, _row(name, q.shape, *sums)


def _quantize(weight: np.ndarray, bits: int, group_size: int, symmetric: bool, scale_dtype: np.dtype | type | None,
              sums: list[float] | None) -> QuantizedWeight:
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
        x = quantize_codes(wg, scale[:, None], zero[:, None], bits)
        codes[r:r + n] = x.reshape(n, groups * group_size)[:, :cols]
        scales[r:r + n] = scale.reshape(n, groups)
        if zeros is not None:
            zeros[r:r + n] = zero.reshape(n, groups)
        if sums is not None:  # the dequantized block (x - zero) · scale against the weight, in place
            x -= zero[:, None]
            x *= scale[:, None]
            x -= wg
            _accumulate(sums, x.reshape(n, groups * group_size)[:, :cols], w)
    return QuantizedWeight(codes, scales, zeros, bits, group_size)


def _accumulate(sums: list[float], err: np.ndarray, w: np.ndarray) -> None:
    """Add a block's squared error, squared weight and max |error| to ``sums``."""
    e, v = err.reshape(-1), w.reshape(-1)
    if not e.flags.c_contiguous:
        e = np.ascontiguousarray(e)
    sums[0] += float(np.dot(e, e))
    sums[1] += float(np.dot(v, v))
    if e.size:
        sums[2] = max(sums[2], float(e.max()), -float(e.min()))


def _row(name: str, shape: tuple[int, int], sq_err: float, sq_w: float, max_abs: float) -> dict[str, Any]:
    norm = math.sqrt(sq_w)
    return {"name": name, "shape": list(shape), "rel_error": math.sqrt(sq_err) / norm if norm else 0.0,
            "max_abs_error": max_abs}


def error_row(name: str, weight: np.ndarray, q: QuantizedWeight) -> dict[str, Any]:
    """The per-layer record of a quantized weight: relative Frobenius error and max |error| (by blocks of rows)."""
    rows, cols = q.shape
    sums = [0.0, 0.0, 0.0]
    step = _row_blocks(rows, cols).step
    for r in range(0, rows, step):
        zero = None if q.zero_point is None else q.zero_point[r:r + step]
        part = QuantizedWeight(q.codes[r:r + step], q.scale[r:r + step], zero, q.bits, q.group_size, q.g_idx)
        w = weight[r:r + step].astype(np.float32)
        err = part.dequantize()
        err -= w
        _accumulate(sums, err, w)
    return _row(name, (rows, cols), *sums)


def apply(tree: Path, ctx: Any) -> dict[str, Any]:
    """The ``--quant rtn`` step: quantize every target linear of the tree's model, one layer at a time.

    Each weight is read from disk when its turn comes, quantized, written into the rewritten
    safetensors file and dropped (:func:`ptmpack.compress.quant.linear.quantize_tree`), so memory
    holds one layer, whatever the size of the model.

    Raises:
        UsageError: a group size that does not divide a layer's input width.
        UnsupportedError: a model the IR converter does not know.
    """
    from ptmpack.compress.quant.linear import Target, group_of, quantize_tree

    def layer(t: Target, weight: np.ndarray, group: int) -> tuple[QuantizedWeight, dict[str, Any]]:
        return quantize_rtn_measured(t.prefix, weight, ctx.spec.bits, group_of(t, group), ctx.spec.symmetric)

    return quantize_tree(tree, ctx, "rtn", layer=layer)
