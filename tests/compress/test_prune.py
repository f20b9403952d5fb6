"""--prune heads|ffn|both under a FLOPs budget: structure-aware (Taylor + Fisher, evolutionary search) and magnitude."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ptmpack.compress.structure.prune.importance import Importance
from ptmpack.compress.structure.prune.step import prune
from ptmpack.errors import UnsupportedError, UsageError
from tests._support.struct_models import (
    bert_tensors,
    forward,
    llama_tensors,
    make_tree,
    mask_sites,
    rel,
    zero_pruned_units,
)

IDS = np.array([[2, 3, 4, 5, 2, 6, 9, 11, 12], [7, 8, 4, 5, 7, 3, 9, 20, 30]])
WINDOWS = np.random.default_rng(5).integers(2, 60, size=(4, 12))


def _zeroed_reference(tmp_path: Path, cfg: dict, t: dict[str, np.ndarray], rec: dict, d: int) -> np.ndarray:
    """The unpruned model's output with every pruned unit's output zeroed where it enters the next projection."""
    z = zero_pruned_units(t, rec, d, cfg["model_type"] == "bert")
    return forward(make_tree(tmp_path, cfg, z, name=f"zeroed-{cfg['model_type']}"), IDS)


@pytest.mark.parametrize(("target", "budget"), [("heads", 0.7), ("ffn", 0.85), ("both", 0.7)])
def test_magnitude_prunes_to_budget_and_equals_zeroing(tmp_path: Path, target: str, budget: float) -> None:
    cfg, t = bert_tensors()
    tree = make_tree(tmp_path, cfg, t)
    rec = prune(tree, target, budget, "magnitude")
    assert budget - 0.1 < rec["flops_fraction_kept"] <= budget
    assert rel(_zeroed_reference(tmp_path, cfg, t, rec, 8), forward(tree, IDS)) < 1e-5
    w = load_file(str(tree / "Model/model.safetensors"))
    conf = json.loads((tree / "Model/config.json").read_text())
    doc = json.loads((tree / "Meta-info/technicalinfo.json").read_text())
    tech = doc["ptm_info"]
    assert doc["parameters"] == sum(v.size for v in w.values())
    if target != "ffn":
        assert conf["ptmpack_layer_heads"] == rec["layer_heads"] and conf["num_attention_heads"] == 4
        assert {k: len(v) for k, v in conf["pruned_heads"].items()} == {
            k: len(v) for k, v in rec["removed_units"]["heads"].items()}
        for i, h in enumerate(rec["layer_heads"]):
            assert w[f"encoder.layer.{i}.attention.self.query.weight"].shape == (8 * h, 32)
        assert tech["num_heads"] == max(rec["layer_heads"])
    if target != "heads":
        for i, n in enumerate(rec["layer_intermediate_sizes"]):
            assert w[f"encoder.layer.{i}.output.dense.weight"].shape == (32, n)
        assert tech["intermediate_size"] == max(rec["layer_intermediate_sizes"])


def test_fisher_quadratic_form_has_cross_terms() -> None:
    rng = np.random.default_rng(0)
    samples, grad = rng.standard_normal((5, 4)), rng.standard_normal(4)
    imp = Importance({"heads": [(0, 0), (0, 1)], "ffn": [(0, 0), (0, 1)]}, grad, samples, {"heads": 0, "ffn": 2})
    f = samples.T @ samples / 5
    dm = np.array([-1.0, 0, -1.0, 0])
    assert imp.loss_change(np.array([0, 2])) == pytest.approx(grad @ dm + 0.5 * dm @ f @ dm)
    assert np.allclose(imp.diag_score(), -grad + 0.5 * np.diag(f))


@pytest.mark.torch
def test_structure_aware_bert_and_llama(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    cfg, t = bert_tensors()
    tree = make_tree(tmp_path, cfg, t)
    rec = prune(tree, "both", 0.6, "structure", WINDOWS)
    assert rec["flops_fraction_kept"] <= 0.6 and rec["estimated_loss_increase"] >= 0
    assert rec["search_best_per_generation"] == sorted(rec["search_best_per_generation"], reverse=True)
    assert rel(_zeroed_reference(tmp_path, cfg, t, rec, 8), forward(tree, IDS)) < 1e-5
    # a head-pruned BERT (per-layer head counts: transformers 5 cannot build it) is pruned again, structure-aware
    assert len(set(rec["layer_heads"])) > 1
    cfg2 = json.loads((tree / "Model/config.json").read_text())
    t2 = load_file(str(tree / "Model/model.safetensors"))
    again = prune(tree, "both", 0.8, "structure", WINDOWS)
    assert again["removed"]["heads"] > 0 and again["removed"]["ffn"] > 0 and again["flops_fraction_kept"] <= 0.8
    assert all(a <= b for a, b in zip(again["layer_heads"], rec["layer_heads"], strict=True))
    assert rel(_zeroed_reference(tmp_path / "again", cfg2, t2, again, 8), forward(tree, IDS)) < 1e-5
    lcfg, lt = llama_tensors()
    ltree = make_tree(tmp_path, lcfg, lt, name="llama")
    rec = prune(ltree, "ffn", 0.8, "structure", WINDOWS)
    assert rec["flops_fraction_kept"] <= 0.8 and rec["removed"]["ffn"] > 0
    assert rel(_zeroed_reference(tmp_path, lcfg, lt, rec, 8), forward(ltree, IDS)) < 1e-5


def test_merged_importance_is_the_estimate_of_removing_the_whole_run() -> None:
    """A KV group's mask is its query heads' masks tied together: gradients and Fisher factors add up."""
    rng = np.random.default_rng(1)
    units = {"heads": [(i, j) for i in range(2) for j in range(4)], "ffn": [(0, 0), (0, 1), (1, 0)]}
    imp = Importance(units, rng.standard_normal(11), rng.standard_normal((6, 11)), {"heads": 0, "ffn": 8})
    kv = imp.merged("heads", 2)
    assert kv.units == {"heads": [(0, 0), (0, 1), (1, 0), (1, 1)], "ffn": units["ffn"]}
    assert kv.offset == {"heads": 0, "ffn": 4}
    # group 1 of layer 1 = query heads 6, 7; with FFN unit 10 (layer 1's first neuron)
    assert kv.loss_change(np.array([3, 6])) == pytest.approx(imp.loss_change(np.array([6, 7, 10])))
    assert kv.diag_score()[0] == pytest.approx(imp.loss_change(np.array([0, 1])))
    assert imp.merged("heads", 1) is imp


@pytest.mark.parametrize(("heads", "kv"), [(4, 2), (4, 4), (6, 3)])
def test_llama_heads_prune_whole_kv_groups_uniformly(tmp_path: Path, heads: int, kv: int) -> None:
    """GQA and plain multi-head LLaMA: every layer loses the same KV groups' worth; pruning equals zeroing them."""
    cfg, t = llama_tensors(h=48, heads=heads, kv=kv, layers=3)
    tree = make_tree(tmp_path, cfg, t)
    d, group = 48 // heads, heads // kv
    rec = prune(tree, "heads", 0.8, "magnitude")
    removed = rec["removed_kv_heads"]
    assert len({len(v) for v in removed.values()}) == 1 and len(removed) == 3 and rec["flops_fraction_kept"] <= 0.8
    for layer, groups in removed.items():  # a KV group's query heads go with it
        assert rec["removed_units"]["heads"][layer] == sorted(g * group + j for g in groups for j in range(group))
    assert rel(_zeroed_reference(tmp_path, cfg, t, rec, d), forward(tree, IDS)) < 1e-5
    conf = json.loads((tree / "Model/config.json").read_text())
    left = kv - len(removed["0"])
    assert (conf["num_attention_heads"], conf["num_key_value_heads"], conf["head_dim"]) == (left * group, left, d)
    assert "ptmpack_layer_heads" not in conf and "pruned_heads" not in conf
    w = load_file(str(tree / "Model/model.safetensors"))
    assert w["model.layers.2.self_attn.q_proj.weight"].shape == (left * group * d, 48)
    assert w["model.layers.2.self_attn.k_proj.weight"].shape == (left * d, 48)
    assert w["model.layers.2.self_attn.o_proj.weight"].shape == (48, left * group * d)
    tech = json.loads((tree / "Meta-info/technicalinfo.json").read_text())["ptm_info"]
    assert (tech["num_heads"], tech["num_kv_heads"]) == (left * group, left)
    again = prune(tree, "heads", 0.9, "magnitude") if left > 1 else None  # a pruned config prunes again
    assert again is None or again["layer_kv_heads"][0] < left


