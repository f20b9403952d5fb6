"""``init`` and the Hugging Face import: config.json mapping, header-only counts, copying rules, safety."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from ptmpack.errors import InvalidTreeError, UsageError
from ptmpack.importers import hf
from ptmpack.metadata import documents as meta

BERT = {
    "architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 37, "vocab_size": 99, "max_position_embeddings": 64,
    "type_vocab_size": 2, "transformers_version": "4.41.0",
}
GPT2 = {
    "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 3, "n_head": 4, "n_embd": 16,
    "n_inner": None, "n_positions": 48, "n_ctx": 1024, "vocab_size": 77,
}
LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 172, "vocab_size": 128,
    "max_position_embeddings": 256, "torch_dtype": "bfloat16",
}
QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 56, "num_hidden_layers": 3,
    "num_attention_heads": 7, "num_key_value_heads": 1, "intermediate_size": 96, "vocab_size": 151,
    "max_position_embeddings": 512, "sliding_window": 512, "use_sliding_window": False, "torch_dtype": "float16",
}
MISTRAL = {
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 32, "num_hidden_layers": 1,
    "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 64, "vocab_size": 50,
    "max_position_embeddings": 128, "sliding_window": 64,
}
TENSORS = {
    "embed.weight": np.arange(99 * 32, dtype=np.float32).reshape(99, 32),
    "layer.0.weight": np.ones((37, 32), np.float16),
    "layer.0.bias": np.zeros(37, ml_dtypes.bfloat16),
    "position_ids": np.arange(64, dtype=np.int64).reshape(1, 64),
    "scalar": np.array(1.0, np.float64),
}
TENSOR_PARAMS = sum(t.size for t in TENSORS.values())
TENSOR_BYTES = sum(t.nbytes for t in TENSORS.values())


def make_hf(root: Path, config: dict[str, Any], extra: dict[str, str] | None = None) -> Path:
    """A checkpoint directory: config.json, model.safetensors (:data:`TENSORS`), tokenizer files."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    save_file(TENSORS, str(root / "model.safetensors"))
    for name, text in {"tokenizer.json": "{}", "tokenizer_config.json": "{}", "vocab.txt": "[PAD]\n", **(extra or {})}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() + ("/" if p.is_dir() else "") for p in root.rglob("*"))


def assert_nothing_left(parent: Path, dest: Path) -> None:
    assert not dest.exists() and not dest.is_symlink()
    assert not [p for p in parent.iterdir() if ".ptmpack-init-" in p.name]


# --- config.json -> technicalinfo ----------------------------------------------------------------

@pytest.mark.parametrize(("config", "task", "ptm_info", "inputs"), [
    (BERT, "fill-mask", {
        "architecture": ["bert"], "structure": "encoder-only", "num_layers": 2, "num_heads": 4, "num_kv_heads": 4,
        "hidden_size": 32, "intermediate_size": 37, "vocab_size": 99, "max_position": 64,
    }, ["input_ids", "attention_mask", "token_type_ids"]),
    (GPT2, "text-generation", {
        "architecture": ["gpt2"], "structure": "decoder-only", "num_layers": 3, "num_heads": 4, "num_kv_heads": 4,
        "hidden_size": 16, "intermediate_size": 64, "vocab_size": 77, "max_position": 48,
    }, ["input_ids", "attention_mask"]),
    (LLAMA, "text-generation", {
        "architecture": ["llama", "GQA"], "structure": "decoder-only", "num_layers": 2, "num_heads": 8,
        "num_kv_heads": 2, "hidden_size": 64, "intermediate_size": 172, "vocab_size": 128, "max_position": 256,
    }, ["input_ids", "attention_mask"]),
    (QWEN2, "text-generation", {
        "architecture": ["qwen2", "MQA"], "structure": "decoder-only", "num_layers": 3, "num_heads": 7,
        "num_kv_heads": 1, "hidden_size": 56, "intermediate_size": 96, "vocab_size": 151, "max_position": 512,
    }, ["input_ids", "attention_mask"]),
    (MISTRAL, "text-generation", {
        "architecture": ["mistral", "SlidingWindowAttention"], "structure": "decoder-only", "num_layers": 1,
        "num_heads": 4, "num_kv_heads": 4, "hidden_size": 32, "intermediate_size": 64, "vocab_size": 50,
        "max_position": 128,
    }, ["input_ids", "attention_mask"]),
])
def test_technical_from_hf_families(tmp_path: Path, config: dict[str, Any], task: str,
                                    ptm_info: dict[str, Any], inputs: list[str]) -> None:
    doc = hf.technical_from_hf(make_hf(tmp_path / "ck", config))
    meta.validate_document(meta.TECHNICAL_SCHEMA, doc, "t.json")
    assert doc["ptm_info"] == ptm_info
    assert list(doc["ptm_info"]) == list(ptm_info)  # Table 67 order
    assert doc["task"]["type"] == task
    assert (doc["parameters"], doc["model_size_bytes"]) == (TENSOR_PARAMS, TENSOR_BYTES)
    assert [i["name"] for i in doc["inputs"]] == inputs
    assert all(i | {"name": ""} == {"name": "", "modality": "text", "dtype": "int64", "shape": [-1, -1]}
               for i in doc["inputs"])
    assert doc["outputs"] == [{"name": "logits", "modality": "text", "dtype": config.get("torch_dtype", "float32"),
                               "shape": [-1, -1, ptm_info["vocab_size"]]}]


