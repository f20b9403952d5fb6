"""``fake_quant``: activation quantize-dequantize in front of a quantized linear (§7.3.1.2, Table 6 extension).

A W·A integer engine (W8A8, W4A8) multiplies integer weights by integer activations: each
linear's input is quantized with a static per-tensor step ``Scale`` and zero point. This
operator computes, in float, exactly the values such an engine sees, so ``ptmpack run`` and
``eval`` of a post-training-quantized package report the accuracy of the integer engine.
The optional per-channel channel-compensation factors of §7.3.1.2 a) are applied before
quantizing (their inverse is folded into the linear that follows).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ptmpack.errors import GraphError
from ptmpack.ir.model import AttrType
from ptmpack.ir.ops.numeric import FLOAT_DTYPES, out, same_dim, work
from ptmpack.ir.registry import AttrDef, ExecContext, Slot, TensorType, Values, op

_INT = ("int8", "int16", "int32", "int64", "uint8")


def fake_quant(x: np.ndarray, scale: float, zero_point: float, bits: int) -> np.ndarray:
    """``(clamp(round(x / scale) + zp, -2^(b-1), 2^(b-1) - 1) - zp) · scale`` (signed codes, round half to even)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return (np.clip(np.rint(x / scale) + zero_point, lo, hi) - zero_point) * scale


def _infer(inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    x = inputs["X"]
    if not 2 <= attrs["bits"] <= 16:
        raise GraphError(f"fake_quant bits must lie in 2..16, got {attrs['bits']}")
    if not x.shape:
        raise GraphError("fake_quant needs X with a channel axis")
    for slot in ("Scale", "ZeroPoint"):
        t = inputs[slot]
        if t is not None and (len(t.shape) > 1 or (t.shape and t.shape[0] not in (1, -1))):
            raise GraphError(f"fake_quant {slot} must be a scalar or [1] (per-tensor), got {t.shape}")
    for slot in ("CompScale", "CompShift"):
        t = inputs[slot]
        if t is not None:
            if len(t.shape) != 1:
                raise GraphError(f"fake_quant {slot} must be [C], got {t.shape}")
            same_dim(t.shape[0], x.shape[-1], f"fake_quant {slot} vs X channels")
    return {"Y": TensorType(x.dtype, x.shape)}


@op("fake_quant", table="Table 6", infer=_infer,
    inputs=[Slot("X", "activation [..., C] entering a quantized linear", dtypes=FLOAT_DTYPES),
            Slot("Scale", "per-tensor quantization step s_a, [] or [1]", dtypes=FLOAT_DTYPES),
            Slot("ZeroPoint", "per-tensor zero point, [] or [1] (absent: symmetric)", optional=True,
                 dtypes=(*FLOAT_DTYPES, *_INT)),
            Slot("CompScale", "channel-compensation scale c [C]: X is divided by it before quantizing",
                 optional=True, dtypes=FLOAT_DTYPES),
            Slot("CompShift", "channel-compensation bias b [C]: subtracted before dividing", optional=True,
                 dtypes=FLOAT_DTYPES)],
    outputs=[Slot("Y", "the dequantized activation [..., C], in the compensated domain (X - b) / c")],
    attributes=[AttrDef("bits", AttrType.INT, 8, "activation bit width (signed codes)")])
def fake_quant_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Static activation quantization of post-training quantization (§7.3.1.2, Table 45's ``X_int``).

    ``Y = (clamp(round(X' / s) + z, -2^(b-1), 2^(b-1) - 1) - z) · s`` with ``X' = (X - b) / c``
    when channel compensation is present (else ``X' = X``). The linear reading ``Y`` carries
    the compensation's inverse (``W·diag(c)``, bias ``+ W·b``), so without rounding the pair
    computes the original layer. Rounding is half-to-even, as integer engines and ``torch.round`` do.
    """
    x = work(ctx, inputs["X"])
    if inputs.get("CompShift") is not None:
        x = x - work(ctx, inputs["CompShift"])
    if inputs.get("CompScale") is not None:
        c = work(ctx, inputs["CompScale"])
        if np.any(c == 0):
            raise GraphError("fake_quant CompScale has a zero channel")
        x = x / c
    s = float(np.asarray(inputs["Scale"]).reshape(-1)[0])
    if not s > 0:
        raise GraphError(f"fake_quant Scale must be positive, got {s}")
    z = 0.0 if inputs.get("ZeroPoint") is None else float(np.asarray(inputs["ZeroPoint"]).reshape(-1)[0])
    return {"Y": out(ctx, fake_quant(x, s, z, attrs["bits"]))}