@pytest.mark.parametrize(("heads", "kv"), [(6, 2), (4, 1)])
def test_query_heads_go_uniformly_inside_every_kv_group(tmp_path: Path, heads: int, kv: int) -> None:
    """--prune query-heads: every KV group (multi-query too) loses the same number of its query heads; KV heads stay."""
    cfg, t = llama_tensors(h=48, heads=heads, kv=kv, layers=2)
    tree = make_tree(tmp_path, cfg, t)
    d, group = 48 // heads, heads // kv
    rec = prune(tree, "query-heads", 0.9, "magnitude")
    assert rec["flops_fraction_kept"] <= 0.9 and rec["layer_kv_heads"] == [kv, kv] and "removed_kv_heads" not in rec
    per_group = {(int(layer), h // group) for layer, hs in rec["removed_units"]["heads"].items() for h in hs}
    counts = [sum(h // group == g for h in hs) for hs in rec["removed_units"]["heads"].values() for g in range(kv)]
    assert len(per_group) == 2 * kv and len(set(counts)) == 1 and 0 < counts[0] < group
    assert rel(_zeroed_reference(tmp_path, cfg, t, rec, d), forward(tree, IDS)) < 1e-5
    conf = json.loads((tree / "Model/config.json").read_text())
    assert (conf["num_attention_heads"], conf["num_key_value_heads"], conf["head_dim"]) == (
        kv * (group - counts[0]), kv, d)
    w = load_file(str(tree / "Model/model.safetensors"))
    assert w["model.layers.1.self_attn.k_proj.weight"].shape == (kv * d, 48)
    assert w["model.layers.1.self_attn.q_proj.weight"].shape == (conf["num_attention_heads"] * d, 48)


def test_head_units_that_cannot_go_are_refused_with_the_reason(tmp_path: Path) -> None:
    cfg, t = llama_tensors(heads=4, kv=1)
    with pytest.raises(UnsupportedError, match="one KV head per layer") as err:
        prune(make_tree(tmp_path, cfg, t), "heads", 0.8, "magnitude")
    assert "query-heads" in (err.value.hint or "")
    cfg, t = llama_tensors(heads=4, kv=4)
    with pytest.raises(UnsupportedError, match="one query head per key/value head"):
        prune(make_tree(tmp_path, cfg, t, name="mha"), "query-heads", 0.8, "magnitude")
    cfg, t = bert_tensors(layers=1)
    with pytest.raises(UnsupportedError, match="own keys and values"):
        prune(make_tree(tmp_path, cfg, t, name="bert"), "query-heads", 0.8, "magnitude")


@pytest.mark.torch
@pytest.mark.parametrize("method", ["structure", "magnitude"])
@pytest.mark.parametrize("target", ["heads", "query-heads"])
def test_head_pruned_gqa_llama_loads_in_transformers_with_the_same_logits(tmp_path: Path, method: str,
                                                                          target: str) -> None:
    """The peer check: config.json + safetensors of the pruned tree load in transformers and compute the IR's logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg, t = llama_tensors(h=48, heads=6, kv=3, ffn=64)
    tree = make_tree(tmp_path, cfg, t)
    rec = prune(tree, target, 0.8, method, WINDOWS)
    assert rec["removed"]["heads"] > 0 and rec["flops_fraction_kept"] <= 0.8
    model = transformers.AutoModelForCausalLM.from_pretrained(tree / "Model", dtype=torch.float32).eval()
    assert model.config.num_key_value_heads == rec["layer_kv_heads"][0] <= 3
    assert model.config.num_attention_heads == rec["layer_heads"][0] < 6
    with torch.no_grad():
        theirs = model(torch.tensor(IDS)).logits.numpy()
    assert rel(theirs, forward(tree, IDS)) < 1e-5


@pytest.mark.torch
def test_head_pruned_qwen2_keeps_its_biases_and_loads_in_transformers(tmp_path: Path) -> None:
    """Qwen2 (GQA with q/k/v biases, untied head): the kept groups' bias entries go with their rows."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg, t = llama_tensors(h=48, heads=6, kv=3, ffn=64, tied=False)
    cfg.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    rng = np.random.default_rng(3)
    for i in range(2):
        for part, n in (("q_proj", 48), ("k_proj", 24), ("v_proj", 24)):
            t[f"model.layers.{i}.self_attn.{part}.bias"] = rng.normal(0, 0.5, n).astype(np.float32)
    tree = make_tree(tmp_path, cfg, t)
    rec = prune(tree, "heads", 0.85, "magnitude")
    assert rec["removed"]["heads"] == 2  # one group in each layer
    w = load_file(str(tree / "Model/model.safetensors"))
    for i, gone in rec["removed_kv_heads"].items():
        kept = [g for g in range(3) if g not in gone]
        k = np.concatenate([np.arange(g * 8, g * 8 + 8) for g in kept])
        q = np.concatenate([np.arange(g * 16, g * 16 + 16) for g in kept])
        assert np.array_equal(w[f"model.layers.{i}.self_attn.k_proj.bias"], t[f"model.layers.{i}.self_attn.k_proj.bias"][k])
        assert np.array_equal(w[f"model.layers.{i}.self_attn.q_proj.bias"], t[f"model.layers.{i}.self_attn.q_proj.bias"][q])
    model = transformers.AutoModelForCausalLM.from_pretrained(tree / "Model", dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = model(torch.tensor(IDS)).logits.numpy()
    assert rel(theirs, forward(tree, IDS)) < 1e-5


def test_prune_usage_errors(tmp_path: Path) -> None:
    cfg, t = bert_tensors(layers=1)
    tree = make_tree(tmp_path, cfg, t)
    with pytest.raises(UsageError, match="calibration"):
        prune(tree, "ffn", 0.8, "structure", None)
    with pytest.raises(UsageError):
        prune(tree, "rows", 0.8, "magnitude")
    with pytest.raises(UsageError, match="budget"):
        prune(tree, "ffn", 0.0, "magnitude")
    with pytest.raises(UnsupportedError, match="cannot be met"):
        prune(tree, "heads", 0.1, "magnitude")
    lcfg, lt = llama_tensors(layers=1)
    with pytest.raises(UnsupportedError, match="cannot be met while keeping a KV group"):
        prune(make_tree(tmp_path, lcfg, lt, name="llama"), "heads", 0.5, "magnitude")


@pytest.mark.torch
def test_gqa_head_and_group_gradients_match_finite_differences(tmp_path: Path) -> None:
    """The mask gradients the scores start from: scaling a query head's (or a KV group's) output-projection
    columns by 1 - eps changes the mean calibration loss by -eps * g."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from ptmpack.compress.structure.prune.importance import importance

    cfg, t = llama_tensors(h=48, heads=6, kv=3, ffn=64)
    tree = make_tree(tmp_path, cfg, t)
    imp = importance(tree, mask_sites("llama", ("heads",)), WINDOWS[:2], encoder=False)
    groups = imp.merged("heads", 2)
    model = transformers.AutoModelForCausalLM.from_pretrained(tree / "Model", dtype=torch.float64).eval()
    ids = torch.tensor(WINDOWS[:2])

    def loss(layer: int, cols: slice, eps: float) -> float:
        w = model.model.layers[layer].self_attn.o_proj.weight
        saved = w.detach().clone()
        with torch.no_grad():
            w[:, cols] *= 1 - eps
            # the shifted next-token loss transformers computes, kept in float64 (its own loss upcasts to float32 only)
            value = float(np.mean([torch.nn.functional.cross_entropy(model(input_ids=r[None]).logits[0, :-1], r[1:]).item()
                                   for r in ids]))
            w.copy_(saved)
        return value

    eps = 1e-2  # central differences: O(eps²) error; smaller steps meet the float32 RMSNorm transformers computes
    for layer, head in ((0, 1), (1, 4)):
        fd = (loss(layer, slice(head * 8, head * 8 + 8), -eps) - loss(layer, slice(head * 8, head * 8 + 8), eps)) / (2 * eps)
        assert imp.grad[layer * 6 + head] == pytest.approx(fd, rel=1e-3)
    fd = (loss(1, slice(16, 32), -eps) - loss(1, slice(16, 32), eps)) / (2 * eps)  # KV group 1 = query heads 2, 3
    assert groups.grad[3 + 1] == pytest.approx(fd, rel=1e-3)


@pytest.mark.torch
@pytest.mark.parametrize("target", ["heads", "query-heads"])
def test_head_pruned_and_quantized_package_unpacks_into_a_checkpoint_transformers_runs(tmp_path: Path,
                                                                                       target: str) -> None:
    """The distribution path: compress (GQA head pruning + symmetric RTN) → .ptm → unpack → transformers and
    compressed-tensors load it and compute the logits ptmpack's IR computes from the package."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("compressed_tensors")
    from ptmpack.compress.pipeline import compress
    from ptmpack.compress.spec import CompressSpec
    from ptmpack.config import PackConfig
    from ptmpack.ir.runner import LoadedModel
    from ptmpack.storage.unpack import unpack_file
    from tests._support.tiny_models import tiny_tree

    tree, out, ids = tiny_tree(tmp_path, "llama"), tmp_path / "q.ptm", np.arange(3, 40)[None]
    compress(tree, out, CompressSpec(prune=target, flops_budget=0.9, prune_method="magnitude", quant="rtn", bits=4,
                                     group_size=32, symmetric=True), PackConfig())
    unpack_file(out, tmp_path / "unpacked")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "unpacked" / "Model", dtype=torch.float32)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (
        {"heads": (2, 1), "query-heads": (2, 2)}[target])
    with torch.no_grad():
        theirs = model.eval()(torch.tensor(ids)).logits.numpy()
    with LoadedModel.open(out) as lm:
        ours = lm.forward(ids)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3 * float(np.abs(theirs).max()))
