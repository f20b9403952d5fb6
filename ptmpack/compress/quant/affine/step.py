
"""The ``--quant affine`` step: AffineQuant (GB/T 42382.2 §7.3.1.1, Table 44) on a LLaMA-family tree.

What happens to ``Model/``:

* every decoder linear is stored quantized in the compressed-tensors ``pack-quantized`` layout
  (:mod:`ptmpack.compress.quant.pack_quantized`), in the *transformed* space (``W·(A⊙GM)ᵀ`` …);
* merged inverses change float tensors in place: each RMSNorm weight takes the diagonal part of
  its transform, v_proj and o_proj absorb the per-kv-head value→output transform exactly, and
  learned shifts become projection biases (``attention_bias``/``mlp_bias`` are then set in
  ``config.json``, with zero biases where a projection has none, so the layout stays the one
  transformers builds);
* what cannot merge — the unit-diagonal matrix after each RMSNorm and its shift — is stored
  beside the norm as ``{norm}.affine_transform.weight`` and ``.shift`` ``[d]`` (float32), the matrix
  as its diagonal blocks ``[d/b, b, b]`` (the default block-diagonal transform, b = 64) or ``[d, d]``
  (a full transform), and
  ``graph.json`` runs it as an explicit ``affine_transform`` operator
  (:mod:`ptmpack.ir.ops.affine`). ``ptmpack run``/``eval`` execute it; transformers and vLLM do
  not know it, which the step record says.

torch is needed (``pip install 'ptmpack[torch]'``); ``--device cuda`` runs the same code on a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.report import QuantScheme, StepRecord
from ptmpack.compress.spec import CompressSpec
from ptmpack.compress.step import StepContext
from ptmpack.errors import UnsupportedError

STEP_NOTE = ("unmerged AffineQuant transforms run as explicit affine_transform operators in graph.json: "
             "ptmpack run/eval execute them; transformers and vLLM ignore {norm}.affine_transform.* and would "
             "compute a different model")


def require_torch() -> Any:
    """The torch module.

    Raises:
        UnsupportedError: PyTorch is not installed.
    """
    try:
        import torch
    except ImportError:
        raise UnsupportedError("--quant affine needs PyTorch", hint="pip install 'ptmpack[torch]'") from None
    return torch


def _store(tensors: Any, name: str, value: np.ndarray, file: str) -> None:
    """Add or replace a float tensor of the tree's weights (saved with the next ``tensors.save()``)."""
    tensors.files[file][name] = np.ascontiguousarray(value)
    tensors.where[name] = file
    tensors.changed.add(file)


class AffineStep:
    """The ``--quant affine`` step (a :class:`ptmpack.compress.step.Step`)."""

    def check(self, spec: CompressSpec) -> None:
        """Nothing beyond :meth:`CompressSpec.check`: every ``--fold-norm`` mode combines with AffineQuant."""

    def run(self, tree: Path, ctx: StepContext) -> StepRecord:
        """Learn the transforms and quantize (:func:`affine_quantize_tree`)."""
        return affine_quantize_tree(tree, ctx)


def folded_norms(tree: Path, config: dict[str, Any]) -> set[str]:
    """The norm weights (``model.layers.0.input_layernorm.weight``, …) that ``--fold-norm unified`` folded away.

    config.json's unified-norm record names graph operators; the converter's graph (before the
    record is applied) says which weight each one normalizes with. Those norms are the identity
    now: AffineQuant runs them as such, and the transforms after them are stored whole.

    Raises:
        UnsupportedError: a norm was kept as an explicit ``unified_norm`` (its output also feeds
            something other than linears, which a LLaMA pre-norm block never does).
    """
    from ptmpack.compress.tree.rebuild import MARKER, NORMS
    from ptmpack.ir.convert_hf import model_from_dir

    marker = config.get(MARKER)
    if not isinstance(marker, dict):
        return set()
    if marker.get("explicit"):
        raise UnsupportedError(f"--quant affine: unified norms {sorted(marker['explicit'])} stay explicit because "
                               "their outputs also feed the residual stream; AffineQuant's pre-norm LLaMA blocks "
                               "have none")
    folded = set(marker.get("folded", []))
    graph = model_from_dir(tree / "Model", name=tree.name).main_graph
    return {node.inputs[NORMS[node.type][0]][0] for node in graph.operators if node.name in folded}


