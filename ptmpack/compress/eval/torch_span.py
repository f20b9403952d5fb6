"""A span of the package's own IR run in PyTorch, differentiable: what the learned methods train on, one block at a time.

PTQ's reconstruction and structure-aware pruning's importance need gradients through a decoder
or encoder block. They used to get them from the transformers model of ``Model/``, which has to
be loaded whole and cannot run what ptmpack's own steps make of a checkpoint (per-layer FFN widths,
pruned BERT heads, unified norms). This module runs the operators ``[start, stop)`` of the main
graph (:func:`ptmpack.compress.eval.blocks.plan_blocks` cuts them) with torch kernels that compute
what the numpy kernels of :mod:`ptmpack.ir.ops` compute, so any graph the IR runs — whatever
shape the earlier steps left — can be trained on block by block.

The operators a converted transformer block uses have a kernel here (:data:`KERNELS`); any other
is refused by name. A caller may replace any ``linear``/``matmul`` that applies a given weight by
its own function of the input (``swap``): a fake-quantized linear (PTQ), or one whose input a mask
scales (pruning importance).

torch is imported at module level: callers import this module lazily, after checking torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ptmpack.compress.eval.blocks import INPUT_SLOTS
from ptmpack.errors import UnsupportedError
from ptmpack.tensors.dtypes import to_float32

Tensor = torch.Tensor
Swap = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""``swap(x, weight, bias) -> y``: what a replaced operator computes instead of ``x·Wᵀ + b``
(the weight as the graph stores it for ``linear`` [out, in]; for ``matmul`` its ``B`` transposed to [out, in])."""
Kernel = Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]


def _norm_axes(x: Tensor, begin: int) -> tuple[int, ...]:
    return tuple(range(begin % x.dim(), x.dim()))


def _layer_norm(i: Mapping[str, Any], a: Mapping[str, Any]) -> dict[str, Any]:
    x = i["X"]
    axes = _norm_axes(x, a["begin_norm_axis"])
    mean = x.mean(dim=axes, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dim=axes, keepdim=True)
    y = centred / torch.sqrt(var + a["epsilon"])
    shape = x.shape[axes[0]:]
    if i["Scale"] is not None:
        y = y * i["Scale"].reshape(shape)
    if i["Bias"] is not None:
        y = y + i["Bias"].reshape(shape)
    stats = x.shape[: axes[0]]
    return {"Y": y, "Mean": mean.reshape(stats), "Variance": var.reshape(stats)}


def _rms_norm(i: Mapping[str, Any], a: Mapping[str, Any]) -> dict[str, Any]:
    x = i["X"]
    axes = _norm_axes(x, a["begin_norm_axis"])
    y = x / torch.sqrt((x * x).mean(dim=axes, keepdim=True) + a["epsilon"])
    if i["Weight"] is not None:
        y = y * (i["Weight"].reshape(x.shape[axes[0]:]) + a["weight_offset"])
    return {"Y": y}


def _unified_norm(i: Mapping[str, Any], a: Mapping[str, Any]) -> dict[str, Any]:
    y = i["gamma"] * i["X"] / torch.sqrt(i["running_var"] + a["eps"])
    out = {"Y": y if i["beta"] is None else y + i["beta"], "running_var_out": i["running_var"]}
    if i["history"] is not None:
        out["history_out"] = i["history"]
    return out


def _linear(i: Mapping[str, Any], a: Mapping[str, Any]) -> dict[str, Any]:
    return {"Y": F.linear(i["X"], i["W"], i["Bias"])}


def _matmul(i: Mapping[str, Any], a: Mapping[str, Any]) -> dict[str, Any]:
    x, w = i["A"], i["B"]
    if x.dim() > 1 and a["transpose_a"]:
        x = x.transpose(-1, -2)
    if w.dim() > 1 and a["transpose_b"]:
        w = w.transpose(-1, -2)
    return {"Y": torch.matmul(x, w)}


def _gelu(i: Mapping[str, Any], a: Mapping[str, Any]) -> dict[str, Any]:
    if a["approximate"] not in ("none", "tanh"):
        raise UnsupportedError(f"gelu approximate {a['approximate']!r} has no torch kernel")
    return {"Y": F.gelu(i["X"], approximate=a["approximate"])}


def _reshape(i: Mapping[str, Any], a: Mapping[str, Any]) -> dict[str, Any]:
    x = i["X"]
    return {"Y": x.reshape([x.shape[k] if d == 0 else d for k, d in enumerate(a["shape"])])}


def _split(i: Mapping[str, Any], a: Mapping[str, Any]) -> dict[str, Any]:
    from ptmpack.ir.ops.basic_shape import split_sizes

    x = i["X"]
    return {"Y": list(torch.split(x, split_sizes(x.shape[a["axis"]], a), dim=a["axis"]))}


