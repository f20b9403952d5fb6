"""General operators real models need besides the standard's tables: arithmetic, activations,
normalisation, rotary embedding, causal masks and reductions.

Slot naming: unary operators read ``X`` and write ``Y``; binary ones read ``A`` and ``B``.
Every floating-point result comes back in ``ctx.compute_dtype`` (see :mod:`.numeric`);
integer and bool results keep their dtype. The shape operators (reshape, transpose,
concat, split, gather, slice, squeeze, unsqueeze, cast, constant, fill_like,
arange_like, call) live in :mod:`.basic_shape`, registered from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ptmpack.errors import GraphError
from ptmpack.ir.model import AttrType
from ptmpack.ir.ops import basic_shape  # noqa: F401  (registers the shape operators)
from ptmpack.ir.ops.numeric import (
    ALL_DTYPES,
    FLOAT_DTYPES,
    INDEX_DTYPES,
    INT_DTYPES,
    NUMERIC_DTYPES,
    broadcast_shapes,
    erf,
    float_type,
    is_float_array,
    norm_axis,
    np_dtype,
    out,
    promote,
    same_dim,
    work,
)
from ptmpack.ir.registry import AttrDef, ExecContext, Slot, TensorType, Values, op

T = TensorType
Attrs = Mapping[str, Any]
_X = Slot("X", "input tensor")
_Y = Slot("Y", "result")
_FX = Slot("X", "input tensor", dtypes=FLOAT_DTYPES)


# ---- elementwise arithmetic -------------------------------------------------------------

def _binary_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    a, b = inputs["A"], inputs["B"]
    return {"Y": T(promote(a.dtype, b.dtype), broadcast_shapes(a.shape, b.shape))}


def _binary(name: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], doc: str) -> None:
    def kernel(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
        a, b = inputs["A"], inputs["B"]
        if is_float_array(a) or is_float_array(b):
            return {"Y": out(ctx, fn(work(ctx, a), work(ctx, b)))}
        return {"Y": np.asarray(fn(a, b)).astype(np.result_type(a, b), copy=False)}

    kernel.__doc__ = doc
    op(name, table="basic", infer=_binary_infer,
       inputs=[Slot("A", "left operand", dtypes=NUMERIC_DTYPES), Slot("B", "right operand", dtypes=NUMERIC_DTYPES)],
       outputs=[Slot("Y", "result, the broadcast shape of A and B")])(kernel)


_binary("add", np.add, "Y = A + B, with numpy broadcasting.")
_binary("sub", np.subtract, "Y = A - B, with numpy broadcasting.")
_binary("mul", np.multiply, "Y = A * B, with numpy broadcasting.")
_binary("pow", np.power, "Y = A ** B, with numpy broadcasting (integer powers of integers stay integers).")


def _div_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    t = _binary_infer(inputs, attrs)["Y"]
    return {"Y": float_type(t)}


@op("div", table="basic", infer=_div_infer,
    inputs=[Slot("A", "dividend", dtypes=NUMERIC_DTYPES), Slot("B", "divisor", dtypes=NUMERIC_DTYPES)],
    outputs=[Slot("Y", "A / B, always floating point")])
def _div(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = A / B (true division, as torch.div), with numpy broadcasting."""
    return {"Y": out(ctx, np.divide(work(ctx, inputs["A"]), work(ctx, inputs["B"])))}


def _matmul_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    a, b = list(inputs["A"].shape), list(inputs["B"].shape)
    if not a or not b:
        raise GraphError("matmul operands need at least one dimension")
    if len(a) > 1 and attrs["transpose_a"]:
        a[-1], a[-2] = a[-2], a[-1]
    if len(b) > 1 and attrs["transpose_b"]:
        b[-1], b[-2] = b[-2], b[-1]
    a2, b2 = ([1, *a] if len(a) == 1 else a), ([*b, 1] if len(b) == 1 else b)
    same_dim(a2[-1], b2[-2], f"matmul inner dims of {tuple(a)} and {tuple(b)}")
    shape = [*broadcast_shapes(a2[:-2], b2[:-2]), a2[-2], b2[-1]]
    if len(b) == 1:
        shape.pop(-1)
    if len(a) == 1:
        shape.pop(-2 if len(b) > 1 else -1)
    return {"Y": T(promote(inputs["A"].dtype, inputs["B"].dtype), tuple(shape))}


