"""Fill the metadata of a package from a Hugging Face checkpoint (``init --from-hf``).

``config.json`` gives Table 67's ``ptm_info`` and the task; the safetensors headers
give the parameter count and size (weights are never read); the model card's front
matter gives the license. :mod:`ptmpack.importers.hf` finds and copies the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptmpack.jsonio import read_object_file
from ptmpack.metadata.documents import (
    MAX_METADATA_BYTES,
    management_template,
)
from ptmpack.tensors.safetensors_index import index_safetensors

_ENCODER_ONLY = frozenset({
    "bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "mpnet", "deberta",
    "deberta-v2", "camembert", "modernbert", "vit",
})
_DECODER_ONLY = frozenset({
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "gpt_bigcode", "llama", "mistral", "mixtral", "qwen2",
    "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "phi", "phi3", "falcon", "opt", "bloom",
    "mpt", "internlm2", "deepseek_v2", "deepseek_v3", "olmo", "stablelm", "starcoder2",
})
_TASK_SUFFIXES = (  # head class suffix in "architectures" -> Table 64 task type, first match wins
    ("ForMaskedLM", "fill-mask"), ("ForCausalLM", "text-generation"), ("LMHeadModel", "text-generation"),
    ("ForSequenceClassification", "text-classification"), ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"), ("ForImageClassification", "image-classification"),
    ("ForObjectDetection", "object-detection"), ("ForSemanticSegmentation", "image-segmentation"),
    ("ForCTC", "speech-recognition"), ("ForSpeechSeq2Seq", "speech-recognition"),
)
# Table 67 field -> config.json keys, most common spelling first (BERT/LLaMA, GPT-2, others).
_ALIASES = {
    "num_layers": ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
    "num_heads": ("num_attention_heads", "n_head", "n_heads", "num_heads"),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "hidden_dim", "ffn_hidden_size"),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
    "max_position": ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"),
    "num_blocks": ("num_blocks",),
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
}
_PTM_ORDER = ("num_layers", "num_heads", "num_kv_heads", "hidden_size", "intermediate_size", "vocab_size",
              "max_position", "num_blocks", "num_experts")
_SPDX = {
    "apache-2.0": "Apache-2.0", "mit": "MIT", "bsd-2-clause": "BSD-2-Clause", "bsd-3-clause": "BSD-3-Clause",
    "cc0-1.0": "CC0-1.0", "cc-by-4.0": "CC-BY-4.0", "cc-by-sa-4.0": "CC-BY-SA-4.0", "cc-by-nc-4.0": "CC-BY-NC-4.0",
    "mpl-2.0": "MPL-2.0", "gpl-2.0": "GPL-2.0-only", "gpl-3.0": "GPL-3.0-only", "lgpl-3.0": "LGPL-3.0-only",
    "agpl-3.0": "AGPL-3.0-only",
}


@dataclass(frozen=True)
class Source:
    """A file to copy: ``rel`` under the checkpoint (and under ``Model/``), ``path`` the regular file read."""

    rel: str
    path: Path


def read_json(path: Path, where: str) -> dict[str, Any]:
    """A JSON object from a checkpoint file, read up to :data:`MAX_METADATA_BYTES`."""
    return read_object_file(path, where, max_bytes=MAX_METADATA_BYTES)


@dataclass(frozen=True)
class Checkpoint:
    """A checked checkpoint: the files to copy and what ``config.json`` says."""

    hf_dir: Path
    sources: tuple[Source, ...]
    config: dict[str, Any]
    archs: tuple[str, ...]
    model_type: str

    def json(self, rel: str) -> dict[str, Any]:
        """The JSON object in checkpoint file ``rel``, ``{}`` when there is none."""
        source = next((s for s in self.sources if s.rel == rel), None)
        return {} if source is None else read_json(source.path, f"{self.hf_dir}/{rel}")

    def has(self, rel: str) -> bool:
        return any(s.rel == rel for s in self.sources)


def _count(cfg: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    """The first of ``keys`` whose value is a non-negative integer (null and junk are skipped)."""
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _ptm_info(ck: Checkpoint) -> dict[str, Any]:
    """Table 67 from ``config.json``; a multimodal config contributes its ``text_config``."""
    text_cfg = ck.config.get("text_config")
    flat = {**text_cfg, **ck.config} if isinstance(text_cfg, dict) else ck.config
    info = {field: n for field, keys in _ALIASES.items() if (n := _count(flat, keys)) is not None}
    if "intermediate_size" not in info and "n_embd" in flat and "hidden_size" in info:
        info["intermediate_size"] = 4 * info["hidden_size"]  # GPT-2: n_inner null means 4 * n_embd
    tags = [ck.model_type]
    heads = info.get("num_heads")
    if heads is not None:
        kv = _count(flat, ("num_key_value_heads", "num_kv_heads", "n_head_kv"))
        if kv is None and flat.get("multi_query_attention") is True:
            kv = _count(flat, ("multi_query_group_num",))
        if kv is None and flat.get("multi_query") is True:
            kv = 1
        info["num_kv_heads"] = kv = heads if kv is None else kv
        if kv < heads:
            tags.append("MQA" if kv == 1 else "GQA")
    if info.get("num_experts"):
        tags.append("MoE")
    if _count(flat, ("sliding_window",)) and flat.get("use_sliding_window") is not False:
        tags.append("SlidingWindowAttention")
    head: dict[str, Any] = {"architecture": tags}
    if ck.config.get("is_encoder_decoder") is True:
        head["structure"] = "encoder-decoder"
    elif ck.model_type in _DECODER_ONLY or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in ck.archs):
        head["structure"] = "decoder-only"
    elif ck.model_type in _ENCODER_ONLY or any(a.endswith("ForMaskedLM") for a in ck.archs):
        head["structure"] = "encoder-only"
    return {**head, **{k: info[k] for k in _PTM_ORDER if k in info}}


def _task(ck: Checkpoint) -> str:
    """Table 64 task type from the head classes in ``architectures``."""
    if ck.has("modules.json") or ck.has("config_sentence_transformers.json"):
        return "feature-extraction"  # sentence-transformers embeds with the bare encoder
    for arch in ck.archs:
        for suffix, task in _TASK_SUFFIXES:
            if arch.endswith(suffix):
                return task
        if arch.endswith("ForConditionalGeneration"):
            if "num_mel_bins" in ck.config:
                return "speech-recognition"
            if "vision_config" in ck.config:
                return "multimodal"
            return "text2text-generation" if ck.config.get("is_encoder_decoder") is True else "text-generation"
    return "feature-extraction" if any(a.endswith("Model") for a in ck.archs) else "other"


def _tensor(name: str, modality: str, dtype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "modality": modality, "dtype": dtype, "shape": shape}


def _inputs(cfg: dict[str, Any], info: dict[str, Any]) -> list[dict[str, Any]]:
    """Table 65 inputs: token ids (plus pixel values for vision-language), or pixel values alone."""
    vision = cfg.get("vision_config") if isinstance(cfg.get("vision_config"), dict) else cfg
    size = _count(vision, ("image_size",))
    pixels = _tensor("pixel_values", "image", "float32", [-1, _count(vision, ("num_channels",)) or 3, size or -1, size or -1])
    if "vocab_size" not in info and size is not None:
        return [pixels]
    inputs = [_tensor(n, "text", "int64", [-1, -1]) for n in ("input_ids", "attention_mask")]
    if (_count(cfg, ("type_vocab_size",)) or 0) >= 2:
        inputs.append(_tensor("token_type_ids", "text", "int64", [-1, -1]))
    return [*inputs, pixels] if vision is not cfg else inputs


def _outputs(cfg: dict[str, Any], task: str, info: dict[str, Any], modality: str) -> list[dict[str, Any]]:
    dtype = cfg.get("torch_dtype", cfg.get("dtype"))
    dtype = dtype if dtype in ("float16", "bfloat16", "float32") else "float32"
    if task == "feature-extraction":
        return [_tensor("last_hidden_state", modality, dtype, [-1, -1, info.get("hidden_size", -1)])]
    if task in ("fill-mask", "text-generation", "text2text-generation"):
        return [_tensor("logits", modality, dtype, [-1, -1, info.get("vocab_size", -1)])]
    if task in ("text-classification", "image-classification"):
        labels = cfg.get("id2label")
        return [_tensor("logits", modality, dtype, [-1, len(labels) if isinstance(labels, dict) else -1])]
    return []


def technical_doc(ck: Checkpoint) -> dict[str, Any]:
    cfg = ck.config
    info, task = _ptm_info(ck), _task(ck)
    inputs = _inputs(cfg, info)
    parameters = size = 0
    for s in ck.sources:
        if s.rel.endswith(".safetensors"):
            with open(s.path, "rb") as f:
                index = index_safetensors(f, os.fstat(f.fileno()).st_size, where=f"{ck.hf_dir}/{s.rel}")
            parameters += sum(t.numel for t in index.tensors)
            size += sum(t.nbytes for t in index.tensors)
    versions = ck.json("config_sentence_transformers.json").get("__version__")
    versions = versions if isinstance(versions, dict) else {}
    torch_version = versions.get("pytorch")
    env = [f"{label}{v}" for label, v in (
        ("Transformers", cfg.get("transformers_version")), ("SentenceTransformers", versions.get("sentence_transformers")),
    ) if isinstance(v, str) and v]
    runtime = {k: v for k, v in (
        ("torch_dtype", cfg.get("torch_dtype", cfg.get("dtype"))),
        ("max_seq_length", ck.json("sentence_bert_config.json").get("max_seq_length")),
    ) if v is not None}
    doc: dict[str, Any] = {"framework": f"PyTorch {torch_version}" if isinstance(torch_version, str) else "PyTorch"}
    if env:
        doc["environment"] = "-".join(env)
    if runtime:
        doc["config"] = runtime
    return {
        **doc,
        "parameters": parameters,
        "model_size_bytes": size,
        "task": {"type": task, "description": f"{ck.model_type} ({', '.join(ck.archs) or 'no architectures listed'})"},
        "inputs": inputs,
        "outputs": _outputs(cfg, task, info, inputs[0]["modality"]),
        "ptm_info": info,
    }


def _card_license(ck: Checkpoint) -> str | None:
    """The model card's ``license:`` (YAML front matter of README.md) as an SPDX id.

    Hugging Face ids map to SPDX (``apache-2.0`` -> ``Apache-2.0``); unknown ones become
    ``LicenseRef-<id>``; ``other`` gives nothing.
    """
    source = next((s for s in ck.sources if s.rel == "README.md"), None)
    if source is None:
        return None
    with open(source.path, "rb") as f:
        lines = f.read(64 * 1024).decode("utf-8", errors="replace").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, _, value = line.partition(":")
        if key == "license":
            return spdx_license(value.strip().strip("'\""))
    return None


def spdx_license(value: object) -> str | None:
    """An SPDX id for a Hugging Face / GGUF licence id (``apache-2.0`` -> ``Apache-2.0``).

    Known ids (in either spelling, ``-only`` optional) get their SPDX form; others become
    ``LicenseRef-<id>``; ``other``, ``unknown`` and empty give None.
    """
    if not isinstance(value, str) or value.strip().lower() in ("", "other", "unknown"):
        return None
    lic = value.strip()
    known = {k.removesuffix("-only"): v for k, v in _SPDX.items()}
    if (key := lic.lower().removesuffix("-only")) in known:
        return known[key]
    safe = "".join(c if c.isascii() and (c.isalnum() or c in ".+-") else "-" for c in lic).strip("-.+")
    return f"LicenseRef-{safe}" if safe else None


def management_doc(ck: Checkpoint, name: str | None) -> dict[str, Any]:
    root = ck.hf_dir.resolve()
    repo = root.parent.parent.name  # a Hugging Face cache snapshot: models--org--name/snapshots/<rev>
    repo_id = repo.removeprefix("models--").replace("--", "/") if root.parent.name == "snapshots" and repo.startswith("models--") else None
    doc = management_template(name or repo_id or root.name)
    if repo_id and "/" in repo_id:
        doc["provider"] = repo_id.split("/", 1)[0]
    doc["description"] = f"{ck.model_type} model imported from a Hugging Face checkpoint"
    if license_id := _card_license(ck):
        doc["license"] = license_id
    doc["tags"] = [ck.model_type]
    return doc


