# ruff: noqa: RUF001, RUF002 - formulas quote the standard's symbols
"""Fine-tuning operators of GB/T 42382.2 §7.4.6 (Tables 50–51): prompt tuning and LoRA, with the
merge that folds a trained LoRA update back into its base weight.

Layouts follow :mod:`.blocks`: activations ``[..., S, D]``, weights ``[out, in]`` applied as
``X Wᵀ``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ptmpack.ir.model import AttrType
from ptmpack.ir.ops.blocks import Shapes, known, linear, prepared
from ptmpack.ir.ops.numeric import ALL_DTYPES, FLOAT_DTYPES, out
from ptmpack.ir.registry import AttrDef, ExecContext, Slot, op

A = AttrType
F = FLOAT_DTYPES


def _prompt_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("prompt_tuning", inputs)
    c.bind("X", "... S D")
    c.bind("prompt", "P D")
    if attrs["position"] not in ("prepend", "append"):
        c.fail(f"position must be prepend or append, not {attrs['position']!r}")
    total = c["S"] + c["P"] if known(c["S"], c["P"]) else -1
    types = {"Y": c.out(["...", total, "D"])}
    if c.bind("attention_mask", "... S") is not None:
        types["attention_mask_out"] = c.out(["...", total], inputs["attention_mask"].dtype)
    return types


@op("prompt_tuning", table="Table 50",
    inputs=[Slot("X", "input embeddings [..., S, D]", dtypes=F),
            Slot("prompt", "learned prompt embeddings [P, D]", dtypes=F),
            Slot("attention_mask", "[..., S], non-zero for real tokens", optional=True, dtypes=ALL_DTYPES)],
    outputs=[Slot("Y", "[..., P+S, D]"),
             Slot("attention_mask_out", "[..., P+S], present when attention_mask is given", optional=True)],
    attributes=[AttrDef("position", A.STRING, "prepend", "prepend (soft prompt before the input) or append")],
    infer=_prompt_infer)
def prompt_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Prompt tuning: joins P learned prompt vectors to every sequence, ``Y = concat(prompt, X)``
    along the token axis (``concat(X, prompt)`` for ``append``).

    Only ``prompt`` is trained; the model's weights stay frozen. The prompt rows are real tokens:
    ``attention_mask_out`` marks them with 1 (in the mask's dtype) beside the given mask.
    """
    p = prepared(ctx, inputs)
    x = p["X"]
    prompt = np.broadcast_to(p["prompt"], (*x.shape[:-2], *p["prompt"].shape))
    parts = [prompt, x] if attrs["position"] == "prepend" else [x, prompt]
    result = {"Y": out(ctx, np.concatenate(parts, axis=-2))}
    if inputs.get("attention_mask") is not None:
        mask = np.asarray(inputs["attention_mask"])
        ones = np.ones((*mask.shape[:-1], prompt.shape[-2]), mask.dtype)
        result["attention_mask_out"] = np.concatenate([ones, mask] if attrs["position"] == "prepend" else [mask, ones], -1)
    return result


def merge_lora(weight: np.ndarray, lora_a: np.ndarray, lora_b: np.ndarray, alpha: float, rank: int) -> np.ndarray:
    """The merged weight ``W + (α/r) B A`` (``[out, in]``, float64): after it ``lora`` equals a plain linear.

    The inverse (subtracting the same product) recovers W up to rounding.
    """
    return np.asarray(weight, np.float64) + (alpha / rank) * (np.asarray(lora_b, np.float64) @ np.asarray(lora_a, np.float64))


def _lora_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("lora", inputs)
    c.bind("X", "... Din")
    c.bind("W", "Dout Din")
    c.bind("bias", "Dout")
    c.bind("A", "r Din")
    c.bind("B", "Dout r")
    if attrs["rank"] < 1:
        c.fail(f"rank must be positive, got {attrs['rank']}")
    c.equal("r", attrs["rank"], "attribute rank")
    return {"Y": c.out("... Dout")}


@op("lora", table="Table 51",
    inputs=[Slot("X", "[..., Din]", dtypes=F), Slot("W", "frozen weight [Dout, Din]", dtypes=F),
            Slot("bias", "[Dout]", optional=True, dtypes=F),
            Slot("A", "down factor [r, Din]", dtypes=F), Slot("B", "up factor [Dout, r]", dtypes=F)],
    outputs=[Slot("Y", "[..., Dout]")],
    attributes=[AttrDef("rank", A.INT, doc="r, the rank of the update (A's rows, B's columns)"),
                AttrDef("alpha", A.FLOAT, doc="α; the update is scaled by α / r")],
    infer=_lora_infer)
def lora_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Low-rank adaptation of a linear layer: ``Y = X Wᵀ + bias + (α/r) · (X Aᵀ) Bᵀ``.

    W stays frozen and only the factors A (``[r, Din]``) and B (``[Dout, r]``) train, r·(Din+Dout)
    parameters instead of Din·Dout. The update is computed through the rank-r bottleneck, never
    as a dense matrix; ``ptmpack.ir.ops.tuning.merge_lora`` folds it into W (``W + (α/r) B A``) for
    deployment, after which the node is an ordinary linear.
    """
    p = prepared(ctx, inputs)
    x = p["X"]
    y = linear(x, p["W"], p.get("bias")) + (attrs["alpha"] / attrs["rank"]) * linear(linear(x, p["A"]), p["B"])
    return {"Y": out(ctx, y)}
