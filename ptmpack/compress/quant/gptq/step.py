"""The ``--quant gptq`` step: calibrate on the package's own IR, one block at a time, and quantize as it goes.

The calibration windows are run through the model block by block
(:mod:`ptmpack.compress.eval.blocks`, llm-compressor's sequential pipeline): the activations at
the start of a decoder block are held for every window; the block's operators run on them in
mini-batches of windows, accumulating each target linear's Hessian ``2/n · XᵀX``
(one per distinct input, shared by q/k/v and gate/up); each linear is solved
(:mod:`ptmpack.compress.quant.gptq.solver`, torch when installed), set aside in the step's
:class:`~ptmpack.compress.quant.linear.QuantizedSpill` and its float weight dropped; then the
block runs once more with its *quantized* weights to make the next block's input, so every
later block is calibrated on the activations of the already-quantized model (sequential GPTQ).
Nothing runs after the last target: the LM head never runs.

Inside a block there are two orders (``sequential``): ``"layer"`` (the default), every linear of
the block calibrated with the block's float weights on the quantized model's input to the
block, as llm-compressor does; ``"linear"``, each linear calibrated on the activations of the
already-quantized linears before it (o_proj after the quantized q/k/v): the block is run up to
each group of linears sharing an input, with the linears before it quantized.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.eval.blocks import Block, BlockRunner, Use, plan_blocks
from ptmpack.compress.eval.probe import feeds_for
from ptmpack.compress.quant.gptq.solver import DAMP, backend, gptq_quantize
from ptmpack.compress.quant.linear import QuantizedSpill, Target, load_model, quantize_tree
from ptmpack.compress.quant.metrics import error_row
from ptmpack.compress.quant.pack_quantized import QuantizedWeight
from ptmpack.compress.report import StepRecord
from ptmpack.compress.spec import GPTQ_ORDERS, CompressSpec
from ptmpack.compress.step import StepContext
from ptmpack.compress.tree.weights import WeightFiles

SEQUENTIAL = "layer"
"""The order :func:`calibrate_and_quantize` uses unless told; the step takes the spec's ``gptq_order``."""

Solve = Callable[..., QuantizedWeight]
"""``solve(weight [out, in], hessian, overwrite_hessian=...) -> QuantizedWeight``."""


class _Hessians:
    """``XᵀX`` summed over mini-batches per input variable, then scaled by ``2/n``: ``2/n · XᵀX`` of all its rows.

    In numpy, or on a torch device (``xp``, a solver backend: ``--device cuda``), where the sums
    of one block's inputs live until the block is solved; what :meth:`pop` returns is numpy.
    """

    def __init__(self, xp: Any = None) -> None:
        self.xp = xp
        self.sums: dict[str, Any] = {}
        self.rows: dict[str, int] = {}

    def add(self, name: str, x: np.ndarray) -> None:
        rows = x.reshape(-1, x.shape[-1]).astype(np.float32, copy=False)
        if self.xp is not None:
            rows = self.xp.asarray(rows)
        if name in self.sums:
            self.sums[name] += rows.T @ rows
        else:
            self.sums[name] = rows.T @ rows
        self.rows[name] = self.rows.get(name, 0) + len(rows)

    def pop(self, name: str) -> np.ndarray:
        h = self.sums.pop(name)
        if self.xp is not None:
            h = self.xp.to_numpy(h)
        h *= np.float32(2.0 / max(self.rows.pop(name), 1))
        return h


def _groups(block: Block, sequential: str) -> list[list[Use]]:
    """The targets of ``block`` solved together after one calibration pass: all at once (layer order), or each
    set of linears sharing an input, in operator order (linear order)."""
    if sequential == "layer":
        return [list(block.uses)]
    groups: dict[str, list[Use]] = {}
    for u in block.uses:
        groups.setdefault(u.x, []).append(u)
    return list(groups.values())


