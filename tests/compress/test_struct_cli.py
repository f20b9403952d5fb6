"""The structure steps through ``ptmpack compress`` (pipeline order, --json report, the .ptm runs), and torch-optional."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests._support.adapters import linear_adapter_tensors, rep_adapter_tensors, write_adapters
from tests._support.clirun import assert_clean_error, cli
from tests._support.struct_models import TEXT, bert_tensors, llama_tensors, make_tree


def _lora(d: Path) -> Path:
    rng = np.random.default_rng(0)
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                       "target_modules": ["q_proj"]}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": rng.normal(size=(2, 32)).astype(np.float32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": rng.normal(size=(32, 2)).astype(np.float32)},
              str(d / "adapter_model.safetensors"))
    return d


def _text(tmp: Path) -> Path:
    (tmp / "calib.txt").write_text(TEXT * 40)
    return tmp / "calib.txt"


def test_lora_fold_prune_pipeline_json_and_run(tmp_path: Path) -> None:
    cfg, t = llama_tensors()
    tree = make_tree(tmp_path, cfg, t)
    out = tmp_path / "s.ptm"
    run = cli("compress", tree, "-o", out, "--merge-lora", _lora(tmp_path / "lora"), "--fold-norm", "affine",
              "--prune", "ffn", "--flops-budget", "0.9", "--prune-method", "magnitude", "--calib", _text(tmp_path), "--json")
    assert run.code == 0, run.err
    steps = run.json()["steps"]
    assert [s["method"] for s in steps] == ["merge_lora", "fold_norm", "prune_magnitude"]
    for s in steps:
        assert {"size_before", "size_after", "flops_before", "flops_after", "layers", "quality"} <= set(s)
        assert s["quality"]["metric"] == "perplexity"
    assert steps[2]["flops_after"] <= 0.9 * steps[2]["flops_before"]
    top = cli("run", out, "--tokens", "2,3,4,5", "--json")
    assert top.code == 0, top.err


def test_adapter_merge_and_unified_norm_on_bert(tmp_path: Path) -> None:
    cfg, t = bert_tensors()
    tree = make_tree(tmp_path, cfg, t)
    rng = np.random.default_rng(1)
    write_adapters(tree, [{"name": "a", "type": "rep_adapter", "scale": 0.5,
                           "targets": [f"encoder.layer.0.attention.self.{p}" for p in ("query", "key", "value")]},
                          {"name": "f", "type": "linear_adapter", "target": "encoder.layer.1.intermediate.dense"}],
                   {**rep_adapter_tensors(rng, "a"), **linear_adapter_tensors(rng, "f", 64, 8)})
    out = tmp_path / "b.ptm"
    run = cli("compress", tree, "-o", out, "--merge-adapter", "--fold-norm", "unified", "--calib", _text(tmp_path),
              "--nsamples", "4", "--seqlen", "16", "--json")
    assert run.code == 0, run.err
    merge, fold = run.json()["steps"]
    assert merge["removed_channels"] == {"encoder.layer.1.intermediate.dense.weight": 8}
    assert merge["quality"]["metric"] == "embedding_cosine_to_before" and merge["quality"]["after"] > 0.9999
    assert fold["mode"] == "unified" and fold["windows"] == 4
    emb = cli("run", out, "--tokens", "2,3,4", "--json")
    assert emb.code == 0, emb.err


def test_affine_fold_on_bert_is_refused_with_exit_6(tmp_path: Path) -> None:
    cfg, t = bert_tensors(layers=1)
    tree = make_tree(tmp_path, cfg, t)
    run = cli("compress", tree, "-o", tmp_path / "x.ptm", "--fold-norm", "affine")
    assert_clean_error(run, 6)
    assert not (tmp_path / "x.ptm").exists()


@pytest.mark.parametrize("args", [("--quant", "ptq", "--bits", "8", "--act-bits", "8"),
                                  ("--prune", "ffn", "--flops-budget", "0.9")])
def test_torch_methods_exit_6_without_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple) -> None:
    cfg, t = bert_tensors(layers=1)
    tree = make_tree(tmp_path, cfg, t)
    for name in [m for m in sys.modules if m == "torch" or m.startswith(("torch.", "transformers"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)
    run = cli("compress", tree, "-o", tmp_path / "x.ptm", *args, "--calib", _text(tmp_path), "--seqlen", "16")
    assert_clean_error(run, 6)
    assert "PyTorch" in run.err or "torch" in run.err


def test_numpy_methods_run_without_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, t = llama_tensors(layers=1)
    tree = make_tree(tmp_path, cfg, t)
    for name in [m for m in sys.modules if m == "torch" or m.startswith(("torch.", "transformers"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)
    run = cli("compress", tree, "-o", tmp_path / "x.ptm", "--merge-lora", _lora(tmp_path / "lora"), "--fold-norm",
              "unified", "--prune", "ffn", "--flops-budget", "0.9", "--prune-method", "magnitude", "--calib",
              _text(tmp_path), "--nsamples", "2", "--seqlen", "16", "--json")
    assert run.code == 0, run.err
    assert [s["method"] for s in run.json()["steps"]] == ["merge_lora", "fold_norm", "prune_magnitude"]


@pytest.mark.torch
def test_ptq_through_the_cli_runs_and_evaluates(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    cfg, t = bert_tensors()
    tree = make_tree(tmp_path, cfg, t)
    out = tmp_path / "p.ptm"
    run = cli("compress", tree, "-o", out, "--quant", "ptq", "--bits", "4", "--act-bits", "8", "--calib",
              _text(tmp_path), "--nsamples", "4", "--seqlen", "16", "--epochs", "1", "--json")
    assert run.code == 0, run.err
    step = run.json()["steps"][0]
    assert step["method"] == "ptq" and step["act_bits"] == 8 and step["size_after"] < step["size_before"]
    assert 0.5 < step["quality"]["after"] < 1.0
    emb = cli("eval", out, "--embeddings", _text(tmp_path), "--json")
    assert emb.code == 0, emb.err


def test_unified_norm_composes_with_weight_quantization(tmp_path: Path) -> None:
    cfg, t = llama_tensors(layers=1)
    tree = make_tree(tmp_path, cfg, t)
    out = tmp_path / "x.ptm"
    run = cli("compress", tree, "-o", out, "--fold-norm", "unified", "--calib", _text(tmp_path),
              "--quant", "rtn", "--bits", "8", "--group-size", "16", "--nsamples", "2", "--seqlen", "32")
    assert run.code == 0, run.err
    alone = tmp_path / "unified.ptm"
    assert cli("compress", tree, "-o", alone, "--fold-norm", "unified", "--calib", _text(tmp_path)).code == 0
    # the quantized package keeps the unified graph (no norm put back), its linears quantized
    quantized, unified = _runs_and_ops(out), _runs_and_ops(alone)
    assert "quantized_linear" in quantized and "rms_norm" not in unified
    linears = ("linear", "quantized_linear")
    assert [t for t in quantized if t not in linears] == [t for t in unified if t not in linears]


@pytest.mark.torch
def test_unified_norm_composes_with_affine_quant(tmp_path: Path) -> None:
    """AffineQuant after ``--fold-norm unified`` (issue 17): the folded norms stay folded, a transform takes their
    place before the quantized linears, and the package runs."""
    pytest.importorskip("torch")
    cfg, t = llama_tensors(layers=1)
    tree = make_tree(tmp_path, cfg, t)
    out = tmp_path / "y.ptm"
    run = cli("compress", tree, "-o", out, "--fold-norm", "unified", "--calib", _text(tmp_path),
              "--quant", "affine", "--group-size", "16", "--nsamples", "2", "--seqlen", "32", "--epochs", "1")
    assert run.code == 0, run.err
    types = _runs_and_ops(out)
    assert "rms_norm" not in types and "affine_transform" in types and "quantized_linear" in types

def _runs_and_ops(ptm: Path) -> list[str]:
    """The operator types of the package's main graph, after checking that it runs to finite outputs."""
    from ptmpack.ir.runner import LoadedModel

    with LoadedModel.open(ptm) as lm:
        assert np.isfinite(lm.forward(np.arange(6)[None] % 40)).all()
        return [o.type for o in lm.model.main_graph.operators]


