"""--merge-lora: PEFT adapters merged into the package weights (W + s·B·A), checked against PEFT itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ptmpack.compress.structure.lora import merge_lora, scaling
from ptmpack.errors import InvalidTreeError, UnsupportedError, UsageError
from tests._support.struct_models import bert_tensors, forward, make_tree, minilm_tree, rel


def _adapter(d: Path, cfg: dict, tensors: dict[str, np.ndarray]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **cfg}))
    save_file(tensors, str(d / "adapter_model.safetensors"))
    return d


def test_scaling_follows_peft_rules() -> None:
    cfg = {"r": 8, "lora_alpha": 16, "rank_pattern": {"query": 4}, "alpha_pattern": {"layer.1.attention.self.value": 2}}
    assert scaling(cfg, "encoder.layer.0.attention.self.key") == 2.0
    assert scaling(cfg, "encoder.layer.0.attention.self.query") == 4.0          # 16 / 4
    assert scaling(cfg, "encoder.layer.1.attention.self.value") == 0.25         # 2 / 8
    assert scaling(cfg, "encoder.layer.0.attention.self.value") == 2.0
    assert scaling({**cfg, "use_rslora": True}, "encoder.layer.0.attention.self.key") == pytest.approx(16 / math.sqrt(8))


def test_merge_matches_formula_and_runs(tmp_path: Path) -> None:
    cfg, t = bert_tensors()
    tree = make_tree(tmp_path, cfg, t)
    rng = np.random.default_rng(1)
    mods = {"encoder.layer.0.attention.self.query": (32, 32), "encoder.layer.1.output.dense": (32, 64)}
    ad: dict[str, np.ndarray] = {}
    for m, (o, i) in mods.items():
        r = 2 if "query" in m else 3
        ad[f"base_model.model.{m}.lora_A.weight"] = rng.standard_normal((r, i)).astype(np.float32) * 0.1
        ad[f"base_model.model.{m}.lora_B.weight"] = rng.standard_normal((o, r)).astype(np.float32) * 0.1
    acfg = {"r": 3, "lora_alpha": 6, "use_rslora": True, "rank_pattern": {"query": 2}, "target_modules": ["query", "dense"]}
    ids = np.array([[2, 3, 4, 5, 2, 6]])
    before = forward(tree, ids)
    rec = merge_lora(tree, _adapter(tmp_path / "ad", acfg, ad))
    merged = load_file(str(tree / "Model/model.safetensors"))
    for m in mods:
        a, b = ad[f"base_model.model.{m}.lora_A.weight"], ad[f"base_model.model.{m}.lora_B.weight"]
        s = 6 / math.sqrt(a.shape[0])
        want = t[f"{m}.weight"].astype(np.float64) + s * (b.astype(np.float64) @ a)
        assert np.abs(merged[f"{m}.weight"] - want).max() < 1e-6
    untouched = "encoder.layer.0.attention.self.key.weight"
    assert np.array_equal(merged[untouched], t[untouched])
    assert [r["tensor"] for r in rec["merged"]] == sorted(f"{m}.weight" for m in mods)
    assert rel(before, forward(tree, ids)) > 1e-4  # the adapter changed the model that runs


def test_merge_rejections(tmp_path: Path) -> None:
    cfg, t = bert_tensors(layers=1)
    tree = make_tree(tmp_path, cfg, t)
    a = np.ones((2, 32), np.float32)
    with pytest.raises(UsageError, match="adapter_config"):
        merge_lora(tree, tmp_path)
    bad = _adapter(tmp_path / "one", {"r": 2, "lora_alpha": 2},
                   {"base_model.model.encoder.layer.0.attention.self.query.lora_A.weight": a})
    with pytest.raises(InvalidTreeError, match="only one"):
        merge_lora(tree, bad)
    ghost = _adapter(tmp_path / "ghost", {"r": 2, "lora_alpha": 2},
                     {"base_model.model.encoder.layer.9.query.lora_A.weight": a,
                      "base_model.model.encoder.layer.9.query.lora_B.weight": np.ones((32, 2), np.float32)})
    with pytest.raises(InvalidTreeError, match="does not have"):
        merge_lora(tree, ghost)
    dora = _adapter(tmp_path / "dora", {"r": 2, "lora_alpha": 2, "use_dora": True}, {"x.lora_A.weight": a})
    with pytest.raises(UnsupportedError, match="DoRA"):
        merge_lora(tree, dora)
    extra = _adapter(tmp_path / "extra", {"r": 2, "lora_alpha": 2}, {"base_model.model.classifier.weight": a})
    with pytest.raises(UnsupportedError, match="not a LoRA"):
        merge_lora(tree, extra)
    shape = _adapter(tmp_path / "shape", {"r": 2, "lora_alpha": 2},
                     {"base_model.model.encoder.layer.0.attention.self.query.lora_A.weight": np.ones((2, 7), np.float32),
                      "base_model.model.encoder.layer.0.attention.self.query.lora_B.weight": np.ones((32, 2), np.float32)})
    with pytest.raises(InvalidTreeError, match="update is"):
        merge_lora(tree, shape)
    assert np.array_equal(load_file(str(tree / "Model/model.safetensors"))["encoder.layer.0.attention.self.query.weight"],
                          t["encoder.layer.0.attention.self.query.weight"])  # refusals leave the weights as they were


@pytest.mark.torch
@pytest.mark.realweights
@pytest.mark.parametrize("rslora", [False, True])
def test_minilm_merge_equals_peft_merge_and_unload(tmp_path: Path, rslora: bool) -> None:
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    tree = minilm_tree(tmp_path)
    torch.manual_seed(0)
    base = transformers.BertModel.from_pretrained(str(tree / "Model")).eval()
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "dense"], lora_dropout=0.0,
                          use_rslora=rslora, rank_pattern={"intermediate.dense": 2}, alpha_pattern={"value": 3})
    model = peft.get_peft_model(base, cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(1000, 8000, (4, 12), generator=torch.Generator().manual_seed(1))
    target = torch.randn(4, 12, 384, generator=torch.Generator().manual_seed(2))
    model.train()
    for _ in range(3):
        opt.zero_grad()
        loss = ((model(input_ids=ids).last_hidden_state - target) ** 2).mean()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(str(tmp_path / "adapter"))
    with torch.no_grad():
        peft_out = model(input_ids=ids[:2]).last_hidden_state.numpy()
    reference = model.merge_and_unload()
    ref_state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    with torch.no_grad():
        ref_out = reference(input_ids=ids[:2]).last_hidden_state.numpy()

    rec = merge_lora(tree, tmp_path / "adapter")
    # query, value, attention.output.dense, intermediate.dense, output.dense per layer, and pooler.dense
    assert len(rec["merged"]) == 6 * 5 + 1
    ours = load_file(str(tree / "Model/model.safetensors"))
    for name in (r["tensor"] for r in rec["merged"]):
        want = ref_state[name]
        assert rel(want, ours[name]) < 1e-6, name
    changed = [r for r in rec["merged"] if r["relative_update"] > 1e-4]
    assert len(changed) == 30  # training moved every B away from zero but the pooler's (it gets no gradient)
    got = forward(tree, ids[:2].numpy())
    assert rel(ref_out, got) < 1e-5
    assert rel(peft_out, got) < 1e-5


def test_apply_reports_sizes_flops_layers_quality(tmp_path: Path) -> None:
    from ptmpack.compress.eval.quality import held_out
    from ptmpack.compress.pipeline import run_step
    from ptmpack.compress.spec import CompressSpec
    from ptmpack.compress.step import StepContext
    from ptmpack.compress.structure.lora import LoraStep
    from tests._support.struct_models import TEXT

    cfg, t = bert_tensors()
    tree = make_tree(tmp_path, cfg, t)
    ad = {"base_model.model.encoder.layer.1.attention.self.value.lora_A.weight": np.full((2, 32), 0.1, np.float32),
          "base_model.model.encoder.layer.1.attention.self.value.lora_B.weight": np.full((32, 2), 0.1, np.float32)}
    (tmp_path / "text.txt").write_text(TEXT)
    spec = CompressSpec(merge_lora=_adapter(tmp_path / "ad", {"r": 2, "lora_alpha": 4}, ad), calib=tmp_path / "text.txt")
    record = run_step(LoraStep(), "merge_lora", tree, StepContext(spec), held_out(spec))
    rep = record.to_json()
    json.dumps(rep)
    assert record.quality is not None and record.quality.metric == "embedding_cosine_to_before"
    assert rep["method"] == "merge_lora" and rep["size_before"] == rep["size_after"] > 0
    assert rep["flops_before"] == rep["flops_after"] > 0
    errs = [r["relative_error"] for r in rep["layers"]]
    assert len(errs) == 2 and errs[0] < 1e-6 < errs[1]  # layer 0 untouched, layer 1 changed
    assert rep["quality"]["metric"] == "embedding_cosine_to_before" and rep["quality"]["after"] < 1.0
