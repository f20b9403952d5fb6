"""Shared pieces of the module, multimodal, tuning and RAG operators: shape inference by named
dimensions, and the numpy building blocks (linear, LayerNorm, activations, multi-head attention,
pre-norm transformer halves) their kernels are made of.

Layout conventions of every operator built from these: activations are ``[..., S, D]`` (leading
batch dimensions, tokens, features); a projection weight is ``[out_features, in_features]`` and is
applied as ``Y = X Wᵀ + b`` (the ``torch.nn.Linear`` / Hugging Face layout, so checkpoints need no
transposes); biases are optional ``[out_features]``. Kernels compute in the working dtype of
:mod:`.numeric` and hand floating-point results back in ``ctx.compute_dtype``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import numpy as np

from ptmpack.errors import GraphError
from ptmpack.ir.ops.numeric import FLOAT_DTYPES, erf, is_float_array, work
from ptmpack.ir.registry import ExecContext, Slot, TensorType

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "identity")


class Shapes:
    """Shape inference by named dimensions: ``bind("X", "... S D")`` unifies each name across inputs.

    ``...`` stands for the leading (batch) dimensions, which must agree between every input bound
    with it; a digit is a fixed size. -1 is an unknown dimension that unifies with anything.
    """

    def __init__(self, op_name: str, inputs: Mapping[str, Any]) -> None:
        self.op, self.inputs = op_name, inputs
        self.dims: dict[str, int] = {}
        self.lead: tuple[int, ...] | None = None
        self.dtype: str | None = None

    def fail(self, msg: str) -> NoReturn:
        raise GraphError(f"{self.op}: {msg}")

    def _merge(self, have: int, got: int, what: str) -> int:
        if have in (-1, got):
            return got
        if got == -1:
            return have
        self.fail(f"{what} is {got}, but {have} elsewhere")

    def bind(self, slot: str, spec: str) -> TensorType | None:
        """Unify input ``slot``'s shape with ``spec``; an absent optional input binds nothing.

        Raises:
            GraphError: wrong rank, or a dimension that disagrees with an earlier binding.
        """
        t = self.inputs.get(slot)
        if t is None:
            return None
        names, shape = spec.split(), tuple(t.shape)
        if names and names[0] == "...":
            names = names[1:]
            if len(shape) < len(names):
                self.fail(f"input {slot} has shape {list(shape)}, expected [{spec}]")
            cut = len(shape) - len(names)
            lead, shape = shape[:cut], shape[cut:]
            if self.lead is None:
                self.lead = lead
            elif len(self.lead) != len(lead):
                self.fail(f"input {slot} has leading dims {list(lead)}, expected {len(self.lead)} of them")
            else:
                self.lead = tuple(self._merge(a, b, f"leading dim of {slot}") for a, b in zip(self.lead, lead, strict=True))
        elif len(shape) != len(names):
            self.fail(f"input {slot} has shape {list(shape)}, expected [{spec}]")
        for name, d in zip(names, shape, strict=True):
            if name.isdigit():
                self._merge(int(name), d, f"dimension {name} of {slot}")
            else:
                self.dims[name] = self._merge(self.dims.get(name, -1), d, f"dimension {name} of {slot}")
        if self.dtype is None:
            self.dtype = t.dtype
        return t

    def __getitem__(self, name: str) -> int:
        return self.dims.get(name, -1)

    def equal(self, name: str, value: int, what: str) -> None:
        """Unify a named dimension with a value known otherwise (an attribute, a product); -1 is a no-op."""
        if value != -1:
            self.dims[name] = self._merge(self[name], value, what)

    def divisible(self, name: str, by: int, what: str) -> None:
        """Check that dimension ``name`` is a multiple of ``by`` (attribute ``what``), which must be positive."""
        if by <= 0:
            self.fail(f"{what} must be positive, got {by}")
        if self[name] != -1 and self[name] % by:
            self.fail(f"dimension {name}={self[name]} is not divisible by {what}={by}")

    def out(self, spec: Sequence[int | str] | str, dtype: str | None = None) -> TensorType:
        """An output type: names resolve to bound dims, ``...`` to the leading dims, ints and digits stay.

        The dtype defaults to that of the first input bound.
        """
        tokens = spec.split() if isinstance(spec, str) else spec
        shape: list[int] = []
        for tok in tokens:
            if tok == "...":
                shape.extend(self.lead or ())
            else:
                shape.append(tok if isinstance(tok, int) else int(tok) if tok.isdigit() else self[tok])
        return TensorType(dtype or self.dtype or "float32", tuple(shape))


def known(*dims: int) -> bool:
    """Whether every dimension is known (not -1)."""
    return all(d != -1 for d in dims)


def prod(*dims: int) -> int:
    """Product of dimensions, -1 when any is unknown."""
    return math.prod(dims) if known(*dims) else -1


def prepared(ctx: ExecContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs with every floating-point array in the working dtype; others unchanged, absent ones dropped."""
    return {k: work(ctx, v) if is_float_array(v) else np.asarray(v)
            for k, v in inputs.items() if v is not None and not isinstance(v, list)}


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``x Wᵀ + b`` with ``W`` as ``[out, in]``."""
    y = x @ w.T
    return y + b if b is not None else y


def layer_norm(x: np.ndarray, g: np.ndarray | None, b: np.ndarray | None, eps: float) -> np.ndarray:
    """Layer normalization over the last axis (biased variance, as torch)."""
    mu = x.mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    if g is not None:
        y = y * g
    return y + b if b is not None else y


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Max-shifted softmax along ``axis``."""
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def activate(x: np.ndarray, name: str) -> np.ndarray:
    """Apply activation ``name`` (one of :data:`ACTIVATIONS`; ``gelu`` is the exact erf form).

    Raises:
        GraphError: unknown activation name.
    """
    if name == "gelu":
        return (0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(x.dtype)
    if name == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "relu":
        return np.maximum(x, 0)
    if name == "silu":
        return x * (0.5 * (1.0 + np.tanh(0.5 * x)))
    if name == "identity":
        return x
    raise GraphError(f"unknown activation {name!r} (expected one of {', '.join(ACTIVATIONS)})")


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, *, causal: bool = False,
              mask: np.ndarray | None = None, key_padding_mask: np.ndarray | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
    """Scaled dot-product attention over ``heads`` heads of already projected ``q``/``k``/``v``.

    ``q`` is ``[..., Sq, E]``, ``k`` ``[..., Sk, E]``, ``v`` ``[..., Sk, Ev]``; returns the merged
    heads ``[..., Sq, Ev]`` and the weights ``[..., H, Sq, Sk]``. Head h owns features
    ``h·E/H … (h+1)·E/H - 1``. ``mask`` is additive (float) or boolean with True = blocked,
    broadcast to ``[..., H, Sq, Sk]``; ``key_padding_mask`` ``[..., Sk]`` is True where a key is
    padding; ``causal`` blocks key j > query i.
    """
    *lead, sq, e = q.shape
    sk, ev = k.shape[-2], v.shape[-1]
    qh = q.reshape(*lead, sq, heads, e // heads).swapaxes(-2, -3)
    kh = k.reshape(*lead, sk, heads, e // heads).swapaxes(-2, -3)
    vh = v.reshape(*lead, sk, heads, ev // heads).swapaxes(-2, -3)
    s = (qh @ kh.swapaxes(-1, -2)) / np.sqrt(np.asarray(e // heads, q.dtype))
    if causal:
        s = np.where(np.triu(np.ones((sq, sk), bool), 1), -np.inf, s)
    if mask is not None:
        s = np.where(mask, -np.inf, s) if mask.dtype == bool else s + mask
    if key_padding_mask is not None:
        s = np.where(np.asarray(key_padding_mask, bool)[..., None, None, :], -np.inf, s)
    w = softmax(s).astype(q.dtype)
    return (w @ vh).swapaxes(-2, -3).reshape(*lead, sq, ev), w


# ---- slots, inference and kernels of MHA / FFN / pre-norm blocks -------------------------

def proj_slots(prefix: str = "") -> list[Slot]:
    """Query/key/value/output projection weights and optional biases, named ``{prefix}Wq``…``{prefix}bo``."""
    slots = []
    for n, what in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "output")):
        slots.append(Slot(f"{prefix}W{n}", f"{what} projection [out, in]", dtypes=FLOAT_DTYPES))
        slots.append(Slot(f"{prefix}b{n}", f"{what} projection bias", optional=True, dtypes=FLOAT_DTYPES))
    return slots


def ffn_slots(prefix: str = "") -> list[Slot]:
    """FFN weights ``{prefix}W1`` ``[F, D]``, ``{prefix}W2`` ``[D, F]`` and optional biases."""
    return [Slot(f"{prefix}W1", "up projection [F, D]", dtypes=FLOAT_DTYPES),
            Slot(f"{prefix}b1", "up projection bias [F]", optional=True, dtypes=FLOAT_DTYPES),
            Slot(f"{prefix}W2", "down projection [D, F]", dtypes=FLOAT_DTYPES),
            Slot(f"{prefix}b2", "down projection bias [D]", optional=True, dtypes=FLOAT_DTYPES)]


def block_slots(prefix: str) -> list[Slot]:
    """Parameters of a pre-norm transformer block (LN → MHA, LN → FFN) named ``{prefix}...``."""
    return [Slot(f"{prefix}ln1_weight", "LayerNorm gain before MHA [D]", dtypes=FLOAT_DTYPES),
            Slot(f"{prefix}ln1_bias", "[D]", optional=True, dtypes=FLOAT_DTYPES),
            *proj_slots(prefix),
            Slot(f"{prefix}ln2_weight", "LayerNorm gain before FFN [D]", dtypes=FLOAT_DTYPES),
            Slot(f"{prefix}ln2_bias", "[D]", optional=True, dtypes=FLOAT_DTYPES),
            *ffn_slots(prefix)]


def infer_mha(c: Shapes, heads: int, prefix: str, d: str) -> None:
    """Bind self-attention weights mapping dimension ``d`` to itself through E query/key features."""
    e = f"{prefix}E"
    c.bind(f"{prefix}Wq", f"{e} {d}")
    c.bind(f"{prefix}Wk", f"{e} {d}")
    c.bind(f"{prefix}Wv", f"{e}v {d}")
    c.bind(f"{prefix}Wo", f"{d} {e}v")
    for n, dim in (("q", e), ("k", e), ("v", f"{e}v"), ("o", d)):
        c.bind(f"{prefix}b{n}", dim)
    c.divisible(e, heads, "N_heads")
    c.divisible(f"{e}v", heads, "N_heads")


def infer_ffn(c: Shapes, prefix: str, d: str) -> None:
    """Bind FFN weights acting on dimension ``d``."""
    c.bind(f"{prefix}W1", f"{prefix}F {d}")
    c.bind(f"{prefix}b1", f"{prefix}F")
    c.bind(f"{prefix}W2", f"{d} {prefix}F")
    c.bind(f"{prefix}b2", d)


def infer_block(c: Shapes, prefix: str, d: str, heads: int) -> None:
    """Bind a pre-norm block's parameters (see :func:`block_slots`)."""
    for slot in ("ln1_weight", "ln1_bias", "ln2_weight", "ln2_bias"):
        c.bind(prefix + slot, d)
    infer_mha(c, heads, prefix, d)
    infer_ffn(c, prefix, d)


def mha(x: np.ndarray, p: Mapping[str, Any], prefix: str, heads: int, causal: bool = False,
        mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Multi-head self-attention of ``x`` with the projections ``p[prefix + 'Wq']`` …; returns (Y, weights)."""
    q, k, v = (linear(x, p[f"{prefix}W{n}"], p.get(f"{prefix}b{n}")) for n in "qkv")
    o, w = attention(q, k, v, heads, causal=causal, mask=mask)
    return linear(o, p[f"{prefix}Wo"], p.get(f"{prefix}bo")), w


def ffn(x: np.ndarray, p: Mapping[str, Any], prefix: str, act: str) -> np.ndarray:
    """``act(x W1ᵀ + b1) W2ᵀ + b2`` with the weights ``p[prefix + 'W1']`` …."""
    h = activate(linear(x, p[prefix + "W1"], p.get(prefix + "b1")), act)
    return linear(h, p[prefix + "W2"], p.get(prefix + "b2"))


def attn_half(x: np.ndarray, p: Mapping[str, Any], prefix: str, heads: int, eps: float) -> np.ndarray:
    """``MHA(LN1(x))``, the residual branch of a pre-norm block's first half."""
    return mha(layer_norm(x, p[prefix + "ln1_weight"], p.get(prefix + "ln1_bias"), eps), p, prefix, heads)[0]


def ffn_half(x: np.ndarray, p: Mapping[str, Any], prefix: str, eps: float, act: str) -> np.ndarray:
    """``FFN(LN2(x))``, the residual branch of a pre-norm block's second half."""
    return ffn(layer_norm(x, p[prefix + "ln2_weight"], p.get(prefix + "ln2_bias"), eps), p, prefix, act)