def test_gpt2_explicit_n_inner_wins(tmp_path: Path) -> None:
    doc = hf.technical_from_hf(make_hf(tmp_path / "ck", dict(GPT2, n_inner=50)))
    assert doc["ptm_info"]["intermediate_size"] == 50


def test_llama_without_kv_heads_is_plain_multi_head(tmp_path: Path) -> None:
    config = {k: v for k, v in LLAMA.items() if k != "num_key_value_heads"}
    info = hf.technical_from_hf(make_hf(tmp_path / "ck", config))["ptm_info"]
    assert (info["num_kv_heads"], info["architecture"]) == (8, ["llama"])


def test_generic_fallback_and_moe(tmp_path: Path) -> None:
    config = {"model_type": "newlm", "architectures": ["NewLMForCausalLM"], "d_model": 24, "n_layers": 5,
              "n_heads": 6, "multi_query": True, "ffn_dim": 48, "padded_vocab_size": 300, "max_seq_len": 2048,
              "num_local_experts": 8, "num_blocks": 5, "vocab_size": None}
    info = hf.technical_from_hf(make_hf(tmp_path / "ck", config))["ptm_info"]
    assert info == {"architecture": ["newlm", "MQA", "MoE"], "structure": "decoder-only", "num_layers": 5,
                    "num_heads": 6, "num_kv_heads": 1, "hidden_size": 24, "intermediate_size": 48,
                    "vocab_size": 300, "max_position": 2048, "num_blocks": 5, "num_experts": 8}


def test_unknown_model_without_heads(tmp_path: Path) -> None:
    doc = hf.technical_from_hf(make_hf(tmp_path / "ck", {"hidden_size": True, "num_hidden_layers": -3}))
    assert doc["ptm_info"] == {"architecture": ["unknown"]}
    assert doc["task"]["type"] == "other" and doc["outputs"] == []
    meta.validate_document(meta.TECHNICAL_SCHEMA, doc, "t.json")


@pytest.mark.parametrize(("architectures", "extra", "task", "structure"), [
    (["BertModel"], {}, "feature-extraction", "encoder-only"),
    (["RobertaForSequenceClassification"], {"model_type": "roberta", "id2label": {"0": "a", "1": "b", "2": "c"}},
     "text-classification", "encoder-only"),
    (["T5ForConditionalGeneration"], {"model_type": "t5", "is_encoder_decoder": True}, "text2text-generation",
     "encoder-decoder"),
    (["WhisperForConditionalGeneration"], {"model_type": "whisper", "is_encoder_decoder": True, "num_mel_bins": 80},
     "speech-recognition", "encoder-decoder"),
    (["LlavaForConditionalGeneration"], {"model_type": "llava", "vision_config": {"image_size": 336},
                                          "text_config": {"model_type": "llama", "vocab_size": 32064}},
     "multimodal", None),
    (["ViTForImageClassification"], {"model_type": "vit", "image_size": 224, "num_channels": 3}, "image-classification",
     "encoder-only"),
    ([], {}, "other", None),
])
def test_task_and_structure_from_architectures(tmp_path: Path, architectures: list[str], extra: dict[str, Any],
                                               task: str, structure: str | None) -> None:
    doc = hf.technical_from_hf(make_hf(tmp_path / "ck", {"architectures": architectures, **extra}))
    meta.validate_document(meta.TECHNICAL_SCHEMA, doc, "t.json")
    assert doc["task"]["type"] == task
    assert doc["ptm_info"].get("structure") == structure