@op("matmul", table="basic", infer=_matmul_infer,
    inputs=[Slot("A", "[..., m, k] (1-D: a row vector)", dtypes=NUMERIC_DTYPES),
            Slot("B", "[..., k, n] (1-D: a column vector)", dtypes=NUMERIC_DTYPES)],
    outputs=[Slot("Y", "[broadcast(...), m, n]")],
    attributes=[AttrDef("transpose_a", AttrType.BOOL, False, "swap the last two axes of A first"),
                AttrDef("transpose_b", AttrType.BOOL, False, "swap the last two axes of B first")])
def _matmul(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = A @ B, batched over leading dims with broadcasting (numpy.matmul semantics)."""
    a, b = inputs["A"], inputs["B"]
    if a.ndim > 1 and attrs["transpose_a"]:
        a = np.swapaxes(a, -1, -2)
    if b.ndim > 1 and attrs["transpose_b"]:
        b = np.swapaxes(b, -1, -2)
    if is_float_array(a) or is_float_array(b):
        return {"Y": out(ctx, np.matmul(work(ctx, a), work(ctx, b)))}
    return {"Y": np.matmul(a, b)}


def _where_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    c, a, b = inputs["Condition"], inputs["A"], inputs["B"]
    return {"Y": T(promote(a.dtype, b.dtype), broadcast_shapes(c.shape, a.shape, b.shape))}


@op("where", table="basic", infer=_where_infer,
    inputs=[Slot("Condition", "selector; nonzero picks A", dtypes=("bool", *INT_DTYPES)),
            Slot("A", "taken where Condition holds", dtypes=ALL_DTYPES),
            Slot("B", "taken elsewhere", dtypes=ALL_DTYPES)],
    outputs=[_Y])
def _where(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = A where Condition else B, all three broadcast together."""
    a, b = inputs["A"], inputs["B"]
    if is_float_array(a) or is_float_array(b):
        a, b = work(ctx, a), work(ctx, b)
    y = np.where(np.asarray(inputs["Condition"]).astype(bool), a, b)
    return {"Y": out(ctx, y) if is_float_array(y) else y}


@op("scale", table="basic", infer=lambda i, a: {"Y": float_type(i["X"])}, inputs=[Slot("X", "input", dtypes=NUMERIC_DTYPES)],
    outputs=[_Y], attributes=[AttrDef("scale", AttrType.FLOAT, 1.0, "multiplier a"),
                              AttrDef("bias", AttrType.FLOAT, 0.0, "offset b"),
                              AttrDef("bias_after_scale", AttrType.BOOL, True, "false computes (x + b) * a")])
def _scale(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = X * scale + bias (or (X + bias) * scale when bias_after_scale is false)."""
    x = work(ctx, inputs["X"])
    s, b = attrs["scale"], attrs["bias"]
    return {"Y": out(ctx, x * s + b if attrs["bias_after_scale"] else (x + b) * s)}


# ---- unary activations ------------------------------------------------------------------

def _unary(name: str, fn: Callable[[np.ndarray], np.ndarray], doc: str,
           attributes: tuple[AttrDef, ...] = (), with_attrs: bool = False) -> None:
    def kernel(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
        x = work(ctx, inputs["X"])
        return {"Y": out(ctx, fn(x, attrs) if with_attrs else fn(x))}  # type: ignore[call-arg]

    kernel.__doc__ = doc
    op(name, table="basic", inputs=[_FX], outputs=[Slot("Y", "result, same shape as X")],
       attributes=attributes, infer=lambda i, a: {"Y": i["X"]})(kernel)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free form of 1 / (1 + exp(-x))


def _gelu(x: np.ndarray, attrs: Attrs) -> np.ndarray:
    if attrs["approximate"] == "tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    if attrs["approximate"] != "none":
        raise GraphError(f"gelu approximate must be 'none' or 'tanh', not {attrs['approximate']!r}")
    return (0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))).astype(x.dtype)


_unary("relu", lambda x: np.maximum(x, 0), "Y = max(X, 0).")
_unary("tanh", np.tanh, "Y = tanh(X).")
_unary("sigmoid", _sigmoid, "Y = 1 / (1 + exp(-X)).")
_unary("silu", lambda x: x * _sigmoid(x), "Y = X * sigmoid(X) (SiLU / swish, the LLaMA MLP gate).")
_unary("sqrt", np.sqrt, "Y = sqrt(X).")
_unary("exp", np.exp, "Y = exp(X).")
_unary("gelu", _gelu, "Y = X * Φ(X) with Φ the normal CDF (exact, via erf), or the tanh approximation "
       "0.5·X·(1 + tanh(√(2/π)·(X + 0.044715·X³))) when approximate = 'tanh' (GPT-2's gelu_new).",
       (AttrDef("approximate", AttrType.STRING, "none", "'none' (exact erf form) or 'tanh'"),), True)


def _softmax_core(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return shifted, e


def _axis_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    norm_axis(attrs["axis"], len(inputs["X"].shape))
    return {"Y": inputs["X"]}


_AXIS = AttrDef("axis", AttrType.INT, -1, "axis the distribution runs along")


@op("softmax", table="basic", inputs=[_FX], outputs=[_Y], attributes=[_AXIS], infer=_axis_infer)
def _softmax(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = exp(X) / sum(exp(X)) along ``axis`` (max-shifted for stability)."""
    _, e = _softmax_core(work(ctx, inputs["X"]), attrs["axis"])
    return {"Y": out(ctx, e / np.sum(e, axis=attrs["axis"], keepdims=True))}


@op("log_softmax", table="basic", inputs=[_FX], outputs=[_Y], attributes=[_AXIS], infer=_axis_infer)
def _log_softmax(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Y = X - logsumexp(X) along ``axis`` (log-probabilities, for perplexity)."""
    shifted, e = _softmax_core(work(ctx, inputs["X"]), attrs["axis"])
    return {"Y": out(ctx, shifted - np.log(np.sum(e, axis=attrs["axis"], keepdims=True)))}


# ---- normalisation and position encodings ----------------------------------------------

def _rms_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    x, w = inputs["X"], inputs["Weight"]
    begin = norm_axis(attrs["begin_norm_axis"], len(x.shape), "begin_norm_axis")
    known = w is not None and -1 not in w.shape and -1 not in x.shape[begin:]
    if known and int(np.prod(w.shape)) != int(np.prod(x.shape[begin:])):
        raise GraphError(f"Weight shape {w.shape} does not match normalised dims {x.shape[begin:]}")
    return {"Y": x}


@op("rms_norm", table="basic", infer=_rms_infer,
    inputs=[_FX, Slot("Weight", "per-element gain over the normalised dims", optional=True, dtypes=FLOAT_DTYPES)],
    outputs=[_Y],
    attributes=[AttrDef("epsilon", AttrType.FLOAT, 1e-6, "added to the mean square"),
                AttrDef("begin_norm_axis", AttrType.INT, -1, "first of the trailing dims normalised together"),
                AttrDef("weight_offset", AttrType.FLOAT, 0.0, "added to Weight (1.0 for Gemma's (1 + w))")])
def _rms_norm(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """RMSNorm: Y = X / sqrt(mean(X², normalised dims) + epsilon) * (Weight + weight_offset).

    As LLaMA's: statistics in float32 whatever the compute dtype.
    """
    x = work(ctx, inputs["X"])
    begin = norm_axis(attrs["begin_norm_axis"], x.ndim)
    axes = tuple(range(begin, x.ndim))
    y = x / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + attrs["epsilon"])
    if inputs["Weight"] is not None:
        y = y * (work(ctx, inputs["Weight"]).reshape(x.shape[begin:]) + attrs["weight_offset"])
    return {"Y": out(ctx, y)}


def _rope_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    x = inputs["X"]
    seq = norm_axis(attrs["seq_axis"], len(x.shape), "seq_axis")
    rot = attrs["rotary_dim"] or x.shape[-1]
    if seq == len(x.shape) - 1 or (rot != -1 and rot % 2) or (x.shape[-1] != -1 and rot > x.shape[-1]):
        raise GraphError(f"rotary_dim {rot} must be even and ≤ the last dim of {x.shape}, seq_axis not last")
    return {"Y": x}


def rope_angles(shape: tuple[int, ...], positions: np.ndarray | None, offset: int | None,
                attrs: Attrs) -> tuple[int, np.ndarray]:
    """``(rotary_dim, angles)`` of ``rotary_embedding`` for an input of ``shape``: float64 angles
    ``pos · theta^(-2j/rotary_dim)``, each frequency repeated over both halves (or over neighbours when
    ``interleaved``), shaped to broadcast against the input's first ``rotary_dim`` features. Shared by
    the numpy kernel and the torch one calibration trains through (``compress/eval/torch_span.py``).
    """
    n, seq = len(shape), norm_axis(attrs["seq_axis"], len(shape))
    rot = attrs["rotary_dim"] or shape[-1]
    pos = np.arange(shape[seq]) if positions is None else np.asarray(positions)
    if offset is not None:
        pos = pos + offset
    inv_freq = attrs["theta"] ** (-np.arange(0, rot, 2, dtype=np.float64) / rot)
    ang = pos.astype(np.float64)[..., None] * inv_freq  # [..., seq, rot/2]
    ang = np.repeat(ang, 2, axis=-1) if attrs["interleaved"] else np.concatenate([ang, ang], axis=-1)
    lead = [ang.shape[0]] + [1] * (seq - 1) if ang.ndim == 3 else []
    return rot, ang.reshape(*lead, ang.shape[-2], *([1] * (n - 2 - seq)), rot)


@op("rotary_embedding", table="basic", infer=_rope_infer,
    inputs=[Slot("X", "queries or keys, [..., seq, ..., head_dim] with seq at seq_axis", dtypes=FLOAT_DTYPES),
            Slot("Positions", "position ids, [seq] or [batch, seq]; default 0..seq-1", optional=True, dtypes=INDEX_DTYPES),
            Slot("Offset", "scalar added to every position (tokens already in the KV cache)", optional=True,
                 dtypes=INDEX_DTYPES)],
    outputs=[_Y],
    attributes=[AttrDef("theta", AttrType.FLOAT, 10000.0, "frequency base: inv_freq = theta^(-2i/rotary_dim)"),
                AttrDef("rotary_dim", AttrType.INT, 0, "leading head dims rotated (0 = all); the rest pass through"),
                AttrDef("seq_axis", AttrType.INT, -2, "axis of X holding the sequence (-2 for [b,h,s,d], -3 for [b,s,h,d])"),
                AttrDef("interleaved", AttrType.BOOL, False, "rotate pairs (x0,x1),(x2,x3)… (GPT-J) instead of halves")])
def _rope(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Rotary position embedding (RoFormer), rotate-half / NeoX form as in LLaMA and Hugging Face.

    For the first ``rotary_dim`` features, with angle_j = pos · theta^(-2j/rotary_dim):
    Y = X·cos + rotate_half(X)·sin, where rotate_half(x1, x2) = (-x2, x1) over the two halves
    and cos/sin repeat each frequency over both halves. ``interleaved`` pairs neighbours instead.
    """
    x = work(ctx, inputs["X"])
    positions = None if inputs["Positions"] is None else np.asarray(inputs["Positions"])
    offset = None if inputs["Offset"] is None else int(np.asarray(inputs["Offset"]).reshape(()))
    rot, ang = rope_angles(x.shape, positions, offset, attrs)
    cos, sin = np.cos(ang).astype(x.dtype), np.sin(ang).astype(x.dtype)
    xr = x[..., :rot]
    if attrs["interleaved"]:
        rotated = np.stack([-xr[..., 1::2], xr[..., 0::2]], axis=-1).reshape(xr.shape)
    else:
        rotated = np.concatenate([-xr[..., rot // 2:], xr[..., : rot // 2]], axis=-1)
    y = xr * cos + rotated * sin
    return {"Y": out(ctx, np.concatenate([y, x[..., rot:]], axis=-1) if rot < x.shape[-1] else y)}


def _mask_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    q = inputs["X"]
    k = inputs["Key"] or q
    sq = q.shape[norm_axis(attrs["seq_axis"], len(q.shape), "seq_axis")]
    sk = k.shape[norm_axis(attrs["seq_axis"], len(k.shape), "seq_axis")]
    pad = inputs["PaddingMask"]
    shape = (sq, sk) if pad is None else (pad.shape[0], 1, sq, sk)
    return {"Y": T(attrs["dtype"], shape)}


@op("causal_mask", table="basic", infer=_mask_infer,
    inputs=[Slot("X", "tensor whose seq_axis gives the query length (ids [b, s] or Q)"),
            Slot("Key", "tensor whose seq_axis gives the key length; default X", optional=True),
            Slot("PaddingMask", "[batch, key_len], nonzero = real token (Hugging Face attention_mask)",
                 optional=True, dtypes=("bool", *INDEX_DTYPES))],
    outputs=[Slot("Y", "additive mask [q, k], or [batch, 1, q, k] with PaddingMask", dtypes=FLOAT_DTYPES)],
    attributes=[AttrDef("seq_axis", AttrType.INT, -1, "axis of X and Key holding the sequence"),
                AttrDef("causal", AttrType.BOOL, True, "hide later keys; false gives a padding-only mask (BERT)"),
                AttrDef("dtype", AttrType.STRING, "float32", "declared dtype of Y")])
def _causal_mask(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
    """Additive causal mask: 0 where query i may attend key j, the lowest finite ``dtype`` value elsewhere.

    Queries are the last q of the k keys (a KV cache holds the first k - q), so query i sees
    keys j ≤ i + k - q. A PaddingMask also hides padded keys. Adding the mask to attention
    scores before softmax gives them zero weight without producing NaN on empty rows.
    With ``causal`` false only padding is masked (bidirectional encoders).
    """
    if attrs["dtype"] not in FLOAT_DTYPES:
        raise GraphError(f"causal_mask dtype must be a float dtype, not {attrs['dtype']!r}")
    ax = attrs["seq_axis"]
    sq = inputs["X"].shape[ax]
    sk = (inputs["Key"] if inputs["Key"] is not None else inputs["X"]).shape[ax]
    keep = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)
    if not attrs["causal"]:
        keep = np.ones_like(keep)
    if inputs["PaddingMask"] is not None:
        keep = keep[None, None] & (np.asarray(inputs["PaddingMask"]) != 0)[:, None, None, :]
    dt = np_dtype(attrs["dtype"])
    return {"Y": np.where(keep, np.zeros((), dt), np.array(np.finfo(dt).min, dt))}


# ---- reductions -------------------------------------------------------------------------

def _reduce_infer(inputs: Values, attrs: Attrs) -> dict[str, Any]:
    x = inputs["X"]
    axes = {norm_axis(a, len(x.shape)) for a in attrs["axes"]} if attrs["axes"] else set(range(len(x.shape)))
    shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if attrs["keepdims"] else \
        tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return {"Y": float_type(x, shape)}


def _reduction(name: str, fn: Callable[..., np.ndarray], doc: str) -> None:
    def kernel(ctx: ExecContext, inputs: Values, attrs: Attrs) -> dict[str, Any]:
        axes = tuple(attrs["axes"]) or None
        return {"Y": out(ctx, fn(work(ctx, inputs["X"]), axis=axes, keepdims=attrs["keepdims"]))}

    kernel.__doc__ = doc
    op(name, table="basic", infer=_reduce_infer, inputs=[Slot("X", "input", dtypes=NUMERIC_DTYPES)], outputs=[_Y],
       attributes=[AttrDef("axes", AttrType.INTS, (), "axes reduced; empty reduces all"),
                   AttrDef("keepdims", AttrType.BOOL, False, "keep reduced axes as size 1")])(kernel)


_reduction("reduce_mean", np.mean, "Y = mean of X over ``axes`` (all when empty), as a float.")
_reduction("reduce_sum", np.sum, "Y = sum of X over ``axes`` (all when empty), as a float.")
