"""The standard's transformer operators: embedding (Table 4), layer_norm (Table 5), linear
(Table 6) and attention (Table 7).

Layouts: ``linear`` weights are ``[out_features, in_features]`` as in torch (Y = X·Wᵀ + b).
``attention`` takes either 4-D ``[batch, heads, seq, head_dim]`` tensors or 3-D tensors
with the heads packed into the last axis, ``[batch, seq, heads·head_dim]`` (then
``num_heads`` is required). Grouped-query attention (fewer K/V heads than Q heads) shares
each K/V head among ``num_heads / num_kv_heads`` consecutive Q heads, as
``repeat_interleave`` does in Hugging Face models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ptmpack.errors import GraphError
from ptmpack.ir.model import AttrType
from ptmpack.ir.ops.numeric import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    broadcast_shapes,
    dims_equal,
    float_type,
    norm_axis,
    out,
    promote,
    same_dim,
    work,
    work_dtype,
)
from ptmpack.ir.registry import AttrDef, ExecContext, Slot, TensorType, Values, op

T = TensorType
Attrs = Mapping[str, Any]


def _embedding_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    ids, w = inputs["X"], inputs["W"]
    if len(w.shape) != 2:
        raise GraphError(f"embedding table W must be [vocab, dim], got {w.shape}")
    return {"Y": T(w.dtype, (*ids.shape, w.shape[1]))}


@op("embedding", table="Table 4", infer=_embedding_infer,
    inputs=[Slot("X", "token ids, any shape", dtypes=INDEX_DTYPES),
            Slot("W", "embedding table [vocab_size, embedding_dim]", dtypes=FLOAT_DTYPES)],
    outputs=[Slot("Y", "[*X.shape, embedding_dim]")],
    attributes=[AttrDef("padding_idx", AttrType.INT, -1, "id whose output row is all zeros; negative: none")])
def _embedding(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Look up one row of W per id: Y[..., :] = W[X[...], :].

    Ids equal to ``padding_idx`` give a zero row (PaddlePaddle's semantics; torch's
    ``F.embedding`` returns W's row there, which is zero in a model trained with that index).

    Raises:
        GraphError: an id outside [0, vocab_size).
    """
    ids, w = np.asarray(inputs["X"]), inputs["W"]
    if ids.size and (ids.min() < 0 or ids.max() >= w.shape[0]):
        raise GraphError(f"embedding id out of range [0, {w.shape[0]}): min {ids.min()}, max {ids.max()}")
    y = out(ctx, np.take(w, ids, axis=0))
    if attrs["padding_idx"] >= 0:
        y = np.where((ids == attrs["padding_idx"])[..., None], np.zeros((), y.dtype), y)
    return {"Y": y}


def _layer_norm_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    x = inputs["X"]
    begin = norm_axis(attrs["begin_norm_axis"], len(x.shape), "begin_norm_axis")
    norm = x.shape[begin:]
    size = -1 if -1 in norm else int(np.prod(norm))
    for slot in ("Scale", "Bias"):
        p = inputs[slot]
        if p is None or tuple(p.shape) == tuple(norm):
            continue
        if len(p.shape) == 1:
            same_dim(p.shape[0], size, f"{slot} size vs normalised size of {x.shape}")
        elif len(p.shape) != len(norm) or not all(map(dims_equal, p.shape, norm)):
            raise GraphError(f"{slot} shape {p.shape} does not match normalised dims {norm}")
    stats = T(float_type(x).dtype, x.shape[:begin])
    return {"Y": float_type(x), "Mean": stats, "Variance": stats}


@op("layer_norm", table="Table 5", infer=_layer_norm_infer,
    inputs=[Slot("X", "input [..., normalised dims]", dtypes=FLOAT_DTYPES),
            Slot("Scale", "gain, shape X.shape[begin_norm_axis:] or flattened", optional=True, dtypes=FLOAT_DTYPES),
            Slot("Bias", "shift, same shape as Scale", optional=True, dtypes=FLOAT_DTYPES)],
    outputs=[Slot("Y", "normalised X, same shape"),
             Slot("Mean", "mean per normalised group, X.shape[:begin_norm_axis]", optional=True),
             Slot("Variance", "biased variance per group, X.shape[:begin_norm_axis]", optional=True)],
    attributes=[AttrDef("epsilon", AttrType.FLOAT, 1e-5, "added to the variance"),
                AttrDef("begin_norm_axis", AttrType.INT, -1, "first axis of the trailing group normalised together")])
