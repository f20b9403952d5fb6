"""compress --quant rtn|gptq end to end on tiny synthetic checkpoints: layout, graph, records, running."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ptmpack.compress import methods
from ptmpack.compress.eval.calibration import windows_of
from ptmpack.compress.pipeline import compress
from ptmpack.compress.quant.dequantize import dequantize_tree
from ptmpack.compress.spec import CompressSpec
from ptmpack.config import PackConfig
from ptmpack.errors import UnsupportedError, UsageError
from ptmpack.ir.model import ModelStructure
from ptmpack.ir.runner import LoadedModel
from tests._support.tiny_models import sample_text, tiny_tree


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tree(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tree(tmp_path_factory.mktemp("bert"), "bert")


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(sample_text(3000, seed=5), encoding="utf-8")
    return path


def _unpack(ptm: Path, dest: Path) -> Path:
    from ptmpack.storage.unpack import unpack_file

    unpack_file(ptm, dest)
    return dest


def _technical(tree: Path) -> dict:
    return json.loads((tree / "Meta-info" / "technicalinfo.json").read_text())


def test_rtn_package_layout_graph_and_record(llama: Path, calib: Path, tmp_path: Path) -> None:
    out = tmp_path / "rtn.ptm"
    report = compress(llama, out, CompressSpec(quant="rtn", bits=4, group_size=32, calib=calib, nsamples=2, seqlen=64),
                      PackConfig())
    tree = _unpack(out, tmp_path / "tree")
    config = json.loads((tree / "Model" / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    assert qc["config_groups"]["group_0"]["weights"]["group_size"] == 32 and qc["ignore"] == ["lm_head"]
    from safetensors.numpy import load_file

    tensors = load_file(str(tree / "Model" / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.weight" not in tensors
    assert tensors["model.layers.0.mlp.down_proj.weight_packed"].shape == (64, 16)
    assert tensors["model.layers.0.mlp.down_proj.weight_scale"].shape == (64, 4)
    assert "model.embed_tokens.weight" in tensors and "model.norm.weight" in tensors  # embeddings, norms float
    graph = ModelStructure.loads((tree / "Model" / "graph.json").read_bytes(), "graph.json")
    ops = [n.type for n in graph.main_graph.operators]
    assert ops.count("quantized_linear") == 14 and ops.count("linear") == 1  # the tied LM head stays float
    step = _technical(tree)["compression"]["steps"][0]
    assert (step["method"], step["bits"], step["group_size"], step["symmetric"]) == ("rtn", 4, 32, True)
    assert step["calibration"]["sha256"] and step["quality"]["metric"] == "perplexity"
    assert step["quality"]["before"] > 0 and step["quality"]["after"] > 0 and len(step["layers"]) == 14
    assert report.size_out < report.size_in


def test_quantized_operator_runs_what_dequantized_weights_compute(llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "rtn3.ptm"
    compress(llama, out, CompressSpec(quant="rtn", bits=3, group_size=32), PackConfig())
    float_tree = _unpack(out, tmp_path / "deq")
    report = dequantize_tree(float_tree)
    assert report.layers == 14 and report.bits == 3 and report.to_json()["group_size"] == 32
    assert "quantization_config" not in json.loads((float_tree / "Model" / "config.json").read_text())
    ids = np.arange(3, 40)[None]
    with LoadedModel.open(out) as q, LoadedModel.open(float_tree) as f:
        np.testing.assert_allclose(q.forward(ids), f.forward(ids), rtol=1e-4, atol=1e-4)
    assert dequantize_tree(float_tree).layers == 0  # nothing left to dequantize


def test_gptq_on_an_encoder_keeps_the_pooler_float(bert: Path, calib: Path, tmp_path: Path) -> None:
    out = tmp_path / "gptq.ptm"
    report = compress(bert, out, CompressSpec(quant="gptq", bits=4, calib=calib, nsamples=4, seqlen=32), PackConfig())
    record = report.steps[0]
    assert record.scheme is not None and record.scheme.group_size == 64 and record.quality is not None
    step = record.to_json()
    assert step["method"] == "gptq" and step["group_size"] == 64 and step["layers_quantized"] == 12
    assert record.quality.metric == step["quality"]["metric"] == "embedding_cosine_to_before"
    assert step["quality"]["after"] > 0.9
    tree = _unpack(out, tmp_path / "tree")
    qc = json.loads((tree / "Model" / "config.json").read_text())["quantization_config"]
    assert qc["ignore"] == ["pooler.dense"]
    with LoadedModel.open(out) as lm:
        assert lm.forward(np.arange(5, 20)[None]).shape == (1, 15, 64)


def test_library_default_is_symmetric_like_the_cli() -> None:
    """api.compress without ``symmetric`` writes what released transformers + compressed-tensors load, as the CLI
    does without ``--asym`` (issue 15); asymmetric stays one argument away."""
    assert all(CompressSpec(quant=m).symmetric is True for m in ("rtn", "gptq", "affine", "ptq"))
    assert CompressSpec(quant="rtn", symmetric=False).symmetric is False


def test_act_order_is_on_by_default_for_gptq_only() -> None:
    assert CompressSpec(quant="gptq").act_order is True
    assert CompressSpec(quant="gptq", act_order=False).act_order is False
    assert CompressSpec(quant="rtn").act_order is False
    assert CompressSpec(quant="gptq").gptq_order == "layer"


def test_gptq_records_its_act_order_and_calibration_order(llama: Path, calib: Path, tmp_path: Path) -> None:
    spec = CompressSpec(quant="gptq", bits=4, group_size=32, calib=calib, nsamples=2, seqlen=32, gptq_order="linear",
                        act_order=False)
    step = compress(llama, tmp_path / "x.ptm", spec, PackConfig()).steps[-1].to_json()
    assert (step["act_order"], step["sequential"]) == (False, "linear")


def test_gptq_is_deterministic(llama: Path, calib: Path, tmp_path: Path) -> None:
    spec = CompressSpec(quant="gptq", bits=4, group_size=32, calib=calib, nsamples=2, seqlen=32)
    packed = []
    for name in ("a", "b"):
        compress(llama, tmp_path / f"{name}.ptm", spec, PackConfig())
        tree = _unpack(tmp_path / f"{name}.ptm", tmp_path / name)
        packed.append((tree / "Model" / "model.safetensors").read_bytes())
    assert packed[0] == packed[1]


def test_a_group_size_that_does_not_divide_is_refused_and_nothing_is_left(llama: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        compress(llama, tmp_path / "x.ptm", CompressSpec(quant="rtn", group_size=128), PackConfig())
    assert err.value.exit_code == 2 and "--group-size 64" in err.value.diagnostics()
    assert list(tmp_path.iterdir()) == []


def test_gptq_needs_calibration_text(llama: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--calib"):
        compress(llama, tmp_path / "x.ptm", CompressSpec(quant="gptq"), PackConfig())


def test_a_missing_step_module_is_unsupported(llama: Path, calib: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    gone = tuple(replace(m, entry="ptmpack.compress._no_such_module:AffineStep") if (m.slot, m.name) == ("quant", "affine")
                 else m for m in methods.METHODS)
    monkeypatch.setattr(methods, "METHODS", gone)
    with pytest.raises(UnsupportedError) as err:
        compress(llama, tmp_path / "x.ptm", CompressSpec(quant="affine", calib=calib), PackConfig())
    assert err.value.exit_code == 6


def test_calibration_windows_first_or_seeded() -> None:
    ids = list(range(100))
    w = windows_of(ids, 3, 20, None)
    np.testing.assert_array_equal(w[1], np.arange(20, 40))
    r1 = windows_of(ids, 3, 20, 7)
    r2 = windows_of(ids, 3, 20, 7)
    np.testing.assert_array_equal(r1, r2)
    assert windows_of(ids, 10, 20, None).shape == (5, 20)
    with pytest.raises(UsageError):
        windows_of(ids[:10], 1, 20, None)


@pytest.mark.parametrize("bad", [CompressSpec(), CompressSpec(quant="rtn", bits=5), CompressSpec(quant="lsq"),
                                 CompressSpec(prune="heads"), CompressSpec(quant="rtn", act_bits=8),
                                 CompressSpec(quant="rtn", act_order=True),
                                 CompressSpec(quant="gptq", calib=Path("c.txt"), gptq_order="random")])
def test_spec_check_refuses(bad: CompressSpec) -> None:
    with pytest.raises(UsageError):
        bad.check()


def test_per_channel_is_the_channel_strategy(bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "w8.ptm"
    report = compress(bert, out, CompressSpec(quant="rtn", bits=8, group_size=0), PackConfig())
    assert report.steps[0].to_json()["group_size"] == "channel"
    tree = _unpack(out, tmp_path / "tree")
    weights = json.loads((tree / "Model" / "config.json").read_text())["quantization_config"]["config_groups"][
        "group_0"]["weights"]
    assert (weights["strategy"], weights["group_size"]) == ("channel", None)
    float_tree = _unpack(out, tmp_path / "deq")
    dequantize_tree(float_tree)
    ids = np.arange(5, 30)[None]
    with LoadedModel.open(out) as q, LoadedModel.open(float_tree) as f, LoadedModel.open(bert) as orig:
        np.testing.assert_allclose(q.forward(ids), f.forward(ids), rtol=1e-4, atol=1e-4)
        assert np.abs(q.forward(ids) - orig.forward(ids)).max() < 0.05


def test_gpt2_conv1d_weights_are_quantized_as_their_transpose(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path, "gpt2")
    out = tmp_path / "q.ptm"
    report = compress(tree, out, CompressSpec(quant="rtn", bits=4, group_size=32), PackConfig())
    assert report.steps[0].details["layers_quantized"] == 8
    float_tree = _unpack(out, tmp_path / "deq")
    dequantize_tree(float_tree)
    from safetensors.numpy import load_file

    back = load_file(str(float_tree / "Model" / "model.safetensors"))
    assert back["h.0.mlp.c_fc.weight"].shape == (64, 256)  # [in, out] again, as GPT-2 stores Conv1D
    ids = np.arange(5, 30)[None]
    with LoadedModel.open(out) as q, LoadedModel.open(float_tree) as f, LoadedModel.open(tree) as orig:
        np.testing.assert_allclose(q.forward(ids), f.forward(ids), rtol=1e-4, atol=1e-4)
        assert np.abs(q.forward(ids) - orig.forward(ids)).max() < 0.5 * np.abs(orig.forward(ids)).max()
