# ruff: noqa: RUF002 - formulas quote the standard's Greek letters
"""Transfer and transfer-compression adapters of GB/T 42382.2 §7.4 (Tables 21–24): the bottleneck
adapter, the mixture-of-modality adapter, RepAdapter and the linear adapter of transfer
compression, with the re-parameterisations that fold the last two into a plain linear layer.

Registered from :mod:`.modules`. Tables 22–24 of the standard list the inputs of the transfer
*procedures* (original weights W, adapters A, router R, data D, …); the operators here are the
forward computations those procedures train, following formulas (41)–(61).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ptmpack.errors import GraphError
from ptmpack.ir.model import AttrType
from ptmpack.ir.ops.blocks import Shapes, activate, linear, prepared, softmax
from ptmpack.ir.ops.numeric import FLOAT_DTYPES, INDEX_DTYPES, out
from ptmpack.ir.registry import AttrDef, ExecContext, Slot, op

A = AttrType
F = FLOAT_DTYPES


# ---- bottleneck adapter -------------------------------------------------------------------

def _adapter_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("adapter", inputs)
    c.bind("X", "... D")
    c.bind("W_down", "r D")
    c.bind("b_down", "r")
    c.bind("W_up", "D r")
    c.bind("b_up", "D")
    return {"Y": c.out("... D")}


@op("adapter", table="Table 21",
    inputs=[Slot("X", "[..., D]", dtypes=F),
            Slot("W_down", "down projection [r, D]", dtypes=F), Slot("b_down", "[r]", optional=True, dtypes=F),
            Slot("W_up", "up projection [D, r]", dtypes=F), Slot("b_up", "[D]", optional=True, dtypes=F)],
    outputs=[Slot("Y", "[..., D]")],
    attributes=[AttrDef("activation", A.STRING, "relu", "bottleneck activation (gelu, gelu_tanh, relu, silu, identity)"),
                AttrDef("scale", A.FLOAT, 1.0, "s, multiplies the adapter branch"),
                AttrDef("residual", A.BOOL, True, "add X back (false: the branch alone, for parallel adapters)")],
    infer=_adapter_infer)
def adapter_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Bottleneck adapter (§7.4.2): ``Y = X + s · (act(X W_downᵀ + b_down) W_upᵀ + b_up)``.

    Two linear layers (the two "X, bias, Y" rows of Table 21) around an activation, with a
    residual connection; ``residual = false`` returns the scaled branch only, so the adapter can
    run in parallel with another module (AdaptFormer style) and be added by the graph.
    """
    p = prepared(ctx, inputs)
    h = activate(linear(p["X"], p["W_down"], p.get("b_down")), attrs["activation"])
    branch = attrs["scale"] * linear(h, p["W_up"], p.get("b_up"))
    return {"Y": out(ctx, p["X"] + branch if attrs["residual"] else branch)}


# ---- RepAdapter ----------------------------------------------------------------------------

def group_weight(w_up: np.ndarray) -> np.ndarray:
    """The block-diagonal ``[D, c]`` matrix of group-wise weights ``[k, D/k, c/k]`` (``w_sparse`` of (51))."""
    k, dk, ck = w_up.shape
    dense = np.zeros((k * dk, k * ck), dtype=w_up.dtype)
    for g in range(k):
        dense[g * dk:(g + 1) * dk, g * ck:(g + 1) * ck] = w_up[g]
    return dense


def group_linear(h: np.ndarray, w_up: np.ndarray, b_up: np.ndarray | None) -> np.ndarray:
    """GLinear of formula (48): group g of ``h`` (c/k features) maps through ``w_up[g]`` to group g of the output."""
    k, dk, ck = w_up.shape
    hg = h.reshape(*h.shape[:-1], k, ck)
    y = np.einsum("...gc,gdc->...gd", hg, w_up).reshape(*h.shape[:-1], k * dk)
    return y + b_up if b_up is not None else y


def rep_adapter_linear(w_down: np.ndarray, b_down: np.ndarray | None, w_up: np.ndarray, b_up: np.ndarray | None,
                       scale: float) -> tuple[np.ndarray, np.ndarray]:
    """RepAdapter as one linear layer (formulas (51)(52)): ``f(x) = x W_aᵀ + b_a``.

    ``W_a = I + s · w_sparse W_down`` (``[D, D]``) and ``b_a = s · (w_sparse b_down + b_up)``.
    """
    ws = group_weight(np.asarray(w_up, np.float64))
    wd = np.asarray(w_down, np.float64)
    bd = np.zeros(wd.shape[0]) if b_down is None else np.asarray(b_down, np.float64)
    bu = np.zeros(ws.shape[0]) if b_up is None else np.asarray(b_up, np.float64)
    return np.eye(wd.shape[1]) + scale * ws @ wd, scale * (ws @ bd + bu)


