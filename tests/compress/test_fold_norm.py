"""--fold-norm affine (exact) and unified (§7.2.4, calibrated smoothed variances) on tiny LLaMA and BERT trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ptmpack.compress.structure.fold_norm import fold_norm
from ptmpack.compress.tree.rebuild import MARKER, rebuild_graph
from ptmpack.errors import UnsupportedError, UsageError
from ptmpack.ir.model import ModelStructure
from tests._support.struct_models import bert_tensors, forward, llama_tensors, make_tree, rel

IDS = np.array([[2, 3, 4, 5, 2, 6, 9, 11, 12], [7, 8, 4, 5, 7, 3, 9, 20, 30]])


def _weights(tree: Path) -> dict[str, np.ndarray]:
    return load_file(str(tree / "Model/model.safetensors"))


def _ops(tree: Path) -> dict[str, str]:
    model = ModelStructure.loads((tree / "Model/graph.json").read_bytes())
    return {n.name: n.type for n in model.main_graph.operators}


@pytest.mark.parametrize("tied", [True, False])
def test_affine_llama_is_exact_and_stays_a_plain_checkpoint(tmp_path: Path, tied: bool) -> None:
    cfg, t = llama_tensors(tied=tied)
    tree = make_tree(tmp_path, cfg, t)
    before = forward(tree, IDS)
    rec = fold_norm(tree, "affine")
    after = forward(tree, IDS)
    assert rel(before, after) < 1e-5
    assert [r["norm"] for r in rec["folded"]] == ["layers.0.attn_norm", "layers.0.mlp_norm", "layers.1.attn_norm",
                                                  "layers.1.mlp_norm", "final_norm"] and rec["skipped"] == []
    w = _weights(tree)
    assert all(np.all(v == 1.0) for k, v in w.items() if "norm" in k)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert np.allclose(w[q], t[q] * t["model.layers.0.input_layernorm.weight"][None, :], rtol=1e-6)
    assert "lm_head.weight" in w and np.allclose(w["lm_head.weight"], (t["model.embed_tokens.weight"] if tied else
                                                  t["lm_head.weight"]) * t["model.norm.weight"][None, :], rtol=1e-6)
    assert np.array_equal(w["model.embed_tokens.weight"], t["model.embed_tokens.weight"])  # the embedding is kept
    assert json.loads((tree / "Model/config.json").read_text())["tie_word_embeddings"] is False
    assert "rms_norm" in _ops(tree).values()  # still RMSNorm, now with weight 1: transformers loads it as it is


@pytest.mark.torch
def test_affine_llama_loads_in_transformers(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg, t = llama_tensors()
    tree = make_tree(tmp_path, cfg, t)
    fold_norm(tree, "affine")
    ref = transformers.LlamaForCausalLM.from_pretrained(str(tree / "Model")).eval()
    with torch.no_grad():
        want = ref(torch.tensor(IDS)).logits.numpy()
    assert rel(want, forward(tree, IDS)) < 1e-5


def test_affine_refuses_post_norm_bert(tmp_path: Path) -> None:
    cfg, t = bert_tensors()
    tree = make_tree(tmp_path, cfg, t)
    with pytest.raises(UnsupportedError, match="residual") as err:
        fold_norm(tree, "affine")
    assert err.value.exit_code == 6
    assert np.array_equal(_weights(tree)["encoder.layer.0.attention.self.query.weight"],
                          t["encoder.layer.0.attention.self.query.weight"])
    with pytest.raises(UsageError, match="calibration"):
        fold_norm(tree, "unified")
    with pytest.raises(UsageError, match="affine or unified"):
        fold_norm(tree, "both")


def _geomean_second_moment(x: np.ndarray) -> np.ndarray:
    """x: [windows, tokens, C] → the geometric mean over windows of the per-window mean of x²."""
    return np.exp(np.log((x.astype(np.float64) ** 2).mean(1)).mean(0))


def test_unified_llama_folds_every_norm_away(tmp_path: Path) -> None:
    cfg, t = llama_tensors()
    tree = make_tree(tmp_path, cfg, t)
    windows = np.random.default_rng(0).integers(2, 60, size=(3, 16))
    before = forward(tree, IDS)
    rec = fold_norm(tree, "unified", windows)
    assert rec["windows"] == 3 and all("into" in r for r in rec["norms"])
    assert "rms_norm" not in _ops(tree).values()  # nothing normalizes on-line any more
    var0 = _geomean_second_moment(t["model.embed_tokens.weight"][windows])  # layer 0's norm reads the embeddings
    q = "model.layers.0.self_attn.q_proj.weight"
    want = t[q] * (t["model.layers.0.input_layernorm.weight"] / np.sqrt(var0 + 1e-5))[None, :]
    assert np.allclose(_weights(tree)[q], want, rtol=1e-5)
    after = forward(tree, IDS)
    assert np.isfinite(after).all() and rel(before, after) > 1e-3  # an approximation, not an identity
    marker = json.loads((tree / "Model/config.json").read_text())[MARKER]
    assert marker["folded"][0] == "layers.0.attn_norm" and marker["explicit"] == {}
    rebuild_graph(tree)  # a later step's rebuild keeps the unified graph
    assert rel(after, forward(tree, IDS)) == 0.0
    with pytest.raises(UsageError, match="already"):
        fold_norm(tree, "unified", windows)


def test_unified_bert_keeps_explicit_unified_norm_operators(tmp_path: Path) -> None:
    cfg, t = bert_tensors()
    tree = make_tree(tmp_path, cfg, t)
    windows = np.random.default_rng(1).integers(2, 60, size=(2, 12))
    rec = fold_norm(tree, "unified", windows)
    ops = _ops(tree)
    assert "layer_norm" not in ops.values() and ops["embeddings.norm"] == "unified_norm"
    assert sum(v == "unified_norm" for v in ops.values()) == 5 and all("explicit" in r for r in rec["norms"])
    w = _weights(tree)
    emb = (t["embeddings.word_embeddings.weight"][windows] + t["embeddings.position_embeddings.weight"][:12][None]
           + t["embeddings.token_type_embeddings.weight"][0])
    assert np.allclose(w["embeddings.LayerNorm.running_var"], _geomean_second_moment(emb), rtol=1e-5)
    out = forward(tree, IDS)
    assert out.shape == (2, 9, 32) and np.isfinite(out).all()


def test_unified_layer_statistic_freezes_one_normalizer_per_norm(tmp_path: Path) -> None:
    cfg, t = llama_tensors()
    tree = make_tree(tmp_path, cfg, t)
    windows = np.random.default_rng(0).integers(2, 60, size=(3, 16))
    rec = fold_norm(tree, "unified", windows, statistic="layer")
    x = t["model.embed_tokens.weight"][windows].astype(np.float64)
    var0 = np.exp(np.log((x ** 2).mean(axis=(1, 2))).mean())  # geometric mean over windows of the mean square
    q = "model.layers.0.self_attn.q_proj.weight"
    want = t[q] * (t["model.layers.0.input_layernorm.weight"] / np.sqrt(var0 + 1e-5))[None, :]
    assert rec["statistic"] == "layer" and np.allclose(_weights(tree)[q], want, rtol=1e-5)
    with pytest.raises(UsageError, match="channel or layer"):
        fold_norm(make_tree(tmp_path, cfg, t, name="again"), "unified", windows, statistic="token")
