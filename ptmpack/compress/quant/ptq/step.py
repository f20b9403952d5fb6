"""W·A post-training quantization (``compress --quant ptq --bits W --act-bits A``, §7.3.1.2).

The weights and activation steps come from :mod:`ptmpack.compress.quant.ptq.fake_quant` (channel
compensation and cascaded reconstruction, both optional for the ablation). Storage:

* each quantized linear in compressed-tensors ``pack-quantized`` layout, per output channel
  (``strategy: channel``, symmetric): ``weight_packed``, ``weight_scale`` ``[out, 1]``,
  ``weight_shape``; its ``bias`` carries the compensation's ``W·b``;
* its static input quantizer as compressed-tensors names it: ``input_scale`` ``[1]`` and
  ``input_zero_point`` ``[1]`` (int8; ``input_activations``: int, per tensor, asymmetric, static);
* the channel compensation of its input, when used: ``input_comp_scale`` / ``input_comp_shift``
  ``[in]`` (ptmpack's names; compressed-tensors has none), the weight already holding ``W·diag(c)``.

``Model/graph.json`` runs each such linear as ``fake_quant`` → ``quantized_linear``, so ``ptmpack
run``/``eval`` show what a W·A integer engine computes (attention's two matmuls stay float).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.report import QuantScheme, StepRecord
from ptmpack.compress.spec import CompressSpec
from ptmpack.compress.step import StepContext
from ptmpack.compress.tree.checkpoint import CONFIG, read_json, refuse_unmerged_adapters, write_json
from ptmpack.errors import UnsupportedError, UsageError

ACT_SUFFIXES = ("input_scale", "input_zero_point", "input_comp_scale", "input_comp_shift")
_FAMILIES = {"bert": "bert", "llama": "llama", "mistral": "llama", "qwen2": "llama"}


def activations_config(act_bits: int) -> dict[str, Any]:
    """compressed-tensors ``input_activations`` for static per-tensor asymmetric integer activations."""
    return {"num_bits": act_bits, "type": "int", "symmetric": False, "group_size": None, "strategy": "tensor",
            "dynamic": False, "actorder": None, "block_structure": None, "observer": "minmax", "observer_kwargs": {}}


def ptq(tree: Path, bits: int, act_bits: int, windows: np.ndarray, *, compensate: bool = True,
        reconstruct: bool = True, rounding: bool = True, epochs: int = 10, per_sentence: bool = True,
        seed: int = 0, progress: Any = None, device: str = "cpu") -> dict[str, Any]:
    """Quantize ``tree``'s transformer linears to W``bits``A``act_bits`` and rewrite ``Model/``.

    ``compensate``, ``reconstruct`` (step 1, steps) and ``rounding`` (step 2) switch the parts of
    §7.3.1.2 on and off for the ablation; the CLI runs all three. ``per_sentence`` (encoders whose
    windows are packed sentences): calibrate on each sentence alone, as the encoder sees text
    (:func:`ptmpack.compress.quant.ptq.fake_quant.calibration_batches`); False keeps the packed windows.

    The model runs block by block on the package's own IR (:mod:`~ptmpack.compress.quant.ptq.fake_quant`), each
    block on ``device`` (``cuda``: one block's weights and the calibration states on the GPU);
    each finished linear is set aside in a scratch folder beside the tree, and the weight files are
    then rewritten once, as GPTQ's are (:meth:`WeightFiles.rewrite`), so no step holds the model whole.

    Raises:
        UsageError: unsupported bit widths.
        UnsupportedError: PyTorch missing, an architecture other than BERT/LLaMA, an already
            quantized checkpoint, or an operator with no torch kernel.
    """
    from ptmpack.compress.quant.linear import QuantizedSpill, refuse_quantized
    from ptmpack.compress.quant.pack_quantized import QuantizedWeight, quantization_config
    from ptmpack.compress.quant.ptq.fake_quant import LinearResult, quantize_blocks
    from ptmpack.compress.tree.rebuild import rebuild_graph
    from ptmpack.compress.tree.weights import WeightFiles

    if bits not in (2, 3, 4, 8) or act_bits not in (4, 8, 16):
        raise UsageError(f"--quant ptq takes --bits 2, 3, 4 or 8 and --act-bits 4, 8 or 16 (got W{bits}A{act_bits})")
    refuse_unmerged_adapters(tree, "--quant ptq")
    config = read_json(tree, CONFIG)
    family = _FAMILIES.get(str(config.get("model_type")))
    if family is None:
        raise UnsupportedError(f"--quant ptq supports BERT and LLaMA-family models, not {config.get('model_type')!r}")
    refuse_quantized(tree, config)
    from ptmpack.compress.eval.probe import sentence_start_id

    start = sentence_start_id(tree) if per_sentence and family == "bert" else None
    weights = WeightFiles(tree / "Model")
    plan: dict[str, list[Any]] = {}
    with QuantizedSpill.beside(tree, ".ptq-") as spill:

        def store(r: LinearResult) -> None:
            weight, bias = f"{r.name}.weight", f"{r.name}.bias"
            stored = weights.spec(weight)
            dtype, (out_f, in_f) = stored.dtype, stored.shape
            q = QuantizedWeight(r.codes, r.w_scale.astype(dtype).reshape(out_f, 1), None, bits, int(in_f))
            extra = {bias: r.bias.astype(dtype) if r.bias is not None and (np.any(r.bias) or bias in weights) else None,
                     f"{r.name}.input_scale": np.asarray([r.a_scale], dtype),
                     f"{r.name}.input_zero_point": np.asarray([r.a_zero], np.int8),
                     f"{r.name}.input_comp_scale": None if r.comp_scale is None else r.comp_scale.astype(dtype),
                     f"{r.name}.input_comp_shift": None if r.comp_shift is None else r.comp_shift.astype(dtype)}
            spill.put(r.name, q, {"layer": r.name, "weight_rel_error": r.rel_error, "act_scale": r.a_scale,
                                  "compensated": r.comp_scale is not None},
                      {k: np.ascontiguousarray(v) for k, v in extra.items() if v is not None})
            plan[weight] = spill.layout(r.name)
            if bias in weights:  # the new bias is stored with the quantized weight
                plan[bias] = []

        simulated = quantize_blocks(tree, weights, windows, bits, act_bits, compensate=compensate,
                                    reconstruct=reconstruct, rounding=rounding, epochs=epochs, sentence_start=start,
                                    seed=seed, progress=progress, finished=store, device=device)
        weights.rewrite(plan, lambda name: spill.tensors(name[: -len(".weight")]) if plan[name] else {})
        rows = list(spill.rows.values())  # in the order the linears were finished, as the plan
    ignore = sorted(n[: -len(".weight")] for n in weights.names()
                    if n.endswith(".weight") and len(weights.spec(n).shape) == 2 and "embed" not in n)
    qc = quantization_config(bits, 128, True, ignore)
    group = qc["config_groups"]["group_0"]
    group["weights"].update({"strategy": "channel", "group_size": None, "observer": "ptq"})
    group["input_activations"] = activations_config(act_bits)
    config["quantization_config"] = qc
    write_json(tree, CONFIG, config)
    rebuild_graph(tree)
    return {"method": "ptq", "bits": bits, "act_bits": act_bits, "channel_compensation": compensate,
            "cascaded_reconstruction": reconstruct, "rounding_reconstruction": reconstruct and rounding,
            "epochs": epochs if reconstruct else 0,
            "calibration_sequences": "sentences" if start is not None and int(np.asarray(windows)[0, 0]) == start
            else "windows",
            "format": "compressed-tensors/pack-quantized (channel) + static int activations",
            "layers_quantized": len(rows), "quantized_layers": rows,
            "mean_weight_rel_error": float(np.mean([r["weight_rel_error"] for r in rows])),
            "simulated_last_block_output": simulated}


class PtqStep:
    """Pipeline step ``--quant ptq`` with the before/after report (a :class:`ptmpack.compress.step.Step`)."""

    def check(self, spec: CompressSpec) -> None:
        """Nothing beyond :meth:`CompressSpec.check` (``--act-bits`` 4, 8 or 16, ``--calib`` given)."""

    def run(self, tree: Path, ctx: StepContext) -> StepRecord:
        """Quantize weights per channel and activations statically (:func:`ptq`).

        Raises:
            PtmError: as :func:`ptq`; no calibration text.
        """
        from ptmpack.compress.eval.probe import step_windows

        spec = ctx.spec
        windows = step_windows(Path(tree), ctx)
        record = ptq(Path(tree), spec.bits, spec.act_bits or 8, windows, epochs=spec.epochs or 0,
                     seed=int(spec.calib_seed or 0), progress=ctx.progress, device=spec.device)
        record.pop("simulated_last_block_output")
        scheme = QuantScheme(record.pop("bits"), str(record.pop("format")))
        return StepRecord("quant", str(record.pop("method")), scheme=scheme, details=record)
