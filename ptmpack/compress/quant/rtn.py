"""Round-to-nearest (RTN) group quantization of linear weights, as compressed-tensors defines it.

Each group of ``group_size`` input columns of each output row is quantized by compressed-tensors'
min-max observer and quantizer (:mod:`ptmpack.compress.quant.observer`), so a weight this module
quantizes dequantizes identically there. RTN needs nothing but the weight: the step reads,
quantizes and writes one layer at a time (:func:`ptmpack.compress.quant.linear.quantize_tree`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.quant.metrics import accumulate, layer_row
from ptmpack.compress.quant.observer import group_params, quantize_codes, row_step, scale_dtype_for
from ptmpack.compress.quant.pack_quantized import QuantizedWeight
from ptmpack.compress.report import StepRecord
from ptmpack.compress.spec import CompressSpec
from ptmpack.compress.step import StepContext
from ptmpack.tensors.dtypes import to_float32


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
    return q, layer_row(name, q.shape, *sums)


def _quantize(weight: np.ndarray, bits: int, group_size: int, symmetric: bool, scale_dtype: np.dtype | type | None,
              sums: list[float] | None) -> QuantizedWeight:
    out, cols = weight.shape
    groups = math.ceil(cols / group_size)
    scale_dtype = scale_dtype_for(weight.dtype) if scale_dtype is None else np.dtype(scale_dtype)
    pad = groups * group_size - cols
    codes = np.empty((out, cols), np.int8)
    scales = np.empty((out, groups), scale_dtype)
    zeros = None if symmetric else np.empty((out, groups), np.int8)
    step = min(row_step(out, cols), out)
    # one float32 buffer for the rows and one for the codes, reused block after block: fresh blocks of this size
    # are mapped and unmapped by malloc each time, and two threads faulting pages in take turns in the kernel
    rows, work = np.empty((step, cols), np.float32), np.empty((step * groups, group_size), np.float32)
    for r in range(0, out, step):
        n = min(step, out - r)
        w = to_float32(weight[r:r + n], out=rows[:n])
        wg = np.pad(w, ((0, 0), (0, pad)), mode="edge") if pad else w
        wg = wg.reshape(n * groups, group_size)
        scale, zero = group_params(wg, bits, symmetric, scale_dtype)
        x = quantize_codes(wg, scale.reshape(-1, 1), zero.reshape(-1, 1), bits, out=work[: n * groups])
        codes[r:r + n] = x.reshape(n, groups * group_size)[:, :cols]
        scales[r:r + n] = scale.reshape(n, groups)
        if zeros is not None:
            zeros[r:r + n] = zero.reshape(n, groups)
        if sums is not None:  # the dequantized block (x - zero) · scale against the weight, in place
            x -= zero[:, None]
            x *= scale[:, None]
            x -= wg
            accumulate(sums, x.reshape(n, groups * group_size)[:, :cols], w)
    return QuantizedWeight(codes, scales, zeros, bits, group_size)


class RtnStep:
    """The ``--quant rtn`` step (a :class:`ptmpack.compress.step.Step`)."""

    def check(self, spec: CompressSpec) -> None:
        """Nothing beyond :meth:`CompressSpec.check`: RTN takes every bit width and group size it allows."""

    def run(self, tree: Path, ctx: StepContext) -> StepRecord:
        """Quantize every target linear of the tree's model, one layer at a time (:func:`quantize_rtn_tree`)."""
        return quantize_rtn_tree(tree, ctx)


def quantize_rtn_tree(tree: Path, ctx: StepContext) -> StepRecord:
    """Quantize every target linear of the tree's model by RTN, one layer at a time.

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