def test_classification_outputs_count_labels(tmp_path: Path) -> None:
    config = dict(BERT, architectures=["BertForSequenceClassification"], id2label={"0": "neg", "1": "pos"})
    assert hf.technical_from_hf(make_hf(tmp_path / "ck", config))["outputs"][0]["shape"] == [-1, 2]


def test_vision_and_multimodal_inputs(tmp_path: Path) -> None:
    vit = hf.technical_from_hf(make_hf(tmp_path / "vit", {"model_type": "vit", "image_size": 32, "num_channels": 1}))
    assert vit["inputs"] == [{"name": "pixel_values", "modality": "image", "dtype": "float32", "shape": [-1, 1, 32, 32]}]
    llava = hf.technical_from_hf(make_hf(tmp_path / "llava", {
        "model_type": "llava", "vision_config": {"image_size": 336}, "text_config": {"vocab_size": 10, "hidden_size": 8}}))
    assert [(i["name"], i["modality"], i["shape"]) for i in llava["inputs"]] == [
        ("input_ids", "text", [-1, -1]), ("attention_mask", "text", [-1, -1]),
        ("pixel_values", "image", [-1, 3, 336, 336])]
    assert llava["ptm_info"]["vocab_size"] == 10 and llava["ptm_info"]["hidden_size"] == 8


def test_sentence_transformers_checkpoint(tmp_path: Path) -> None:
    root = make_hf(tmp_path / "ck", dict(BERT, architectures=["BertModel"]), {
        "modules.json": "[]", "sentence_bert_config.json": '{"max_seq_length": 128}',
        "config_sentence_transformers.json": '{"__version__": {"pytorch": "2.1.0", "sentence_transformers": "2.2.2"}}',
        "1_Pooling/config.json": '{"pooling_mode_mean_tokens": true}',
    })
    doc = hf.technical_from_hf(root)
    assert doc["task"]["type"] == "feature-extraction"
    assert doc["framework"] == "PyTorch 2.1.0"
    assert doc["environment"] == "Transformers4.41.0-SentenceTransformers2.2.2"
    assert doc["config"] == {"max_seq_length": 128}
    assert doc["outputs"] == [{"name": "last_hidden_state", "modality": "text", "dtype": "float32", "shape": [-1, -1, 32]}]


def test_sharded_weights_are_summed_from_headers(tmp_path: Path) -> None:
    root = make_hf(tmp_path / "ck", LLAMA)
    save_file({"lm_head.weight": np.zeros((128, 64), ml_dtypes.bfloat16)}, str(root / "model-00002-of-00002.safetensors"))
    (root / "model.safetensors.index.json").write_text('{"metadata": {}, "weight_map": {}}')
    doc = hf.technical_from_hf(root)
    assert (doc["parameters"], doc["model_size_bytes"]) == (TENSOR_PARAMS + 128 * 64, TENSOR_BYTES + 128 * 64 * 2)


