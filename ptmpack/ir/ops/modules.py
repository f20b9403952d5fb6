# ruff: noqa: RUF001, RUF002 - formulas quote the standard's Greek letters
"""Module operators of GB/T 42382.2 §6.2.2 and §7.2 (Tables 15–20): MHA, FFN, the nested
transformer (TNT), the augmented-shortcut transformer with block-circulant projections, unified
normalization and multimodal token fusion. The adapters of Tables 21–24 live in :mod:`.adapters`,
registered from here. Layout conventions are those of :mod:`.blocks`: activations ``[..., S, D]``,
weights ``[out, in]`` applied as ``X Wᵀ + b``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ptmpack.ir.model import AttrType
from ptmpack.ir.ops import adapters  # noqa: F401  (registers the adapter operators of Tables 21-24)
from ptmpack.ir.ops.blocks import (
    Shapes,
    activate,
    attn_half,
    block_slots,
    ffn,
    ffn_half,
    ffn_slots,
    infer_block,
    infer_ffn,
    infer_mha,
    known,
    linear,
    mha,
    prepared,
    prod,
    proj_slots,
)
from ptmpack.ir.ops.numeric import FLOAT_DTYPES, out
from ptmpack.ir.registry import AttrDef, ExecContext, Slot, op

A = AttrType
F = FLOAT_DTYPES


def _mha_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("MHA", inputs)
    c.bind("X", "... S D")
    infer_mha(c, attrs["N_heads"], "", "D")
    types = {"Y": c.out("... S D")}
    if attrs["need_weights"]:
        types["attn_weights"] = c.out(["...", attrs["N_heads"], "S", "S"])
    return types


@op("MHA", table="Table 15",
    inputs=[Slot("X", "input tokens [..., S, D]", dtypes=F), *proj_slots(),
            Slot("attn_mask", "additive float or boolean (True = blocked) mask, broadcast to [..., N_heads, S, S]",
                 optional=True, dtypes=(*F, "bool"))],
    outputs=[Slot("Y", "[..., S, D]"), Slot("attn_weights", "[..., N_heads, S, S], when need_weights", optional=True)],
    attributes=[AttrDef("N_heads", A.INT, doc="number of attention heads"),
                AttrDef("causal", A.BOOL, False, "block attention from query i to keys j > i"),
                AttrDef("need_weights", A.BOOL, False, "also return the per-head attention weights")],
    infer=_mha_infer)
def mha_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Multi-head self-attention: ``Y = concat_h(softmax(Q_h K_hᵀ/√d_h + mask) V_h) Woᵀ + bo``.

    ``Q = X Wqᵀ + bq``, ``K = X Wkᵀ + bk``, ``V = X Wvᵀ + bv`` with ``Wq``/``Wk`` ``[E, D]``,
    ``Wv`` ``[Ev, D]`` and ``Wo`` ``[D, Ev]``; E and Ev are split into ``N_heads`` contiguous heads
    of ``d_h = E / N_heads`` features, as in ``torch.nn.MultiheadAttention`` (whose packed
    ``in_proj_weight`` is ``concat(Wq, Wk, Wv)``). ``attn_weights`` are per head, not averaged.
    ``causal`` and ``attn_mask`` combine; a query whose keys are all blocked yields NaN, as in
    torch.
    """
    p = prepared(ctx, inputs)
    y, w = mha(p["X"], p, "", attrs["N_heads"], attrs["causal"], p.get("attn_mask"))
    result = {"Y": out(ctx, y)}
    if attrs["need_weights"]:
        result["attn_weights"] = out(ctx, w)
    return result


def _ffn_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("FFN", inputs)
    c.bind("X", "... D")
    infer_ffn(c, "", "D")
    c.bind("W_gate", "F D")
    return {"Y": c.out("... D")}


@op("FFN", table="Table 16",
    inputs=[Slot("X", "[..., D]", dtypes=F), *ffn_slots(),
            Slot("W_gate", "gate projection [F, D] of a gated FFN (SwiGLU/GeGLU)", optional=True, dtypes=F)],
    outputs=[Slot("Y", "[..., D]")],
    attributes=[AttrDef("activation", A.STRING, "gelu", "one of gelu, gelu_tanh, relu, silu, identity")],
    infer=_ffn_infer)
