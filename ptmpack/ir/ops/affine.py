# ruff: noqa: RUF002 - formulas quote the standard's symbols
"""``affine_transform``: an AffineQuant transform that could not be merged (GB/T 42382.2 §7.3.1.1, Table 44).

AffineQuant multiplies a layer's weights by ``(A⊙GM)ᵀ`` and its input activations by
``(A⊙GM)⁻¹``. Where the operator before the linears is a linear itself (value → output
projection) the inverse merges into it; after an RMSNorm only the diagonal part can merge
(into the norm weight), and what remains — a full matrix with a unit diagonal, plus the
learned shift — runs as this explicit operator::

    Y = (X − Shift) · Mᵀ          X [..., D_in], M [D_out, D_in], Shift [D_in] (optional)

or, block-diagonal, ``M [K, B_out, B_in]`` with ``K·B_in = D_in``: block ``k`` of ``Y`` (``B_out``
wide) is block ``k`` of ``X − Shift`` times ``M_kᵀ`` (``D_out = K·B_out``). AffineQuant's default
block-diagonal transforms are stored this way, ``d·B`` values instead of ``d²``.

``M`` is stored like a linear weight (``[out, in]``): for AffineQuant ``M = U⁻ᵀ`` with
``U = (A⊙GM)·diag(A⊙GM)⁻¹``, so ``Y = (X − δ')·U⁻¹``. In a checkpoint the tensors sit beside
the norm they follow: ``{norm}.affine_transform.weight`` and ``{norm}.affine_transform.shift``;
:func:`insert_affine_transforms` adds the operator after every ``rms_norm``/``layer_norm`` whose
weight has such siblings, so a graph rebuilt from the checkpoint runs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from ptmpack.errors import GraphError
from ptmpack.ir.model import ModelStructure, OperatorNode, TensorRef, VariableNode
from ptmpack.ir.ops.numeric import FLOAT_DTYPES, out, promote, same_dim, work
from ptmpack.ir.registry import ExecContext, Slot, TensorType, Values, op

AFFINE = "affine_transform"
"""Checkpoint name of an unmerged transform under the norm it follows (``{norm}.affine_transform.weight``)."""
_NORMS = ("rms_norm", "layer_norm")


def transform_widths(m_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(D_in, D_out)`` of a transform ``M`` ``[D_out, D_in]`` or block-diagonal ``[K, B_out, B_in]``
    (``-1`` where a dimension is unknown).

    Raises:
        GraphError: ``M`` is neither 2-D nor 3-D.
    """
    if len(m_shape) == 2:
        return m_shape[1], m_shape[0]
    if len(m_shape) == 3:
        k, b_out, b_in = m_shape
        return (-1 if -1 in (k, b_in) else k * b_in), (-1 if -1 in (k, b_out) else k * b_out)
    raise GraphError(f"affine_transform needs a 2-D M [D_out, D_in] or 3-D M [K, B_out, B_in]; got {m_shape}")


