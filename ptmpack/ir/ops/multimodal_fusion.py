# ruff: noqa: RUF001, RUF002 - formulas quote the standard's Greek letters
"""Fusion, expert routing, alignment and training operators of multimodal models, GB/T 42382.2
§6.2.3 (Tables 31–39). Registered from :mod:`.multimodal`.

Routing conventions shared by ``expert_selection``, ``gated_expert_routing`` and
``mixture_of_experts``: router probabilities are ``softmax(X W_routerᵀ + b_router)`` over E
experts; the top k are chosen by probability, ties going to the lower expert index; with
``normalize`` the k chosen probabilities are rescaled to sum to 1 (Mixtral), otherwise they are
used as they are (Switch, Qwen-MoE). The optimizer operators are training operators: one update
step per run when ``ctx.training`` is set, a pass-through otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ptmpack.errors import GraphError
from ptmpack.ir.model import AttrType
from ptmpack.ir.ops.blocks import Shapes, activate, attention, linear, prepared, softmax
from ptmpack.ir.ops.numeric import FLOAT_DTYPES, INDEX_DTYPES, out
from ptmpack.ir.registry import AttrDef, ExecContext, Slot, TensorType, op

A = AttrType
F = FLOAT_DTYPES


# ---- fusion --------------------------------------------------------------------------------

def _cma_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("cross_modal_attention", inputs)
    c.bind("modality_1", "... S1 D1")
    c.bind("modality_2", "... S2 D2")
    for w, spec in (("Wq", "E D1"), ("Wk", "E D2"), ("Wv", "Ev D2"), ("Wo", "Do Ev"),
                    ("bq", "E"), ("bk", "E"), ("bv", "Ev"), ("bo", "Do"), ("key_padding_mask", "... S2")):
        c.bind(w, spec)
    c.divisible("E", attrs["N_heads"], "N_heads")
    c.divisible("Ev", attrs["N_heads"], "N_heads")
    types = {"Y": c.out("... S1 Do")}
    if attrs["need_weights"]:
        types["attn_weights"] = c.out(["...", attrs["N_heads"], "S1", "S2"])
    return types


@op("cross_modal_attention", table="Table 31",
    inputs=[Slot("modality_1", "query tokens [..., S1, D1]", dtypes=F),
            Slot("modality_2", "key/value tokens [..., S2, D2]", dtypes=F),
            Slot("Wq", "[E, D1]", dtypes=F), Slot("bq", optional=True, dtypes=F),
            Slot("Wk", "[E, D2]", dtypes=F), Slot("bk", optional=True, dtypes=F),
            Slot("Wv", "[Ev, D2] (Ev: modality_2_value_dim)", dtypes=F), Slot("bv", optional=True, dtypes=F),
            Slot("Wo", "[Do, Ev]", dtypes=F), Slot("bo", optional=True, dtypes=F),
            Slot("key_padding_mask", "[..., S2], True where a modality-2 token is padding", optional=True,
                 dtypes=("bool",))],
    outputs=[Slot("Y", "[..., S1, Do]"), Slot("attn_weights", "[..., N_heads, S1, S2], when need_weights",
                                                optional=True)],
    attributes=[AttrDef("N_heads", A.INT, 1, "attention heads"),
                AttrDef("need_weights", A.BOOL, False, "also return the per-head weights")],
    infer=_cma_infer)
def cma_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Cross-attention from modality 1 to modality 2 (mid-level fusion, §6.2.3):
    ``Y = softmax(Q Kᵀ/√d_h) V Woᵀ + bo`` per head with ``Q = X1 Wqᵀ + bq``, ``K = X2 Wkᵀ + bk``,
    ``V = X2 Wvᵀ + bv``.

    The modalities may differ in width (D1, D2) and length (S1, S2); query/key width E and value
    width Ev (the standard's modality_2_value_dim) are split into ``N_heads`` contiguous heads.
    Padding tokens of modality 2 are excluded through ``key_padding_mask``.
    """
    p = prepared(ctx, inputs)
    q = linear(p["modality_1"], p["Wq"], p.get("bq"))
    k = linear(p["modality_2"], p["Wk"], p.get("bk"))
    v = linear(p["modality_2"], p["Wv"], p.get("bv"))
    o, w = attention(q, k, v, attrs["N_heads"], key_padding_mask=p.get("key_padding_mask"))
    result = {"Y": out(ctx, linear(o, p["Wo"], p.get("bo")))}
    if attrs["need_weights"]:
        result["attn_weights"] = out(ctx, w)
    return result


