"""``quantized_linear``: a linear layer whose weight is stored group-quantized (SPEC §7, Table 6 extension).

The weight arrives as compressed-tensors ``pack-quantized`` tensors (see
:mod:`ptmpack.quant.packing` and docs/COMPRESSION.md): ``Packed`` int32 ``[out,
ceil(in·bits/32)]``, ``Scale`` ``[out, in/group_size]``, optional ``ZeroPoint`` (int32
packed along the output axis, asymmetric only) and optional ``GIdx`` (group of each input
column). The kernel unpacks and dequantizes the weight for this one call — ``(q - zp) ·
scale`` in float32 — multiplies, and lets it go: at most one layer's float weight is alive
at a time, so a quantized model runs in memory bounded by its packed size plus one layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ptmpack.errors import GraphError
from ptmpack.ir.model import AttrType
from ptmpack.ir.ops.numeric import FLOAT_DTYPES, INDEX_DTYPES, out, promote, same_dim, work
from ptmpack.ir.registry import AttrDef, ExecContext, Slot, TensorType, Values, op
from ptmpack.quant.packing import unpack_int

Attrs = Mapping[str, Any]


def _infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    x, packed, scale = inputs["X"], inputs["Packed"], inputs["Scale"]
    bits, group, cols = attrs["bits"], attrs["group_size"], attrs["in_features"]
    if not 1 <= bits <= 8 or group < 1 or cols < 1:
        raise GraphError(f"quantized_linear needs 1 <= bits <= 8, group_size >= 1, in_features >= 1; "
                         f"got {bits}, {group}, {cols}")
    if len(packed.shape) != 2 or len(scale.shape) != 2 or not x.shape:
        raise GraphError(f"quantized_linear needs X [..., in], Packed and Scale 2-D; got {x.shape}, "
                         f"{packed.shape}, {scale.shape}")
    rows = packed.shape[0]
    same_dim(x.shape[-1], cols, "quantized_linear in_features vs X")
    same_dim(packed.shape[1], math.ceil(cols * bits / 32), "quantized_linear packed words per row")
    same_dim(scale.shape[0], rows, "quantized_linear Scale rows vs out_features")
    same_dim(scale.shape[1], math.ceil(cols / group), "quantized_linear Scale groups")
    zp = inputs["ZeroPoint"]
    if zp is not None:
        if len(zp.shape) != 2:
            raise GraphError(f"quantized_linear ZeroPoint must be 2-D, got {zp.shape}")
        same_dim(zp.shape[1], scale.shape[1], "quantized_linear ZeroPoint groups")
    bias = inputs["Bias"]
    if bias is not None:
        same_dim(bias.shape[0] if bias.shape else -1, rows, "quantized_linear Bias vs out_features")
    return {"Y": TensorType(promote(x.dtype, scale.dtype), (*x.shape[:-1], rows))}


def dequantize_weight(packed: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, g_idx: np.ndarray | None,
                      bits: int, group_size: int, in_features: int) -> np.ndarray:
    """The float32 ``[out, in]`` weight: ``(q - zero_point) · scale`` per group.

    ``zero_point`` is either packed int32 ``[ceil(out·bits/32), groups]`` or unpacked ``[out, groups]``.

    Raises:
        IntegrityError: packed data inconsistent with the shapes.
    """
    rows = packed.shape[0]
    cols = np.asarray(g_idx).astype(np.int64) if g_idx is not None else np.arange(in_features) // group_size
    w = unpack_int(np.ascontiguousarray(packed), bits, in_features).astype(np.float32)
    if zero_point is not None:
        zp = np.asarray(zero_point)
        if zp.shape[0] != rows:
            zp = unpack_int(np.ascontiguousarray(zp), bits, rows, packed_dim=0)
        w -= zp.astype(np.float32)[:, cols]
    w *= np.asarray(scale, dtype=np.float32)[:, cols]
    return w


@op("quantized_linear", table="Table 6", infer=_infer,
    inputs=[Slot("X", "input [..., in_features]", dtypes=FLOAT_DTYPES),
            Slot("Packed", "int32 codes [out_features, ceil(in_features·bits/32)]", dtypes=("int32",)),
            Slot("Scale", "scale per group [out_features, in_features/group_size]", dtypes=FLOAT_DTYPES),
            Slot("ZeroPoint", "int32 zero points, packed along out_features (asymmetric only)", optional=True,
                 dtypes=("int32", "int8")),
            Slot("GIdx", "group of each input column [in_features] (contiguous groups when absent)", optional=True,
                 dtypes=INDEX_DTYPES),
            Slot("Bias", "bias [out_features]", optional=True, dtypes=FLOAT_DTYPES)],
    outputs=[Slot("Y", "[..., out_features]")],
    attributes=[AttrDef("bits", AttrType.INT, doc="bits per weight code (1..8)"),
                AttrDef("group_size", AttrType.INT, doc="input columns sharing one scale and zero point"),
                AttrDef("in_features", AttrType.INT, doc="input width (the packed rows hold ceil(in·bits/32) words)")])
def _quantized_linear(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = X · dequantize(W)ᵀ + Bias, the weight dequantized for this call only.

    Raises:
        GraphError: inconsistent packed data.
    """
    from ptmpack.errors import IntegrityError

    try:
        w = dequantize_weight(inputs["Packed"], inputs["Scale"], inputs["ZeroPoint"], inputs["GIdx"],
                              attrs["bits"], attrs["group_size"], attrs["in_features"])
    except IntegrityError as exc:
        raise GraphError(exc.message) from None
    x = work(ctx, inputs["X"])
    y = np.matmul(x.reshape(-1, x.shape[-1]), w.T.astype(x.dtype, copy=False))
    del w
    if inputs["Bias"] is not None:
        y += work(ctx, inputs["Bias"])
    return {"Y": out(ctx, y.reshape(*x.shape[:-1], y.shape[-1]))}