def ffn_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Position-wise feed-forward network: ``Y = act(X W1ᵀ + b1) W2ᵀ + b2``.

    With ``W_gate`` it is the gated form of LLaMA-style MLPs: ``Y = (act(X W_gateᵀ) ⊙ (X W1ᵀ +
    b1)) W2ᵀ + b2`` (SwiGLU with ``silu``). ``gelu`` is the exact erf GELU, ``gelu_tanh`` the tanh
    approximation.
    """
    p, act = prepared(ctx, inputs), attrs["activation"]
    if "W_gate" not in p:
        return {"Y": out(ctx, ffn(p["X"], p, "", act))}
    h = activate(linear(p["X"], p["W_gate"]), act) * linear(p["X"], p["W1"], p.get("b1"))
    return {"Y": out(ctx, linear(h, p["W2"], p.get("b2")))}


# ---- nested transformer (TNT) -------------------------------------------------------------

def _tnt_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("nested_transformer", inputs)
    c.bind("Z", "... N Dz")
    c.bind("Y", "... n m Dy")
    c.equal("n", max(attrs["n"], -1), "attribute n")
    c.equal("m", max(attrs["m"], -1), "attribute m")
    if known(c["N"], c["n"]) and c["N"] < c["n"]:
        c.fail(f"Z has {c['N']} sentences but Y has words for {c['n']}")
    infer_block(c, "inner_", "Dy", attrs["inner_heads"])
    infer_block(c, "outer_", "Dz", attrs["outer_heads"])
    c.bind("proj_weight", "Dz P")
    c.bind("proj_bias", "Dz")
    c.equal("P", prod(c["m"], c["Dy"]), "m·Dy (the flattened words of a sentence)")
    return {"Z_out": c.out("... N Dz"), "Y_out": c.out("... n m Dy")}


@op("nested_transformer", table="Table 17",
    inputs=[Slot("Z", "visual sentences [..., N, Dz]; the first N-n are class tokens", dtypes=F),
            Slot("Y", "visual words [..., n, m, Dy]: m words for each of the n sentences", dtypes=F),
            *block_slots("inner_"),
            Slot("proj_weight", "word-to-sentence projection [Dz, m·Dy]", dtypes=F),
            Slot("proj_bias", "[Dz]", optional=True, dtypes=F),
            *block_slots("outer_")],
    outputs=[Slot("Z_out", "[..., N, Dz]"), Slot("Y_out", "[..., n, m, Dy]")],
    attributes=[AttrDef("n", A.INT, -1, "number of sentences with words (-1: from Y's shape)"),
                AttrDef("m", A.INT, -1, "words per sentence (-1: from Y's shape)"),
                AttrDef("inner_heads", A.INT, doc="heads of the inner (word) MHA"),
                AttrDef("outer_heads", A.INT, doc="heads of the outer (sentence) MHA"),
                AttrDef("eps", A.FLOAT, 1e-5, "LayerNorm epsilon"),
                AttrDef("activation", A.STRING, "gelu", "FFN activation")],
    infer=_tnt_infer)
def tnt_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Transformer-in-Transformer block, formulas (1)–(5) of §7.2.1 and pseudo-code Table 40.

    Inner block on each sentence's m words (1)(2): ``Y' = Y + MHA(LN(Y))``, ``Y_out = Y' +
    FFN(LN(Y'))``. Words feed sentences (3): ``Z[..., N-n:, :] += vec(Y_out) proj_weightᵀ +
    proj_bias``, where ``vec`` flattens a sentence's m words (word-major) into m·Dy features and
    the leading N-n rows of Z (class tokens) receive nothing. Outer block (4)(5): ``Z' = Z +
    MHA(LN(Z))``, ``Z_out = Z' + FFN(LN(Z'))``. Both blocks are pre-norm, with the slots
    ``{inner_,outer_}ln1_*, Wq…bo, ln2_*, W1…b2``. Formula (3) has no LayerNorm before the
    projection, so none is applied (TNT variants that normalise vec(Y) add a layer_norm node).
    """
    p, eps, act = prepared(ctx, inputs), attrs["eps"], attrs["activation"]
    *lead, n, m, dy = p["Y"].shape
    words = p["Y"].reshape(-1, m, dy)
    words = words + attn_half(words, p, "inner_", attrs["inner_heads"], eps)
    words = words + ffn_half(words, p, "inner_", eps, act)
    y_out = words.reshape(*lead, n, m, dy)
    z = p["Z"].copy()
    z[..., z.shape[-2] - n:, :] += linear(y_out.reshape(*lead, n, m * dy), p["proj_weight"], p.get("proj_bias"))
    z = z + attn_half(z, p, "outer_", attrs["outer_heads"], eps)
    z = z + ffn_half(z, p, "outer_", eps, act)
    return {"Z_out": out(ctx, z), "Y_out": out(ctx, y_out)}