def _rope(i: Mapping[str, Any], a: Mapping[str, Any]) -> dict[str, Any]:
    from ptmpack.ir.ops.basic import rope_angles

    x = i["X"]
    positions = None if i["Positions"] is None else i["Positions"].cpu().numpy()
    offset = None if i["Offset"] is None else int(i["Offset"].reshape(()))
    rot, ang = rope_angles(tuple(x.shape), positions, offset, a)  # no gradient flows into the angles
    cos, sin = (torch.from_numpy(f(ang)).to(device=x.device, dtype=x.dtype) for f in (np.cos, np.sin))
    xr = x[..., :rot]
    if a["interleaved"]:
        rotated = torch.stack([-xr[..., 1::2], xr[..., 0::2]], dim=-1).reshape(xr.shape)
    else:
        rotated = torch.cat([-xr[..., rot // 2:], xr[..., : rot // 2]], dim=-1)
    y = xr * cos + rotated * sin
    return {"Y": torch.cat([y, x[..., rot:]], dim=-1) if rot < x.shape[-1] else y}


def _attention(i: Mapping[str, Any], a: Mapping[str, Any]) -> dict[str, Any]:
    from ptmpack.ir.ops.transformer import attention_heads

    q, k, v, mask = i["Q"], i["K"], i["V"], i["Mask"]
    packed = q.dim() == 3
    hq, hkv = attention_heads(a, tuple(q.shape), tuple(k.shape))
    if packed:
        q, k, v = (t.reshape(t.shape[0], t.shape[1], h, -1).transpose(1, 2) for t, h in ((q, hq), (k, hkv), (v, hkv)))
    b, _, sq, d = q.shape
    sk = k.shape[2]
    if hq != hkv:
        k, v = k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (a["scale"] or 1.0 / math.sqrt(d))
    low = torch.finfo(scores.dtype).min
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, low)
    elif mask is not None:
        scores = torch.clamp(scores + mask, min=low)
    if a["causal"]:
        keep = torch.arange(sk, device=q.device)[None, :] <= torch.arange(sq, device=q.device)[:, None] + (sk - sq)
        scores = scores.masked_fill(~keep, low)
    probs = torch.softmax(scores, dim=-1)
    y = torch.matmul(probs, v)
    if packed:
        y = y.transpose(1, 2).reshape(b, sq, -1)
    return {"Y": y, "Weights": probs}


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Kernel:
    return lambda i, a: {"Y": fn(i["A"], i["B"])}


def _unary(fn: Callable[[Tensor], Tensor]) -> Kernel:
    return lambda i, a: {"Y": fn(i["X"])}


KERNELS: dict[str, Kernel] = {
    "add": _binary(torch.add), "mul": _binary(torch.mul), "matmul": _matmul, "linear": _linear,
    "silu": _unary(F.silu), "gelu": _gelu, "layer_norm": _layer_norm, "rms_norm": _rms_norm,
    "unified_norm": _unified_norm, "reshape": _reshape, "split": _split, "rotary_embedding": _rope,
    "attention": _attention,
}
"""IR operator type -> torch kernel ``(inputs by slot, resolved attributes) -> outputs by slot``: the operators the
blocks of ``ptmpack.ir.convert_hf``'s graphs use (and ``unified_norm``, which folding leaves), each tested against
its numpy kernel."""


def as_torch(value: Any, device: str = "cpu") -> Any:
    """A numpy array as a tensor on ``device`` (floats as float32, indices as int64); tensors are moved."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    array = np.asarray(value)
    if array.dtype.kind in "fV":  # V: bfloat16 and the other ml_dtypes floats
        array = to_float32(array)
    elif array.dtype != np.bool_:
        array = array.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


class TorchSpan:
    """Operators ``[start, stop)`` of an executor's main-graph plan, run in torch (autograd follows)."""

    def __init__(self, executor: Any, start: int, stop: int) -> None:
        """``executor``: a :class:`ptmpack.ir.execute.Executor` of the model (its plan resolves the attributes).

        Raises:
            UnsupportedError: an operator of the span has no torch kernel.
        """
        self.steps = executor.plan(executor.model.main_graph.graph_id)[start:stop]
        for step in self.steps:
            if step.node.type not in KERNELS:
                raise UnsupportedError(f"operator {step.node.type!r} ({step.node.name}) has no torch kernel, so this "
                                       "model cannot be calibrated by a method that trains through its blocks")

    def run(self, values: Mapping[str, Tensor], params: Mapping[str, Tensor], outputs: Collection[str], *,
            swap: Mapping[str, Swap] | None = None) -> dict[str, Tensor]:
        """The variables ``outputs`` after running the span on ``values`` (the activations live at its start).

        ``params``: every parameter the span reads, as tensors. ``swap``: weight name -> function
        computing the ``linear``/``matmul`` that applies that weight (see :data:`Swap`).
        """
        scope: dict[str, Any] = dict(values)
        keep = set(outputs)
        swap = swap or {}

        def get(name: str) -> Any:
            return scope[name] if name in scope else params[name]

        for step in self.steps:
            node, opdef = step.node, step.opdef
            inputs: dict[str, Any] = {}
            for s in opdef.inputs:
                got = [get(n) for n in node.inputs.get(s.name, ())]
                inputs[s.name] = got if s.variadic else (got[0] if got else None)
            slots = INPUT_SLOTS.get(node.type)
            weight = node.inputs.get(slots[1], ("",))[0] if slots else ""
            if weight in swap:
                x_slot, w_slot = slots
                w = inputs[w_slot]
                if node.type == "matmul" and not step.attrs["transpose_b"]:
                    w = w.transpose(-1, -2)
                result = {"Y": swap[weight](inputs[x_slot], w, inputs.get("Bias"))}
            else:
                result = KERNELS[node.type](inputs, step.attrs)
            for slot, names in node.outputs.items():
                got = result[slot]
                for n, value in zip(names, got if isinstance(got, list) else [got], strict=True):
                    scope[n] = value
            for n in step.free:
                if n not in keep:
                    scope.pop(n, None)
        return {n: scope[n] for n in outputs}