def _tensors_of(ptm: Path) -> dict[str, np.ndarray]:
    from ptmpack.storage.package import open_package

    with open_package(ptm) as pkg:
        return {name: np.array(t) for name, t in pkg.iter_tensors()}


def _attention_heads(ptm: Path) -> list[int]:
    from ptmpack.ir.runner import LoadedModel

    with LoadedModel.open(ptm) as lm:
        ops = lm.model.main_graph.operators
    return [int(o.attributes["num_heads"].value) for o in ops if o.type == "attention"]


@pytest.mark.parametrize("quant", [("rtn", "--bits", "8"),
                                   ("gptq", "--bits", "4", "--group-size", "8", "--nsamples", "4", "--seqlen", "16",
                                    "--calib")])
def test_head_pruning_then_quantization_in_one_run_equals_two_runs(tmp_path: Path, quant: tuple[str, ...]) -> None:
    """--prune heads + --quant rtn|gptq: convert_hf reads each layer's head count from the pruned tensors."""
    cfg, t = bert_tensors()
    tree = make_tree(tmp_path, cfg, t)
    prune_args = ("--prune", "heads", "--flops-budget", "0.7", "--prune-method", "magnitude")
    quant_args = ("--quant", *quant, *([str(_text(tmp_path))] if quant[-1] == "--calib" else []))
    both = cli("compress", tree, "-o", tmp_path / "both.ptm", *prune_args, *quant_args, "--json")
    assert both.code == 0, both.err
    assert [s["method"] for s in both.json()["steps"]] == ["prune_magnitude", quant[0]]
    first = cli("compress", tree, "-o", tmp_path / "pruned.ptm", *prune_args)
    assert first.code == 0, first.err
    second = cli("compress", tmp_path / "pruned.ptm", "-o", tmp_path / "steps.ptm", *quant_args)
    assert second.code == 0, second.err
    one, two = _tensors_of(tmp_path / "both.ptm"), _tensors_of(tmp_path / "steps.ptm")
    assert set(one) == set(two) and any(k.endswith("weight_packed") for k in one)
    for k in one:
        assert np.array_equal(one[k], two[k]), k
    heads = _attention_heads(tmp_path / "both.ptm")
    assert heads == _attention_heads(tmp_path / "pruned.ptm") and len(heads) == 2 and min(heads) < 4
    for i, h in enumerate(heads):
        assert one[f"encoder.layer.{i}.attention.self.query.weight_packed"].shape[0] == 8 * h
    ids = "2,3,4,5,6"
    runs = [cli("run", tmp_path / f"{n}.ptm", "--tokens", ids, "--json") for n in ("both", "steps", "pruned")]
    assert all(r.code == 0 for r in runs), [r.err for r in runs]
    one, two, fp = (np.asarray(r.json()["embedding"], np.float64) for r in runs)
    assert np.array_equal(one, two)
    assert 0 < np.linalg.norm(one - fp) / np.linalg.norm(fp) < 0.2  # quantized pruned model, not the model itself