def _concat_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    a, b = inputs["modality_1"], inputs["modality_2"]
    if len(a.shape) != len(b.shape) or not -len(a.shape) <= attrs["axis"] < len(a.shape):
        raise GraphError(f"concat_fusion: ranks {len(a.shape)} and {len(b.shape)} must match and contain axis "
                         f"{attrs['axis']}")
    axis = attrs["axis"] % len(a.shape)
    shape = []
    for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)):
        if i == axis:
            shape.append(x + y if -1 not in (x, y) else -1)
        elif -1 not in (x, y) and x != y:
            raise GraphError(f"concat_fusion: dim {i} is {x} in modality_1 but {y} in modality_2")
        else:
            shape.append(x if x != -1 else y)
    c = Shapes("concat_fusion", {**inputs, "joined": TensorType(a.dtype, tuple(shape))})
    c.bind("joined", "... Dc")
    c.bind("W", "Do Dc")
    c.bind("b", "Do")
    return {"Y": c.out("... Do" if inputs.get("W") is not None else "... Dc")}


@op("concat_fusion", table="Table 32",
    inputs=[Slot("modality_1", "[..., S1, D1]", dtypes=F), Slot("modality_2", "[..., S2, D2]", dtypes=F),
            Slot("W", "optional fusion projection [Do, Dc] applied to the concatenation", optional=True, dtypes=F),
            Slot("b", "[Do]", optional=True, dtypes=F)],
    outputs=[Slot("Y", "the concatenation, projected when W is given")],
    attributes=[AttrDef("axis", A.INT, -1, "-1 joins features (early fusion), -2 joins token sequences")],
    infer=_concat_infer)
def concat_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Early fusion by concatenation: ``Y = concat(modality_1, modality_2; axis) Wᵀ + b``.

    All dimensions but ``axis`` must agree. ``axis = -1`` stacks the features of aligned tokens
    (Dc = D1 + D2); ``axis = -2`` appends modality 2's tokens after modality 1's (Dc = D1 = D2).
    Without ``W`` the concatenation is returned as is.
    """
    p = prepared(ctx, inputs)
    y = np.concatenate([p["modality_1"], p["modality_2"]], axis=attrs["axis"])
    return {"Y": out(ctx, linear(y, p["W"], p.get("b")) if "W" in p else y)}


# ---- expert routing ------------------------------------------------------------------------

def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries along the last axis, ties to the lower index."""
    idx = np.argsort(-probs, axis=-1, kind="stable")[..., :k]
    return idx.astype(np.int64), np.take_along_axis(probs, idx, axis=-1)


