# ruff: noqa: RUF002 - formulas quote the standard's Greek letters
"""Transfer adapters in a package and their merge (``compress --merge-adapter``, §7.4.4, §7.4.5).

Layout (ptmpack's own; no ecosystem format exists for these adapters). A package carries its
trained adapters beside the base checkpoint, in a sub-folder the base-model readers skip::

    Model/adapters/adapter_config.json
        {"format": "ptmpack-adapters", "version": 1, "adapters": [
           {"name": "l0_attn", "type": "rep_adapter", "scale": 0.5,
            "targets": ["encoder.layer.0.attention.self.query", "…key", "…value"]},
           {"name": "l0_ffn", "type": "linear_adapter", "target": "encoder.layer.0.intermediate.dense"}]}
    Model/adapters/adapters.safetensors
        l0_attn.W_down [c, D]   l0_attn.b_down [c]   (optional)
        l0_attn.W_up   [k, D/k, c/k]   l0_attn.b_up [D]   (optional)
        l0_ffn.scale   [out]    l0_ffn.shift  [out]  (optional)

A ``rep_adapter`` (RepAdapter, formulas (47)(48)) acts on the common input of its ``targets``
(linears that read the same tensor, e.g. Q, K and V): ``x + s·GLinear(x W_downᵀ + b_down)``. A
``linear_adapter`` (the transfer-compression linear adapter, formula (56)) acts on the output of
its ``target`` linear: ``s ⊙ y + β``. While unmerged, ``Model/graph.json`` runs them as the IR's
``rep_adapter`` and ``transfer_compression_adapter`` operators.

Merging re-parameterizes (formulas (51)–(55), (57)): each target of a RepAdapter becomes ``W·W_a``,
``W·b_a + b``; a linear adapter's target becomes ``diag(s)·W``, ``s ⊙ b + β``. Output channels with
``s = 0`` are constant; in an FFN (linear → activation → linear, or LLaMA's gate/up → SwiGLU →
down) they are removed: the first linear loses the row, the second the column, and the constant's
contribution moves into the second linear's bias (only a zero contribution when it has none), so
the intermediate size shrinks. Zero channels elsewhere (Q/K/V, attention output, FFN output) are
left as zero rows: removing them would break the uniform head width or the residual width.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.report import StepRecord
from ptmpack.compress.spec import CompressSpec
from ptmpack.compress.step import StepContext
from ptmpack.compress.tree.adapters import CONFIG_NAME, FOLDER, linear_op, read_adapters
from ptmpack.compress.tree.checkpoint import (
    CONFIG,
    Checkpoint,
    read_json,
    refresh_parameters,
    update_ptm_info,
    write_json,
)
from ptmpack.compress.tree.graph import consumers
from ptmpack.errors import InvalidTreeError, UsageError
from ptmpack.ir.model import ModelStructure, OperatorNode
from ptmpack.ir.ops.adapters import fold_linear_adapter, merge_rep_adapter
from ptmpack.ir.ops.blocks import activate


def _attr(node: OperatorNode, key: str, default: Any) -> Any:
    a = node.attributes.get(key)
    return default if a is None else a.value



_ACT = {"gelu": lambda node: "gelu" if _attr(node, "approximate", "none") == "none" else "gelu_tanh",
        "silu": lambda node: "silu", "relu": lambda node: "relu"}


def _t(tensors: dict[str, np.ndarray], name: str) -> np.ndarray | None:
    return np.asarray(tensors[name], np.float64) if name in tensors else None


_BIAS_FLAGS = {"self_attn.": ("attention_bias", ("q_proj", "k_proj", "v_proj", "o_proj")),
               "mlp.": ("mlp_bias", ("gate_proj", "up_proj", "down_proj"))}


def _bias_for(ck: Checkpoint, config: dict[str, Any], weight: str) -> str:
    """The bias tensor of linear ``weight``, created (zeros) when missing.

    A LLaMA-family checkpoint spells biases per group (``attention_bias``, ``mlp_bias``), so the
    whole group gets zero biases and the flag, keeping it loadable by transformers.
    """
    name = weight[: -len("weight")] + "bias"
    if name in ck.tensors:
        return name
    group = next(((flag, parts) for key, (flag, parts) in _BIAS_FLAGS.items() if f".{key}" in weight), None)
    if group is not None and config.get("model_type") in ("llama", "mistral", "qwen2"):
        flag, parts = group
        config[flag] = True
        for w in [n for n in ck.tensors if n.endswith(".weight") and any(f".{p}." in n for p in parts)]:
            b = w[: -len("weight")] + "bias"
            if b not in ck.tensors:
                ck.set(b, np.zeros(ck.tensors[w].shape[0]), like=w)
    else:
        ck.set(name, np.zeros(ck.tensors[weight].shape[0]), like=weight)
    return name


def _setlinear_op(ck: Checkpoint, config: dict[str, Any], weight: str, w: np.ndarray, b: np.ndarray) -> None:
    ck.set(weight, w)
    bias = weight[: -len("weight")] + "bias"
    if bias in ck.tensors or np.any(b):
        ck.set(_bias_for(ck, config, weight), b)


def _ffn_groups(model: ModelStructure) -> dict[str, tuple[list[OperatorNode], OperatorNode, str | None]]:
    """First-linear weight → (first linears of the FFN, second linear, activation) for the FFN patterns."""
    g = model.main_graph
    readers = consumers(g)
    producer = {n: o for o in g.operators for names in o.outputs.values() for n in names}

    def only(var: str) -> OperatorNode | None:
        r = readers.get(var, [])
        return r[0][0] if len(r) == 1 else None

    groups: dict[str, tuple[list[OperatorNode], OperatorNode, str | None]] = {}
    for node in g.operators:
        if node.type != "linear":
            continue
        nxt = only(node.outputs["Y"][0])
        if nxt is not None and nxt.type in _ACT:
            after = only(nxt.outputs["Y"][0])
            if after is not None and after.type == "linear":
                groups[node.inputs["W"][0]] = ([node], after, _ACT[nxt.type](nxt))
            elif after is not None and after.type == "mul":  # SwiGLU: gate → act → mul ← up
                other = [producer.get(v) for v in (*after.inputs["A"], *after.inputs["B"]) if v != nxt.outputs["Y"][0]]
                down = only(after.outputs["Y"][0])
                if len(other) == 1 and other[0] is not None and other[0].type == "linear" and down and down.type == "linear":
                    groups[node.inputs["W"][0]] = ([node, other[0]], down, "swiglu:" + _ACT[nxt.type](nxt))
    return groups


def _shrink(ck: Checkpoint, config: dict[str, Any], first: list[OperatorNode], second: OperatorNode, act: str,
            zero: dict[str, np.ndarray]) -> int:
    """Remove the FFN's constant channels; returns how many were removed."""
    ws = [f.inputs["W"][0] for f in first]
    if act.startswith("swiglu:"):
        gate, up = ws
        bg = _bias_or_zero(ck, gate)
        bu = _bias_or_zero(ck, up)
        gone = (zero.get(gate, np.zeros_like(bg, bool)) & (bg == 0)) | (zero.get(up, np.zeros_like(bu, bool)) & (bu == 0))
        contribution = None
    else:
        w1 = ws[0]
        gone = zero.get(w1, np.zeros(ck.tensors[w1].shape[0], bool)).copy()
        contribution = activate(_bias_or_zero(ck, w1), act)
    if not gone.any():
        return 0
    keep = ~gone
    w2 = second.inputs["W"][0]
    w2v = ck.f64(w2)
    if contribution is not None and np.any(contribution[gone]):
        b2 = _bias_or_zero(ck, w2) + w2v[:, gone] @ contribution[gone]
        _setlinear_op(ck, config, w2, w2v, b2)
    ck.set(w2, w2v[:, keep])
    for w in ws:
        ck.set(w, ck.f64(w)[keep])
        b = w[: -len("weight")] + "bias"
        if b in ck.tensors:
            ck.set(b, ck.f64(b)[keep])
    return int(gone.sum())


