# ruff: noqa: RUF002 - formulas quote the standard
"""Calibration-data importance of attention heads and FFN neurons (§7.3.2), computed block by block in PyTorch.

Each prunable unit (a head, an FFN neuron) gets a mask variable ``m = 1`` multiplying its output
where it enters the next projection (the attention output projection, the FFN down projection).
Pruning a set S is ``Δm = -1`` on S, and the loss change is approximated by the Taylor expansion
of formulas (34)–(38): ``ΔL(S) ≈ -Σ_{i∈S} g_i + ½ Δmᵀ F Δm``, with the Hessian replaced by the
empirical Fisher ``F = mean_s v_s v_sᵀ`` of per-sample gradients ``v_s`` over the masks of *all*
groups — so the cross terms between heads and FFN neurons (the λ_ij blocks of (38)-(39)) are
kept, not only the diagonal. For a decoder the loss is the language-model NLL of each calibration
window (the mean next-token cross-entropy, what transformers' ``labels=ids`` loss computes), one
sample per window. An encoder has no labels: its "loss" is the distance of the pooled sentence
embedding to the unpruned one, whose gradient vanishes at ``m = 1``; its Fisher (Gauss-Newton)
matrix ``JᵀJ`` is estimated with random projections, ``v_s = ∂(rᵀ f)/∂m`` for ``r ~ N(0, I)``,
one sample per (window, probe).

The gradients are computed on the package's own IR (whatever earlier steps left: unified norms,
per-layer head counts and FFN widths), one block (layer) at a time, as llm-compressor's
sequential pipeline calibrates:

1. **forward**, no gradients: the IR prologue, then each block in turn
   (:class:`ptmpack.compress.eval.blocks.BlockRunner`, one window per mini-batch); each block's
   input state (``windows × seq × hidden`` floats, plus position ids or the attention mask) is
   written to a scratch file beside the tree before the block runs, so no layer's state stays in
   memory after its block;
2. **epilogue** in torch with autograd (a decoder's final norm and LM head,
   :class:`ptmpack.compress.eval.torch_span.TorchSpan`): the loss of each window (each probe),
   and its gradient with respect to the last block's output — the **upstream gradient**;
3. **backward**, from the last block to the first: read the block's weights, recompute its forward
   from the saved input of each window with the masks as leaf tensors requiring gradients (the
   masked linears are swapped in: ``linear(x · m, W, b)``, per head for the attention output),
   backpropagate the upstream gradients (one per sample), record the mask gradients of that
   layer and pass the input gradient upstream.

Resident at any time: one block's weights, one layer's saved state (one window of it during the
backward pass), the upstream gradients (one state per probe), and one window's autograd graph of
one block (of the epilogue: its logits).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ptmpack.compress.eval.blocks import Block, BlockRunner, plan_blocks
from ptmpack.compress.tree.weights import WeightFiles
from ptmpack.errors import UnsupportedError
from ptmpack.ir.model import ModelStructure

if TYPE_CHECKING:
    from ptmpack.compress.eval.torch_span import Swap

SCRATCH_PREFIX = ".prune-states-"
"""Name prefix of the scratch folder (beside the tree) holding the blocks' saved input states."""