def affine_quantize_tree(tree: Path, ctx: StepContext) -> StepRecord:
    """Learn AffineQuant transforms block by block on the calibration windows and rewrite ``tree``'s ``Model/``.

    Returns the step record for ``technicalinfo.compression``.

    Raises:
        UnsupportedError: no torch, not a LLaMA-family decoder, or CUDA asked for but absent.
        UsageError: no calibration text, or a group size that does not divide a linear's input width.
    """
    torch = require_torch()
    from ptmpack.compress.quant.affine.block import AffineOptions
    from ptmpack.compress.quant.affine.model import affine_quantize_model
    from ptmpack.compress.quant.affine.torch_llama import AFFINE, LAYER_PREFIX, LINEARS, CausalLM, LlamaConfig
    from ptmpack.compress.quant.linear import (
        ModelTensors,
        Target,
        choose_group_size,
        find_targets,
        ignored_linears,
        load_model,
        regraph,
    )
    from ptmpack.compress.quant.pack_quantized import QuantizedWeight, quantization_config
    from ptmpack.compress.tree.documents import read_json, write_json

    spec, tree = ctx.spec, Path(tree)
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise UnsupportedError("--device cuda: PyTorch sees no CUDA device", hint="use --device cpu")
    config_path = tree / "Model" / "config.json"
    config = read_json(config_path)
    cfg = LlamaConfig.from_dict(config)
    targets = find_targets(load_model(tree))
    group = choose_group_size(targets, spec.group_size)
    calibration = ctx.calib()
    tensors = ModelTensors(tree / "Model")
    size_before = sum((tree / "Model" / f).stat().st_size for f in tensors.files)
    identity = folded_norms(tree, config)
    model = CausalLM.from_tensors({n: tensors[n] for n in tensors.names()}, cfg, device=spec.device,
                                  identity_norms=identity)
    opts = AffineOptions(bits=spec.bits, group_size=group, symmetric=spec.symmetric, epochs=spec.epochs,
                         device=spec.device)
    result = affine_quantize_model(model, calibration.windows, opts, progress=ctx.progress)
    del model
    biased = False
    for i, r in result.layers.items():
        head = f"{LAYER_PREFIX}{i}."
        file = tensors.where[f"{head}input_layernorm.weight"]
        for name, qt in r.quantized.items():
            q = QuantizedWeight(qt.q.cpu().numpy(), qt.scale.cpu().numpy(),
                                None if qt.zero_point is None else qt.zero_point.cpu().numpy(), spec.bits, group)
            rows, cols = q.shape
            tensors.store(Target(f"{head}{name}", f"{head}{name}.weight", name, cols, rows), q)
        for name, value in r.floats.items():
            _store(tensors, f"{head}{name}", value.detach().cpu().numpy().astype(np.float32), file)
            biased = biased or name.endswith(".bias")
        for norm, (m, shift) in r.transforms.items():
            _store(tensors, f"{head}{norm}.{AFFINE}.weight", m.cpu().numpy().astype(np.float32), file)
            if shift is not None:
                _store(tensors, f"{head}{norm}.{AFFINE}.shift", shift.cpu().numpy().astype(np.float32), file)
    if biased:  # transformers builds biases on all attention (or all MLP) projections or none
        for i in result.layers:
            for name in LINEARS:
                bias = f"{LAYER_PREFIX}{i}.{name}.bias"
                if bias not in tensors.where:
                    rows = cfg.hidden_size if name in ("self_attn.o_proj", "mlp.down_proj") else \
                        cfg.intermediate_size if name.startswith("mlp.") else \
                        cfg.num_heads * cfg.head_dim if name.endswith("q_proj") else cfg.kv_dim
                    _store(tensors, bias, np.zeros(rows, np.float32),
                           tensors.where[f"{LAYER_PREFIX}{i}.input_layernorm.weight"])
        config["attention_bias"] = config["mlp_bias"] = True
    tensors.save()
    ignore = [n for n in ignored_linears({n: tensors[n].shape for n in tensors.names()}, targets, decoder=True) if not n.endswith(f".{AFFINE}")]
    config["quantization_config"] = quantization_config(spec.bits, group, spec.symmetric, ignore)
    write_json(config_path, config)
    regraph(tree)
    size_after = sum((tree / "Model" / f).stat().st_size for f in tensors.files)
    unmerged = sum(len(r.transforms) for r in result.layers.values())
    stored = [m for r in result.layers.values() for m, _ in r.transforms.values()]
    block = opts.block_of(cfg.hidden_size)
    details: dict[str, Any] = {
        "layers_quantized": len(result.layers) * len(LINEARS),
        "size_before": size_before, "size_after": size_after, "seconds": round(result.seconds, 3),
        "calibration": calibration.record(),
        "affine": {"epochs": opts.epochs, "alpha": opts.alpha, "lr": opts.lr, "lwc_lr": opts.lwc_lr,
                   "batch_size": opts.batch_size, "transform": opts.transform, "shift": opts.shift,
                   "block_size": block, "device": opts.device, "dominance": result.violations(), "unified_norms": len(identity),
                   "unmerged_transforms": unmerged,
                   "transform_storage": {"layout": "dense" if block is None else "block-diagonal", "dtype": "float32",
                                         "shape": list(stored[0].shape) if stored else None,
                                         "bytes": sum(4 * m.numel() for m in stored)},
                   "method_defaults": {name: getattr(spec, name) for name in spec.defaulted},
                   "merged": ["norm weights (diagonal parts)", "v_proj/o_proj (value→output, per kv head)",
                              "projection biases (shifts)"]},
        "layers": result.rows(),
    }
    if unmerged:
        details["note"] = STEP_NOTE
    return StepRecord("quant", "affine",
                      scheme=QuantScheme(spec.bits, "compressed-tensors/pack-quantized", group, spec.symmetric),
                      unmerged_transforms=unmerged, details=details)