def _chosen(probs: np.ndarray, k: int, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    if not 1 <= k <= probs.shape[-1]:
        raise GraphError(f"top_k {k} must be between 1 and the number of experts {probs.shape[-1]}")
    idx, val = top_k(probs, k)
    return idx, val / val.sum(-1, keepdims=True) if normalize else val


_ROUTING_ATTRS = [AttrDef("top_k", A.INT, 2, "experts chosen per token"),
                  AttrDef("normalize", A.BOOL, False, "rescale the chosen probabilities to sum to 1")]


def _check_k(c: Shapes, attrs: Mapping[str, Any]) -> None:
    if attrs["top_k"] < 1 or (c["E"] != -1 and attrs["top_k"] > c["E"]):
        c.fail(f"top_k {attrs['top_k']} must be between 1 and the number of experts {c['E']}")


def _es_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("expert_selection", inputs)
    c.bind("logits", "... E")
    _check_k(c, attrs)
    return {"indices": c.out(["...", attrs["top_k"]], "int64"), "weights": c.out(["...", attrs["top_k"]])}


@op("expert_selection", table="Table 33",
    inputs=[Slot("logits", "router logits [..., E]", dtypes=F)],
    outputs=[Slot("indices", "chosen experts [..., top_k], best first (int64)"),
             Slot("weights", "their combine weights [..., top_k]")],
    attributes=_ROUTING_ATTRS, infer=_es_infer)
def es_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Top-k expert selection: ``p = softmax(logits)``; ``indices`` are the k most probable experts
    in decreasing probability (ties: lower index first) and ``weights`` their probabilities,
    rescaled to sum to 1 when ``normalize``.
    """
    idx, w = _chosen(softmax(prepared(ctx, inputs)["logits"]), attrs["top_k"], attrs["normalize"])
    return {"indices": idx, "weights": out(ctx, w)}


def _route(p: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(router probabilities [..., E], dense combine weights [..., E], chosen indices [..., k])."""
    probs = softmax(linear(p["X"], p["W_router"], p.get("b_router")))
    idx, w = _chosen(probs, attrs["top_k"], attrs["normalize"])
    gates = np.zeros_like(probs)
    np.put_along_axis(gates, idx, w, axis=-1)
    return probs, gates, idx


def _router_infer(name: str) -> Any:
    def infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
        c = Shapes(name, inputs)
        c.bind("X", "... D")
        c.bind("W_router", "E D")
        c.bind("b_router", "E")
        _check_k(c, attrs)
        if name == "gated_expert_routing":
            return {"gates": c.out("... E"), "load": c.out("E"), "aux_loss": c.out([])}
        for slot, spec in (("W1", "E F D"), ("b1", "E F"), ("W_gate", "E F D"), ("W2", "E D F"), ("b2", "E D")):
            c.bind(slot, spec)
        return {"Y": c.out("... D")}

    return infer


_ROUTER_SLOTS = [Slot("X", "tokens [..., D]", dtypes=F), Slot("W_router", "router [E, D]", dtypes=F),
                 Slot("b_router", "[E]", optional=True, dtypes=F)]


@op("gated_expert_routing", table="Table 34", inputs=_ROUTER_SLOTS,
    outputs=[Slot("gates", "combine weights [..., E], zero outside each token's top_k"),
             Slot("load", "tokens routed to each expert [E] (float)"),
             Slot("aux_loss", "load-balancing loss, a scalar")],
    attributes=[AttrDef("top_k", A.INT, 1, "experts chosen per token"), _ROUTING_ATTRS[1]],
    infer=_router_infer("gated_expert_routing"))
def ger_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Softmax gating with top-k routing and expert load.

    ``P = softmax(X W_routerᵀ + b_router)``; ``gates`` keeps each token's top_k probabilities
    (renormalised with ``normalize``) and zeros the rest; ``load[e]`` counts the tokens that chose
    expert e. ``aux_loss = E · Σ_e f_e · P̄_e`` (Switch Transformer), with ``f_e = load[e] / (T ·
    top_k)`` the fraction of assignments and ``P̄_e`` the mean router probability over the T tokens:
    1 for perfectly uniform routing, E for a collapse onto one expert.
    """
    probs, gates, idx = _route(prepared(ctx, inputs), attrs)
    e = probs.shape[-1]
    load = np.bincount(idx.reshape(-1), minlength=e).astype(probs.dtype)
    tokens = max(probs.size // e, 1)
    aux = e * np.sum(load / (tokens * attrs["top_k"]) * probs.reshape(-1, e).mean(0)) if probs.size else 0.0
    return {"gates": out(ctx, gates), "load": out(ctx, load), "aux_loss": out(ctx, np.asarray(aux))}


@op("mixture_of_experts", table="Table 35",
    inputs=[*_ROUTER_SLOTS,
            Slot("W1", "expert up projections [E, F, D]", dtypes=F), Slot("b1", "[E, F]", optional=True, dtypes=F),
            Slot("W_gate", "expert gate projections [E, F, D] (gated experts, e.g. SwiGLU)", optional=True, dtypes=F),
            Slot("W2", "expert down projections [E, D, F]", dtypes=F), Slot("b2", "[E, D]", optional=True, dtypes=F)],
    outputs=[Slot("Y", "[..., D]")],
    attributes=[*_ROUTING_ATTRS, AttrDef("activation", A.STRING, "gelu", "expert activation")],
    infer=_router_infer("mixture_of_experts"))
def moe_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Sparse mixture of expert FFNs: ``Y = Σ_{e ∈ top_k(x)} g_e(x) · FFN_e(x)``.

    ``g`` are the combine weights of ``gated_expert_routing`` (top_k, normalize); expert e is
    ``FFN(x) = act(x W1[e]ᵀ + b1[e]) W2[e]ᵀ + b2[e]``, or with ``W_gate`` ``(act(x W_gate[e]ᵀ) ⊙ (x
    W1[e]ᵀ + b1[e])) W2[e]ᵀ + b2[e]`` (Mixtral's SwiGLU experts with ``silu``). Only the chosen
    experts run for each token; there is no capacity limit and no token is dropped.
    """
    p = prepared(ctx, inputs)
    _, gates, _ = _route(p, attrs)
    x = p["X"].reshape(-1, p["X"].shape[-1])
    g = gates.reshape(len(x), gates.shape[-1])
    y = np.zeros_like(x)
    for e in range(g.shape[1]):
        rows = np.nonzero(g[:, e])[0]
        if rows.size == 0:
            continue
        b1 = p["b1"][e] if "b1" in p else None
        h = linear(x[rows], p["W1"][e], b1)
        h = activate(linear(x[rows], p["W_gate"][e]), attrs["activation"]) * h if "W_gate" in p else activate(
            h, attrs["activation"])
        y[rows] += g[rows, e:e + 1] * linear(h, p["W2"][e], p["b2"][e] if "b2" in p else None)
    return {"Y": out(ctx, y.reshape(p["X"].shape))}


# ---- alignment -----------------------------------------------------------------------------

def log_softmax(z: np.ndarray) -> np.ndarray:
    """``log softmax`` along the last axis, max-shifted."""
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _align_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("modal_alignment", inputs)
    c.bind("modality_1", "N D1")
    c.bind("modality_2", "N D2")
    c.bind("W1", "E D1")
    c.bind("W2", "E D2")
    if attrs["temperature"] <= 0:
        c.fail("temperature must be positive")
    return {"aligned_1": c.out("N E"), "aligned_2": c.out("N E"), "similarity": c.out("N N"), "loss": c.out([])}


@op("modal_alignment", table="Table 36",
    inputs=[Slot("modality_1", "pooled features [N, D1]; row i pairs with row i of modality_2", dtypes=F),
            Slot("modality_2", "[N, D2]", dtypes=F),
            Slot("W1", "projection of modality 1 into the shared space [E, D1]", dtypes=F),
            Slot("W2", "projection of modality 2 [E, D2]", dtypes=F)],
    outputs=[Slot("aligned_1", "[N, E], unit rows"), Slot("aligned_2", "[N, E], unit rows"),
             Slot("similarity", "[N, N] cosine similarities / temperature"), Slot("loss", "contrastive loss, scalar")],
    attributes=[AttrDef("temperature", A.FLOAT, 0.07, "τ dividing the similarities")],
    infer=_align_infer)
def align_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Alignment by projection and contrastive learning (CLIP style, §6.2.3 .5 b, c).

    ``a_i = normalize(m_i Wᵢᵀ)`` (unit L2 rows, zero rows stay zero), ``S = a_1 a_2ᵀ / τ`` and the
    symmetric InfoNCE loss ``(CE(S, diag) + CE(Sᵀ, diag)) / 2``, where CE is the mean over rows of
    ``-log softmax(row)[i]`` for row i: matched pairs are pulled together, mismatched pushed apart.
    """
    p = prepared(ctx, inputs)
    a1, a2 = (linear(p[f"modality_{i}"], p[f"W{i}"]) for i in (1, 2))
    a1, a2 = (a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12) for a in (a1, a2))
    s = a1 @ a2.T / attrs["temperature"]

    def ce(m: np.ndarray) -> float:
        return -float(np.mean(np.diagonal(log_softmax(m)))) if len(m) else 0.0

    loss = np.asarray((ce(s) + ce(s.T)) / 2.0)
    return {"aligned_1": out(ctx, a1), "aligned_2": out(ctx, a2), "similarity": out(ctx, s), "loss": out(ctx, loss)}


# ---- training-time operators -----------------------------------------------------------------

def _opt_infer(name: str) -> Any:
    def infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
        c = Shapes(name, inputs)
        x = inputs["X"]
        shape = " ".join(f"d{i}" for i in range(len(x.shape)))
        for slot in ("X", "grad", "m", "v"):
            c.bind(slot, shape)
        if name == "modality_specific_optimizer":
            if attrs["modality"] not in attrs["modalities"] or len(attrs["modalities"]) != len(attrs["learning_rates"]):
                c.fail(f"modality {attrs['modality']!r} needs a learning rate: modalities {list(attrs['modalities'])} "
                       f"and learning_rates {list(attrs['learning_rates'])} must pair up")
            c.bind("step", "")
            return {"Y": c.out(shape), "m_out": c.out(shape), "v_out": c.out(shape), "step_out": c.out([], "int64")}
        c.bind("scores", "M")
        if c["M"] != -1 and not 0 <= attrs["modality"] < c["M"]:
            c.fail(f"modality {attrs['modality']} is not an index into the {c['M']} scores")
        return {"Y": c.out(shape), "coefficient": c.out([])}

    return infer


@op("modality_specific_optimizer", table="Table 37", training=True,
    inputs=[Slot("X", "parameter of one modality's branch", dtypes=F), Slot("grad", "its gradient", dtypes=F),
            Slot("m", "first moment (zeros when absent)", optional=True, dtypes=F),
            Slot("v", "second moment (zeros when absent)", optional=True, dtypes=F),
            Slot("step", "this update's number t ≥ 1, a scalar (1 when absent)", optional=True, dtypes=INDEX_DTYPES)],
    outputs=[Slot("Y", "updated parameter"), Slot("m_out"), Slot("v_out"), Slot("step_out", "t + 1 (int64 scalar)")],
    attributes=[AttrDef("modality", A.STRING, doc="the modality this parameter belongs to"),
                AttrDef("modalities", A.STRINGS, ("text", "vision", "audio"), "modality names"),
                AttrDef("learning_rates", A.FLOATS, (1e-3, 1e-3, 1e-3), "learning rate of each modality"),
                AttrDef("beta1", A.FLOAT, 0.9, "β1, decay of the first moment"),
                AttrDef("beta2", A.FLOAT, 0.999, "β2, decay of the second moment"),
                AttrDef("eps", A.FLOAT, 1e-8, "added to the root of the second moment"),
                AttrDef("weight_decay", A.FLOAT, 0.01, "decoupled weight decay")],
    infer=_opt_infer("modality_specific_optimizer"))
def mso_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """One AdamW step with the learning rate of the parameter's modality (as ``torch.optim.AdamW``).

    With ``lr = learning_rates[modalities.index(modality)]`` and t = step: ``X ← X (1 - lr·wd)``,
    ``m ← β1 m + (1-β1) g``, ``v ← β2 v + (1-β2) g²``, ``Y = X - lr · (m / (1-β1ᵗ)) / (√(v /
    (1-β2ᵗ)) + eps)``. Feeding ``m_out``, ``v_out``, ``step_out`` back in continues the run.
    Outside training the parameter and moments pass through unchanged.
    """
    p = prepared(ctx, inputs)
    x, g = p["X"], p["grad"]
    m, v = p.get("m", np.zeros_like(x)), p.get("v", np.zeros_like(x))
    t = int(p["step"]) if "step" in p else 1
    if not ctx.training:
        return {"Y": out(ctx, x), "m_out": out(ctx, m), "v_out": out(ctx, v), "step_out": np.asarray(t, np.int64)}
    if t < 1:
        raise GraphError(f"modality_specific_optimizer: step must be ≥ 1, got {t}")
    lr = attrs["learning_rates"][list(attrs["modalities"]).index(attrs["modality"])]
    b1, b2 = attrs["beta1"], attrs["beta2"]
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    y = x * (1 - lr * attrs["weight_decay"]) - (lr / (1 - b1**t)) * m / (np.sqrt(v / (1 - b2**t)) + attrs["eps"])
    return {"Y": out(ctx, y), "m_out": out(ctx, m), "v_out": out(ctx, v), "step_out": np.asarray(t + 1, np.int64)}


@op("modality_balancing_optimizer", table="Table 38", training=True,
    inputs=[Slot("X", "parameter of one modality's encoder", dtypes=F), Slot("grad", "its gradient", dtypes=F),
            Slot("scores", "per-modality confidence on the batch [M] (coefficient 1 when absent)", optional=True,
                 dtypes=F)],
    outputs=[Slot("Y", "updated parameter"), Slot("coefficient", "the gradient coefficient k applied, a scalar")],
    attributes=[AttrDef("modality", A.INT, 0, "index of this parameter's modality in scores"),
                AttrDef("balance_factor", A.FLOAT, 1.0, "α: how strongly a dominant modality is slowed"),
                AttrDef("lr", A.FLOAT, 1e-3, "learning rate"), AttrDef("weight_decay", A.FLOAT, 0.0, "L2 term")],
    infer=_opt_infer("modality_balancing_optimizer"))
def mbo_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """One SGD step with on-the-fly gradient modulation (OGM): the dominant modality learns slower.

    ``ρ = scores[modality] / mean(scores of the other modalities)``; ``k = 1 - tanh(α · (ρ - 1))``
    when ρ > 1, else 1; ``Y = X - lr · (k · grad + weight_decay · X)``. ``scores`` are, e.g., each
    unimodal head's mean probability of the true class. Outside training Y = X and k = 1.
    """
    p = prepared(ctx, inputs)
    x, k = p["X"], 1.0
    s = p.get("scores")
    if s is not None and s.size > 1:
        others = np.delete(s, attrs["modality"]).mean()
        rho = float(s[attrs["modality"]] / others) if others > 0 else float("inf")
        if rho > 1:
            k = 1.0 - float(np.tanh(attrs["balance_factor"] * (rho - 1.0)))
    if not ctx.training:
        return {"Y": out(ctx, x), "coefficient": out(ctx, np.asarray(1.0))}
    y = x - attrs["lr"] * (k * p["grad"] + attrs["weight_decay"] * x)
    return {"Y": out(ctx, y), "coefficient": out(ctx, np.asarray(k))}


def _reg_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("cross_modality_regularization", inputs)
    c.bind("modality_1", "... D")
    c.bind("modality_2", "... D")
    if attrs["regularization_method"] not in ("l2", "cosine", "kl"):
        c.fail(f"regularization_method must be l2, cosine or kl, not {attrs['regularization_method']!r}")
    return {"Y": c.out([])}


@op("cross_modality_regularization", table="Table 39", training=True,
    inputs=[Slot("modality_1", "[..., D]", dtypes=F), Slot("modality_2", "[..., D], paired row by row", dtypes=F)],
    outputs=[Slot("Y", "the regularization loss, a scalar")],
    attributes=[AttrDef("regularization_method", A.STRING, "l2", "l2, cosine or kl"),
                AttrDef("weight", A.FLOAT, 1.0, "λ multiplying the loss"),
                AttrDef("temperature", A.FLOAT, 1.0, "T of the kl distributions")],
    infer=_reg_infer)
def reg_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A loss that keeps paired representations of two modalities consistent, averaged over rows.

    ``l2``: ``λ · mean_i ‖a_i - b_i‖²`` (squared distance summed over D); ``cosine``: ``λ · mean_i
    (1 - cos(a_i, b_i))``; ``kl``: ``λ · mean_i KL(softmax(a_i/T) ‖ softmax(b_i/T))`` with modality 1
    as the reference distribution. Computed in training and inference alike.
    """
    p = prepared(ctx, inputs)
    a, b = p["modality_1"], p["modality_2"]
    method = attrs["regularization_method"]
    if method == "l2":
        per = ((a - b) ** 2).sum(-1)
    elif method == "cosine":
        na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
        per = 1.0 - (a * b).sum(-1) / np.maximum(na * nb, 1e-8)
    elif method == "kl":
        la, lb = (log_softmax(z / attrs["temperature"]) for z in (a, b))
        per = (np.exp(la) * (la - lb)).sum(-1)
    else:
        raise GraphError(f"cross_modality_regularization: unknown regularization_method {method!r}")
    return {"Y": out(ctx, np.asarray(attrs["weight"] * (per.mean() if per.size else 0.0)))}