@dataclass(frozen=True)
class Importance:
    """Per-unit first-order gradients and per-sample Fisher factors, units grouped and ordered."""

    units: dict[str, list[tuple[int, int]]]
    """group ("heads", "ffn") → (layer, index) of each unit, in mask order."""
    grad: np.ndarray
    """``[n]`` mean gradient of the loss w.r.t. each mask (zero for encoders)."""
    samples: np.ndarray
    """``[N, n]`` per-sample gradients v_s: ``F ≈ samplesᵀ samples / N``."""
    offset: dict[str, int]
    """group → index of its first unit in ``grad`` / ``samples`` columns."""

    def merged(self, group: str, size: int) -> Importance:
        """The same estimate with every ``size`` consecutive units of ``group`` (one layer's) made one unit.

        One mask shared by the units of a run (all of them pruned or none) has, by the chain rule,
        the sum of their gradients as its gradient, per sample too; so the Taylor and Fisher terms of
        removing the whole run stay exact. Used for LLaMA-family KV groups: query heads
        ``k·size … (k+1)·size − 1`` read KV head ``k``, and are pruned with it.
        """
        if size == 1 or group not in self.units:
            return self
        total = self.grad.shape[0]
        target, units, offset, at = np.empty(total, np.int64), {}, {}, 0
        for g in sorted(self.offset, key=self.offset.__getitem__):
            start, u, step = self.offset[g], self.units[g], size if g == group else 1
            target[start:start + len(u)] = at + np.arange(len(u)) // step
            units[g], offset[g] = [(layer, j // step) for layer, j in u[::step]], at
            at += len(u) // step
        starts = np.flatnonzero(np.r_[True, np.diff(target) != 0])  # target never decreases: runs of one unit
        return Importance(units, np.add.reduceat(self.grad, starts), np.add.reduceat(self.samples, starts, axis=1),
                          offset)

    def diag_score(self) -> np.ndarray:
        """Estimated loss increase of removing each unit alone: ``-g_i + ½ F_ii``."""
        return -self.grad + 0.5 * (self.samples ** 2).mean(0)

    def loss_change(self, chosen: np.ndarray) -> float:
        """``-Σ g_S + ½ Δmᵀ F Δm`` for the units whose mask indices are ``chosen``."""
        if len(chosen) == 0:
            return 0.0
        s = self.samples[:, chosen].sum(1)
        return float(-self.grad[chosen].sum() + 0.5 * (s ** 2).mean())


@dataclass(frozen=True)
class _Layer:
    """One layer's block and its prunable units: where each group's mask applies and how many units it has."""

    block: Block
    sites: dict[str, str]
    """group → the weight of the linear whose input the group's mask scales."""
    counts: dict[str, int]
    """group → units in this layer (query heads; FFN neurons)."""
    head_dim: int
    """Width of one head in the attention output projection's input (0 when heads are not asked for)."""


def _layers(model: ModelStructure, weights: WeightFiles, sites: Mapping[str, Sequence[str]]) -> list[_Layer]:
    """Each layer's block, mask sites and unit counts: heads from its ``attention`` operator's ``num_heads``, the
    head width from the output projection's input width, FFN neurons from the down projection's input width.

    Raises:
        UnsupportedError: a site no ``linear`` applies, layers whose operators interleave, or a layer
            without one ``attention`` operator whose heads divide the output projection's input.
    """
    groups = list(sites)
    count = len(sites[groups[0]])
    blocks = plan_blocks(model, [w for g in groups for w in sites[g]])
    if len(blocks) != count:
        raise UnsupportedError(f"the model's {count} layers run as {len(blocks)} blocks (their operators "
                               "interleave), so their masks cannot be differentiated one block at a time")
    ops = model.main_graph.operators
    out = []
    for i, block in enumerate(blocks):
        here = {g: sites[g][i] for g in groups}
        if {u.weight for u in block.uses} != set(here.values()) or any(ops[u.op].type != "linear" for u in block.uses):
            raise UnsupportedError(f"layer {i}: its block does not apply {sorted(here.values())} by linear operators")
        counts = {g: int(weights.spec(w).shape[1]) for g, w in here.items()}  # a linear's weight is [out, in]
        head_dim = 0
        if "heads" in here:
            attention = [n for n in ops[block.start:block.stop] if n.type == "attention"]
            heads = attention[0].attributes.get("num_heads") if len(attention) == 1 else None
            heads = int(heads.value) if heads is not None else 0
            if heads <= 0 or counts["heads"] % heads:
                raise UnsupportedError(f"layer {i}: no single attention operator whose num_heads divides the "
                                       f"{counts['heads']} inputs of {here['heads']}")
            counts["heads"], head_dim = heads, counts["heads"] // heads
        out.append(_Layer(block, here, counts, head_dim))
    return out


def importance(tree: Path, sites: Mapping[str, Sequence[str]], windows: np.ndarray, *, encoder: bool,
               probes: int = 2, seed: int = 0, device: str = "cpu") -> Importance:
    """Masks, gradients and Fisher factors of the groups of ``sites`` over the calibration ``windows``.

    ``sites``: group (``heads``, ``ffn``; their order is the column order) → per layer, the
    weight of the linear the group's units enter (the attention output projection, the FFN down
    projection). ``encoder``: the model's output is its last hidden state, probed ``probes``
    times per window with ``r ~ N(0, I)`` drawn from ``torch.Generator().manual_seed(seed)``
    (window by window, probe by probe); otherwise it is the logits of a causal LM. ``device``
    (``--device cuda``): where each block's weights, its recomputed forward and the upstream gradients
    live (the IR forward and the saved states stay on the CPU).

    Raises:
        UnsupportedError: PyTorch missing, an operator without a torch kernel, or a layer whose
            units cannot be located (see :func:`_layers`).
        GraphError: the model fails to run.
    """
    from ptmpack.compress.eval.probe import feeds_for
    from ptmpack.compress.spec import require_torch
    from ptmpack.compress.tree.rebuild import base_model

    require_torch("structure-aware pruning")

    tree = Path(tree)
    ids = np.asarray(windows, np.int64)
    model = base_model(tree)
    weights = WeightFiles(tree / "Model")
    layers = _layers(model, weights, sites)
    groups = list(sites)
    offset, at = {}, 0
    for g in groups:
        offset[g], at = at, at + sum(layer.counts[g] for layer in layers)
    first = [{g: offset[g] + sum(layer.counts[g] for layer in layers[:k]) for g in groups} for k in range(len(layers))]
    rows = np.zeros((len(ids) * (probes if encoder else 1), at))
    folder = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=tree.parent))
    try:
        states = _States(folder)
        runner = BlockRunner(model, weights, feeds_for(model, ids), [layer.block for layer in layers],
                             batch_tokens=1)  # one window per mini-batch: one sample's graph at a time
        for k, layer in enumerate(layers):
            states.put(k, runner.state)
            runner.advance(layer.block, runner.params(layer.block.start, layer.block.stop))
        upstream = _epilogue(runner, layers[-1].block.stop, ids, encoder=encoder, probes=probes, seed=seed,
                             device=device)
        runner.state.clear()
        for k in range(len(layers) - 1, -1, -1):
            upstream = _backward(runner, layers[k], states.take(k), upstream, rows, first[k], inputs=k > 0,
                                 device=device)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    units = {g: [(i, j) for i, layer in enumerate(layers) for j in range(layer.counts[g])] for g in groups}
    return Importance(units, np.zeros(at) if encoder else rows.mean(0), rows, offset)


