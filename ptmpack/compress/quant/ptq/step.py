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
from ptmpack.compress.tree.checkpoint import CONFIG, Checkpoint, read_json, refuse_unmerged_adapters, write_json
from ptmpack.errors import UnsupportedError, UsageError

ACT_SUFFIXES = ("input_scale", "input_zero_point", "input_comp_scale", "input_comp_shift")
_FAMILIES = {"bert": "bert", "llama": "llama", "mistral": "llama", "qwen2": "llama"}


def activations_config(act_bits: int) -> dict[str, Any]:
    """compressed-tensors ``input_activations`` for static per-tensor asymmetric integer activations."""
    return {"num_bits": act_bits, "type": "int", "symmetric": False, "group_size": None, "strategy": "tensor",
            "dynamic": False, "actorder": None, "block_structure": None, "observer": "minmax", "observer_kwargs": {}}


def ptq(tree: Path, bits: int, act_bits: int, windows: np.ndarray, *, compensate: bool = True,
        reconstruct: bool = True, rounding: bool = True, epochs: int = 10, per_sentence: bool = True,
        seed: int = 0, progress: Any = None) -> dict[str, Any]:
    """Quantize ``tree``'s transformer linears to W``bits``A``act_bits`` and rewrite ``Model/``.

    ``compensate``, ``reconstruct`` (step 1, steps) and ``rounding`` (step 2) switch the parts of
    §7.3.1.2 on and off for the ablation; the CLI runs all three. ``per_sentence`` (encoders whose
    windows are packed sentences): calibrate on each sentence alone, as the encoder sees text
    (:func:`ptmpack.compress.quant.ptq.fake_quant.calibration_batches`); False keeps the packed windows.

    Raises:
        UsageError: unsupported bit widths.
        UnsupportedError: PyTorch missing, an architecture other than BERT/LLaMA, or a checkpoint
            transformers cannot load (already quantized, pruned heads, unified norms).
    """
    from ptmpack.compress.quant.pack_quantized import QuantizedWeight, quantization_config, write_quantized_linear
    from ptmpack.compress.quant.ptq.fake_quant import quantize_blocks
    from ptmpack.compress.tree.rebuild import rebuild_graph

    if bits not in (2, 3, 4, 8) or act_bits not in (4, 8, 16):
        raise UsageError(f"--quant ptq takes --bits 2, 3, 4 or 8 and --act-bits 4, 8 or 16 (got W{bits}A{act_bits})")
    refuse_unmerged_adapters(tree, "--quant ptq")
    config = read_json(tree, CONFIG)
    family = _FAMILIES.get(str(config.get("model_type")))
    if family is None:
        raise UnsupportedError(f"--quant ptq supports BERT and LLaMA-family models, not {config.get('model_type')!r}")
    if "quantization_config" in config or any(k.startswith("ptmpack_") for k in config):
        raise UnsupportedError("--quant ptq runs the float checkpoint in transformers, which cannot load this one "
                               "(already quantized, head-pruned or with unified norms)")
    from ptmpack.compress.eval.probe import sentence_start_id

    start = sentence_start_id(tree) if per_sentence and family == "bert" else None
    results, simulated = quantize_blocks(tree / "Model", family, windows, bits, act_bits, compensate=compensate,
                              reconstruct=reconstruct, rounding=rounding, epochs=epochs, sentence_start=start,
                              seed=seed, progress=progress)
    ck = Checkpoint.load(tree)
    rows = []
    for name, r in results.items():
        weight = f"{name}.weight"
        if weight not in ck.tensors:
            raise UnsupportedError(f"the checkpoint has no {weight} (prefixed names are not supported by ptq)")
        dtype, file = ck.dtype_of[weight], ck.file_of[weight]
        out_f, in_f = ck.tensors[weight].shape
        q = QuantizedWeight(r.codes, r.w_scale.astype(dtype).reshape(out_f, 1), None, bits, int(in_f))
        before = set(ck.tensors)
        write_quantized_linear(ck.tensors, name, q)
        extra = {f"{name}.bias": r.bias.astype(dtype) if r.bias is not None else None,
                 f"{name}.input_scale": np.asarray([r.a_scale], dtype),
                 f"{name}.input_zero_point": np.asarray([r.a_zero], np.int8),
                 f"{name}.input_comp_scale": None if r.comp_scale is None else r.comp_scale.astype(dtype),
                 f"{name}.input_comp_shift": None if r.comp_shift is None else r.comp_shift.astype(dtype)}
        for k, v in extra.items():
            if v is not None and (k != f"{name}.bias" or np.any(v) or k in ck.tensors):
                ck.tensors[k] = np.ascontiguousarray(v)
        for k in set(ck.tensors) - before:
            ck.file_of[k], ck.dtype_of[k] = file, ck.tensors[k].dtype
        ck.delete(weight)
        rows.append({"layer": name, "weight_rel_error": r.rel_error, "act_scale": r.a_scale,
                     "compensated": r.comp_scale is not None})
    ignore = sorted(n[: -len(".weight")] for n, t in ck.tensors.items()
                    if n.endswith(".weight") and t.ndim == 2 and "embed" not in n)
    qc = quantization_config(bits, 128, True, ignore)
    group = qc["config_groups"]["group_0"]
    group["weights"].update({"strategy": "channel", "group_size": None, "observer": "ptq"})
    group["input_activations"] = activations_config(act_bits)
    config["quantization_config"] = qc
    ck.save()
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
                     seed=int(spec.calib_seed or 0), progress=ctx.progress)
        record.pop("simulated_last_block_output")
        scheme = QuantScheme(record.pop("bits"), str(record.pop("format")))
        return StepRecord("quant", str(record.pop("method")), scheme=scheme, details=record)
