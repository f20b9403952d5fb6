"""RTN one layer at a time from the weight files: sharded and bfloat16 checkpoints, the same math as in memory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from ptmpack.compress.pipeline import compress
from ptmpack.compress.quant.pack_quantized import quantized_tensors
from ptmpack.compress.quant.rtn import quantize_rtn
from ptmpack.compress.spec import CompressSpec
from ptmpack.compress.tree.weights import TensorSpec, WeightFiles
from ptmpack.config import PackConfig
from ptmpack.errors import PtmError
from ptmpack.importers.hf import init_tree
from ptmpack.storage.unpack import unpack_file
from tests._support.tiny_models import reshard, sample_text, tiny_llama

LINEAR = "model.layers.1.mlp.down_proj"


def _tree(tmp: Path, name: str, shards: int = 0, dtype: str = "F32") -> Path:
    hf = tiny_llama(tmp / f"{name}-hf")
    if shards:
        reshard(hf, shards, dtype)
    tree = tmp / f"{name}-tree"
    init_tree(tree, from_hf=hf)
    return tree


def _tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of every weight file, read by the torch side of the safetensors library (bf16 as float32)."""
    out = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not iterable
                t = f.get_tensor(name)
                out[name] = (t.float() if t.is_floating_point() else t).numpy()
    return out


def _dtypes(model_dir: Path) -> dict[str, str]:
    out = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            out.update({n: str(f.get_slice(n).get_dtype()) for n in f.keys()})  # noqa: SIM118
    return out


def _compress(tree: Path, tmp: Path, name: str, **spec: object) -> Path:
    out = tmp / f"{name}.ptm"
    compress(tree, out, CompressSpec(quant="rtn", bits=4, group_size=32, **spec), PackConfig())
    dest = tmp / f"{name}-out"
    unpack_file(out, dest)
    return dest


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.torch
def test_sharded_checkpoint_gives_the_single_file_result_and_the_in_memory_math(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    calib = tmp_path / "calib.txt"
    calib.write_text(sample_text(3000, seed=5), encoding="utf-8")
    single, sharded = _tree(tmp_path, "single"), _tree(tmp_path, "sharded", shards=3)
    before = _digest(sharded)
    a = _compress(single, tmp_path, "a", calib=calib, nsamples=2, seqlen=64)
    b = _compress(sharded, tmp_path, "b", calib=calib, nsamples=2, seqlen=64)
    assert _digest(sharded) == before  # the hard-linked input is never written through
    ta, tb = _tensors(a / "Model"), _tensors(b / "Model")
    assert ta.keys() == tb.keys() and all(np.array_equal(ta[n], tb[n]) for n in ta)
    # the same tensors as quantizing the whole weight held in memory
    float_w = _tensors(single / "Model")[f"{LINEAR}.weight"]
    expect = quantized_tensors(LINEAR, quantize_rtn(float_w, 4, 32))
    assert all(np.array_equal(ta[n], v) for n, v in expect.items())
    # the weight map of the shards names exactly the tensors each shard holds
    index = json.loads((b / "Model" / "model.safetensors.index.json").read_text())
    for file in {f for f in index["weight_map"].values()}:
        with safe_open(str(b / "Model" / file), framework="pt") as f:
            assert {n for n, v in index["weight_map"].items() if v == file} == set(f.keys())
    assert index["metadata"]["total_size"] == WeightFiles(b / "Model").nbytes()
    qa = json.loads((a / "Meta-info" / "technicalinfo.json").read_text())["compression"]["steps"][0]["quality"]
    qb = json.loads((b / "Meta-info" / "technicalinfo.json").read_text())["compression"]["steps"][0]["quality"]
    assert qa["after"] == qb["after"] and qa["before"] == qb["before"] and qa["after"] > 0


@pytest.mark.torch
def test_bfloat16_stays_bfloat16(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    tree = _tree(tmp_path, "bf16", shards=2, dtype="BF16")
    out = _compress(tree, tmp_path, "bf16")
    dtypes = _dtypes(out / "Model")
    assert dtypes["model.embed_tokens.weight"] == dtypes["model.norm.weight"] == "BF16"
    assert dtypes[f"{LINEAR}.weight_scale"] == "BF16"
    source = WeightFiles(tree / "Model")
    result = WeightFiles(out / "Model")
    assert result.read("model.embed_tokens.weight").tobytes() == source.read("model.embed_tokens.weight").tobytes()
    expect = quantized_tensors(LINEAR, quantize_rtn(source.read(f"{LINEAR}.weight"), 4, 32))
    for name, value in expect.items():
        got = result.read(name)
        assert got.dtype == value.dtype and got.tobytes() == value.tobytes()


def test_rewrite_refuses_tensors_other_than_planned_and_keeps_the_file(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "plan")
    weights = WeightFiles(tree / "Model")
    before = _digest(tree / "Model")
    name = f"{LINEAR}.weight"
    plan = {name: [TensorSpec(f"{LINEAR}.weight_x", np.dtype(np.float32), (2,))]}
    with pytest.raises(PtmError, match="planned"):
        weights.rewrite(plan, lambda n: {f"{LINEAR}.weight_x": np.zeros(3, np.float32)})
    assert _digest(tree / "Model") == before and not list((tree / "Model").glob(".st-*"))


@pytest.mark.torch
def test_dequantize_streams_a_sharded_bfloat16_package_back(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from ptmpack.compress.quant.dequantize import dequantize_tree
    from ptmpack.compress.quant.pack_quantized import read_quantized_linear

    tree = _tree(tmp_path, "deq", shards=2, dtype="BF16")
    out = _compress(tree, tmp_path, "deq")
    packed = WeightFiles(out / "Model")
    q = read_quantized_linear({n: packed.read(n) for n in packed.names() if n.startswith(f"{LINEAR}.")}, LINEAR, 4)
    report = dequantize_tree(out)
    assert report.layers == 14 and report.bits == 4 and report.folded_transforms == 0
    weights = WeightFiles(out / "Model")
    w = weights.read(f"{LINEAR}.weight")
    assert w.dtype == q.scale.dtype and w.tobytes() == q.dequantize(q.scale.dtype).tobytes()  # bf16 stays bf16
    assert not [n for n in weights.names() if n.endswith("_packed")]
    assert "quantization_config" not in json.loads((out / "Model" / "config.json").read_text())
    index = json.loads((out / "Model" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(weights.names())


@pytest.mark.torch
def test_structure_steps_edit_bfloat16_checkpoints_in_bfloat16(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    tree = _tree(tmp_path, "fold", shards=2, dtype="BF16")
    out = tmp_path / "fold.ptm"
    compress(tree, out, CompressSpec(fold_norm="affine", quant="rtn", group_size=32), PackConfig())
    dest = tmp_path / "fold-out"
    unpack_file(out, dest)
    dtypes = _dtypes(dest / "Model")
    assert dtypes["model.layers.0.input_layernorm.weight"] == dtypes["lm_head.weight"] == "BF16"
    assert WeightFiles(dest / "Model").read("model.layers.0.input_layernorm.weight").astype(np.float32).tolist() == \
        [1.0] * 64  # the norm's scale went into the linears
