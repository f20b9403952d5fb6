# ruff: noqa: RUF003
"""The ``--quant affine`` step on a tiny LLaMA tree, and the ``affine_transform`` IR operator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptmpack.ir.model import ModelStructure
from ptmpack.ir.registry import ExecContext, TensorType, lookup

torch = pytest.importorskip("torch")


def _assert_ir_runs_the_deployed_tensors(tree: Path, tensors: dict[str, np.ndarray], config: dict[str, Any],
                                         ids: np.ndarray, identity: set[str] | None = None) -> None:
    """The package's IR logits for ``ids`` equal the torch model built from its tensors, each quantized linear of
    the two-layer tiny LLaMA dequantized (``identity``: norms folded away, run as the identity)."""
    from ptmpack.compress.quant.affine.torch_llama import CausalLM, LlamaConfig
    from ptmpack.compress.quant.pack_quantized import read_quantized_linear
    from ptmpack.ir.runner import LoadedModel

    deq = dict(tensors)
    for i in range(2):
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            p = f"model.layers.{i}.{name}"
            deq[f"{p}.weight"] = read_quantized_linear(tensors, p, 4).dequantize()
    model = CausalLM.from_tensors(deq, LlamaConfig.from_dict(config), identity_norms=identity or set())
    with torch.no_grad():
        x = model.embeddings(torch.as_tensor(ids)[None])
        for layer in model.layers:
            x = layer(x)
        want = model.logits(x)[0].numpy()
    with LoadedModel.open(tree) as lm:
        got = lm.forward(np.asarray(ids)[None])[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_affine_transform_kernel_and_inference():
    opdef = lookup("affine_transform")
    rng = np.random.default_rng(0)
    x, m, s = rng.normal(size=(2, 5, 6)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32), \
        rng.normal(size=6).astype(np.float32)
    y = opdef.kernel(ExecContext(), {"X": x, "M": m, "Shift": s}, {})["Y"]
    np.testing.assert_allclose(y, (x - s) @ m.T, rtol=1e-5, atol=1e-5)
    y0 = opdef.kernel(ExecContext(), {"X": x, "M": m, "Shift": None}, {})["Y"]
    np.testing.assert_allclose(y0, x @ m.T, rtol=1e-5, atol=1e-5)
    t = opdef.infer({"X": TensorType("float32", (-1, -1, 6)), "M": TensorType("float32", (4, 6)),
                     "Shift": TensorType("float32", (6,))}, {})
    assert t["Y"] == TensorType("float32", (-1, -1, 4))
    from ptmpack.errors import GraphError

    with pytest.raises(GraphError):
        opdef.infer({"X": TensorType("float32", (-1, 5)), "M": TensorType("float32", (4, 6)), "Shift": None}, {})


def test_block_diagonal_transform_equals_the_dense_matrix_of_its_blocks():
    """A 3-D M [K, B_out, B_in] is the block-diagonal matrix of its K blocks (what AffineQuant stores by default)."""
    opdef = lookup("affine_transform")
    rng = np.random.default_rng(1)
    x, blocks, s = rng.normal(size=(2, 5, 12)), rng.normal(size=(3, 4, 4)), rng.normal(size=12)
    dense = torch.block_diag(*torch.as_tensor(blocks)).numpy()
    y = opdef.kernel(ExecContext(), {"X": x.astype(np.float32), "M": blocks.astype(np.float32),
                                     "Shift": s.astype(np.float32)}, {})["Y"]
    np.testing.assert_allclose(y, (x - s) @ dense.T, rtol=1e-5, atol=1e-5)
    t = opdef.infer({"X": TensorType("float32", (-1, 12)), "M": TensorType("float32", (3, 2, 4)), "Shift": None}, {})
    assert t["Y"] == TensorType("float32", (-1, 6))
    from ptmpack.errors import GraphError

    with pytest.raises(GraphError):
        opdef.infer({"X": TensorType("float32", (-1, 10)), "M": TensorType("float32", (3, 4, 4)), "Shift": None}, {})


def _step(tree, calib, **kw):
    from ptmpack.compress.eval.calibration import load_calibration
    from ptmpack.compress.spec import CompressSpec
    from ptmpack.compress.step import StepContext

    spec = CompressSpec(quant="affine", calib=calib, nsamples=4, seqlen=32, **kw)
    data = load_calibration(tree, spec)
    return StepContext(spec, calibration=lambda: data)


def test_apply_writes_compressed_tensors_transforms_and_a_graph_that_runs_them(tmp_path):
    from safetensors.numpy import load_file

    from ptmpack.compress.eval.quality import held_out
    from ptmpack.compress.pipeline import run_step
    from ptmpack.compress.quant.affine.step import AffineStep
    from tests._support.tiny_models import sample_text, tiny_tree

    tree = tiny_tree(tmp_path)
    calib = tmp_path / "calib.txt"
    calib.write_text(sample_text(3000), encoding="utf-8")
    ctx = _step(tree, calib, bits=4, group_size=32, epochs=2)
    result = run_step(AffineStep(), "quant", tree, ctx, held_out(ctx.spec))
    record = result.to_json()

    assert record["method"] == "affine" and record["group_size"] == 32
    assert result.unmerged_transforms == record["affine"]["unmerged_transforms"] == 4 and "note" in record  # 2×2 norms
    assert set(record["affine"]["dominance"]) == {"violations", "checks"}
    assert record["affine"]["block_size"] == 64 and record["affine"]["transform_storage"] == {
        "layout": "block-diagonal", "dtype": "float32", "shape": [1, 64, 64], "bytes": 4 * 64 * 64 * 4}
    assert record["quality"]["after"] is not None and np.isfinite(record["quality"]["after"])
    config = json.loads((tree / "Model" / "config.json").read_text())
    assert config["quantization_config"]["format"] == "pack-quantized"
    assert config["attention_bias"] and config["mlp_bias"]
    assert config["quantization_config"]["ignore"] == ["lm_head"]
    tensors = load_file(str(tree / "Model" / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.weight" not in tensors
    assert tensors["model.layers.0.input_layernorm.affine_transform.weight"].shape == (1, 64, 64)  # one block
    assert tensors["model.layers.1.post_attention_layernorm.affine_transform.shift"].shape == (64,)
    assert tensors["model.layers.0.mlp.down_proj.bias"].shape == (64,)

    graph = ModelStructure.loads((tree / "Model" / "graph.json").read_bytes())
    ops = [o for o in graph.main_graph.operators if o.type == "affine_transform"]
    assert len(ops) == 4 and sum(o.type == "quantized_linear" for o in graph.main_graph.operators) == 14

    # the IR run of the package equals the torch forward of the deployed tensors
    _assert_ir_runs_the_deployed_tensors(tree, tensors, config, ctx.calibration().windows[0][:16])


def test_apply_refuses_encoders_and_bad_groups(tmp_path):
    from ptmpack.compress.quant.affine.step import AffineStep
    from ptmpack.errors import UnsupportedError, UsageError
    from tests._support.tiny_models import sample_text, tiny_tree

    calib = tmp_path / "calib.txt"
    calib.write_text(sample_text(2000), encoding="utf-8")
    bert = tiny_tree(tmp_path, "bert")
    with pytest.raises(UnsupportedError):
        AffineStep().run(bert, _step(bert, calib, epochs=1))
    llama = tiny_tree(tmp_path)
    with pytest.raises(UsageError):
        AffineStep().run(llama, _step(llama, calib, group_size=48, epochs=1))


def test_compress_pipeline_packs_an_affine_package_that_ptmpack_runs(tmp_path):
    from ptmpack.compress.pipeline import compress
    from ptmpack.compress.spec import CompressSpec
    from ptmpack.config import PackConfig
    from ptmpack.ir.runner import LoadedModel, perplexity
    from tests._support.tiny_models import sample_text, tiny_tree

    tree = tiny_tree(tmp_path)
    calib = tmp_path / "calib.txt"
    calib.write_text(sample_text(3000, seed=2), encoding="utf-8")
    spec = CompressSpec(quant="affine", bits=4, group_size=32, calib=calib, nsamples=4, seqlen=32)
    report = compress(tree, tmp_path / "out.ptm", spec, PackConfig())
    (record,) = report.steps
    step = record.to_json()
    assert step["method"] == "affine" and step["calibration"]["tokens"] == 128
    default_epochs = CompressSpec(quant="affine").epochs
    assert step["affine"]["epochs"] == default_epochs and step["affine"]["method_defaults"] == {"epochs": default_epochs}
    with LoadedModel.open(tmp_path / "out.ptm") as lm:
        result = perplexity(lm, sample_text(200, seed=9), window=64)
    assert np.isfinite(result.perplexity)


def test_without_torch_the_step_is_unsupported_with_a_hint(monkeypatch):
    import sys

    from ptmpack.compress.spec import require_torch
    from ptmpack.errors import UnsupportedError

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(UnsupportedError) as info:
        require_torch("--quant affine")  # what the affine step calls first
    assert info.value.exit_code == 6 and "ptmpack[torch]" in (info.value.hint or "")


@given(data=st.data())
@settings(max_examples=20, deadline=None)
def test_affine_transform_operator_properties(data):
    """Inferred types equal the kernel's outputs (also with unknown leading dims); float16 tracks float32."""
    from tests._support.opcheck import check_float16, check_infer, randn

    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    lead = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    d_in, d_out = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    if data.draw(st.booleans()):  # block-diagonal: K blocks of [B_out, B_in]
        k = data.draw(st.integers(1, 4))
        m = randn(rng, k, d_out, d_in, scale=0.3)
        d_in = k * d_in
    else:
        m = randn(rng, d_out, d_in, scale=0.3)
    inputs = {"X": randn(rng, *lead, d_in), "M": m}
    if data.draw(st.booleans()):
        inputs["Shift"] = randn(rng, d_in)
    check_infer("affine_transform", inputs)
    check_float16("affine_transform", inputs)
    opdef = lookup("affine_transform")
    assert opdef.table == "Table 44" and len(opdef.doc) > 150 and all(s.dtypes for s in opdef.inputs)