def _layer_norm(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Layer normalisation: Y = (X - mean) / sqrt(var + epsilon) · Scale + Bias.

    Mean and (biased) variance are taken over the axes from ``begin_norm_axis`` to the end,
    in float32 whatever the compute dtype.
    """
    x = work(ctx, inputs["X"])
    begin = norm_axis(attrs["begin_norm_axis"], x.ndim)
    axes = tuple(range(begin, x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=axes, keepdims=True)
    y = centred / np.sqrt(var + attrs["epsilon"])
    if inputs["Scale"] is not None:
        y *= work(ctx, inputs["Scale"]).reshape(x.shape[begin:])
    if inputs["Bias"] is not None:
        y += work(ctx, inputs["Bias"]).reshape(x.shape[begin:])
    stats = x.shape[:begin]
    return {"Y": out(ctx, y), "Mean": out(ctx, mean.reshape(stats)), "Variance": out(ctx, var.reshape(stats))}


def _linear_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    x, w, b = inputs["X"], inputs["W"], inputs["Bias"]
    if len(w.shape) != 2 or not x.shape:
        raise GraphError(f"linear needs X [..., in] and W [out, in], got {x.shape} and {w.shape}")
    same_dim(x.shape[-1], w.shape[1], f"linear in_features of X {x.shape} and W {w.shape}")
    if b is not None:
        if len(b.shape) != 1:
            raise GraphError(f"linear Bias must be [out_features], got {b.shape}")
        same_dim(b.shape[0], w.shape[0], "linear Bias size vs out_features")
    return {"Y": T(promote(x.dtype, w.dtype), (*x.shape[:-1], w.shape[0]))}


@op("linear", table="Table 6", infer=_linear_infer,
    inputs=[Slot("X", "input [..., in_features]", dtypes=FLOAT_DTYPES),
            Slot("W", "weight [out_features, in_features] (torch layout)", dtypes=FLOAT_DTYPES),
            Slot("Bias", "bias [out_features]", optional=True, dtypes=FLOAT_DTYPES)],
    outputs=[Slot("Y", "[..., out_features]")])
def _linear(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Fully connected layer: Y = X · Wᵀ + Bias (torch.nn.functional.linear).

    X is flattened to 2-D so the product is one BLAS call whatever the batch shape.
    """
    x, w = work(ctx, inputs["X"]), work(ctx, inputs["W"])
    y = np.matmul(x.reshape(-1, x.shape[-1]), w.T)
    if inputs["Bias"] is not None:
        y += work(ctx, inputs["Bias"])
    return {"Y": out(ctx, y.reshape(*x.shape[:-1], w.shape[0]))}


def attention_heads(attrs: Attrs, q: tuple[int, ...], k: tuple[int, ...]) -> tuple[int, int]:
    """(num_heads, num_kv_heads) from the attributes and the Q/K shapes."""
    if len(q) == 4:
        hq, hkv = q[1], k[1]
        if attrs["num_heads"] and hq != -1 and attrs["num_heads"] != hq:
            raise GraphError(f"num_heads {attrs['num_heads']} but Q has {hq} heads")
        if attrs["num_kv_heads"] and hkv != -1 and attrs["num_kv_heads"] != hkv:
            raise GraphError(f"num_kv_heads {attrs['num_kv_heads']} but K has {hkv} heads")
        hq, hkv = hq if hq != -1 else attrs["num_heads"] or -1, hkv if hkv != -1 else attrs["num_kv_heads"] or -1
    else:
        if attrs["num_heads"] <= 0:
            raise GraphError("attention on packed [batch, seq, heads·dim] tensors needs num_heads")
        hq, hkv = attrs["num_heads"], attrs["num_kv_heads"] or attrs["num_heads"]
    if hq != -1 and hkv != -1 and (hkv <= 0 or hq % hkv):
        raise GraphError(f"{hq} query heads cannot be shared among {hkv} key/value heads")
    return hq, hkv


def _attention_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    q, k, v, mask = inputs["Q"], inputs["K"], inputs["V"], inputs["Mask"]
    if not len(q.shape) == len(k.shape) == len(v.shape) or len(q.shape) not in (3, 4):
        raise GraphError(f"attention takes Q, K, V all 4-D or all 3-D, got {q.shape}, {k.shape}, {v.shape}")
    hq, hkv = attention_heads(attrs, q.shape, k.shape)
    b = same_dim(same_dim(q.shape[0], k.shape[0], "Q/K batch"), v.shape[0], "Q/V batch")
    if len(q.shape) == 4:
        same_dim(k.shape[1], v.shape[1], "K/V heads")
        same_dim(k.shape[2], v.shape[2], "K/V sequence")
        same_dim(q.shape[3], k.shape[3], "Q/K head_dim")
        sq, sk, dv = q.shape[2], k.shape[2], v.shape[3]
        y = (b, hq, sq, dv)
    else:
        same_dim(k.shape[1], v.shape[1], "K/V sequence")
        for t, h, name in ((q, hq, "Q"), (k, hkv, "K"), (v, hkv, "V")):
            if t.shape[2] != -1 and t.shape[2] % h:
                raise GraphError(f"{name} last dim {t.shape[2]} is not a multiple of its {h} heads")
        if -1 not in (q.shape[2], k.shape[2]) and q.shape[2] // hq != k.shape[2] // hkv:
            raise GraphError(f"Q and K head_dim differ: {q.shape[2] // hq} vs {k.shape[2] // hkv}")
        sq, sk = q.shape[1], k.shape[1]
        y = (b, sq, -1 if v.shape[2] == -1 else v.shape[2] // hkv * hq)
    if mask is not None:
        broadcast_shapes(mask.shape, (b, hq, sq, sk))
    dtype = promote(q.dtype, k.dtype, v.dtype)
    return {"Y": T(dtype, y), "Weights": T(dtype, (b, hq, sq, sk))}


@op("attention", table="Table 7", infer=_attention_infer,
    inputs=[Slot("Q", "queries [b, h, s_q, d] or packed [b, s_q, h·d]", dtypes=FLOAT_DTYPES),
            Slot("K", "keys [b, h_kv, s_k, d] or packed [b, s_k, h_kv·d]", dtypes=FLOAT_DTYPES),
            Slot("V", "values [b, h_kv, s_k, d_v] or packed [b, s_k, h_kv·d_v]", dtypes=FLOAT_DTYPES),
            Slot("Mask", "additive float mask or bool keep-mask, broadcastable to [b, h, s_q, s_k]",
                 optional=True, dtypes=(*FLOAT_DTYPES, "bool"))],
    outputs=[Slot("Y", "attended values, Q's layout: [b, h, s_q, d_v] or [b, s_q, h·d_v]"),
             Slot("Weights", "attention probabilities [b, h, s_q, s_k] (when need_weights)", optional=True)],
    attributes=[AttrDef("causal", AttrType.BOOL, False, "hide keys after each query's own position"),
                AttrDef("scale", AttrType.FLOAT, 0.0, "score multiplier; 0 means 1/sqrt(head_dim)"),
                AttrDef("num_heads", AttrType.INT, 0, "query heads (required for packed inputs)"),
                AttrDef("num_kv_heads", AttrType.INT, 0, "key/value heads for GQA/MQA; 0 = num_heads"),
                AttrDef("dropout", AttrType.FLOAT, 0.0, "attention dropout; ignored at inference"),
                AttrDef("need_weights", AttrType.BOOL, False, "also output Weights")])
def _attention(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Scaled dot-product attention: Y = softmax(Q·Kᵀ·scale + Mask) · V, per head.

    With ``causal``, query i (of s_q) sees keys j ≤ i + s_k - s_q: the queries are the last
    s_q positions, so decoding with a KV cache works (torch's ``is_causal`` aligns to the
    top-left instead; both agree when s_q = s_k). Masked scores become the lowest finite
    float, so a fully masked row averages V instead of producing NaN.
    """
    q, k, v = (work(ctx, inputs[s]) for s in ("Q", "K", "V"))
    packed = q.ndim == 3
    hq, hkv = attention_heads(attrs, q.shape, k.shape)
    if packed:
        q, k, v = (t.reshape(t.shape[0], t.shape[1], h, -1).transpose(0, 2, 1, 3)
                   for t, h in ((q, hq), (k, hkv), (v, hkv)))
    b, _, sq, d = q.shape
    sk = k.shape[2]
    scale = attrs["scale"] or 1.0 / np.sqrt(d)
    group = hq // hkv
    scores = np.empty((b, hq, sq, sk), dtype=q.dtype)
    for i in range(b):  # one GEMM per K/V head: its query heads stacked as rows (GQA without copies of K)
        for j in range(hkv):
            np.matmul(q[i, j * group:(j + 1) * group].reshape(group * sq, d), k[i, j].T,
                      out=scores[i, j * group:(j + 1) * group].reshape(group * sq, sk))
    scores *= scale
    low = np.finfo(work_dtype(ctx)).min
    mask = inputs["Mask"]
    if mask is not None and np.asarray(mask).dtype == np.bool_:
        np.copyto(scores, low, where=~np.asarray(mask))
    elif mask is not None:
        np.add(scores, work(ctx, mask), out=scores)
        np.maximum(scores, low, out=scores)  # -inf in a mask: keep rows finite
    if attrs["causal"]:
        keep = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)
        np.copyto(scores, low, where=~keep)
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores, out=scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    y = np.empty((b, hq, sq, v.shape[-1]), dtype=probs.dtype)
    for i in range(b):
        for j in range(hkv):
            np.matmul(probs[i, j * group:(j + 1) * group].reshape(group * sq, sk), v[i, j],
                      out=y[i, j * group:(j + 1) * group].reshape(group * sq, -1))
    if packed:
        y = y.transpose(0, 2, 1, 3).reshape(b, sq, -1)
    result = {"Y": out(ctx, y)}
    if attrs["need_weights"]:
        result["Weights"] = out(ctx, probs)
    return result
