"""``unpack --dequantize``: turn a compressed package's quantized linears back into float weights.

Each ``prefix.weight_packed`` (+ scale, zero point, shape, g_idx) becomes ``prefix.weight``
in the scale's float dtype (``(q - zero_point) · scale``, exactly what the
``quantized_linear`` operator computes), ``config.json`` loses its ``quantization_config``,
and ``Model/graph.json`` is rebuilt with plain ``linear`` operators. The result is an
ordinary float checkpoint any tool loads (the quantization error stays in the weights).

An AffineQuant package may keep, after a norm, an explicit transform ``t = (h - shift)·Mᵀ``
(``{norm}.affine_transform.weight``/``.shift``) that only ptmpack runs. With float weights it
folds exactly into the linears reading ``t``: ``W' = W·M`` and ``b' = b - W'·shift`` (q/k/v after
``input_layernorm``, gate/up after ``post_attention_layernorm``), so the dequantized checkpoint
is a plain LLaMA that transformers and vLLM load and compute identically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.quant.observer import scale_dtype_for
from ptmpack.compress.quant.pack_quantized import (
    PACKED,
    SCALE,
    SHAPE,
    SUFFIXES,
    quantized_prefixes,
    read_quantized_linear,
)
from ptmpack.compress.report import DequantizeReport
from ptmpack.compress.tree.checkpoint import Checkpoint
from ptmpack.compress.tree.weights import TensorSpec, WeightFiles
from ptmpack.errors import IntegrityError, UnsupportedError
from ptmpack.quant.scheme import WeightScheme, scheme_of

AFFINE = "affine_transform"
"""Name of an unmerged AffineQuant transform beside its norm (as :mod:`ptmpack.compress.quant.affine.torch_llama` writes it)."""
TRANSFORM_CONSUMERS = {"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                       "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj")}
"""The linears of a LLaMA block that read each norm's output (and so its transform's)."""
BIAS_FAMILIES = {"attention_bias": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
                 "mlp_bias": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
"""transformers builds biases on all projections of a family or on none (config flag -> projections)."""


def dequantize_tree(tree: Path) -> DequantizeReport:
    """Dequantize every quantized linear of the package tree ``tree`` in place; return what changed.

    A tree without quantized layers is left as it is (``layers`` 0).

    Raises:
        UnsupportedError: quantized tensors whose config.json states no usable scheme.
        IntegrityError: inconsistent quantized tensors.
    """
    from ptmpack.compress.quant.linear import regraph
    from ptmpack.compress.tree.documents import read_json, write_json

    tree = Path(tree)
    model_dir = tree / "Model"
    if not any(model_dir.glob("*.safetensors")):
        return DequantizeReport(0)
    weights = WeightFiles(model_dir)
    prefixes = quantized_prefixes(weights.names())
    if not prefixes:
        return DequantizeReport(0)
    config_path = model_dir / "config.json"
    config = read_json(config_path)
    folded = 0
    if not any(n.endswith(f".{AFFINE}.weight") for n in weights.names()):
        scheme = _stream(weights, prefixes, config, config_path)
        files = sorted({weights.file_of(f"{p}.weight") for p in prefixes})
    else:
        ck = Checkpoint.load(tree)  # transforms to fold: every weight in memory
        files = sorted({ck.file_of[n] for n in ck.tensors if f".{AFFINE}." in n}
                       | {ck.file_of[f"{p}.weight_packed"] for p in prefixes})
        scheme = _dequantize_linears(ck, prefixes, config, config_path)
        folded = fold_transforms(ck, config)
        ck.save(files)
    config.pop("quantization_config", None)
    write_json(config_path, config)
    regraph(tree)
    return DequantizeReport(len(prefixes), tuple(f"Model/{f}" for f in files), scheme.bits, scheme.group_size, folded)


def _scheme_of(config: dict[str, Any], config_path: Path) -> tuple[WeightScheme, bool]:
    """The checkpoint's weight scheme, and whether its linears are GPT-2 Conv1D (``[in, out]``, stored
    quantized as ``[out, in]``).

    Raises:
        UnsupportedError: no usable quantization scheme in ``config``.
    """
    scheme = scheme_of(config)
    if scheme is None:
        raise UnsupportedError(f"{config_path}: quantized weights but no compressed-tensors quantization_config")
    return scheme, config.get("model_type") == "gpt2"


def _dequantize_linears(ck: Checkpoint, prefixes: list[str], config: dict[str, Any], config_path: Path) -> WeightScheme:
    """Replace each quantized linear of the checkpoint by its float ``weight`` (in memory; saved by the caller).

    Raises:
        UnsupportedError: no usable quantization scheme in ``config``.
    """
    scheme, conv1d = _scheme_of(config, config_path)
    for prefix in prefixes:
        file = ck.file_of[f"{prefix}.weight_packed"]
        q = read_quantized_linear(ck.tensors, prefix, scheme.bits)
        for tail in SUFFIXES:
            ck.delete(f"{prefix}.{tail}")
        w = q.dequantize(scale_dtype_for(q.scale.dtype))  # as the streaming path: bf16 scales give a bf16 weight
        _put(ck, f"{prefix}.weight", w.T if conv1d else w, file)
    return scheme


def _stream(weights: WeightFiles, prefixes: list[str], config: dict[str, Any], config_path: Path) -> WeightScheme:
    """Rewrite the weight files with each quantized linear's float ``weight`` in place of its packed tensors,
    one linear at a time (:meth:`WeightFiles.rewrite`): memory holds one layer, whatever the model.

    Raises:
        UnsupportedError: no usable quantization scheme in ``config``.
    """
    scheme, conv1d = _scheme_of(config, config_path)
    present = set(weights.names())
    plan: dict[str, list[TensorSpec]] = {}
    owner: dict[str, str] = {}
    for prefix in prefixes:
        parts = [f"{prefix}.{tail}" for tail in SUFFIXES if f"{prefix}.{tail}" in present]
        head = f"{prefix}.{PACKED}"
        shape = weights.read(f"{prefix}.{SHAPE}") if f"{prefix}.{SHAPE}" in present else None
        scale = weights.spec(f"{prefix}.{SCALE}")
        out, cols = (int(v) for v in shape.reshape(-1)[:2]) if shape is not None else \
            (scale.shape[0], weights.spec(head).shape[1] * 32 // scheme.bits)
        dtype = scale_dtype_for(scale.dtype)
        plan.update({n: [] for n in parts})
        plan[head] = [TensorSpec(f"{prefix}.weight", dtype, (cols, out) if conv1d else (out, cols))]
        owner[head] = prefix

    def produce(name: str) -> dict[str, np.ndarray]:
        prefix = owner.get(name)
        if prefix is None:
            return {}
        stored = {f"{prefix}.{tail}": weights.read(f"{prefix}.{tail}") for tail in SUFFIXES
                  if f"{prefix}.{tail}" in present}
        q = read_quantized_linear(stored, prefix, scheme.bits)
        w = q.dequantize(scale_dtype_for(q.scale.dtype))
        return {f"{prefix}.weight": np.ascontiguousarray(w.T) if conv1d else w}

    weights.rewrite(plan, produce)
    return scheme


def _put(ck: Checkpoint, name: str, value: np.ndarray, file: str) -> None:
    """Store ``value`` as tensor ``name`` of the weight file ``file``, in its own dtype."""
    ck.tensors[name] = np.ascontiguousarray(value)
    ck.file_of[name], ck.dtype_of[name] = file, ck.tensors[name].dtype


def fold_transforms(ck: Checkpoint, config: dict[str, Any]) -> int:
    """Fold every ``{norm}.affine_transform`` into the float weights (and biases) of the linears reading
    it, drop the transform tensors, and give projections the biases transformers then expects; return
    how many transforms were folded.

    Raises:
        UnsupportedError: a transform after a norm other than a LLaMA block's two.
        IntegrityError: a transform whose shape does not fit its consumers.
    """
    folded, biased = 0, False
    for m_name in sorted(n for n in ck.tensors if n.endswith(f".{AFFINE}.weight")):
        base = m_name[: -len(f".{AFFINE}.weight")]
        block, _, norm = base.rpartition(".")
        if norm not in TRANSFORM_CONSUMERS:
            raise UnsupportedError(f"{m_name}: cannot fold an affine transform after {norm!r} into float weights")
        m = _dense(np.asarray(ck.tensors[m_name], dtype=np.float64))
        shift_name = f"{base}.{AFFINE}.shift"
        shift = np.asarray(ck.tensors[shift_name], dtype=np.float64) if shift_name in ck.tensors else None
        for consumer in TRANSFORM_CONSUMERS[norm]:
            w_name, b_name = f"{block}.{consumer}.weight", f"{block}.{consumer}.bias"
            w = ck.tensors[w_name]
            if w.ndim != 2 or w.shape[1] != m.shape[0]:
                raise IntegrityError(f"{m_name}: shape {list(m.shape)} does not fit {w_name} {list(w.shape)}")
            folded_w = w.astype(np.float64) @ m
            _put(ck, w_name, folded_w.astype(w.dtype), ck.file_of[w_name])
            if shift is not None:
                bias = ck.tensors[b_name].astype(np.float64) if b_name in ck.tensors else np.zeros(w.shape[0])
                _put(ck, b_name, (bias - folded_w @ shift).astype(w.dtype), ck.file_of[w_name])
                biased = True
        ck.delete(m_name)
        ck.delete(shift_name)
        folded += 1
    if biased:
        _complete_biases(ck, config)
    return folded


def _dense(m: np.ndarray) -> np.ndarray:
    """A transform as the ``[D_out, D_in]`` matrix: a block-diagonal one (``[K, B_out, B_in]``, its
    diagonal blocks) expanded with zeros off the blocks."""
    if m.ndim != 3:
        return m
    k, b_out, b_in = m.shape
    dense = np.zeros((k * b_out, k * b_in), m.dtype)
    for i in range(k):
        dense[i * b_out:(i + 1) * b_out, i * b_in:(i + 1) * b_in] = m[i]
    return dense


def _complete_biases(ck: Checkpoint, config: dict[str, Any]) -> None:
    """Zero biases for the projections of a family where another has one, and the config flag saying so."""
    for flag, family in BIAS_FAMILIES.items():
        blocks = {n[: -len(f".{proj}.bias")] for n in ck.tensors for proj in family if n.endswith(f".{proj}.bias")}
        for block in blocks:
            for proj in family:
                w_name = f"{block}.{proj}.weight"
                if f"{block}.{proj}.bias" not in ck.tensors and w_name in ck.tensors:
                    w = ck.tensors[w_name]
                    _put(ck, f"{block}.{proj}.bias", np.zeros(w.shape[0], w.dtype), ck.file_of[w_name])
        if blocks:
            config[flag] = True