def _bias_or_zero(ck: Checkpoint, weight: str) -> np.ndarray:
    b = weight[: -len("weight")] + "bias"
    return ck.f64(b) if b in ck.tensors else np.zeros(ck.tensors[weight].shape[0])


def merge_adapters(tree: Path) -> dict[str, Any]:
    """Merge every adapter of ``tree/Model/adapters`` into the base weights and drop the folder.

    Raises:
        UsageError: the package carries no adapters.
        InvalidTreeError: as :func:`read_adapters`; shapes that do not fit their targets.
    """
    from ptmpack.compress.tree.rebuild import base_model, rebuild_graph

    found = read_adapters(tree)
    if found is None:
        raise UsageError(f"{tree}: no {FOLDER}/{CONFIG_NAME}; nothing to merge",
                         hint="see docs/COMPRESSION.md for the adapter layout")
    adapters, tensors = found
    model = base_model(tree)
    ck, config = Checkpoint.load(tree), read_json(tree, CONFIG)
    zero: dict[str, np.ndarray] = {}
    rows = []
    for a in adapters:
        t = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(a["name"] + ".")}
        try:
            if a["type"] == "rep_adapter":
                for target in a.get("targets", []):
                    w = f"{target}.weight"
                    linear_op(model.main_graph, w)
                    wn, bn = merge_rep_adapter(ck.f64(w), _bias_or_zero(ck, w), t["W_down"], t.get("b_down"),
                                               t["W_up"], t.get("b_up"), float(a.get("scale", 1.0)))
                    _setlinear_op(ck, config, w, wn, bn)
                rows.append({"adapter": a["name"], "type": "rep_adapter", "into": a.get("targets", [])})
            else:
                w = f"{a['target']}.weight"
                linear_op(model.main_graph, w)
                scale = np.asarray(t["scale"], np.float64)
                wn, bn = fold_linear_adapter(ck.f64(w), _bias_or_zero(ck, w), scale, t.get("shift"))
                _setlinear_op(ck, config, w, wn, bn)
                zero[w] = scale == 0
                rows.append({"adapter": a["name"], "type": "linear_adapter", "into": [a["target"]],
                             "zero_channels": int((scale == 0).sum())})
        except (ValueError, KeyError) as exc:
            raise InvalidTreeError(f"adapter {a['name']!r} does not fit its targets ({exc})") from None
    removed = {}
    for first_w, (first, second, act) in _ffn_groups(model).items():
        if any(f.inputs["W"][0] in zero for f in first):
            n = _shrink(ck, config, first, second, act, zero)
            if n:
                removed[first_w] = n
    sizes = sorted({int(ck.tensors[w].shape[0]) for w in _ffn_groups(model)})
    if removed and len(sizes) == 1:
        config["intermediate_size"] = sizes[0]
        update_ptm_info(tree, intermediate_size=sizes[0])
    ck.save()
    refresh_parameters(ck)
    write_json(tree, CONFIG, config)
    shutil.rmtree(Path(tree) / FOLDER)
    rebuild_graph(tree)
    return {"method": "merge_adapter", "merged": rows, "removed_channels": removed,
            "intermediate_sizes": sizes, "uniform_intermediate_size": len(sizes) == 1}


class AdapterStep:
    """Pipeline step ``--merge-adapter`` with the before/after report (a :class:`ptmpack.compress.step.Step`)."""

    def check(self, spec: CompressSpec) -> None:
        """Nothing to check in the spec: whether the package has adapters is known once it is unpacked."""

    def run(self, tree: Path, ctx: StepContext) -> StepRecord:
        """Re-parameterize the package's adapters into the base weights (:func:`merge_adapters`).

        Raises:
            PtmError: as :func:`merge_adapters`.
        """
        record = merge_adapters(Path(tree))
        return StepRecord("merge_adapter", str(record.pop("method")), details=record)
