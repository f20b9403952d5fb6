"""The ecosystem reads what compress writes, and ptmpack runs what the ecosystem writes.

* transformers (+ compressed-tensors) loads an unpacked symmetric RTN/GPTQ package and computes
  the logits ptmpack's IR computes. (Asymmetric pack-quantized checkpoints of *any* producer do not
  load in transformers 5.25 with compressed-tensors 0.20: the meta model it builds expects unpacked
  zero points, llm-compressor issue #1618; for those the tensors are checked against
  compressed-tensors' own compressor and decompressor instead.)
* a checkpoint written by compressed-tensors' own ``PackedQuantizationCompressor`` imports with
  ``init --from-hf`` and runs in ptmpack with the weights compressed-tensors decompresses to.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ptmpack.compress.pipeline import compress
from ptmpack.compress.spec import CompressSpec
from ptmpack.config import PackConfig
from ptmpack.ir.runner import LoadedModel
from ptmpack.storage.unpack import unpack_file
from tests._support.tiny_models import sample_text, tiny_llama, tiny_tree

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")
pytestmark = pytest.mark.torch

IDS = np.arange(3, 45)[None]


def _scheme(bits: int, group: int, symmetric: bool) -> object:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=bits, symmetric=symmetric, strategy="group", group_size=group))


def _transformers_logits(model_dir: Path) -> np.ndarray:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.numpy()


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_transformers_loads_a_symmetric_package(method: str, tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path, "llama")
    calib = tmp_path / "calib.txt"
    calib.write_text(sample_text(2000, seed=2))
    out = tmp_path / "q.ptm"
    compress(tree, out, CompressSpec(quant=method, bits=4, group_size=32, symmetric=True, calib=calib, nsamples=2,
                                     seqlen=64), PackConfig())
    unpacked = tmp_path / "unpacked"
    unpack_file(out, unpacked)
    with LoadedModel.open(out) as lm:
        ours = lm.forward(IDS)
    theirs = _transformers_logits(unpacked / "Model")
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3 * float(np.abs(theirs).max()))


@pytest.mark.parametrize(("bits", "symmetric"), [(4, False), (3, False), (8, True), (2, False)])
def test_tensors_equal_compressed_tensors_compressor(bits: int, symmetric: bool, tmp_path: Path) -> None:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor

    tree = tiny_tree(tmp_path, "llama")
    out = tmp_path / "q.ptm"
    compress(tree, out, CompressSpec(quant="rtn", bits=bits, group_size=32, symmetric=symmetric), PackConfig())
    unpacked = tmp_path / "unpacked"
    unpack_file(out, unpacked)
    from safetensors.torch import load_file

    ours = load_file(str(unpacked / "Model" / "model.safetensors"))
    original = load_file(str(tree / "Model" / "model.safetensors"))
    prefix = "model.layers.1.mlp.down_proj"
    state = {"weight": original[f"{prefix}.weight"], "weight_scale": ours[f"{prefix}.weight_scale"]}
    zp = None
    if not symmetric:
        from ptmpack.quant.packing import unpack_int

        zp = torch.from_numpy(unpack_int(ours[f"{prefix}.weight_zero_point"].numpy(), bits, 64, packed_dim=0))
        state["weight_zero_point"] = zp
    theirs = PackedQuantizationCompressor.compress(state, _scheme(bits, 32, symmetric))
    assert torch.equal(theirs["weight_packed"], ours[f"{prefix}.weight_packed"])
    assert torch.equal(theirs["weight_shape"], ours[f"{prefix}.weight_shape"])
    if not symmetric:
        assert torch.equal(theirs["weight_zero_point"], ours[f"{prefix}.weight_zero_point"])
    back = PackedQuantizationCompressor.decompress(
        {k: ours[f"{prefix}.{k}"] for k in ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point")
         if f"{prefix}.{k}" in ours}, _scheme(bits, 32, symmetric))
    from ptmpack.ir.ops.quantized import dequantize_weight

    mine = dequantize_weight(ours[f"{prefix}.weight_packed"].numpy(), ours[f"{prefix}.weight_scale"].numpy(),
                             None if symmetric else ours[f"{prefix}.weight_zero_point"].numpy(), None, bits, 32, 128)
    np.testing.assert_allclose(back["weight"].numpy(), mine, rtol=0, atol=1e-6)


@pytest.mark.parametrize("symmetric", [True, False])
def test_a_compressed_tensors_checkpoint_imports_and_runs(symmetric: bool, tmp_path: Path) -> None:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.quantization.utils.helpers import calculate_qparams
    from safetensors.torch import load_file, save_file

    from ptmpack.importers.hf import init_tree

    ck = tiny_llama(tmp_path / "float")
    weights = load_file(str(ck / "model.safetensors"))
    scheme = _scheme(4, 32, symmetric)
    packed, float_ref = {}, {}
    for name, w in weights.items():
        if name.endswith("_proj.weight"):
            prefix = name[: -len(".weight")]
            g = w.reshape(w.shape[0], -1, 32)
            scale, zp = calculate_qparams(g.amin(-1), g.amax(-1), scheme.weights)
            state = {"weight": w, "weight_scale": scale, "weight_zero_point": zp}
            for k, v in PackedQuantizationCompressor.compress(state, scheme).items():
                packed[f"{prefix}.{k}"] = v.contiguous()
            float_ref[name] = PackedQuantizationCompressor.decompress(
                {k: packed[f"{prefix}.{k}"] for k in ("weight_packed", "weight_scale", "weight_shape",
                                                       "weight_zero_point") if f"{prefix}.{k}" in packed},
                scheme)["weight"]
        else:
            packed[name] = float_ref[name] = w
    theirs = tmp_path / "ct"
    theirs.mkdir()
    save_file(packed, str(theirs / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((ck / "config.json").read_text())
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format="pack-quantized", ignore=["lm_head"],
                            quantization_status="compressed")
    config["quantization_config"] = qc.model_dump(mode="json")
    (theirs / "config.json").write_text(json.dumps(config))
    (theirs / "tokenizer.json").write_bytes((ck / "tokenizer.json").read_bytes())
    ref = tmp_path / "ref"
    ref.mkdir()
    save_file(float_ref, str(ref / "model.safetensors"), metadata={"format": "pt"})
    (ref / "config.json").write_text((ck / "config.json").read_text())
    init_tree(tmp_path / "imported", from_hf=theirs)
    init_tree(tmp_path / "reference", from_hf=ref)
    with LoadedModel.open(tmp_path / "imported") as q, LoadedModel.open(tmp_path / "reference") as f:
        ops = [n.type for n in q.model.main_graph.operators]
        assert ops.count("quantized_linear") == 14
        np.testing.assert_allclose(q.forward(IDS), f.forward(IDS), rtol=1e-4, atol=1e-4)
    if symmetric:  # and transformers agrees on the very same checkpoint
        with LoadedModel.open(tmp_path / "imported") as q:
            np.testing.assert_allclose(q.forward(IDS), _transformers_logits(theirs), rtol=1e-3, atol=1e-3 * 30)
