"""The IR of a BERT whose layers keep different numbers of attention heads after pruning.

``convert_hf`` takes one head count from config.json for every layer. A head-pruned checkpoint
records its per-layer counts in config.json as ``ptmpack_layer_heads`` (and, for transformers
4.x, ``pruned_heads``); this module builds the graph for the unpruned shapes and then re-types it
with the real ones and each layer's own ``num_heads``
(:func:`ptmpack.compress.struct_graph.retype`). The change that would make this module
unnecessary: in ``convert_hf._bert``, take each layer's head count as
``query.weight.shape[0] // (hidden_size // num_attention_heads)``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ptmpack.compress.struct_graph import checked, retype
from ptmpack.errors import UnsupportedError
from ptmpack.ir.model import ModelStructure

LAYER_HEADS = "ptmpack_layer_heads"
_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")


def bert_layer_prefix(tensors: Any) -> str:
    """``""`` or ``"bert."``: where the checkpoint's encoder lives."""
    return "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""


def pruned_heads_model(model_dir: Path, config: dict[str, Any], *, name: str) -> ModelStructure:
    """The IR model of a head-pruned BERT checkpoint directory.

    Raises:
        UnsupportedError: not a BERT, or ``ptmpack_layer_heads`` does not match the layers.
    """
    from ptmpack.ir.convert_hf import build_model, checkpoint_tensors

    if config.get("model_type") != "bert":
        raise UnsupportedError("per-layer head counts are supported for BERT checkpoints only")
    heads = config[LAYER_HEADS]
    if not isinstance(heads, list) or len(heads) != int(config["num_hidden_layers"]):
        raise UnsupportedError(f"config.json {LAYER_HEADS} must list one head count per layer")
    real = checkpoint_tensors(Path(model_dir))
    hidden = int(config["hidden_size"])
    p = bert_layer_prefix(real)
    virtual = dict(real)
    for i in range(len(heads)):
        w = f"{p}encoder.layer.{i}."
        for part in _QKV:
            virtual[f"{w}{part}.weight"] = dataclasses.replace(real[f"{w}{part}.weight"], shape=(hidden, hidden))
            virtual[f"{w}{part}.bias"] = dataclasses.replace(real[f"{w}{part}.bias"], shape=(hidden,))
        o = f"{w}attention.output.dense.weight"
        virtual[o] = dataclasses.replace(real[o], shape=(hidden, hidden))
    model = build_model(config, virtual, name=name)
    shapes = {n: m.shape for n, m in real.items() if virtual[n].shape != m.shape}
    attrs = {f"layers.{i}.attn": {"num_heads": int(h)} for i, h in enumerate(heads)}
    return checked(retype(model, shapes, attrs))
