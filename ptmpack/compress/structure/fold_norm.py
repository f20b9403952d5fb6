# ruff: noqa: RUF002 - formulas quote the standard's Greek letters
"""Fold normalization into the adjacent linear layers (``compress --fold-norm affine|unified``, §7.2.4).

``affine``: every LayerNorm/RMSNorm whose output is read only by linear layers (pre-norm blocks:
LLaMA-family ``input_layernorm``/``post_attention_layernorm``/``norm``) has its γ (and β) folded
into those linears, ``W' = W·diag(γ)``, ``b' = b + W·β``, and is left with γ = 1, β = 0. The
result is exact up to float rounding and still a plain Hugging Face checkpoint (a tied LM head is
untied first, as ``lm_head.weight``). A norm whose output also feeds a residual connection (the
post-norm blocks of BERT) cannot be folded exactly — the next normalization is not invariant to a
per-channel scale on the residual — and is reported as skipped; if none can be folded the step
refuses (exit 6).

``unified``: every norm becomes §7.2.4's unified normalization at inference,
``y = γ ⊙ x / √(σ² + ε) + β`` with a fixed per-channel σ²: the smoothed variance measured on
calibration text (per window the per-channel second moment, formula (13); smoothed across
windows by their geometric mean, formula (14), the ``unified_norm`` operator's training rule).
That is an affine map, so where only linears read the norm it is folded into them and the
operator disappears; elsewhere (BERT's residual path) it stays as an explicit ``unified_norm``
operator with its ``running_var`` tensor — no on-line statistics, no square root at run time.
The graph edits are recorded in config.json (``ptmpack_unified_norm``) so a rebuilt graph keeps
them; transformers cannot run such a checkpoint (its classes always normalize on-line).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.report import StepRecord
from ptmpack.compress.spec import CompressSpec
from ptmpack.compress.step import StepContext
from ptmpack.compress.tree.checkpoint import (
    CONFIG,
    GRAPH,
    Checkpoint,
    open_tree,
    read_json,
    refresh_parameters,
    refuse_unmerged_adapters,
    write_json,
)
from ptmpack.compress.tree.graph import consumers
from ptmpack.compress.tree.rebuild import MARKER, NORMS
from ptmpack.errors import UnsupportedError, UsageError
from ptmpack.ir.model import ModelStructure

_HEAD = "lm_head.weight"


@dataclass(frozen=True)
class NormSite:
    """One normalization operator of the graph and the linear layers that read its output."""

    op: str
    kind: str
    x: str
    scale: str
    bias: str | None
    eps: float
    linears: tuple[tuple[str, str, str | None], ...]
    """(operator name, weight tensor, bias tensor) of each consuming linear."""
    reason: str | None
    """Why it cannot be folded (None: every reader is a linear layer's X)."""


def norm_sites(model: ModelStructure) -> list[NormSite]:
    """Every LayerNorm/RMSNorm operator of the main graph, with its readers."""
    g = model.main_graph
    readers = consumers(g)
    sites = []
    for node in g.operators:
        if node.type not in NORMS:
            continue
        s_slot, b_slot = NORMS[node.type]
        y = node.outputs["Y"][0]
        linears, reason = [], None
        if y in model.outputs:
            reason = "its output is the model output"
        for op, slot in readers.get(y, []):
            if op.type == "linear" and slot == "X":
                bias = op.inputs.get("Bias", (None,))[0]
                linears.append((op.name, op.inputs["W"][0], bias))
            else:
                reason = reason or f"its output also feeds {op.type} {op.name!r} (a residual path)"
        eps = node.attributes.get("epsilon")
        sites.append(NormSite(node.name, node.type, node.inputs["X"][0], node.inputs[s_slot][0],
                              node.inputs[b_slot][0] if b_slot and node.inputs.get(b_slot) else None,
                              float(eps.value) if eps is not None else 1e-5, tuple(linears),
                              reason if reason or linears else "nothing reads it"))
    return sites


def _fold(ck: Checkpoint, config: dict[str, Any], site: NormSite, scale: np.ndarray, shift: np.ndarray | None,
          shared: set[str]) -> list[str]:
    """Fold ``x ⊙ scale + shift`` into the linears reading ``site``; returns the weight tensors changed."""
    changed = []
    for op_name, w_name, b_name in site.linears:
        w = ck.f64(w_name)
        if w_name in shared:  # a tied LM head: give the head its own copy before scaling it
            if op_name != "logits":
                raise UnsupportedError(f"{site.op}: linear {op_name!r} shares weight {w_name} with another operator")
            ck.set(_HEAD, w, like=w_name)
            config["tie_word_embeddings"] = False
            w_name = _HEAD
        ck.set(w_name, w * scale[None, :])
        if shift is not None and np.any(shift):
            b_name = b_name or w_name[: -len("weight")] + "bias"
            b = ck.f64(b_name) if b_name in ck.tensors else np.zeros(w.shape[0])
            ck.set(b_name, b + w @ shift, like=w_name)
        changed.append(w_name)
    return changed


def _shared_weights(model: ModelStructure) -> set[str]:
    readers = consumers(model.main_graph)
    return {v.name for v in model.main_graph.variables if v.persistable and len(readers.get(v.name, [])) > 1}


def _graph(tree: Path) -> ModelStructure:
    from ptmpack.ir.runner import graph_from_package

    with open_tree(tree) as pkg:
        return graph_from_package(pkg)


def fold_affine(tree: Path, model: ModelStructure) -> dict[str, Any]:
    """``--fold-norm affine`` on ``tree`` (weights and config rewritten; the caller rebuilds the graph).

    Raises:
        UnsupportedError: no normalization of the model can be folded exactly.
    """
    sites = norm_sites(model)
    foldable = [s for s in sites if s.reason is None]
    if not foldable:
        why = "; ".join(f"{s.op}: {s.reason}" for s in sites[:3])
        raise UnsupportedError(f"no normalization can be folded exactly into linear layers ({why})",
                               hint="post-norm models (BERT) can use --fold-norm unified instead")
    ck, config = Checkpoint.load(tree), read_json(tree, CONFIG)
    shared = _shared_weights(model)
    rows = []
    for s in foldable:
        gamma = ck.f64(s.scale)
        beta = ck.f64(s.bias) if s.bias else None
        changed = _fold(ck, config, s, gamma, beta, shared)
        ck.set(s.scale, np.ones_like(gamma))
        if s.bias:
            ck.set(s.bias, np.zeros_like(gamma))
        rows.append({"norm": s.op, "into": changed})
    ck.save()
    refresh_parameters(ck)
    write_json(tree, CONFIG, config)
    return {"mode": "affine", "folded": rows,
            "skipped": [{"norm": s.op, "reason": s.reason} for s in sites if s.reason is not None]}


def smoothed_variances(tree: Path, model: ModelStructure, windows: np.ndarray, sites: list[NormSite],
                       statistic: str = "channel") -> dict[str, np.ndarray]:
    """Per norm operator, the smoothed variance ``[C]`` of its input over the calibration windows.

    ``channel`` (the standard's statistic): per window ``σ_t² = mean(x²)`` of each channel over its
    tokens (13). ``layer``: one value per norm, the mean of ``x²`` over tokens and channels (the
    squared RMS a pre-trained RMSNorm divides by, frozen), broadcast to every channel. Across
    windows, the geometric mean (14).
    """
    from ptmpack.compress.eval.probe import feeds_for
    from ptmpack.ir.execute import Executor

    logs: dict[str, list[np.ndarray]] = {s.op: [] for s in sites}
    with open_tree(tree) as pkg:
        ex = Executor(model, pkg)
        for row in windows:
            got = ex.run(feeds_for(model, row[None]), [s.x for s in sites])
            for s in sites:
                x = np.asarray(got[s.x], np.float64).reshape(-1, got[s.x].shape[-1])
                moment = (x * x).mean(0) if statistic == "channel" else np.full(x.shape[-1], (x * x).mean())
                logs[s.op].append(np.log(np.maximum(moment, np.finfo(np.float32).tiny)))
    return {op: np.exp(np.mean(v, axis=0)) for op, v in logs.items()}


def fold_unified(tree: Path, model: ModelStructure, windows: np.ndarray, statistic: str = "channel") -> dict[str, Any]:
    """``--fold-norm unified`` on ``tree``: weights, running variances and the config marker (graph: :func:`patch_graph`)."""
    sites = norm_sites(model)
    if not sites:
        raise UnsupportedError("the model has no LayerNorm/RMSNorm operator to replace")
    var = smoothed_variances(tree, model, windows, sites, statistic)
    ck, config = Checkpoint.load(tree), read_json(tree, CONFIG)
    shared = _shared_weights(model)
    marker: dict[str, Any] = {"folded": [], "explicit": {}}
    rows = []
    for s in sites:
        gamma = ck.f64(s.scale)
        inv = 1.0 / np.sqrt(var[s.op] + s.eps)
        if s.reason is None:
            changed = _fold(ck, config, s, gamma * inv, ck.f64(s.bias) if s.bias else None, shared)
            ck.set(s.scale, np.ones_like(gamma))
            if s.bias:
                ck.set(s.bias, np.zeros_like(gamma))
            marker["folded"].append(s.op)
            rows.append({"norm": s.op, "into": changed})
        else:
            name = s.scale[: -len("weight")] + "running_var" if s.scale.endswith("weight") else s.scale + ".running_var"
            ck.set(name, var[s.op], like=s.scale)
            marker["explicit"][s.op] = name
            rows.append({"norm": s.op, "explicit": "unified_norm", "reason": s.reason})
    ck.save()
    refresh_parameters(ck)
    config[MARKER] = marker
    write_json(tree, CONFIG, config)
    return {"mode": "unified", "statistic": statistic, "windows": int(windows.shape[0]), "tokens": int(windows.size), "norms": rows}


def fold_norm(tree: Path, mode: str, windows: np.ndarray | None = None, *, statistic: str = "channel") -> dict[str, Any]:
    """Fold the normalizations of ``tree``'s model (``mode`` affine or unified) and rewrite its graph.

    ``statistic`` (unified only): ``channel`` or ``layer``, see :func:`smoothed_variances`.

    Raises:
        UsageError: an unknown mode, or unified without calibration windows.
        UnsupportedError: as :func:`fold_affine`, or a model without a graph.
    """
    from ptmpack.compress.tree.rebuild import rebuild_graph

    if mode not in ("affine", "unified"):
        raise UsageError(f"--fold-norm takes affine or unified, not {mode!r}")
    if not (tree / GRAPH).is_file():
        raise UnsupportedError(f"{tree}: no Model/graph.json; norm folding needs a model ptmpack can describe")
    refuse_unmerged_adapters(tree, "--fold-norm")
    model = _graph(tree)
    if read_json(tree, CONFIG).get(MARKER):
        raise UsageError("the package's norms are already unified")
    if mode == "affine":
        record = fold_affine(tree, model)
    else:
        if windows is None:
            raise UsageError("--fold-norm unified needs calibration text", hint="give --calib TEXT")
        if statistic not in ("channel", "layer"):
            raise UsageError(f"the unified statistic is channel or layer, not {statistic!r}")
        record = fold_unified(tree, model, windows, statistic)
    rebuild_graph(tree)
    return {"method": "fold_norm", **record}


class FoldNormStep:
    """Pipeline step ``--fold-norm affine|unified`` with the before/after report (a :class:`Step`)."""

    def check(self, spec: CompressSpec) -> None:
        """Nothing beyond :meth:`CompressSpec.check` (every quantizer that follows reads the unified-norm record)."""

    def run(self, tree: Path, ctx: StepContext) -> StepRecord:
        """Fold the norms (:func:`fold_norm`).

        Raises:
            PtmError: as :func:`fold_norm`.
        """
        from ptmpack.compress.eval.probe import step_windows

        mode = ctx.spec.fold_norm or "affine"
        windows = step_windows(tree, ctx) if mode == "unified" else None
        record = fold_norm(Path(tree), mode, windows)
        return StepRecord("fold_norm", str(record.pop("method")), details=record)

