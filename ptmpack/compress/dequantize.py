"""``unpack --dequantize``: turn a compressed package's quantized linears back into float weights.

Each ``prefix.weight_packed`` (+ scale, zero point, shape, g_idx) becomes ``prefix.weight``
in the scale's float dtype (``(q - zero_point) · scale``, exactly what the
``quantized_linear`` operator computes), ``config.json`` loses its ``quantization_config``,
and ``Model/graph.json`` is rebuilt with plain ``linear`` operators. The result is an
ordinary float checkpoint any tool loads (the quantization error stays in the weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.storage import SUFFIXES, quantized_prefixes, read_quantized_linear
from ptmpack.errors import UnsupportedError
from ptmpack.quant.scheme import scheme_of


def dequantize_tree(tree: Path) -> dict[str, Any]:
    """Dequantize every quantized linear of the package tree ``tree`` in place; return a report.

    A tree without quantized layers is left as it is (``layers`` 0).

    Raises:
        UnsupportedError: quantized tensors whose config.json states no usable scheme.
        IntegrityError: inconsistent quantized tensors.
    """
    from ptmpack.compress.quantize import ModelTensors, read_json, regraph, write_json

    tree = Path(tree)
    model_dir = tree / "Model"
    if not any(model_dir.glob("*.safetensors")):
        return {"layers": 0, "files": []}
    tensors = ModelTensors(model_dir)
    prefixes = quantized_prefixes(tensors.names())
    if not prefixes:
        return {"layers": 0, "files": []}
    config_path = model_dir / "config.json"
    config = read_json(config_path)
    scheme = scheme_of(config)
    if scheme is None:
        raise UnsupportedError(f"{config_path}: quantized weights but no compressed-tensors quantization_config")
    conv1d = config.get("model_type") == "gpt2"  # GPT-2 Conv1D weights are [in, out]; stored quantized as [out, in]
    for prefix in prefixes:
        file = tensors.where[f"{prefix}.weight_packed"]
        stored = tensors.files[file]
        q = read_quantized_linear(stored, prefix, scheme.bits)
        dtype = q.scale.dtype if q.scale.dtype.kind == "f" else np.dtype(np.float32)
        for tail in SUFFIXES:
            if stored.pop(f"{prefix}.{tail}", None) is not None:
                del tensors.where[f"{prefix}.{tail}"]
        w = q.dequantize(dtype)
        stored[f"{prefix}.weight"] = np.ascontiguousarray(w.T) if conv1d else w
        tensors.where[f"{prefix}.weight"] = file
        tensors.changed.add(file)
    files = sorted(tensors.changed)
    tensors.save()
    config.pop("quantization_config", None)
    write_json(config_path, config)
    regraph(tree)
    return {"layers": len(prefixes), "files": [f"Model/{f}" for f in files], "bits": scheme.bits,
            "group_size": scheme.group_size}