def test_apply_after_unified_norms_stores_whole_inverses_and_runs_as_the_torch_model(tmp_path):
    """``--fold-norm unified`` then ``--quant affine``: the folded norms are the identity in the torch blocks,
    the transforms after them keep their diagonal (no norm weight to merge it into) and read the residual
    stream in the graph; the package computes what the torch model computed and scores close to the float one."""
    from safetensors.numpy import load_file

    from ptmpack.compress.eval.quality import held_out
    from ptmpack.compress.pipeline import run_step
    from ptmpack.compress.quant.affine.step import AffineStep, folded_norms
    from ptmpack.compress.structure.fold_norm import fold_norm
    from ptmpack.ir.runner import LoadedModel, perplexity
    from tests._support.tiny_models import sample_text, tiny_tree

    tree = tiny_tree(tmp_path)
    calib = tmp_path / "calib.txt"
    calib.write_text(sample_text(3000), encoding="utf-8")
    ctx = _step(tree, calib, bits=4, group_size=32, epochs=2, fold_norm="unified")
    fold_norm(tree, "unified", ctx.calibration().windows)
    config = json.loads((tree / "Model" / "config.json").read_text())
    identity = folded_norms(tree, config)
    assert identity == {f"model.layers.{i}.{n}.weight" for i in range(2)
                        for n in ("input_layernorm", "post_attention_layernorm")} | {"model.norm.weight"}
    text = sample_text(400, seed=9)
    with LoadedModel.open(tree) as lm:
        float_ppl = perplexity(lm, text, window=64).perplexity

    record = run_step(AffineStep(), "quant", tree, ctx, held_out(ctx.spec)).to_json()
    assert record["affine"]["unified_norms"] == 5 and record["affine"]["unmerged_transforms"] == 4
    tensors = load_file(str(tree / "Model" / "model.safetensors"))
    m = tensors["model.layers.0.input_layernorm.affine_transform.weight"]
    assert m.shape == (1, 64, 64) and not np.allclose(np.diagonal(m[0]), 1)   # the diagonal stays in the transform
    np.testing.assert_array_equal(tensors["model.layers.0.input_layernorm.weight"], 1)  # the folded norm is untouched
    graph = ModelStructure.loads((tree / "Model" / "graph.json").read_bytes())
    types = [o.type for o in graph.main_graph.operators]
    assert "rms_norm" not in types and types.count("affine_transform") == 4

    _assert_ir_runs_the_deployed_tensors(tree, tensors, config, ctx.calibration().windows[0][:16], identity)
    with LoadedModel.open(tree) as lm:
        quant_ppl = perplexity(lm, text, window=64).perplexity
    # a random tiny model with unified norms has a huge perplexity; its log (the mean NLL per token) stays close
    assert abs(np.log(quant_ppl) / np.log(float_ppl) - 1) < 0.1, (float_ppl, quant_ppl)