@pytest.mark.parametrize(("target", "heads", "kv"), [("heads", 4, 2), ("query-heads", 3, 3)])
def test_gqa_head_pruning_through_the_cli(tmp_path: Path, target: str, heads: int, kv: int) -> None:
    """--prune heads (whole KV groups) and --prune query-heads on a LLaMA with 6 query heads on 3 KV heads, + RTN."""
    cfg, t = llama_tensors(h=48, heads=6, kv=3, ffn=64)
    tree = make_tree(tmp_path, cfg, t)
    budget = {"heads": "0.85", "query-heads": "0.9"}[target]
    run = cli("compress", tree, "-o", tmp_path / "out.ptm", "--prune", target, "--flops-budget", budget,
              "--prune-method", "magnitude", "--quant", "rtn", "--bits", "8", "--json")
    assert run.code == 0, run.err
    steps = run.json()["steps"]
    assert [s["method"] for s in steps] == ["prune_magnitude", "rtn"]
    from ptmpack.ir.runner import LoadedModel

    with LoadedModel.open(tmp_path / "out.ptm") as lm:
        attn = [o for o in lm.model.main_graph.operators if o.type == "attention"]
    assert [(int(o.attributes["num_heads"].value), int(o.attributes["num_kv_heads"].value)) for o in attn] == [
        (heads, kv), (heads, kv)]
    out = cli("run", tmp_path / "out.ptm", "--tokens", "2,3,4,5,6", "--json")
    assert out.code == 0, out.err
