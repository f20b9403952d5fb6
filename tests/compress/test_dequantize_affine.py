"""``unpack --dequantize`` of an AffineQuant package: the unmerged transforms fold into float weights.

The dequantized tree must compute what the quantized package computes (its IR, with explicit
``affine_transform`` operators), and transformers must load it as a plain LLaMA and agree.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.torch


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_dequantized_affine_package_equals_the_quantized_one_and_loads_in_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors.numpy import load_file

    from ptmpack.api.container import unpack
    from ptmpack.compress.pipeline import compress
    from ptmpack.compress.spec import CompressSpec
    from ptmpack.config import PackConfig
    from ptmpack.ir.model import ModelStructure
    from ptmpack.ir.runner import LoadedModel
    from tests._support.tiny_models import sample_text, tiny_tree

    tree = tiny_tree(tmp_path)
    calib = tmp_path / "calib.txt"
    calib.write_text(sample_text(3000, seed=3), encoding="utf-8")
    package = tmp_path / "w4.ptm"
    compress(tree, package, CompressSpec(quant="affine", bits=4, group_size=32, calib=calib, nsamples=4, seqlen=32,
                                         epochs=1), PackConfig())
    ids = np.random.default_rng(0).integers(2, 300, size=(2, 24))
    with LoadedModel.open(package) as lm:
        want = lm.forward(ids)
        ops = {o.type for o in lm.model.main_graph.operators}
    assert {"affine_transform", "quantized_linear"} <= ops

    out = tmp_path / "float"
    unpack(package, out, dequantize=True)
    tensors = load_file(str(out / "Model" / "model.safetensors"))
    assert not [n for n in tensors if "affine_transform" in n or n.endswith("weight_packed")]
    config = json.loads((out / "Model" / "config.json").read_text())
    assert "quantization_config" not in config and config["attention_bias"] and config["mlp_bias"]
    graph = ModelStructure.loads((out / "Model" / "graph.json").read_bytes())
    assert {o.type for o in graph.main_graph.operators}.isdisjoint({"affine_transform", "quantized_linear"})

    with LoadedModel.open(out) as lm:
        got = lm.forward(ids)
    assert _rel(got, want) < 1e-5

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out / "Model"), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(torch.as_tensor(ids)).logits.numpy()
    assert _rel(logits, want) < 1e-4


def test_a_transform_after_an_unknown_norm_is_refused(tmp_path):
    from ptmpack.compress.quant.dequantize import fold_transforms
    from ptmpack.compress.tree.checkpoint import Checkpoint
    from ptmpack.errors import UnsupportedError

    name = "model.norm.affine_transform.weight"
    ck = Checkpoint(tmp_path, {name: np.eye(4, dtype=np.float32)}, {name: "m.safetensors"},
                    {name: np.dtype(np.float32)}, {"m.safetensors": None})

    with pytest.raises(UnsupportedError):
        fold_transforms(ck, {})