# ---- block-circulant projections and augmented shortcuts ----------------------------------

def circulant_matrix(c: np.ndarray) -> np.ndarray:
    """The dense ``[q·k, p·k]`` weight of block-circulant parameters ``c`` ``[q, p, k]``, formula (10).

    Block (i, j) is ``circ(c[i, j])`` with ``circ(v)[r, s] = v[(r - s) mod k]`` (first column v).
    """
    q, p, k = c.shape
    idx = (np.arange(k)[:, None] - np.arange(k)[None, :]) % k
    return c[..., idx].transpose(0, 2, 1, 3).reshape(q * k, p * k)


def circulant_apply(x: np.ndarray, c: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``x circulant_matrix(c)ᵀ + b`` computed in the frequency domain, formula (11)."""
    q, p, k = c.shape
    xf = np.fft.rfft(x.reshape(*x.shape[:-1], p, k), axis=-1)
    yf = np.einsum("...pf,qpf->...qf", xf, np.fft.rfft(c, axis=-1))
    y = np.fft.irfft(yf, n=k, axis=-1).astype(x.dtype).reshape(*x.shape[:-1], q * k)
    return y + b if b is not None else y


def _circ_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("circulant_linear", inputs)
    c.bind("X", "... Din")
    c.bind("C", "q p k")
    c.equal("Din", prod(c["p"], c["k"]), "p·k (input blocks × block size)")
    c.equal("Dout", prod(c["q"], c["k"]), "q·k (output blocks × block size)")
    c.bind("bias", "Dout")
    return {"Y": c.out("... Dout")}


@op("circulant_linear", table="Table 18",
    inputs=[Slot("X", "[..., p·k]", dtypes=F),
            Slot("C", "defining vectors [q, p, k] of the circulant blocks", dtypes=F),
            Slot("bias", "[q·k]", optional=True, dtypes=F)],
    outputs=[Slot("Y", "[..., q·k]")],
    infer=_circ_infer)
def circulant_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Block-circulant projection of §7.2.3, formulas (9)–(11): ``Y = X Θᵀ + bias``.

    Θ is ``[q·k, p·k]``, made of q×p circulant k×k blocks; block (i, j) has first column
    ``C[i, j]``: ``Θ_ij[r, s] = C[i, j, (r - s) mod k]``. Θ is never built: each input block goes
    through an FFT, is multiplied point-wise with the FFT of the defining vectors, summed over input
    blocks and transformed back (IFFT) — O(q·p·k log k) work and q·p·k parameters instead of
    q·p·k². ``ptmpack.ir.ops.modules.circulant_matrix`` builds the dense Θ for folding or checks.
    """
    p = prepared(ctx, inputs)
    return {"Y": out(ctx, circulant_apply(p["X"], p["C"], p.get("bias")))}


def _shortcuts(x: np.ndarray, c: np.ndarray, b: np.ndarray | None, act: str) -> np.ndarray:
    total = np.zeros_like(x)
    for i in range(c.shape[0]):
        total += activate(circulant_apply(x, c[i], None if b is None else b[i]), act)
    return total


def _aug_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("augmented_shortcut_transformer", inputs)
    c.bind("Z", "... N D")
    infer_block(c, "", "D", attrs["N_heads"])
    for part in ("attn", "mlp"):
        c.bind(f"{part}_shortcuts", f"{part}T {part}q {part}p {part}k")
        c.bind(f"{part}_shortcut_bias", f"{part}T D")
        c.equal("D", prod(c[f"{part}q"], c[f"{part}k"]), f"q·k of {part}_shortcuts")
        c.equal("D", prod(c[f"{part}p"], c[f"{part}k"]), f"p·k of {part}_shortcuts")
    return {"Z_out": c.out("... N D")}


@op("augmented_shortcut_transformer", table="Table 18",
    inputs=[Slot("Z", "[..., N, D]", dtypes=F), *block_slots(""),
            Slot("attn_shortcuts", "circulant parameters [T, D/k, D/k, k] of the T shortcuts beside MHA", dtypes=F),
            Slot("attn_shortcut_bias", "[T, D]", optional=True, dtypes=F),
            Slot("mlp_shortcuts", "circulant parameters [T', D/k', D/k', k'] of the shortcuts beside FFN", dtypes=F),
            Slot("mlp_shortcut_bias", "[T', D]", optional=True, dtypes=F)],
    outputs=[Slot("Z_out", "[..., N, D]")],
    attributes=[AttrDef("N_heads", A.INT, doc="attention heads"),
                AttrDef("eps", A.FLOAT, 1e-5, "LayerNorm epsilon"),
                AttrDef("activation", A.STRING, "gelu", "FFN activation"),
                AttrDef("shortcut_activation", A.STRING, "gelu", "σ of the augmented shortcuts")],
    infer=_aug_infer)
def aug_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Transformer block with augmented shortcuts, formulas (6)–(8), pseudo-code Table 41.

    ``Z' = Z + MHA(LN1(Z)) + Σ_i σ(Z Θ_iᵀ + b_i)``, then ``Z_out = Z' + FFN(LN2(Z')) + Σ_i σ(Z'
    Θ'_iᵀ + b'_i)``: T parallel shortcuts (T = first dim of the shortcut parameters; 0 allowed)
    transform the un-normalised block input token by token. Each Θ_i is block-circulant (see
    ``circulant_linear``) with ``attn_shortcuts[i]`` ``[D/k, D/k, k]`` as its defining vectors.
    The standard's Table 18 attributes n, m are carried by the shapes (T and D/k).
    """
    p, eps, sact = prepared(ctx, inputs), attrs["eps"], attrs["shortcut_activation"]
    x = p["Z"]
    x = x + attn_half(x, p, "", attrs["N_heads"], eps) + _shortcuts(x, p["attn_shortcuts"], p.get("attn_shortcut_bias"), sact)
    x = x + ffn_half(x, p, "", eps, attrs["activation"]) + _shortcuts(x, p["mlp_shortcuts"], p.get("mlp_shortcut_bias"), sact)
    return {"Z_out": out(ctx, x)}


# ---- unified normalization ----------------------------------------------------------------

def unified_norm_affine(running_var: np.ndarray, gamma: np.ndarray, beta: np.ndarray | None,
                        eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The inference form of ``unified_norm`` as a per-channel affine: ``Y = X ⊙ scale + shift``, formula (12)."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(running_var, np.float64) + eps)
    shift = np.zeros_like(scale) if beta is None else np.asarray(beta, np.float64)
    return scale, shift


def fold_affine_into_linear(scale: np.ndarray, shift: np.ndarray, weight: np.ndarray,
                            bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``X ⊙ scale + shift`` into the linear ``[out, in]`` that consumes it.

    ``linear(X ⊙ scale + shift, W, b) == linear(X, W', b')`` with ``W' = W diag(scale)`` and
    ``b' = b + W shift``: how the standard's inference-time unified norm disappears (§7.2.4).
    """
    w = np.asarray(weight, np.float64)
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, np.float64)
    return w * scale[None, :], b + w @ shift


def _un_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("unified_norm", inputs)
    c.bind("X", "... C")
    for slot in ("running_var", "gamma", "beta"):
        c.bind(slot, "C")
    types = {"Y": c.out("... C"), "running_var_out": c.out("C")}
    if c.bind("history", "M C") is not None:
        types["history_out"] = c.out("M C")
    return types


@op("unified_norm", table="Table 19",
    inputs=[Slot("X", "[..., C], normalised per channel C", dtypes=F),
            Slot("running_var", "σ², the inference-time variance [C]", dtypes=F),
            Slot("gamma", "γ [C]", dtypes=F), Slot("beta", "β [C]", optional=True, dtypes=F),
            Slot("history", "M: the last M per-step variances [M, C], oldest first (training)", optional=True,
                 dtypes=F)],
    outputs=[Slot("Y", "[..., C]"), Slot("running_var_out", "updated σ² [C]"),
             Slot("history_out", "updated history [M, C], present when history is given", optional=True)],
    attributes=[AttrDef("eps", A.FLOAT, 1e-5, "added to the variance"),
                AttrDef("momentum", A.FLOAT, 0.1, "weight of the new smoothed variance in running_var")],
    infer=_un_infer)
def un_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Unified normalization (§7.2.4, formulas (12)–(17), pseudo-code Table 42).

    Inference (``ctx.training`` false): ``Y = γ ⊙ X / √(σ² + eps) + β`` with the stored σ²: a
    per-channel affine with no on-line statistics, which ``unified_norm_affine`` and
    ``fold_affine_into_linear`` fold into the adjacent linear layer; running_var and history pass
    through. Training: the step variance (13) is the per-channel second moment over every
    non-channel position, ``σ_t² = mean(X²)`` — no mean is subtracted, as (12) has none; the
    smoothed variance (14) is the geometric mean of σ_t² and the M variances in ``history``
    (``σ̂² = exp(mean(log v))``, variances floored at the float32 tiny); ``Y = γ ⊙ X / √(σ̂² +
    eps) + β`` (15)(16); the inference variance is updated (17) as ``running_var_out = (1 -
    momentum)·σ² + momentum·σ̂²`` (torch BatchNorm's momentum convention) and ``history_out``
    drops the oldest row and appends σ_t². The gradient approximations (18)–(21) belong to
    training frameworks, not to this forward kernel.
    """
    p, eps = prepared(ctx, inputs), attrs["eps"]
    x, var, hist = p["X"], p["running_var"], p.get("history")
    result: dict[str, Any] = {}
    if ctx.training:
        step = (x * x).reshape(-1, x.shape[-1]).mean(0)
        stack = step[None] if hist is None else np.concatenate([hist, step[None]])
        smooth = np.exp(np.log(np.maximum(stack, np.finfo(np.float32).tiny)).mean(0)).astype(x.dtype)
        var_out = (1.0 - attrs["momentum"]) * var + attrs["momentum"] * smooth
        if hist is not None:
            result["history_out"] = out(ctx, stack[1:])
        var = smooth
    else:
        var_out = var
        if hist is not None:
            result["history_out"] = out(ctx, hist)
    y = p["gamma"] * x / np.sqrt(var + eps)
    result["Y"] = out(ctx, y + p["beta"] if "beta" in p else y)
    result["running_var_out"] = out(ctx, var_out)
    return result


# ---- multimodal token fusion ----------------------------------------------------------------

def _tf_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("token_fusion", inputs)
    c.bind("x1", "... N D1")
    c.bind("x2", "... N D2")
    c.bind("score1", "... N")
    c.bind("score2", "... N")
    c.bind("proj2to_1", "D1 D2")
    c.bind("proj2to_1_bias", "D1")
    c.bind("proj1to_2", "D2 D1")
    c.bind("proj1to_2_bias", "D2")
    return {"Y1": c.out("... N D1"), "Y2": c.out("... N D2")}


@op("token_fusion", table="Table 20",
    inputs=[Slot("x1", "modality-1 tokens [..., N, D1]", dtypes=F),
            Slot("x2", "modality-2 tokens [..., N, D2], token i aligned with x1's token i", dtypes=F),
            Slot("score1", "importance scores s(e) of x1's tokens [..., N]", dtypes=F),
            Slot("score2", "importance scores of x2's tokens [..., N]", dtypes=F),
            Slot("proj2to_1", "modality 2 → modality 1 token projection [D1, D2]", dtypes=F),
            Slot("proj2to_1_bias", "[D1]", optional=True, dtypes=F),
            Slot("proj1to_2", "modality 1 → modality 2 projection [D2, D1]; absent: x2 is kept", optional=True,
                 dtypes=F),
            Slot("proj1to_2_bias", "[D2]", optional=True, dtypes=F)],
    outputs=[Slot("Y1", "[..., N, D1]"), Slot("Y2", "[..., N, D2]")],
    attributes=[AttrDef("threshold", A.FLOAT, 0.01, "θ: tokens scoring below it are substituted")],
    infer=_tf_infer)
def tf_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Multimodal token fusion (§7.2.5, formula (24), pseudo-code Table 43).

    ``Y1 = x1 ⊙ 𝟙[score1 ≥ θ] + Proj_{2→1}(x2) ⊙ 𝟙[score1 < θ]`` with ``Proj_{2→1}(x2) = x2
    proj2to_1ᵀ + proj2to_1_bias``, and symmetrically ``Y2`` from ``proj1to_2`` (when it is absent
    only modality 1 is fused and ``Y2 = x2``). The scores come from the scoring MLP s(e) of (22)(23),
    built from ordinary operators, and tokens are aligned one to one (same N). Position embeddings
    of substituted tokens are the caller's residual add, as in the standard. The random assignment
    (25) for more than two modalities is expressed by chaining pairwise token_fusion nodes.
    """
    p, th = prepared(ctx, inputs), attrs["threshold"]
    x1, x2 = p["x1"], p["x2"]
    y1 = np.where((p["score1"] < th)[..., None], linear(x2, p["proj2to_1"], p.get("proj2to_1_bias")), x1)
    y2 = x2
    if "proj1to_2" in p:
        y2 = np.where((p["score2"] < th)[..., None], linear(x1, p["proj1to_2"], p.get("proj1to_2_bias")), x2)
    return {"Y1": out(ctx, y1), "Y2": out(ctx, y2)}