def test_corrupt_safetensors_header_is_refused(tmp_path: Path) -> None:
    root = make_hf(tmp_path / "ck", BERT)
    (root / "model.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(InvalidTreeError, match=r"model.safetensors"):
        hf.technical_from_hf(root)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\xff"])
def test_bad_config_json_is_refused(tmp_path: Path, text: str) -> None:
    root = make_hf(tmp_path / "ck", BERT)
    (root / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(InvalidTreeError, match=r"config.json"):
        hf.technical_from_hf(root)


# --- config.json -> managementinfo ---------------------------------------------------------------

@pytest.mark.parametrize(("card", "license_id"), [
    ("---\nlanguage: en\nlicense: apache-2.0\n---\n# Model\n", "Apache-2.0"),
    ("---\nlicense: 'mit'\n---\n", "MIT"),
    ("---\nlicense: llama3.1\n---\n", "LicenseRef-llama3.1"),
    ("---\nlicense: other\n---\n", None),
    ("# No front matter\nlicense: mit\n", None),
])
def test_management_from_hf(tmp_path: Path, card: str, license_id: str | None) -> None:
    root = make_hf(tmp_path / "my-bert", BERT, {"README.md": card})
    doc = hf.management_from_hf(root)
    meta.validate_document(meta.MANAGEMENT_SCHEMA, doc, "m.json")
    assert (doc["name"], doc["model_id"], doc["provider"]) == ("my-bert", "my-bert", "unknown")
    assert doc.get("license") == license_id
    assert doc["tags"] == ["bert"]
    assert hf.management_from_hf(root, "Tiny BERT")["model_id"] == "tiny-bert"


def hf_cache(tmp_path: Path) -> Path:
    """A Hugging Face cache layout: snapshot files are relative links into ``blobs/``."""
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    staging = make_hf(tmp_path / "staging", LLAMA, {"sub/extra.json": "{}"})
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = path.relative_to(staging)
        blob = repo / "blobs" / f"blob{len(list((repo / 'blobs').iterdir()))}"
        shutil.copyfile(path, blob)
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / rel).symlink_to(os.path.relpath(blob, (snapshot / rel).parent))
    return snapshot


def test_hf_cache_snapshot_is_copied_as_regular_files(tmp_path: Path) -> None:
    snapshot = hf_cache(tmp_path)
    dest = tmp_path / "pkg"
    written = hf.init_tree(dest, from_hf=snapshot)
    for rel in ("config.json", "model.safetensors", "tokenizer.json", "sub/extra.json"):
        copied = dest / "Model" / rel
        assert f"Model/{rel}" in written
        assert not copied.is_symlink() and copied.read_bytes() == (snapshot / rel).read_bytes()
    assert not [p for p in dest.rglob("*") if p.is_symlink()]
    management = meta.load_metadata(dest / meta.MANAGEMENT_FILE, meta.MANAGEMENT_SCHEMA)
    assert (management["name"], management["model_id"], management["provider"]) == (
        "acme/tiny-llama", "acme-tiny-llama", "acme")


# --- init_tree -----------------------------------------------------------------------------------

PACKAGE_DIRS = ["Meta-info/", "Model/", "Program/", "Program/Library/", "Program/Library/converter/",
                "Program/Library/core/", "Program/Library/environment/", "Program/Scripts/"]


def test_bare_init(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "my-package"
    written = hf.init_tree(dest)
    assert written == sorted([*PACKAGE_DIRS, meta.MANAGEMENT_FILE, meta.TECHNICAL_FILE])
    assert listing(dest) == written
    management = meta.load_metadata(dest / meta.MANAGEMENT_FILE, meta.MANAGEMENT_SCHEMA)
    assert (management["name"], management["model_id"]) == ("my-package", "my-package")
    assert meta.load_metadata(dest / meta.TECHNICAL_FILE, meta.TECHNICAL_SCHEMA) == meta.technical_template()
    assert hf.init_tree(tmp_path / "b", name="Named")  # --name wins
    assert meta.load_metadata(tmp_path / "b" / meta.MANAGEMENT_FILE, meta.MANAGEMENT_SCHEMA)["name"] == "Named"


def test_init_from_hf_copies_what_a_package_needs(tmp_path: Path) -> None:
    root = make_hf(tmp_path / "ck", BERT, {
        "README.md": "---\nlicense: mit\n---\n", "generation_config.json": "{}", "special_tokens_map.json": "{}",
        "merges.txt": "", "spiece.model": "x", "added_tokens.json": "{}", "LICENSE": "MIT", "1_Pooling/config.json": "{}",
        ".gitattributes": "*.safetensors filter=lfs", ".git/HEAD": "ref", ".cache/huggingface/x.json": "{}",
        "flax_model.msgpack": "x", "tf_model.h5": "x", "modeling_custom.py": "import os", "onnx/model.onnx": "x",
    })
    dest = tmp_path / "pkg"
    written = hf.init_tree(dest, from_hf=root, name="tiny")
    model = sorted(w.removeprefix("Model/") for w in written if w.startswith("Model/") and w != "Model/")
    assert model == sorted(["1_Pooling/", "1_Pooling/config.json", "LICENSE", "README.md", "added_tokens.json",
                            "config.json", "generation_config.json", "merges.txt", "model.safetensors",
                            "special_tokens_map.json", "spiece.model", "tokenizer.json", "tokenizer_config.json",
                            "vocab.txt"])
    assert listing(dest) == written
    assert (dest / "Model" / "model.safetensors").read_bytes() == (root / "model.safetensors").read_bytes()
    technical = meta.load_metadata(dest / meta.TECHNICAL_FILE, meta.TECHNICAL_SCHEMA)
    assert technical == hf.technical_from_hf(root)
    management = meta.load_metadata(dest / meta.MANAGEMENT_FILE, meta.MANAGEMENT_SCHEMA)
    assert (management["name"], management["license"]) == ("tiny", "MIT")
    assert list(root.iterdir())  # the source is untouched


def test_init_into_an_existing_empty_directory_keeps_it(tmp_path: Path) -> None:
    dest = tmp_path / "pkg"
    dest.mkdir()
    inode = dest.stat().st_ino
    hf.init_tree(dest, from_hf=make_hf(tmp_path / "ck", GPT2))
    assert dest.stat().st_ino == inode
    assert listing(dest)[:3] == ["Meta-info/", "Meta-info/managementinfo.json", "Meta-info/technicalinfo.json"]
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kind", ["file", "nonempty", "symlink"])
def test_existing_destination_is_refused(tmp_path: Path, kind: str) -> None:
    dest = tmp_path / "pkg"
    if kind == "file":
        dest.write_text("x")
    elif kind == "nonempty":
        dest.mkdir()
        (dest / "keep.txt").write_text("mine")
    else:
        (tmp_path / "elsewhere").mkdir()
        dest.symlink_to(tmp_path / "elsewhere")
    before = listing(tmp_path)
    with pytest.raises(UsageError, match="pkg"):
        hf.init_tree(dest)
    assert listing(tmp_path) == before


@pytest.mark.parametrize("pickle", ["pytorch_model.bin", "model.pt", "optimizer.pkl", "sub/training_args.bin"])
def test_pickles_beside_safetensors_are_left_behind(tmp_path: Path, pickle: str) -> None:
    root = make_hf(tmp_path / "ck", BERT, {pickle: "not really a pickle"})
    written = hf.init_tree(tmp_path / "pkg", from_hf=root)
    assert "Model/model.safetensors" in written
    assert not any(p.endswith(Path(pickle).name) for p in written)
    assert not list((tmp_path / "pkg").rglob(Path(pickle).name))


def test_pickle_only_checkpoint_is_told_to_convert(tmp_path: Path) -> None:
    root = make_hf(tmp_path / "ck", BERT, {"pytorch_model.bin": "pickle"})
    (root / "model.safetensors").unlink()
    with pytest.raises(InvalidTreeError, match="pickle") as info:
        hf.init_tree(tmp_path / "pkg", from_hf=root)
    assert "convert the weights to safetensors" in info.value.diagnostics()


def test_unreadable_subdirectory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_hf(tmp_path / "ck", BERT, {"sub/x.json": "{}"})
    real_scandir = os.scandir

    def scandir(path: str | os.PathLike[str]) -> Any:  # what os.walk meets in a directory it may not read
        if Path(path).name == "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(InvalidTreeError, match="sub: cannot read directory"):
        hf.init_tree(tmp_path / "pkg", from_hf=root)
    assert_nothing_left(tmp_path, tmp_path / "pkg")


def test_symlink_escaping_the_checkpoint_is_refused(tmp_path: Path) -> None:
    root = make_hf(tmp_path / "ck", BERT)
    (tmp_path / "secret.json").write_text('{"token": "s3cret"}')
    (root / "tokenizer_config.json").unlink()
    (root / "tokenizer_config.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(InvalidTreeError, match="outside the checkpoint"):
        hf.init_tree(tmp_path / "pkg", from_hf=root)
    assert_nothing_left(tmp_path, tmp_path / "pkg")


def test_symlink_escaping_a_cache_snapshot_is_refused(tmp_path: Path) -> None:
    snapshot = hf_cache(tmp_path)
    (tmp_path / "secret.txt").write_text("s3cret")
    (snapshot / "notes.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(InvalidTreeError, match=r"notes.txt"):
        hf.init_tree(tmp_path / "pkg", from_hf=snapshot)
    assert_nothing_left(tmp_path, tmp_path / "pkg")


@pytest.mark.parametrize("case", ["dir-link", "dangling", "loop"])
def test_other_links_are_refused(tmp_path: Path, case: str) -> None:
    root = make_hf(tmp_path / "ck", BERT)
    if case == "dir-link":
        (root / "real").mkdir()
        (root / "linked").symlink_to(root / "real")
    elif case == "dangling":
        (root / "gone.json").symlink_to(root / "missing.json")
    else:
        (root / "a.json").symlink_to(root / "b.json")
        (root / "b.json").symlink_to(root / "a.json")
    with pytest.raises(InvalidTreeError):
        hf.init_tree(tmp_path / "pkg", from_hf=root)
    assert_nothing_left(tmp_path, tmp_path / "pkg")


def test_missing_config_or_weights_are_refused(tmp_path: Path) -> None:
    root = make_hf(tmp_path / "ck", BERT)
    (root / "model.safetensors").unlink()
    with pytest.raises(InvalidTreeError, match="safetensors"):
        hf.init_tree(tmp_path / "pkg", from_hf=root)
    (root / "config.json").unlink()
    with pytest.raises(InvalidTreeError, match=r"config.json"):
        hf.init_tree(tmp_path / "pkg", from_hf=root)
    with pytest.raises(UsageError, match="not a directory"):
        hf.init_tree(tmp_path / "pkg", from_hf=tmp_path / "absent")
    assert_nothing_left(tmp_path, tmp_path / "pkg")


@pytest.mark.parametrize("existing", [False, True])
def test_no_partial_tree_after_a_failed_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool) -> None:
    root = make_hf(tmp_path / "ck", BERT)
    dest = tmp_path / "pkg"
    if existing:
        dest.mkdir()
    calls = []
    real_copyfile = shutil.copyfile

    def failing_copy(src: Path, dst: Path) -> None:
        calls.append(src)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_copyfile(src, dst)

    monkeypatch.setattr(hf.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="No space"):
        hf.init_tree(dest, from_hf=root)
    if existing:
        assert listing(dest) == []
        dest.rmdir()
    assert_nothing_left(tmp_path, dest)


def test_no_partial_tree_after_a_failed_publish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "pkg"
    dest.mkdir()
    real_rename = Path.rename

    def rename(self: Path, target: Path) -> Path:
        if Path(target).name == "Model":
            raise OSError(5, "I/O error")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="I/O"):
        hf.init_tree(dest)
    assert listing(dest) == []


# --- real weights ----------------------------------------------------------------------------------

@pytest.mark.realweights
def test_init_from_real_minilm(tmp_path: Path) -> None:
    from tests._support.realweights import minilm_dir

    source = minilm_dir()
    dest = tmp_path / "minilm"
    written = hf.init_tree(dest, from_hf=source, name="all-MiniLM-L6-v2")
    assert {"Model/model.safetensors", "Model/1_Pooling/config.json", "Model/README.md", "Model/vocab.txt"} <= set(written)
    assert "Model/.gitattributes" not in written
    technical = meta.load_metadata(dest / meta.TECHNICAL_FILE, meta.TECHNICAL_SCHEMA)
    info = technical["ptm_info"]
    assert info["architecture"][0] == "bert" and info["structure"] == "encoder-only"
    assert (info["num_layers"], info["num_heads"], info["hidden_size"], info["vocab_size"]) == (6, 12, 384, 30522)
    assert (info["intermediate_size"], info["max_position"]) == (1536, 512)
    assert technical["task"]["type"] == "feature-extraction"
    itemsize = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "I8": 1, "BOOL": 1}
    params = size = 0
    with safe_open(str(source / "model.safetensors"), framework="numpy") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            tensor = f.get_slice(key)
            params += math.prod(tensor.get_shape())
            size += math.prod(tensor.get_shape()) * itemsize[tensor.get_dtype()]
    assert technical["parameters"] == params
    assert technical["model_size_bytes"] == size
    management = meta.load_metadata(dest / meta.MANAGEMENT_FILE, meta.MANAGEMENT_SCHEMA)
    assert (management["model_id"], management["license"]) == ("all-minilm-l6-v2", "Apache-2.0")
    assert (dest / "Model" / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
