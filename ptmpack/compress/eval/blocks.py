"""Calibration one block at a time: the model's main graph cut into contiguous spans of operators, one per layer.

llm-compressor's sequential pipeline holds the calibration activations for one decoder layer
at a time; this module does the same on the package's own IR (:mod:`ptmpack.ir.execute`),
for any graph the converter builds (LLaMA, Qwen2, GPT-2, BERT):

* the **layers** are named by the weights a method calibrates (its targets): everything up to
  the last all-digit component of the name (``model.layers.3.self_attn.q_proj.weight`` is in
  ``model.layers.3``; GPT-2's ``h.3.attn.c_attn.weight`` in ``h.3``; BERT's
  ``encoder.layer.3.attention.self.query.weight`` in ``encoder.layer.3``);
* a layer's **block** starts at the first operator that reads one of its parameters (its norm
  weights included) and ends where the next block starts; the operators before the first block
  (embeddings, masks, positions) are the **prologue**, run once. Layers whose operators
  interleave are merged into one block;
* the **state** between two blocks is the set of activations live across the cut
  (:meth:`ptmpack.ir.execute.Executor.live_at`: LLaMA's residual stream and position ids,
  BERT's hidden state and attention mask), held for every window, in mini-batches of windows;
* the last block ends where the **epilogue** begins (a decoder's final norm and LM head), so every
  block's output is a layer's output;
* a block's **parameters** are read from the safetensors files (``pread`` through
  :class:`ptmpack.compress.tree.weights.WeightFiles`, never mapped) when its turn comes and
  dropped after, and a caller may replace some (the quantized weights) before running it again.

Resident at any time: one state (``windows * seqlen * hidden`` floats), one block's weights, and
the activations of one mini-batch inside the block.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptmpack.compress.tree.weights import WeightFiles
from ptmpack.errors import UnsupportedError

BATCH_TOKENS = 2048
"""Tokens per mini-batch of windows run through a block at once (at least one window)."""
INPUT_SLOTS = {"linear": ("X", "W"), "matmul": ("A", "B")}
"""Operator type -> (activation input slot, weight input slot) of the operators a weight is calibrated at."""


def layer_of(name: str) -> str:
    """The layer a target (weight or module name) belongs to: up to its last all-digit component (itself if none)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return ".".join(parts[: i + 1])
    return name


def layer_index(names: list[str]) -> dict[str, int]:
    """Name -> index of its layer, layers numbered in order of first appearance."""
    order: dict[str, int] = {}
    return {n: order.setdefault(layer_of(n), len(order)) for n in names}


@dataclass(frozen=True)
class Use:
    """Where a target weight is applied: its operator's index and the activation it multiplies."""

    weight: str
    op: int
    x: str
    """The operator's activation input (``X`` of ``linear``, ``A`` of ``matmul``)."""


@dataclass(frozen=True)
class Block:
    """One span of the main graph's operators and the targets applied in it."""

    start: int
    stop: int
    """Exclusive; the next block's ``start``. The last block stops where the **epilogue** starts: the first
    later operator that reads a parameter (a decoder's final norm and LM head), or the end of the graph."""
    uses: tuple[Use, ...]
    """The targets of this block, in operator order."""


def find_uses(model: Any, weights: list[str]) -> dict[str, Use]:
    """Where each weight of ``weights`` is applied in the main graph (its first ``linear``/``matmul``).

    Raises:
        UnsupportedError: a weight no ``linear``/``matmul`` of the main graph applies.
    """
    wanted = set(weights)
    found: dict[str, Use] = {}
    for i, node in enumerate(model.main_graph.operators):
        slots = INPUT_SLOTS.get(node.type)
        if slots is None or not node.inputs.get(slots[1]) or not node.inputs.get(slots[0]):
            continue
        w = node.inputs[slots[1]][0]
        if w in wanted and w not in found:
            found[w] = Use(w, i, node.inputs[slots[0]][0])
    missing = [w for w in weights if w not in found]
    if missing:
        raise UnsupportedError(f"no operator of the main graph applies {missing[0]} (and {len(missing) - 1} more)")
    return found


def _reads(node: Any) -> set[str]:
    return {n for ns in node.inputs.values() for n in ns}


