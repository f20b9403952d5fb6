"""--merge-adapter: RepAdapter (§7.4.4) and linear adapters (§7.4.5) from Model/adapters/, merged exactly,
zero-scale FFN channels removed (the intermediate size shrinks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ptmpack.compress.structure.merge_adapter import merge_adapters
from ptmpack.compress.tree.adapters import FOLDER
from ptmpack.errors import InvalidTreeError, UsageError
from ptmpack.ir.model import ModelStructure
from tests._support.adapters import linear_adapter_tensors, rep_adapter_tensors, write_adapters
from tests._support.struct_models import bert_tensors, forward, llama_tensors, make_tree, rel

IDS = np.array([[2, 3, 4, 5, 2, 6, 9, 11, 12], [7, 8, 4, 5, 7, 3, 9, 20, 30]])


def _types(tree: Path) -> list[str]:
    return [n.type for n in ModelStructure.loads((tree / "Model/graph.json").read_bytes()).main_graph.operators]


def bert_with_adapters(tmp_path: Path) -> Path:
    cfg, t = bert_tensors()
    tree = make_tree(tmp_path, cfg, t)
    rng = np.random.default_rng(7)
    qkv = [f"encoder.layer.0.attention.self.{p}" for p in ("query", "key", "value")]
    adapters = [{"name": "l0_attn", "type": "rep_adapter", "scale": 0.7, "targets": qkv},
                {"name": "l1_ffn_in", "type": "rep_adapter", "scale": 1.3, "targets": ["encoder.layer.1.intermediate.dense"]},
                {"name": "l0_ffn", "type": "linear_adapter", "target": "encoder.layer.0.intermediate.dense"},
                {"name": "l1_ffn", "type": "linear_adapter", "target": "encoder.layer.1.intermediate.dense"},
                {"name": "l1_v", "type": "linear_adapter", "target": "encoder.layer.1.attention.self.value"}]
    tensors = {**rep_adapter_tensors(rng, "l0_attn"), **rep_adapter_tensors(rng, "l1_ffn_in"), **linear_adapter_tensors(rng, "l0_ffn", 64, 16),
               **linear_adapter_tensors(rng, "l1_ffn", 64, 16), **linear_adapter_tensors(rng, "l1_v", 32, 5)}
    write_adapters(tree, adapters, tensors)
    return tree


def test_bert_merge_is_exact_and_shrinks_the_ffn(tmp_path: Path) -> None:
    tree = bert_with_adapters(tmp_path)
    types = _types(tree)
    assert types.count("rep_adapter") == 2 and types.count("transfer_compression_adapter") == 3
    adapted = forward(tree, IDS)
    rec = merge_adapters(tree)
    assert not (tree / FOLDER).exists()
    assert "rep_adapter" not in _types(tree) and "transfer_compression_adapter" not in _types(tree)
    assert rel(adapted, forward(tree, IDS)) < 1e-5
    w = load_file(str(tree / "Model/model.safetensors"))
    assert w["encoder.layer.0.intermediate.dense.weight"].shape == (48, 32)
    assert w["encoder.layer.1.output.dense.weight"].shape == (32, 48)
    assert w["encoder.layer.1.attention.self.value.weight"].shape == (32, 32)  # zero rows stay: head width
    assert int((np.abs(w["encoder.layer.1.attention.self.value.weight"]).sum(1) == 0).sum()) == 5
    assert rec["removed_channels"] == {"encoder.layer.0.intermediate.dense.weight": 16,
                                       "encoder.layer.1.intermediate.dense.weight": 16}
    assert json.loads((tree / "Model/config.json").read_text())["intermediate_size"] == 48
    tech = json.loads((tree / "Meta-info/technicalinfo.json").read_text())
    assert tech["ptm_info"]["intermediate_size"] == 48


@pytest.mark.torch
def test_merged_bert_loads_in_transformers(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tree = bert_with_adapters(tmp_path)
    merge_adapters(tree)
    ref = transformers.BertModel.from_pretrained(str(tree / "Model"), add_pooling_layer=False).eval()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(IDS)).last_hidden_state.numpy()
    assert rel(want, forward(tree, IDS)) < 1e-5


def test_llama_swiglu_channels_removed_only_when_zero(tmp_path: Path) -> None:
    cfg, t = llama_tensors()
    tree = make_tree(tmp_path, cfg, t)
    rng = np.random.default_rng(3)
    adapters = [{"name": "g0", "type": "linear_adapter", "target": "model.layers.0.mlp.gate_proj"},
                {"name": "u1", "type": "linear_adapter", "target": "model.layers.1.mlp.up_proj"},
                {"name": "a0", "type": "rep_adapter", "scale": 0.5,
                 "targets": [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]}]
    tensors = {**linear_adapter_tensors(rng, "g0", 48, 6, shift_zero=True), **linear_adapter_tensors(rng, "u1", 48, 4), **rep_adapter_tensors(rng, "a0")}
    write_adapters(tree, adapters, tensors)
    adapted = forward(tree, IDS)
    rec = merge_adapters(tree)
    assert rel(adapted, forward(tree, IDS)) < 1e-5
    w = load_file(str(tree / "Model/model.safetensors"))
    assert w["model.layers.0.mlp.up_proj.weight"].shape == (42, 32) and w["model.layers.0.mlp.down_proj.weight"].shape == (32, 42)
    assert w["model.layers.1.mlp.up_proj.weight"].shape == (48, 32)  # up with a shift: silu(gate)·β is not constant
    assert rec["uniform_intermediate_size"] is False and rec["intermediate_sizes"] == [42, 48]
    cfg_after = json.loads((tree / "Model/config.json").read_text())
    assert cfg_after["intermediate_size"] == 48 and cfg_after["attention_bias"] is True  # RepAdapter's b_a
    assert "model.layers.1.self_attn.o_proj.bias" in w  # the whole group got (zero) biases


def test_adapter_errors(tmp_path: Path) -> None:
    cfg, t = bert_tensors(layers=1)
    tree = make_tree(tmp_path, cfg, t)
    with pytest.raises(UsageError, match="nothing to merge"):
        merge_adapters(tree)
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidTreeError, match="one common input"):
        write_adapters(tree, [{"name": "x", "type": "rep_adapter", "targets": ["encoder.layer.0.attention.self.query",
                                                                               "encoder.layer.0.output.dense"]}],
                       rep_adapter_tensors(rng, "x"))
    (tree / FOLDER / "adapter_config.json").write_text(json.dumps(
        {"format": "ptmpack-adapters", "adapters": [{"name": "y", "type": "linear_adapter", "target": "t"}]}))
    with pytest.raises(InvalidTreeError, match=r"missing y\.scale"):
        merge_adapters(tree)


def test_steps_that_rewrite_linears_refuse_unmerged_adapters(tmp_path: Path) -> None:
    from ptmpack.compress.structure.fold_norm import fold_norm
    from ptmpack.compress.structure.prune.step import prune

    cfg, t = llama_tensors(layers=1)
    tree = make_tree(tmp_path, cfg, t)
    write_adapters(tree, [{"name": "g", "type": "linear_adapter", "target": "model.layers.0.mlp.gate_proj"}],
                   linear_adapter_tensors(np.random.default_rng(0), "g", 48, 0))
    with pytest.raises(UsageError, match="unmerged adapters"):
        fold_norm(tree, "affine")
    with pytest.raises(UsageError, match="unmerged adapters"):
        prune(tree, "ffn", 0.9, "magnitude")
