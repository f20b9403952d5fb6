"""The ``--quant gptq`` step: calibrate on the package's own IR run, quantize layer by layer.

One batched forward pass of the calibration windows through the numpy IR executor
(:class:`ptmpack.ir.execute.Executor`) with an operator hook: when a target linear is about
to run, the hook builds the Hessian ``2/n · XᵀX`` of its input (once per input, shared by
q/k/v and gate/up), solves GPTQ for its weight (:mod:`ptmpack.compress.quant.gptq.solver`, torch
when installed) and hands the *quantized* weight to the operator, so every later layer is
calibrated on the activations of the already-quantized model (sequential GPTQ). The pass
stops after the last target: the LM head never runs.

Inside a layer there are two orders (``sequential``): ``"linear"``, each linear calibrated on
the activations of the already-quantized linears before it (o_proj after the quantized q/k/v);
``"layer"``, every linear of the layer calibrated with the layer's float weights on the
quantized model's input to the layer, as llm-compressor's sequential pipeline does
(:mod:`ptmpack.compress.quant.gptq.streams`).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.quant.gptq.solver import DAMP, backend, gptq_quantize
from ptmpack.compress.quant.gptq.streams import Streams, layer_index
from ptmpack.compress.quant.linear import Target, load_model, quantize_tree
from ptmpack.compress.quant.pack_quantized import QuantizedWeight
from ptmpack.compress.report import StepRecord
from ptmpack.compress.spec import GPTQ_ORDERS, CompressSpec
from ptmpack.compress.step import StepContext
from ptmpack.compress.tree.weights import WeightFiles

_SLOTS = {"linear": ("X", "W"), "matmul": ("A", "B")}
_KEEP_HESSIANS = 2
SEQUENTIAL = "layer"
"""The order :func:`calibrate_and_quantize` uses unless told; :func:`apply` takes the spec's ``gptq_order``."""


class _Done(Exception):
    """Raised by the hook after the last target: the rest of the forward pass is not needed."""


def hessian(x: np.ndarray) -> np.ndarray:
    """``2/n · XᵀX`` of the rows of ``x`` (``[..., in]``), in float32."""
    rows = x.reshape(-1, x.shape[-1]).astype(np.float32, copy=False)
    return (rows.T @ rows) * np.float32(2.0 / max(len(rows), 1))


def feeds_for(model: Any, windows: np.ndarray) -> dict[str, np.ndarray]:
    """Model inputs for calibration windows: ids, an all-ones mask and zero token types where asked."""
    feeds: dict[str, np.ndarray] = {"input_ids": np.asarray(windows, np.int64)}
    if "attention_mask" in model.inputs:
        feeds["attention_mask"] = np.ones_like(feeds["input_ids"])
    if "token_type_ids" in model.inputs:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    return feeds


def calibrate_and_quantize(tree: Path, targets: list[Target], tensors: WeightFiles, windows: np.ndarray,
                           solve: Any, progress: Any, *, sequential: str | None = None) -> dict[str, QuantizedWeight]:
    """Run the calibration windows through the tree's model, quantizing each target as it is reached.

    ``solve(weight [out, in], hessian) -> QuantizedWeight``. ``sequential`` (default :data:`SEQUENTIAL`): ``"layer"`` (each
    linear's Hessian from its layer's float weights on the quantized model's input to the layer,
    as llm-compressor; :mod:`ptmpack.compress.quant.gptq.streams`) or ``"linear"`` (from the activations
    of the already-quantized earlier linears, inside the layer too).

    Raises:
        GraphError: the model fails to run.
        UnsupportedError: the forward pass ended before every target was reached, or a layer-wise
            pass met an activation it cannot split into its two streams.
        UsageError: an unknown ``sequential``.
    """
    from ptmpack.errors import UnsupportedError, UsageError
    from ptmpack.ir.execute import OPERATOR_HOOK, Executor
    from ptmpack.ir.registry import ExecContext
    from ptmpack.storage.package import open_package

    sequential = sequential or SEQUENTIAL
    if sequential not in GPTQ_ORDERS:
        raise UsageError(f"sequential must be one of {', '.join(GPTQ_ORDERS)}, got {sequential!r}")
    model = load_model(tree)
    by_weight = {t.weight: t for t in targets}
    layers = layer_index([t.prefix for t in targets])
    streams = Streams(len(windows)) if sequential == "layer" else None
    done: dict[str, QuantizedWeight] = {}
    hessians: OrderedDict[str, np.ndarray] = OrderedDict()

    def hook(graph: Any, node: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        if graph.graph_id != model.main_graph.graph_id:
            return inputs
        slots = _SLOTS.get(node.type)
        t = by_weight.get(node.inputs.get(slots[1], ("",))[0]) if slots else None
        if streams is not None:
            inputs = streams.before(node, inputs, None if t is None else layers[t.prefix])
        if t is None or slots is None:
            return inputs
        x_slot, w_slot = slots
        x_name = node.inputs[x_slot][0]
        if t.prefix not in done:
            if x_name not in hessians:
                x = inputs[x_slot] if streams is None else streams.split(np.asarray(inputs[x_slot]))[1]
                hessians[x_name] = hessian(x)
                while len(hessians) > _KEEP_HESSIANS:
                    hessians.popitem(last=False)
            w = tensors[t.weight]
            done[t.prefix] = solve(w.T if t.transposed else w, hessians[x_name])
            progress("gptq", len(done), len(targets))
        deq = done[t.prefix].dequantize(np.float32)
        if streams is not None:
            w = tensors[t.weight]
            inputs[x_slot], inputs[w_slot] = streams.both_weights(np.asarray(inputs[x_slot]), deq,
                                                                  w.T if t.transposed else w, t.transposed)
        else:
            inputs[w_slot] = deq.T if t.transposed else deq
        if len(done) == len(targets):
            raise _Done
        return inputs

    feeds = feeds_for(model, windows if streams is None else np.concatenate((windows, windows)))
    with open_package(tree) as pkg:
        executor = Executor(model, pkg, ExecContext())
        executor.ctx.state[OPERATOR_HOOK] = hook
        try:
            executor.run(feeds)
        except _Done:
            pass
        finally:
            executor.ctx.state.pop(OPERATOR_HOOK, None)
    missing = [t.prefix for t in targets if t.prefix not in done]
    if missing:
        raise UnsupportedError(f"the calibration pass never reached {missing[0]} (and {len(missing) - 1} more)")
    return done


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

    def run(targets: list[Target], tensors: WeightFiles, group: int) -> dict[str, QuantizedWeight]:
        def solve(w: np.ndarray, h: np.ndarray) -> QuantizedWeight:
            scale_dtype = w.dtype if w.dtype in (np.float16, np.float32) else np.float32
            return gptq_quantize(w, h, spec.bits, group or w.shape[1], spec.symmetric, act_order=spec.act_order, xp=xp,
                                 scale_dtype=scale_dtype)

        return calibrate_and_quantize(tree, targets, tensors, calib.windows, solve, ctx.progress,
                                      sequential=sequential)

    sequential = spec.gptq_order
    return quantize_tree(tree, ctx, "gptq", run,
                         extra={"damp": DAMP, "block": 128, "act_order": spec.act_order, "backend": xp.name,
                                "sequential": sequential})