def merge_rep_adapter(weight: np.ndarray, bias: np.ndarray | None, w_down: np.ndarray, b_down: np.ndarray | None,
                      w_up: np.ndarray, b_up: np.ndarray | None, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Re-parameterise ``linear(rep_adapter(X), weight, bias)`` into one linear (formulas (53)–(55)).

    Returns ``(W_rep, b_rep)`` with ``W_rep = weight W_a`` and ``b_rep = weight b_a + bias`` (the
    standard's ``w_rep = w_ada w_1``, ``b_rep = b_ada w_1 + b_1`` in its row-vector notation). The
    same merge applies to each of the Q, K, V projections behind an adapter (54)(55); after it the
    network has its original structure and cost.
    """
    wa, ba = rep_adapter_linear(w_down, b_down, w_up, b_up, scale)
    w = np.asarray(weight, np.float64)
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, np.float64)
    return w @ wa, w @ ba + b


def _bind_rep(c: Shapes, up: str = "W_up", up_bias: str = "b_up") -> None:
    c.bind("W_down", "c D")
    c.bind("b_down", "c")
    c.bind(up, "k Dk ck")
    c.bind(up_bias, "D")
    for whole, part in (("D", "Dk"), ("c", "ck")):
        if c[whole] != -1 and c[part] != -1 and c["k"] != -1 and c[whole] != c["k"] * c[part]:
            c.fail(f"{up} [k, D/k, c/k] = [{c['k']}, {c['Dk']}, {c['ck']}] does not split D={c['D']}, c={c['c']}")


def _rep_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("rep_adapter", inputs)
    c.bind("X", "... D")
    _bind_rep(c)
    return {"Y": c.out("... D")}


_REP_SLOTS = [Slot("W_down", "down projection w_d [c, D]", dtypes=F),
              Slot("b_down", "b_d [c]", optional=True, dtypes=F)]


@op("rep_adapter", table="Table 23",
    inputs=[Slot("X", "[..., D]", dtypes=F), *_REP_SLOTS,
            Slot("W_up", "group-wise up projections [k, D/k, c/k] (k groups)", dtypes=F),
            Slot("b_up", "b [D]", optional=True, dtypes=F)],
    outputs=[Slot("Y", "[..., D]")],
    attributes=[AttrDef("scale", A.FLOAT, 1.0, "s, the gradient-scale hyper-parameter")],
    infer=_rep_infer)
def rep_adapter_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """RepAdapter (§7.4.4, formulas (47)(48)): ``Y = X + s · GLinear(X W_downᵀ + b_down)``.

    GLinear splits its c inputs into k groups of c/k, maps group g through ``W_up[g]`` (``[D/k,
    c/k]``) to features ``g·D/k … (g+1)·D/k - 1`` of the output and adds ``b_up``. It is linear
    in X, so ``rep_adapter_linear`` writes it as one ``[D, D]`` linear and ``merge_rep_adapter``
    folds it into the projection it feeds (formulas (51)–(55)); the merged model computes the
    same outputs with no adapter left.
    """
    p = prepared(ctx, inputs)
    h = linear(p["X"], p["W_down"], p.get("b_down"))
    return {"Y": out(ctx, p["X"] + attrs["scale"] * group_linear(h, p["W_up"], p.get("b_up")))}


# ---- mixture-of-modality adapter -----------------------------------------------------------

def _mma_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("mixture_of_modality_adapter", inputs)
    c.bind("Z", "... N D")
    c.bind("modality", "...")
    c.bind("modality_embedding", "M D")
    c.bind("W_router", "2 D")
    c.bind("b_router", "2")
    _bind_rep(c, "W_up1", "b_up1")
    _bind_rep(c, "W_up2", "b_up2")
    return {"Y": c.out("... N D"), "route_weights": c.out("... 2")}


@op("mixture_of_modality_adapter", table="Table 22",
    inputs=[Slot("Z", "features [..., N, D] (single- or multi-modal)", dtypes=F),
            Slot("modality", "input modality of each sample [...] (0 text-only, 1 image-text)", dtypes=INDEX_DTYPES),
            Slot("modality_embedding", "E_m [M, D]", dtypes=F),
            Slot("W_router", "W_m as [2, D]", dtypes=F), Slot("b_router", "b_m [2]", optional=True, dtypes=F),
            *_REP_SLOTS,
            Slot("W_up1", "group-wise up projection of f_a1 [k, D/k, c/k]", dtypes=F),
            Slot("b_up1", "[D]", optional=True, dtypes=F),
            Slot("W_up2", "group-wise up projection of f_a2 [k, D/k, c/k]", dtypes=F),
            Slot("b_up2", "[D]", optional=True, dtypes=F)],
    outputs=[Slot("Y", "[..., N, D]"), Slot("route_weights", "ŵ [..., 2]")],
    attributes=[AttrDef("scale", A.FLOAT, 1.0, "s of formula (42)"),
                AttrDef("temperature", A.FLOAT, 1.0, "τ, the router softmax temperature")],
    infer=_mma_infer)
def mma_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Mixture-of-modality adapter (§7.4.3, formulas (41)–(44)).

    Modality token (41): ``t_m = onehot(modality) E_m = modality_embedding[modality]``. Router
    (44): ``ŵ = softmax((t_m W_routerᵀ + b_router) / τ)``. Output (42)(43): ``Y = Z + s · (ŵ_0 ·
    f_a1(Z) + ŵ_1 · f_a2(Z))``, where the two RepAdapter branches ``f_ai(Z) =
    GLinear_i(Z W_downᵀ + b_down)`` share the down projection, as the standard prescribes, and
    carry no residual of their own (the single residual is the ``Z +``). As τ → 0 the router
    becomes a hard switch and the operator equals one ``rep_adapter`` with scale s.
    """
    p = prepared(ctx, inputs)
    z = p["Z"]
    m, table = p["modality"], p["modality_embedding"]
    if m.size and (m.min() < 0 or m.max() >= table.shape[0]):
        raise GraphError(f"mixture_of_modality_adapter: modality ids must be in [0, {table.shape[0]}), got {m.min()}..{m.max()}")
    t = table[m]
    w = softmax(linear(t, p["W_router"], p.get("b_router")) / attrs["temperature"])
    h = linear(z, p["W_down"], p.get("b_down"))
    mix = (w[..., None, 0:1] * group_linear(h, p["W_up1"], p.get("b_up1"))
           + w[..., None, 1:2] * group_linear(h, p["W_up2"], p.get("b_up2")))
    return {"Y": out(ctx, z + attrs["scale"] * mix), "route_weights": out(ctx, w)}


# ---- linear adapter of transfer compression --------------------------------------------------

def fold_linear_adapter(weight: np.ndarray, bias: np.ndarray | None, scale: np.ndarray,
                        shift: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``Y = scale ⊙ (X Wᵀ + b) + shift`` into the preceding linear (formula (57)).

    Returns ``(W', b')`` with ``W' = diag(scale) W`` (row j of W times scale_j) and ``b' = scale ⊙
    b + shift``. Output channels whose scale is 0 have zero rows in W': they are pruned, leaving a
    constant ``shift_j`` that the next layer can absorb.
    """
    w = np.asarray(weight, np.float64)
    s = np.asarray(scale, np.float64)
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, np.float64)
    beta = np.zeros_like(s) if shift is None else np.asarray(shift, np.float64)
    return s[:, None] * w, s * b + beta


def _tca_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("transfer_compression_adapter", inputs)
    c.bind("X", "... D")
    c.bind("scale", "D")
    c.bind("shift", "D")
    return {"Y": c.out("... D")}


@op("transfer_compression_adapter", table="Table 24",
    inputs=[Slot("X", "output of a linear layer (Wq, Wk, Wv, W1, W2) [..., D]", dtypes=F),
            Slot("scale", "s [D]", dtypes=F), Slot("shift", "β [D]", optional=True, dtypes=F)],
    outputs=[Slot("Y", "[..., D]")],
    infer=_tca_infer)
def tca_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Linear adapter of transfer compression (§7.4.5, formula (56)): ``Y = s ⊙ X + β``.

    ``s`` and ``β`` broadcast along the last (channel) axis. Trained with the L1 sparsity loss on
    s (58)–(61); once trained, ``fold_linear_adapter`` merges it into the preceding linear layer
    (57), where zeros in s prune whole output channels.
    """
    p = prepared(ctx, inputs)
    y = p["scale"] * p["X"]
    return {"Y": out(ctx, y + p["shift"] if "shift" in p else y)}