def plan_blocks(model: Any, weights: list[str]) -> list[Block]:
    """Cut the main graph into blocks, one per layer of ``weights`` (merged where their operators interleave).

    Raises:
        UnsupportedError: a weight no operator applies.
    """
    uses = find_uses(model, weights)
    layers = layer_index(weights)
    ops = model.main_graph.operators
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    names = {layer_of(w): i for w, i in layers.items()}
    params = {v.name for v in model.main_graph.variables if v.persistable}
    for i, node in enumerate(ops):  # a layer's operators: its targets and every reader of one of its parameters
        for n in _reads(node) & params:
            b = names.get(layer_of(n))
            if b is not None:
                first.setdefault(b, i)
                last[b] = i
    spans: list[list[Any]] = []  # [start, end, layer indices], merged where they overlap
    for b in sorted(first, key=lambda k: first[k]):
        if spans and first[b] <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], last[b])
            spans[-1][2].add(b)
        else:
            spans.append([first[b], last[b], {b}])
    # the epilogue (a final norm, an LM head) starts at the first later operator reading a parameter
    epilogue = next((i for i in range(spans[-1][1] + 1, len(ops)) if params & _reads(ops[i])), len(ops)) if spans else 0
    blocks = []
    for k, (start, _, members) in enumerate(spans):
        stop = spans[k + 1][0] if k + 1 < len(spans) else epilogue
        here = sorted((uses[w] for w in weights if layers[w] in members), key=lambda u: u.op)
        blocks.append(Block(start, stop, tuple(here)))
    return blocks


def batches(windows: int, seqlen: int, tokens: int = BATCH_TOKENS) -> list[slice]:
    """Mini-batches of ``windows`` windows of ``seqlen`` tokens, about ``tokens`` tokens each (one window at least)."""
    step = max(1, tokens // max(seqlen, 1))
    return [slice(i, min(i + step, windows)) for i in range(0, windows, step)]


class BlockRunner:
    """Runs calibration windows through a model block by block, holding one block's state for every window."""

    def __init__(self, model: Any, weights: WeightFiles, feeds: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
                 blocks: list[Block], *, batch_tokens: int = BATCH_TOKENS) -> None:
        """Prepare the run of ``feeds`` (model inputs, ``[windows, seqlen]`` each) through ``blocks`` and run
        the prologue (the operators before the first block).

        ``feeds`` is split into mini-batches of about ``batch_tokens`` tokens; or it is a sequence of
        feeds, each one mini-batch already (their shapes may differ: padded sentences of an encoder).

        Parameters are the main graph's, read from ``weights``; a sub-graph with parameters of its
        own cannot run here (none of the converter's graphs has one).

        Raises:
            GraphError: the model is invalid, or the feeds do not fit it.
        """
        from ptmpack.ir.execute import Executor
        from ptmpack.ir.registry import ExecContext

        self.executor = Executor(model, None, ExecContext())
        self.weights = weights
        if isinstance(feeds, Mapping):
            ids = np.asarray(next(iter(feeds.values())))
            inputs = self.executor.feed_inputs(feeds)
            cuts = batches(len(ids), ids.shape[-1] if ids.ndim > 1 else 1, batch_tokens)
            state = [{n: v[s] for n, v in inputs.items()} for s in cuts]
        else:
            state = [self.executor.feed_inputs(f) for f in feeds]
        self.state: list[dict[str, np.ndarray]] = state
        """The activations live at the start of the current block, one dict per mini-batch of windows."""
        if blocks:
            self._advance(0, blocks[0].start, self.params(0, blocks[0].start))

    def params(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The parameters operators ``[start, stop)`` read, read from the weight files now (a caller may replace
        some, as GPTQ does with the quantized weights, before running the span again)."""
        return {n: self.weights.read(n) for n in self.executor.span_params(start, stop)}

    def collect(self, block: Block, names: list[str], stop: int, params: Mapping[str, np.ndarray]
                ) -> Iterator[dict[str, np.ndarray]]:
        """Run ``block``'s operators up to ``stop`` (exclusive) on each mini-batch; yield the variables ``names``."""
        for state in self.state:
            yield self.executor.run_span(block.start, stop, state, names, params)

    def advance(self, block: Block, params: Mapping[str, np.ndarray]) -> None:
        """Run the whole of ``block`` with ``params`` and make its output the state of the next block."""
        self._advance(block.start, block.stop, params)

    def _advance(self, start: int, stop: int, params: Mapping[str, np.ndarray]) -> None:
        live = self.executor.live_at(stop)
        for i in range(len(self.state)):
            state, self.state[i] = self.state[i], {}
            self.state[i] = self.executor.run_span(start, stop, state, live, params)