def _infer(inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    x, m, shift = inputs["X"], inputs["M"], inputs["Shift"]
    if not x.shape:
        raise GraphError(f"affine_transform needs X [..., D]; got {x.shape}")
    d_in, d_out = transform_widths(tuple(m.shape))
    same_dim(x.shape[-1], d_in, "affine_transform X width vs M columns")
    if shift is not None:
        if len(shift.shape) != 1:
            raise GraphError(f"affine_transform Shift must be 1-D, got {shift.shape}")
        same_dim(shift.shape[0], x.shape[-1], "affine_transform Shift vs X width")
    return {"Y": TensorType(promote(x.dtype, m.dtype), (*x.shape[:-1], d_out))}


@op(AFFINE, table="Table 44", infer=_infer,
    inputs=[Slot("X", "activations [..., D_in]", dtypes=FLOAT_DTYPES),
            Slot("M", "transform [D_out, D_in], or its diagonal blocks [K, B_out, B_in] (for AffineQuant the inverse "
                      "(A⊙GM)⁻¹, transposed)", dtypes=FLOAT_DTYPES),
            Slot("Shift", "shift δ subtracted first [D_in]", optional=True, dtypes=FLOAT_DTYPES)],
    outputs=[Slot("Y", "[..., D_out]")])
def _affine_transform(ctx: ExecContext, inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Y = (X − Shift)·Mᵀ: the activation side of an AffineQuant transform that no neighbour absorbed.

    AffineQuant (§7.3.1.1, Table 44) multiplies the weights of the linears reading ``X`` by
    ``(A⊙GM)ᵀ`` and their input by ``(A⊙GM)⁻¹``; after a norm only the diagonal part merges
    into the norm weight, and this operator applies the rest: ``M`` is the remaining inverse,
    transposed (``[D_out, D_in]``, like a linear weight), ``Shift`` the learned shift divided
    by the merged diagonal. A 3-D ``M`` holds the diagonal blocks of a block-diagonal transform and is
    applied block by block. Computed in the context's compute dtype.
    """
    x = work(ctx, inputs["X"])
    if inputs["Shift"] is not None:
        x = x - work(ctx, inputs["Shift"])
    m = np.asarray(inputs["M"]).astype(x.dtype, copy=False)
    rows = x.reshape(-1, x.shape[-1])
    if m.ndim == 2:
        y = np.matmul(rows, m.T)
    else:  # [rows, K, B_in] · [K, B_out, B_in]ᵀ per block → [rows, K, B_out]
        y = np.matmul(rows.reshape(len(rows), m.shape[0], m.shape[2]).transpose(1, 0, 2),
                      m.transpose(0, 2, 1)).transpose(1, 0, 2)
    return {"Y": out(ctx, y.reshape(*x.shape[:-1], transform_widths(m.shape)[1]))}


class _Meta(Protocol):
    dtype: str
    shape: tuple[int, ...]
    file: str


def insert_affine_transforms(model: ModelStructure, tensors: Mapping[str, _Meta]) -> ModelStructure:
    """``model`` with an ``affine_transform`` after each norm whose weight ``{p}.weight`` has a
    ``{p}.affine_transform.weight`` (and optional ``.shift``) beside it in ``tensors``.

    The norm's consumers read the transform's output instead. A model without such tensors is
    returned unchanged.

    Raises:
        GraphError: a transform tensor whose shape does not fit its norm.
    """
    graph = model.main_graph
    variables = list(graph.variables)
    known = {v.name for v in variables}
    operators: list[OperatorNode] = []
    renames: dict[str, str] = {}
    for node in graph.operators:
        if renames:
            node = replace(node, inputs={k: tuple(renames.get(n, n) for n in v) for k, v in node.inputs.items()})
        operators.append(node)
        weight = (node.inputs.get("Weight") or node.inputs.get("Scale") or ("",))[0]
        if node.type not in _NORMS or not weight.endswith(".weight"):
            continue
        base = weight[: -len(".weight")]
        m_name, s_name = f"{base}.{AFFINE}.weight", f"{base}.{AFFINE}.shift"
        if m_name not in tensors:
            continue
        y = node.outputs["Y"][0]
        y_var = next(v for v in variables if v.name == y)
        params = {"M": m_name, **({"Shift": s_name} if s_name in tensors else {})}
        for name in params.values():
            meta = tensors[name]
            if name not in known:
                variables.append(VariableNode(name, meta.dtype, tuple(meta.shape), True, TensorRef(meta.file, name)))
                known.add(name)
        m_shape = tuple(tensors[m_name].shape)
        if len(m_shape) not in (2, 3):
            raise GraphError(f"{m_name}: shape {list(m_shape)} is neither [D_out, D_in] nor [K, B_out, B_in]")
        d_in, d_out = transform_widths(m_shape)
        if y_var.shape and y_var.shape[-1] not in (-1, d_in):
            raise GraphError(f"{m_name}: shape {list(m_shape)} does not fit the output of {node.name}")
        new = f"{y}.{AFFINE}"
        variables.append(VariableNode(new, y_var.dtype, (*y_var.shape[:-1], d_out)))
        operators.append(OperatorNode(AFFINE, f"{node.name}.{AFFINE}", {k: (v,) for k, v in {"X": y, **params}.items()},
                                      {"Y": (new,)}, {}))
        renames[y] = new
    if not renames:
        return model
    outputs = tuple(renames.get(o, o) for o in model.outputs)
    new_graph = replace(graph, variables=tuple(variables), operators=tuple(operators))
    graphs = tuple(new_graph if g.graph_id == graph.graph_id else g for g in model.graphs)
    return replace(model, graphs=graphs, outputs=outputs)
