"""The min-max observer and quantizer of compressed-tensors, on float32 numpy arrays (shared by every method).

Per group (a row of the array handed in): the group's min and max, both widened to include 0 so
zero is exactly representable, give

* asymmetric: ``scale = (max - min) / (2^bits - 1)``, ``zero_point = round(clamp(qmin - min/scale))``;
* symmetric: ``scale = max(|min|, |max|) / ((2^bits - 1) / 2)``, ``zero_point = 0``;

a zero scale becomes the dtype's epsilon; then ``q = clamp(round(w / scale + zero_point), qmin, qmax)``
with ``[qmin, qmax] = [-2^(bits-1), 2^(bits-1) - 1]``. Scales are rounded to the dtype they are
stored in *before* the codes are computed.
"""

from __future__ import annotations

import numpy as np

from ptmpack.compress.quant.pack_quantized import qrange


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
            zero = np.clip(np.float32(lo) - wmin / scale, np.float32(lo), np.float32(hi))
        zero = np.where(scale > 0, zero, 0.0)
    eps = np.finfo(np.dtype(scale_dtype) if np.dtype(scale_dtype).kind == "f" else np.float32).eps
    scale = np.where(scale == 0, np.float32(eps), scale).astype(scale_dtype).astype(np.float32)
    return scale, np.round(zero).astype(np.float32)


def quantize_codes(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int, out: np.ndarray | None = None
                   ) -> np.ndarray:
    """Codes ``clamp(round(w / scale + zero), qmin, qmax)`` in float32; ``scale``/``zero`` broadcast against ``w``.

    Written into ``out`` (float32, ``w``'s shape) when given. Every operand is float32, bounds
    included: with Python-int bounds numpy's clip holds the GIL, so RTN's two worker threads took
    turns (see :func:`ptmpack.compress.quant.rtn.quantize_rtn`).
    """
    lo, hi = qrange(bits)
    f32 = np.float32
    x = np.divide(w.astype(f32, copy=False), scale.astype(f32, copy=False), out=out)
    x += zero.astype(f32, copy=False)
    np.rint(x, out=x)  # round half to even, as np.round and torch.round
    return np.clip(x, f32(lo), f32(hi), out=x)


BLOCK_ELEMENTS = 1 << 18
"""Weights quantized (and measured) per block of rows of about this many elements (at least 32 rows): rows are
independent, so a block's float32 buffers (1 MiB each) bound the memory, and the dozen passes over a block
stay in the CPU cache. Measured on a LLaMA-3-8B layer (7 linears, two threads as RTN runs them): 1.78 s at
2^18 elements against 2.58 s at 2^22, where the passes went to memory."""


def row_step(rows: int, cols: int) -> int:
    """Rows per block of about :data:`BLOCK_ELEMENTS` elements (a multiple of 32, so packed zero points split too)."""
    return max(32, (BLOCK_ELEMENTS // max(cols, 1)) // 32 * 32)


def scale_dtype_for(dtype: np.dtype) -> np.dtype:
    """The dtype scales are stored in for a weight of ``dtype``: its own float type, else float32."""
    dtype = np.dtype(dtype)
    return dtype if dtype in (np.float16, np.float32) or dtype.name == "bfloat16" else np.dtype(np.float32)
