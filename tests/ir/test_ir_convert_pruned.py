"""convert_hf on pruned checkpoints: each layer's head count (and FFN width) comes from its tensors.

A head- or FFN-pruned checkpoint keeps config.json's single ``num_attention_heads`` /
``intermediate_size``; the graph must follow the tensors, and must compute what the unpruned
model computes with the removed units' outputs zeroed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ptmpack.errors import UnsupportedError
from ptmpack.ir.convert_hf import TensorMeta, build_model
from tests._support.struct_models import bert_tensors, forward, llama_tensors, make_tree, rel

IDS = np.array([[2, 3, 4, 5, 2, 6, 9, 11], [7, 8, 4, 5, 7, 3, 9, 20]])


def _rows(w: np.ndarray, drop: list[int], width: int, axis: int = 0) -> np.ndarray:
    keep = [i for i in range(w.shape[axis] // width) if i not in drop]
    idx = np.concatenate([np.arange(k * width, (k + 1) * width) for k in keep])
    return np.ascontiguousarray(np.take(w, idx, axis=axis))  # safetensors.numpy writes strided arrays wrongly


def _heads(tree: Path) -> list[tuple[int, int]]:
    from ptmpack.ir.runner import LoadedModel

    with LoadedModel.open(tree) as lm:
        ops = [o for o in lm.model.main_graph.operators if o.type == "attention"]
    return [(int(o.attributes["num_heads"].value),
             int(o.attributes["num_kv_heads"].value) if "num_kv_heads" in o.attributes else 0) for o in ops]


def test_head_pruned_bert_runs_per_layer_heads(tmp_path: Path) -> None:
    cfg, t = bert_tensors()  # 4 heads of width 8 per layer
    drop = {0: [1, 3], 1: [0]}
    pruned, zeroed = dict(t), {k: v.copy() for k, v in t.items()}
    for i, gone in drop.items():
        p = f"encoder.layer.{i}."
        for part in ("query", "key", "value"):
            pruned[f"{p}attention.self.{part}.weight"] = _rows(t[f"{p}attention.self.{part}.weight"], gone, 8)
            pruned[f"{p}attention.self.{part}.bias"] = _rows(t[f"{p}attention.self.{part}.bias"], gone, 8)
        pruned[f"{p}attention.output.dense.weight"] = _rows(t[f"{p}attention.output.dense.weight"], gone, 8, axis=1)
        for h in gone:
            zeroed[f"{p}attention.output.dense.weight"][:, h * 8:(h + 1) * 8] = 0
    tree = make_tree(tmp_path, cfg, pruned, name="pruned")
    assert [h for h, _ in _heads(tree)] == [2, 3]
    assert rel(forward(make_tree(tmp_path, cfg, zeroed, name="zeroed"), IDS), forward(tree, IDS)) < 1e-5


def test_pruned_llama_kv_group_and_unequal_ffn_widths(tmp_path: Path) -> None:
    cfg, t = llama_tensors()  # 4 query heads, 2 KV heads of width 8; FFN 48
    pruned, zeroed = dict(t), {k: v.copy() for k, v in t.items()}
    p = "model.layers.1.self_attn."  # layer 1 loses KV group 1 and its query heads 2, 3
    pruned[f"{p}q_proj.weight"] = _rows(t[f"{p}q_proj.weight"], [2, 3], 8)
    pruned[f"{p}k_proj.weight"] = _rows(t[f"{p}k_proj.weight"], [1], 8)
    pruned[f"{p}v_proj.weight"] = _rows(t[f"{p}v_proj.weight"], [1], 8)
    pruned[f"{p}o_proj.weight"] = _rows(t[f"{p}o_proj.weight"], [2, 3], 8, axis=1)
    zeroed[f"{p}o_proj.weight"][:, 16:] = 0
    m = "model.layers.0.mlp."  # layer 0 keeps 32 of 48 FFN neurons, layer 1 all 48
    keep = np.arange(16, 48)
    for part in ("gate_proj", "up_proj"):
        pruned[f"{m}{part}.weight"] = t[f"{m}{part}.weight"][keep]
    pruned[f"{m}down_proj.weight"] = np.ascontiguousarray(t[f"{m}down_proj.weight"][:, keep])
    zeroed[f"{m}down_proj.weight"][:, :16] = 0
    tree = make_tree(tmp_path, cfg, pruned, name="pruned")
    assert _heads(tree) == [(4, 2), (2, 1)]
    assert rel(forward(make_tree(tmp_path, cfg, zeroed, name="zeroed"), IDS), forward(tree, IDS)) < 1e-5


@pytest.mark.parametrize("rows", [12, 40])
def test_query_rows_that_are_not_whole_heads_are_refused(rows: int) -> None:
    cfg, t = bert_tensors(layers=1)
    metas = {k: TensorMeta("float32", v.shape, "Model/model.safetensors") for k, v in t.items()}
    metas["encoder.layer.0.attention.self.query.weight"] = TensorMeta("float32", (rows, 32), "Model/model.safetensors")
    with pytest.raises(UnsupportedError, match="heads of width 8"):
        build_model(cfg, metas)