class _States:
    """The blocks' input states on disk (one ``.npz`` per block in a scratch folder), read back a window at a time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def put(self, k: int, state: list[dict[str, np.ndarray]]) -> None:
        """Save block ``k``'s input state (one dict of activations per window)."""
        np.savez(self.folder / f"{k}.npz", **{f"{w}:{n}": v for w, s in enumerate(state) for n, v in s.items()})

    def take(self, k: int) -> Iterator[dict[str, np.ndarray]]:
        """Block ``k``'s input state, window by window; the file is removed once read."""
        path = self.folder / f"{k}.npz"
        try:
            with np.load(path) as saved:
                windows: dict[str, list[str]] = {}
                for key in saved.files:
                    w, name = key.split(":", 1)
                    windows.setdefault(w, []).append(name)
                for w, names in windows.items():
                    yield {n: saved[f"{w}:{n}"] for n in names}
        finally:
            path.unlink(missing_ok=True)


Upstream = list[list[dict[str, Any]]]
"""Per window, per sample of it (probe), the loss gradient w.r.t. each float activation live at a block boundary."""


def _leaves(state: Mapping[str, np.ndarray], *, grad: bool, device: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state as tensors on ``device``, and (``grad``) its float activations made leaves that require gradients."""
    from ptmpack.compress.eval.torch_span import as_torch

    values = {n: as_torch(v, device) for n, v in state.items()}
    leaves = {n: t.requires_grad_(True) for n, t in values.items() if grad and t.is_floating_point()}
    return values, leaves


def _epilogue(runner: BlockRunner, start: int, ids: np.ndarray, *, encoder: bool, probes: int, seed: int,
              device: str) -> Upstream:
    """Each sample's loss from the epilogue (operators ``start`` to the end), and its gradient w.r.t. the state
    live at ``start`` (the runner's, one window per mini-batch)."""
    import torch
    import torch.nn.functional as F

    from ptmpack.compress.eval.torch_span import TorchSpan, as_torch

    ex = runner.executor
    output = ex.model.outputs[0]
    stop = len(ex.model.main_graph.operators)
    params = {n: as_torch(v, device) for n, v in runner.params(start, stop).items()}
    span = TorchSpan(ex, start, stop)
    gen = torch.Generator().manual_seed(seed)  # on the CPU, whatever the device: the same probes everywhere
    upstream: Upstream = []
    for w, state in enumerate(runner.state):
        values, leaves = _leaves(state, grad=True, device=device)
        y = span.run(values, params, [output])[output]
        if encoder:
            pooled = y.mean(1)[0]
            losses = [(pooled * torch.randn(pooled.shape, generator=gen).to(device)).sum() for _ in range(probes)]
        else:  # the mean next-token cross-entropy: transformers' loss with labels=ids
            labels = torch.from_numpy(ids[w]).to(device)
            losses = [F.cross_entropy(y[0, :-1], labels[1:])]
        got = [torch.autograd.grad(loss, list(leaves.values()), retain_graph=p + 1 < len(losses), allow_unused=True)
               for p, loss in enumerate(losses)]
        upstream.append([{n: g for n, g in zip(leaves, grads, strict=True) if g is not None} for grads in got])
    return upstream


def _masked(group: str, mask: Any, head_dim: int) -> Swap:
    """The linear of a mask site with its input scaled by ``mask``: per FFN neuron, or per head of ``head_dim``."""
    import torch.nn.functional as F

    if group == "ffn":
        return lambda x, w, b: F.linear(x * mask, w, b)
    return lambda x, w, b: F.linear((x.unflatten(-1, (-1, head_dim)) * mask[:, None]).flatten(-2), w, b)


def _backward(runner: BlockRunner, layer: _Layer, states: Iterator[dict[str, np.ndarray]], upstream: Upstream,
              rows: np.ndarray, first: Mapping[str, int], *, inputs: bool, device: str) -> Upstream:
    """Backpropagate ``upstream`` through ``layer``'s block, recomputed per window from its saved input ``states``.

    Writes each sample's mask gradients into its row of ``rows`` (columns from ``first[group]``);
    returns the gradients w.r.t. the block's input state (none when ``inputs`` is false: the first block).
    Each window's entry of ``upstream`` is dropped once used, so two layers' gradients are never all held.
    """
    import torch

    from ptmpack.compress.eval.torch_span import TorchSpan, as_torch

    block = layer.block
    params = {n: as_torch(v, device) for n, v in runner.params(block.start, block.stop).items()}
    span = TorchSpan(runner.executor, block.start, block.stop)
    out: Upstream = []
    for w, state in enumerate(states):
        values, leaves = _leaves(state, grad=inputs, device=device)
        masks = {g: torch.ones(c, device=device, requires_grad=True) for g, c in layer.counts.items()}
        swap = {layer.sites[g]: _masked(g, m, layer.head_dim) for g, m in masks.items()}
        samples, upstream[w] = upstream[w], []
        y = span.run(values, params, list(samples[0]), swap=swap)
        names = [n for n in samples[0] if y[n].requires_grad]
        wanted = [*masks.values(), *leaves.values()]
        mine = []
        for p, up in enumerate(samples):
            got = torch.autograd.grad([y[n] for n in names], wanted, grad_outputs=[up[n] for n in names],
                                      retain_graph=p + 1 < len(samples), allow_unused=True)
            for g, m in zip(masks, got[:len(masks)], strict=True):
                if m is not None:
                    rows[w * len(samples) + p, first[g]:first[g] + len(m)] = m.double().cpu().numpy()
            mine.append({n: g for n, g in zip(leaves, got[len(masks):], strict=True) if g is not None})
        out.append(mine)
    return out
