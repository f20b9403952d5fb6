
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
from ptmpack.compress.spec import CompressSpec, require_torch
from ptmpack.compress.step import StepContext
from ptmpack.errors import UnsupportedError

STEP_NOTE = ("unmerged AffineQuant transforms run as explicit affine_transform operators in graph.json: "
             "ptmpack run/eval execute them; transformers and vLLM ignore {norm}.affine_transform.* and would "
             "compute a different model")


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

    The checkpoint is read one block at a time (:func:`~.model.affine_quantize_checkpoint`); of each
    finished block only its packed integer weights, merged float tensors and transforms are kept,
    and the weight files are then rewritten once (:meth:`WeightFiles.rewrite`: untouched tensors are
    copied by the kernel). Returns the step record for ``technicalinfo.compression``.

    Raises:
        UnsupportedError: no torch, not a LLaMA-family decoder, or CUDA asked for but absent.
        UsageError: no calibration text, or a group size that does not divide a linear's input width.
    """
    require_torch("--quant affine")
    from ptmpack.compress.quant.affine.block import AffineOptions, BlockResult
    from ptmpack.compress.quant.affine.model import affine_quantize_checkpoint
    from ptmpack.compress.quant.affine.torch_llama import AFFINE, LAYER_PREFIX, LINEARS, DecoderLayer, LlamaConfig
    from ptmpack.compress.quant.linear import choose_group_size, find_targets, ignored_linears, load_model, regraph
    from ptmpack.compress.quant.pack_quantized import SHAPE, QuantizedWeight, quantization_config, quantized_tensors
    from ptmpack.compress.spec import check_device
    from ptmpack.compress.tree.documents import read_json, write_json
    from ptmpack.compress.tree.weights import TensorSpec, WeightFiles

    spec, tree = ctx.spec, Path(tree)
    check_device(spec.device)
    config_path = tree / "Model" / "config.json"
    config = read_json(config_path)
    cfg = LlamaConfig.from_dict(config)
    targets = find_targets(load_model(tree))
    group = choose_group_size(targets, spec.group_size)
    calibration = ctx.calib()
    weights = WeightFiles(tree / "Model")
    size_before = weights.file_bytes()
    identity = folded_norms(tree, config)
    opts = AffineOptions(bits=spec.bits, group_size=group, symmetric=spec.symmetric, epochs=spec.epochs,
                         device=spec.device)
    # what each existing tensor becomes: itself with new values, or the tensors that take its place
    becomes: dict[str, dict[str, np.ndarray]] = {}

    def keep(layer: DecoderLayer, r: BlockResult) -> None:
        head = f"{LAYER_PREFIX}{layer.index}."
        for name, qt in r.quantized.items():
            q = QuantizedWeight(qt.q.cpu().numpy(), qt.scale.cpu().numpy(),
                                None if qt.zero_point is None else qt.zero_point.cpu().numpy(), spec.bits, group)
            becomes[f"{head}{name}.weight"] = quantized_tensors(f"{head}{name}", q)
        r.quantized = {}  # packed above: the block's torch codes need not stay
        for name, value in r.floats.items():
            full = f"{head}{name}"
            array = value.detach().cpu().numpy().astype(np.float32)
            if full in weights:
                becomes.setdefault(full, {})[full] = array
            else:  # a new bias: it goes after its linear's packed weight
                becomes[f"{full[: -len('.bias')]}.weight"][full] = array
        for norm, (m, shift) in r.transforms.items():
            key = f"{head}{norm}.weight"
            if key not in becomes:  # a folded norm (a merged one was stored just above): it stays as it was
                becomes[key] = {key: weights.read(key)}
            at = becomes[key]
            at[f"{head}{norm}.{AFFINE}.weight"] = m.detach().cpu().numpy().astype(np.float32)
            if shift is not None:
                at[f"{head}{norm}.{AFFINE}.shift"] = shift.detach().cpu().numpy().astype(np.float32)

    result = affine_quantize_checkpoint(weights.read, weights.names(), cfg, calibration.windows, opts,
                                        identity_norms=identity, progress=ctx.progress, finished=keep)
    biased = any(n.endswith(".bias") for arrays in becomes.values() for n in arrays)
    if biased:  # transformers builds biases on all attention (or all MLP) projections or none
        for i in result.layers:
            for name in LINEARS:
                bias, weight = f"{LAYER_PREFIX}{i}.{name}.bias", f"{LAYER_PREFIX}{i}.{name}.weight"
                if bias not in weights and bias not in becomes[weight]:
                    rows = int(becomes[weight][f"{LAYER_PREFIX}{i}.{name}.{SHAPE}"][0])
                    becomes[weight][bias] = np.zeros(rows, np.float32)
        config["attention_bias"] = config["mlp_bias"] = True
    plan = {name: [TensorSpec.of(n, a) for n, a in arrays.items()] for name, arrays in becomes.items()}
    weights.rewrite(plan, becomes.pop)
    shapes = {n: weights.spec(n).shape for n in weights.names()}
    ignore = [n for n in ignored_linears(shapes, targets, decoder=True) if not n.endswith(f".{AFFINE}")]
    config["quantization_config"] = quantization_config(spec.bits, group, spec.symmetric, ignore)
    write_json(config_path, config)
    regraph(tree)
    size_after = weights.file_bytes()
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
