"""The per-layer error record of a quantized weight: relative Frobenius error and max |error|, by blocks of rows."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ptmpack.compress.quant.observer import row_step
from ptmpack.compress.quant.pack_quantized import QuantizedWeight


def accumulate(sums: list[float], err: np.ndarray, w: np.ndarray) -> None:
    """Add a block's squared error, squared weight and max |error| to ``sums`` (``[sq_err, sq_w, max_abs]``)."""
    e, v = err.reshape(-1), w.reshape(-1)
    if not e.flags.c_contiguous:
        e = np.ascontiguousarray(e)
    sums[0] += float(np.dot(e, e))
    sums[1] += float(np.dot(v, v))
    if e.size:
        sums[2] = max(sums[2], float(e.max()), -float(e.min()))


def layer_row(name: str, shape: tuple[int, int], sq_err: float, sq_w: float, max_abs: float) -> dict[str, Any]:
    norm = math.sqrt(sq_w)
    return {"name": name, "shape": list(shape), "rel_error": math.sqrt(sq_err) / norm if norm else 0.0,
            "max_abs_error": max_abs}


def error_row(name: str, weight: np.ndarray, q: QuantizedWeight) -> dict[str, Any]:
    """The per-layer record of a quantized weight: relative Frobenius error and max |error| (by blocks of rows)."""
    rows, cols = q.shape
    sums = [0.0, 0.0, 0.0]
    step = row_step(rows, cols)
    for r in range(0, rows, step):
        zero = None if q.zero_point is None else q.zero_point[r:r + step]
        part = QuantizedWeight(q.codes[r:r + step], q.scale[r:r + step], zero, q.bits, q.group_size, q.g_idx)
        w = weight[r:r + step].astype(np.float32)
        err = part.dequantize()
        err -= w
        accumulate(sums, err, w)
    return layer_row(name, (rows, cols), *sums)
