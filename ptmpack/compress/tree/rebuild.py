"""The one rebuild of ``Model/graph.json``: the converter's graph of the checkpoint, with every record applied.

Steps leave records in ``config.json`` and in the tree that the Hugging Face converter
(:mod:`ptmpack.ir.convert_hf`) does not read: unified norms (``ptmpack_unified_norm``, written
by ``--fold-norm unified``), static activation quantization (``input_activations`` and
``*.input_scale`` tensors, ``--quant ptq``) and unmerged transfer adapters (``Model/adapters/``).
Every step that changes the weights rebuilds the graph here, so no step undoes another's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ptmpack.compress.tree.adapters import FOLDER, WEIGHTS_NAME, attach, read_adapters
from ptmpack.compress.tree.checkpoint import CONFIG, GRAPH, MODEL, read_json
from ptmpack.compress.tree.documents import write_bytes
from ptmpack.compress.tree.graph import bypass, checked, insert, param, replace_op
from ptmpack.compress.tree.weights import WeightFiles
from ptmpack.ir.model import ModelStructure

MARKER = "ptmpack_unified_norm"
"""config.json key of the unified-norm record: ``{"folded": [op, …], "explicit": {op: running_var tensor}}``."""
NORMS = {"layer_norm": ("Scale", "Bias"), "rms_norm": ("Weight", None)}
"""Normalization operator types and their scale and bias input slots."""


def rebuild_graph(tree: Path) -> bool:
    """Re-describe ``Model/`` in ``Model/graph.json`` from config.json + safetensors (when one existed).

    Returns whether a graph was written. The new graph is built completely before the old one is replaced.

    Raises:
        UnsupportedError: the converter cannot express the new checkpoint.
    """
    tree = Path(tree)
    target = tree / GRAPH
    if not target.exists():
        return False
    model = base_model(tree, name=str(read_json(tree, GRAPH).get("name") or tree.name))
    found = read_adapters(tree)
    if found is not None:
        model = attach(model, *found, file=f"{FOLDER}/{WEIGHTS_NAME}")
    write_bytes(target, model.dumps())
    return True


def base_model(tree: Path, *, name: str | None = None) -> Any:
    """The IR model of ``Model/`` as convert_hf builds it, with a unified-norm record applied (no adapters).

    Raises:
        UnsupportedError: the converter cannot express the checkpoint.
    """
    from ptmpack.ir.convert_hf import model_from_dir

    config = read_json(tree, CONFIG)
    model = model_from_dir(Path(tree) / MODEL, name=name or Path(tree).name)  # per-layer heads from the tensors
    names = set(WeightFiles(Path(tree) / MODEL).names())
    return patch_act_quant(patch_unified_norms(model, config), names, config)


def patch_unified_norms(model: ModelStructure, config: dict[str, Any]) -> ModelStructure:
    """Apply config.json's ``ptmpack_unified_norm`` record to a graph built by ``convert_hf``.

    Folded norms are removed (their readers read the norm's input); the others become
    ``unified_norm`` operators reading their ``running_var`` tensor.

    Raises:
        GraphError: the record names operators or tensors the graph lacks.
    """
    marker = config.get(MARKER)
    if not isinstance(marker, dict):
        return model
    for op in marker.get("folded", []):
        model = bypass(model, op)
    variables = model.main_graph.variable_map()
    for op, var_name in marker.get("explicit", {}).items():
        node = next(n for n in model.main_graph.operators if n.name == op)
        s_slot, b_slot = NORMS[node.type]
        scale = variables[node.inputs[s_slot][0]]
        eps = node.attributes.get("epsilon")
        inputs = {"X": node.inputs["X"], "running_var": (var_name,), "gamma": node.inputs[s_slot]}
        if b_slot and node.inputs.get(b_slot):
            inputs["beta"] = node.inputs[b_slot]
        model = replace_op(model, op, "unified_norm", inputs, [param(var_name, scale.dtype, scale.shape, scale.tensor.file)],
                           eps=float(eps.value) if eps is not None else 1e-5)
    return checked(model)


def patch_act_quant(model: ModelStructure, names: set[str], config: dict[str, Any]) -> ModelStructure:
    """Insert a ``fake_quant`` before every ``quantized_linear`` whose prefix has an ``input_scale`` tensor.

    Raises:
        GraphError: the edited graph is not valid.
    """
    qc = config.get("quantization_config") or {}
    acts = next((g.get("input_activations") for g in (qc.get("config_groups") or {}).values()
                 if isinstance(g, dict) and g.get("input_activations")), None)
    if not acts:
        return model
    bits = int(acts["num_bits"])
    for node in list(model.main_graph.operators):
        if node.type != "quantized_linear":
            continue
        packed = model.main_graph.variable_map()[node.inputs["Packed"][0]]
        prefix = packed.name[: -len(".weight_packed")]
        if f"{prefix}.input_scale" not in names:
            continue
        file = packed.tensor.file if packed.tensor else "Model/model.safetensors"
        x = node.inputs["X"][0]
        width = model.main_graph.variable_map()[x].shape[-1]
        ins: dict[str, tuple[str, ...]] = {"X": (x,)}
        params = []
        for slot, suffix, dtype, shape in (("Scale", "input_scale", "float32", (1,)),
                                           ("ZeroPoint", "input_zero_point", "int8", (1,)),
                                           ("CompScale", "input_comp_scale", "float32", (width,)),
                                           ("CompShift", "input_comp_shift", "float32", (width,))):
            if f"{prefix}.{suffix}" in names:
                ins[slot] = (f"{prefix}.{suffix}",)
                params.append(param(f"{prefix}.{suffix}", dtype, shape, file))
        model = insert(model, "fake_quant", f"{node.name}.act_quant", ins, redirect=x, readers={node.name},
                       params=params, bits=bits)
    return checked(model)


