"""--quant ptq: W·A post-training quantization with channel compensation and cascaded reconstruction;
the package runs fake_quant → quantized_linear and computes what the simulated integer engine computed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ptmpack.errors import UsageError
from ptmpack.ir.model import ModelStructure
from ptmpack.ir.ops.fakequant import fake_quant
from tests._support.irbuild import run_op
from tests._support.struct_models import bert_tensors, forward, llama_tensors, make_tree, rel

WINDOWS = np.random.default_rng(2).integers(2, 60, size=(4, 12))


def test_fake_quant_operator() -> None:
    x = np.array([[-1.0, -0.26, 0.0, 0.24, 0.5, 3.0]], np.float32)
    got = run_op("fake_quant", {"X": x, "Scale": np.array([0.25], np.float32),
                                "ZeroPoint": np.array([-2], np.int8)}, bits=4)["Y"]
    want = (np.clip(np.rint(x / 0.25) - 2, -8, 7) + 2) * 0.25
    assert np.allclose(got, want) and got[0, -1] == pytest.approx(2.25)  # clipped at the top code
    c, b = np.array([1, 2, 1, 1, 4, 1], np.float32), np.full(6, 0.1, np.float32)
    comp = run_op("fake_quant", {"X": x, "Scale": np.array([0.1], np.float32), "CompScale": c, "CompShift": b},
                  bits=8)["Y"]
    assert np.allclose(comp, fake_quant((x - b) / c, 0.1, 0.0, 8))


@pytest.mark.torch
@pytest.mark.parametrize(("bits", "compensate", "reconstruct"), [(8, True, True), (4, False, False)])
def test_ptq_bert_package_matches_the_simulated_engine(tmp_path: Path, bits: int, compensate: bool,
                                                       reconstruct: bool) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ptmpack.compress.quant.ptq.step import ptq

    cfg, t = bert_tensors()
    tree = make_tree(tmp_path, cfg, t)
    ids = WINDOWS[:1]
    before = forward(tree, ids)
    rec = ptq(tree, bits, 8, WINDOWS, compensate=compensate, reconstruct=reconstruct, epochs=2)
    assert rec["layers_quantized"] == 12
    ops = [n.type for n in ModelStructure.loads((tree / "Model/graph.json").read_bytes()).main_graph.operators]
    assert ops.count("fake_quant") == 12 and ops.count("quantized_linear") == 12 and "linear" not in ops
    after = forward(tree, ids)
    assert rel(rec["simulated_last_block_output"], after) < 1e-4  # the package computes what was simulated
    assert 0 < rel(before, after) < (0.05 if bits == 8 else 0.5)
    w = load_file(str(tree / "Model/model.safetensors"))
    p = "encoder.layer.0.attention.self.query"
    assert f"{p}.weight" not in w and w[f"{p}.weight_scale"].shape == (32, 1) and w[f"{p}.input_zero_point"].dtype == np.int8
    assert (f"{p}.input_comp_scale" in w) == compensate
    qc = json.loads((tree / "Model/config.json").read_text())["quantization_config"]
    group = qc["config_groups"]["group_0"]
    assert group["weights"]["strategy"] == "channel" and group["weights"]["num_bits"] == bits
    assert group["input_activations"]["num_bits"] == 8 and group["input_activations"]["strategy"] == "tensor"


@pytest.mark.torch
def test_ptq_llama_and_refusals(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ptmpack.compress.quant.ptq.step import ptq

    cfg, t = llama_tensors()
    tree = make_tree(tmp_path, cfg, t)
    before = forward(tree, WINDOWS[:1])
    rec = ptq(tree, 8, 8, WINDOWS, epochs=1)
    assert rec["layers_quantized"] == 14
    assert rel(before, forward(tree, WINDOWS[:1])) < 0.1
    with pytest.raises(UsageError, match="act-bits"):
        ptq(tree, 8, 5, WINDOWS)


def test_packed_encoder_windows_are_split_back_into_padded_sentences() -> None:
    from ptmpack.compress.quant.ptq.fake_quant import calibration_batches

    cls = 101
    stream = np.array([cls, 5, 6, 102, cls, 7, 102, cls, 8, 9, 10, 11, 102, cls, 12, 102, cls, 13], np.int64)
    windows = stream[:16].reshape(2, 8)
    batches = calibration_batches(windows, cls, tokens=6)
    sentences = [ids[valid] for ids, valid in batches for ids, valid in zip(ids, valid, strict=True)]
    assert [s.tolist() for s in sentences] == [[cls, 5, 6, 102], [cls, 7, 102], [cls, 8, 9, 10, 11, 102], [cls, 12, 102]]
    assert all(ids.shape == valid.shape and (ids[~valid] == 0).all() for ids, valid in batches)
    assert [ids.shape[0] for ids, _ in batches] == [2, 1, 1]  # about 6 real tokens per batch
    plain = calibration_batches(windows, None)  # decoders, or windows that are not packed sentences
    assert len(plain) == 2 and all(v.all() for _, v in plain)
    assert len(calibration_batches(windows[:, 1:], cls)) == 2  # not starting with the start token: not split


@pytest.mark.torch
@pytest.mark.parametrize("case", ["llama-unified", "llama-ffn-pruned", "bert-head-pruned", "bert-unified"])
def test_ptq_runs_what_earlier_steps_left_and_the_package_computes_the_simulation(tmp_path: Path, case: str) -> None:
    """PTQ trains on the package's own IR, so it runs on shapes transformers cannot load (unified norms,
    per-layer FFN widths, pruned BERT heads); the stored package computes the simulated last block."""
    pytest.importorskip("torch")
    from ptmpack.compress.eval.probe import feeds_for
    from ptmpack.compress.quant.ptq.step import ptq
    from ptmpack.compress.structure.fold_norm import fold_norm
    from ptmpack.compress.structure.prune.step import prune
    from ptmpack.ir.runner import LoadedModel

    family, _, step = case.partition("-")
    cfg, t = llama_tensors() if family == "llama" else bert_tensors()
    tree = make_tree(tmp_path, cfg, t)
    if step == "unified":
        fold_norm(tree, "unified", WINDOWS)
    else:
        removed = prune(tree, "heads" if step == "head-pruned" else "ffn", 0.75, "magnitude")["removed"]
        assert sum(removed.values()) > 0
    config = json.loads((tree / "Model/config.json").read_text())
    assert ("ptmpack_unified_norm" in config) == (step == "unified")
    assert ("ptmpack_layer_heads" in config) == (step == "head-pruned")
    rec = ptq(tree, 8, 8, WINDOWS, epochs=1)
    assert rec["layers_quantized"] == (14 if family == "llama" else 12)
    with LoadedModel.open(tree) as lm:
        ops = lm.model.main_graph.operators
        assert sum(o.type == "quantized_linear" for o in ops) == rec["layers_quantized"]
        last = ([o for o in ops if o.type == "add"][-1].outputs["Y"][0] if family == "llama"  # before the LM head
                else lm.model.outputs[0])
        got = lm.executor.run(feeds_for(lm.model, WINDOWS[:1]), outputs=[last])[last]
    assert rel(rec["simulated_last_block_output"], got) < 1e-4