def calibrate_and_quantize(tree: Path, targets: list[Target], weights: WeightFiles, windows: np.ndarray,
                           solve: Solve, progress: Any, spill: QuantizedSpill, *, sequential: str | None = None,
                           batch_tokens: int | None = None, device: Any = None) -> None:
    """Run the calibration windows through the tree's model block by block, quantizing each target into ``spill``.

    ``solve(weight [out, in], hessian, overwrite_hessian=bool) -> QuantizedWeight`` (it may
    overwrite the Hessian when told it is its last user). ``sequential`` (default
    :data:`SEQUENTIAL`): ``"layer"`` or ``"linear"`` (module docstring). ``batch_tokens``: tokens per
    mini-batch of windows (default :data:`ptmpack.compress.eval.blocks.BATCH_TOKENS`); the result
    does not depend on it beyond float32 summation order in the Hessians. ``device``: a torch solver
    backend on which the Hessians are summed (``--device cuda``: one block's sums on the GPU; the
    IR runs the block on the CPU), or None for numpy.

    Raises:
        GraphError: the model fails to run.
        UnsupportedError: a target no operator of the model applies.
        UsageError: an unknown ``sequential``.
    """
    from ptmpack.compress.eval.blocks import BATCH_TOKENS
    from ptmpack.errors import UsageError

    sequential = sequential or SEQUENTIAL
    if sequential not in GPTQ_ORDERS:
        raise UsageError(f"sequential must be one of {', '.join(GPTQ_ORDERS)}, got {sequential!r}")
    model = load_model(tree)
    by_weight = {t.weight: t for t in targets}
    blocks = plan_blocks(model, [t.weight for t in targets])
    runner = BlockRunner(model, weights, feeds_for(model, windows), blocks, batch_tokens=batch_tokens or BATCH_TOKENS)
    done = 0
    for block in blocks:
        last = block is blocks[-1]
        params = runner.params(block.start, block.stop if not last else block.uses[-1].op + 1)
        for group in _groups(block, sequential):
            hessians = _Hessians(device)
            xs = list(dict.fromkeys(u.x for u in group))
            for got in runner.collect(block, xs, max(u.op for u in group), params):
                for x in xs:
                    hessians.add(x, got.pop(x))
                del got
            ready: dict[str, np.ndarray] = {}
            for i, use in enumerate(group):
                t = by_weight[use.weight]
                w = params[t.weight]
                w = w.T if t.transposed else w
                if use.x not in ready:
                    ready[use.x] = hessians.pop(use.x)
                final = all(u.x != use.x for u in group[i + 1:])  # the Hessian's last user may overwrite it
                q = solve(w, ready.pop(use.x) if final else ready[use.x], overwrite_hessian=final)
                spill.put(t.prefix, q, error_row(t.prefix, w, q))
                deq = q.dequantize(np.float32)
                params[t.weight] = deq.T if t.transposed else deq
                del q, deq, w
                done += 1
                progress("gptq", done, len(targets))
        if not last:
            runner.advance(block, params)
        del params
class GptqStep:
    """The ``--quant gptq`` step (a :class:`ptmpack.compress.step.Step`)."""

    def check(self, spec: CompressSpec) -> None:
        """Nothing beyond :meth:`CompressSpec.check` (which already refuses a run without ``--calib``)."""

    def run(self, tree: Path, ctx: StepContext) -> StepRecord:
        """Quantize the tree's linears by GPTQ from calibration activations (:func:`quantize_gptq_tree`)."""
        return quantize_gptq_tree(tree, ctx)


def quantize_gptq_tree(tree: Path, ctx: StepContext) -> StepRecord:
    """Quantize the tree's linears by GPTQ on the run's calibration windows (needs ``--calib``).

    Raises:
        UsageError: no calibration text, or a bad group size.
        UnsupportedError: an unknown architecture, or ``--device cuda`` without torch/CUDA.
    """
    spec = ctx.spec
    xp = backend(spec.device)
    calib = ctx.calib()

    def run(targets: list[Target], weights: WeightFiles, group: int, spill: QuantizedSpill) -> None:
        def solve(w: np.ndarray, h: np.ndarray, *, overwrite_hessian: bool = False) -> QuantizedWeight:
            scale_dtype = w.dtype if w.dtype in (np.float16, np.float32) else np.float32
            return gptq_quantize(w, h, spec.bits, group or w.shape[1], spec.symmetric, act_order=spec.act_order, xp=xp,
                                 scale_dtype=scale_dtype, overwrite_hessian=overwrite_hessian)

        calibrate_and_quantize(tree, targets, weights, calib.windows, solve, ctx.progress, spill,
                               sequential=sequential, device=None if spec.device == "cpu" else xp)

    sequential = spec.gptq_order
    return quantize_tree(tree, ctx, "gptq", run,
                         extra={"damp": DAMP, "block": 128, "act_order": spec.act_order, "backend": xp.name,
                                "sequential": sequential})
