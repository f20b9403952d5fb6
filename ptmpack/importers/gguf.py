"""Import a GGUF file (llama.cpp's format) as a package tree: weights, IR, tokenizer, metadata.

A GGUF file holds quantized tensors under llama.cpp's names plus key/value metadata
(hyper-parameters, the tokenizer's vocabulary and merges). :func:`init_tree_from_gguf`
turns it into a package whose ``Model/`` is an ordinary Hugging Face checkpoint —
``config.json``, ``model.safetensors`` (float32 or float16, dequantized with the
``gguf`` package's own dequantizers), ``tokenizer.json`` for the ``tokenizers``
library, ``tokenizer_config.json`` — plus ``Model/graph.json`` built by
:mod:`ptmpack.ir.convert_hf`, and both metadata documents filled from the GGUF keys.

llama.cpp stores the rows of LLaMA's query and key projections permuted so that its
interleaved-pair rotary embedding applies; they are permuted back here, so the
package uses Hugging Face's layout (rotate-half RoPE) like every other LLaMA import.
Tensors are dequantized and written one at a time, so memory stays bounded by the
largest tensor whatever the model's size.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.errors import InvalidTreeError, UnsupportedError, UsageError
from ptmpack.importers.hf_meta import spdx_license
from ptmpack.importers.publish import write_json

SUPPORTED_ARCHS = ("llama", "qwen2")
"""``general.architecture`` values this importer maps onto a Hugging Face architecture."""
OUT_DTYPES = {"float32": ("F32", np.dtype("<f4")), "float16": ("F16", np.dtype("<f2"))}
_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4
_BIG_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}
# Pre-tokenizer split patterns of the byte-level BPE vocabularies, by ``tokenizer.ggml.pre``
# (each is the pattern the model's own tokenizer.json uses).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
           "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}
_DIGIT_SPLIT = frozenset({"smollm", "starcoder"})
"""Vocabularies whose tokenizer splits every digit off before the GPT-2 byte-level regex."""


@dataclass(frozen=True)
class GgufTensor:
    """One tensor of the file: its llama.cpp name, quantization type and numpy-order shape."""

    name: str
    qtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class GgufImport:
    """What :func:`convert_gguf` wrote into a checkpoint directory."""

    files: tuple[str, ...]
    metadata: dict[str, Any]
    """The GGUF key/values (large tokenizer arrays left out)."""
    tensors: tuple[GgufTensor, ...]
    config: dict[str, Any]
    parameters: int
    size_bytes: int


def _reader(path: Path) -> Any:
    try:
        import gguf
    except ImportError:
        raise UsageError("importing GGUF files needs the 'gguf' package", hint="pip install gguf") from None
    if not path.is_file():
        raise UsageError(f"{path}: no such file", hint="--from-gguf takes a .gguf file")
    try:
        return gguf.GGUFReader(path, "r")
    except (ValueError, OSError, struct.error, IndexError, KeyError) as exc:
        raise InvalidTreeError(f"{path}: not a readable GGUF file ({exc})") from None


def read_gguf_metadata(reader: Any, *, with_vocab: bool = False) -> dict[str, Any]:
    """The key/value metadata of an open ``gguf.GGUFReader`` as plain Python values.

    The tokenizer's vocabulary arrays (tokens, merges, types, scores) are included only
    with ``with_vocab``; of the reader's own ``GGUF.*`` fields only ``GGUF.version`` is kept.
    """
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key not in ("GGUF.tensor_count", "GGUF.kv_count") and (with_vocab or key not in _BIG_ARRAYS):
            value = field.contents()
            out[key] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


def _tensors(reader: Any) -> tuple[GgufTensor, ...]:
    return tuple(GgufTensor(t.name, t.tensor_type.name, tuple(int(d) for d in reversed(t.shape.tolist())))
                 for t in reader.tensors)


def _key(meta: dict[str, Any], arch: str, name: str, default: Any = None) -> Any:
    return meta.get(f"{arch}.{name}", default)


def config_from_gguf(meta: dict[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """A Hugging Face ``config.json`` (LLaMA or Qwen2) from the GGUF hyper-parameter keys.

    ``tensor_shapes`` (llama.cpp name → numpy-order shape) tells whether the LM head is
    tied (no ``output.weight``), whether QKV have biases, and the vocabulary size (the
    rows of ``token_embd.weight``, which wins over ``<arch>.vocab_size``).

    Raises:
        UnsupportedError: the architecture is not one of :data:`SUPPORTED_ARCHS`, or a
            hyper-parameter the model needs is missing.
    """
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedError(f"GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})")
    names = set(tensor_shapes)
    need = {k: _key(meta, arch, k) for k in ("block_count", "embedding_length", "feed_forward_length",
                                             "attention.head_count")}
    missing = [f"{arch}.{k}" for k, v in need.items() if v is None]
    if missing:
        raise UnsupportedError(f"GGUF file lacks {', '.join(missing)}")
    heads = int(need["attention.head_count"])
    hidden = int(need["embedding_length"])
    embd = tensor_shapes.get("token_embd.weight")
    vocab = (embd[0] if embd else None) or meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens") or ())
    if not vocab:
        raise UnsupportedError("GGUF file states no vocabulary size and carries no tokenizer vocabulary")
    head_dim = int(_key(meta, arch, "attention.key_length", hidden // heads))
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": int(need["feed_forward_length"]),
        "num_hidden_layers": int(need["block_count"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_key(meta, arch, "attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(_key(meta, arch, "context_length", 2048)),
        "rms_norm_eps": float(_key(meta, arch, "attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(_key(meta, arch, "rope.freq_base", 10000.0)),
        "vocab_size": int(vocab),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "torch_dtype": "float32",
    }
    if int(_key(meta, arch, "rope.dimension_count", head_dim)) != head_dim:
        raise UnsupportedError(f"partial rotary embedding ({arch}.rope.dimension_count) is not supported")
    if _key(meta, arch, "rope.scaling.type") not in (None, "none"):
        raise UnsupportedError(f"rope scaling {_key(meta, arch, 'rope.scaling.type')!r} is not supported")
    for key, hf in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                    ("padding_token_id", "pad_token_id")):
        if isinstance(meta.get(f"tokenizer.ggml.{key}"), int):
            config[hf] = meta[f"tokenizer.ggml.{key}"]
    return config


def hf_tensor_name(name: str) -> str:
    """The Hugging Face name of a llama.cpp tensor (``blk.3.attn_q.weight`` → ``model.layers.3.self_attn.q_proj.weight``).

    Raises:
        UnsupportedError: a tensor this importer does not know (e.g. ``rope_freqs``).
    """
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise UnsupportedError(f"GGUF tensor {name!r} has no Hugging Face counterpart this importer knows")


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of a LLaMA query/key projection (weight or bias).

    llama.cpp reorders each head's rows from halves ``[x0..x(d/2-1), y0..]`` to pairs
    ``[x0, y0, x1, y1, ...]`` so its pairwise rotary embedding sees them adjacent;
    this is the inverse, back to the rotate-half layout of Hugging Face checkpoints.
    """
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantize(reader_tensor: Any, shape: tuple[int, ...]) -> np.ndarray:
    from gguf import quants

    try:
        out = quants.dequantize(reader_tensor.data, reader_tensor.tensor_type)
    except NotImplementedError as exc:
        raise UnsupportedError(f"GGUF tensor {reader_tensor.name}: {exc}") from None
    return np.asarray(out, dtype=np.float32).reshape(shape)


def write_safetensors_streaming(path: Path, items: list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]],
                                dtype: str = "float32", metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file whose tensors are produced one at a time; returns the data bytes.

    The header is laid out from the declared shapes first (:func:`encode_header`), then
    each producer is called in turn and its array written and dropped, so at most one
    tensor is in memory. Each produced array must have its declared shape.

    Raises:
        InvalidTreeError: a producer returned another shape than declared.
    """
    from ptmpack.tensors.stwriter import PlannedWriter, encode_header

    tag, np_dtype = OUT_DTYPES[dtype]
    header = encode_header(((name, tag, shape) for name, shape, _ in items), metadata)
    with open(path, "xb") as f:
        writer = PlannedWriter(f, header, where=str(path))
        for name, shape, produce in items:
            arr = np.ascontiguousarray(produce(), dtype=np_dtype)
            if arr.shape != tuple(shape):
                raise InvalidTreeError(f"tensor {name}: produced shape {arr.shape}, declared {tuple(shape)}")
            writer.write_tensor(name, [memoryview(arr).cast("B")])
        writer.finish()
    return writer.size - len(header)


def tokenizer_from_gguf(meta: dict[str, Any]) -> Any:
    """A ``tokenizers.Tokenizer`` equivalent to the byte-level BPE the GGUF vocabulary describes.

    Built from ``tokenizer.ggml.tokens``/``merges``/``token_type``: control tokens
    become special added tokens, user-defined ones plain added tokens; the split
    pattern follows ``tokenizer.ggml.pre``; a BOS is prepended when
    ``tokenizer.ggml.add_bos_token`` says so.

    Raises:
        UnsupportedError: not a ``gpt2``-type (byte-level BPE) vocabulary.
        UsageError: the ``tokenizers`` package is not installed.
    """
    try:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    except ImportError:
        raise UsageError("carrying a GGUF tokenizer needs the 'tokenizers' package", hint="pip install tokenizers") from None
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedError(f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or ()]
    pre = meta.get("tokenizer.ggml.pre", "default")
    split = _SPLITS.get(pre)
    model = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False,
                       ignore_merges=split is _LLAMA3_SPLIT)
    tok = Tokenizer(model)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split is None)
    first = (pre_tokenizers.Split(Regex(split), behavior="isolated") if split is not None else
             pre_tokenizers.Digits(individual_digits=True) if pre in _DIGIT_SPLIT else None)
    tok.pre_tokenizer = byte_level if first is None else pre_tokenizers.Sequence([first, byte_level])
    tok.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise InvalidTreeError(f"GGUF tokenizer has {len(tokens)} tokens but {len(types)} token types")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, types, strict=True) if k == _TOKEN_CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, k in zip(tokens, types, strict=True) if k == _TOKEN_USER_DEFINED])
    bos = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") is True and isinstance(bos, int) and 0 <= bos < len(tokens):
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]}:0 $A:0", pair=f"{tokens[bos]}:0 $A:0 $B:1", special_tokens=[(tokens[bos], bos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def tokenizer_config_from_gguf(meta: dict[str, Any]) -> dict[str, Any]:
    """``tokenizer_config.json``: special tokens, BOS/EOS policy and chat template from the GGUF keys."""
    tokens = meta.get("tokenizer.ggml.tokens") or []
    doc: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    for key, name in (("bos_token_id", "bos_token"), ("eos_token_id", "eos_token"),
                      ("unknown_token_id", "unk_token"), ("padding_token_id", "pad_token")):
        idx = meta.get(f"tokenizer.ggml.{key}")
        if isinstance(idx, int) and 0 <= idx < len(tokens):
            doc[name] = tokens[idx]
    for key in ("add_bos_token", "add_eos_token"):
        if isinstance(meta.get(f"tokenizer.ggml.{key}"), bool):
            doc[key] = meta[f"tokenizer.ggml.{key}"]
    if isinstance(meta.get("tokenizer.chat_template"), str):
        doc["chat_template"] = meta["tokenizer.chat_template"]
    arch = meta.get("general.architecture")
    if isinstance(meta.get(f"{arch}.context_length"), int):
        doc["model_max_length"] = meta[f"{arch}.context_length"]
    return doc


def convert_gguf(gguf_path: Path, out_dir: Path, *, dtype: str = "float32") -> GgufImport:
    """Write a Hugging Face checkpoint for ``gguf_path`` into the existing directory ``out_dir``.

    Writes ``config.json``, ``model.safetensors`` (``dtype`` float32 or float16),
    ``tokenizer.json`` and ``tokenizer_config.json`` (when the vocabulary is a
    byte-level BPE one) and ``generation_config.json``.

    Raises:
        UsageError: no such file, ``gguf`` not installed, or an unknown ``dtype``.
        InvalidTreeError: not a GGUF file.
        UnsupportedError: an architecture, tensor, quantization or tokenizer this importer does not handle.
    """
    if dtype not in OUT_DTYPES:
        raise UsageError(f"unknown weight dtype {dtype!r} (choose {' or '.join(OUT_DTYPES)})")
    reader = _reader(Path(gguf_path))
    meta = read_gguf_metadata(reader, with_vocab=True)
    tensors = _tensors(reader)
    config = config_from_gguf(meta, {t.name: t.shape for t in tensors})
    config["torch_dtype"] = dtype
    arch = config["model_type"]
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    items: list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]] = []
    for rt, t in zip(reader.tensors, tensors, strict=True):
        part = t.name.split(".")[2] if t.name.startswith("blk.") else ""
        n_head = heads.get(part) if arch == "llama" else None

        def produce(rt: Any = rt, shape: tuple[int, ...] = t.shape, n_head: int | None = n_head) -> np.ndarray:
            w = _dequantize(rt, shape)
            return unpermute_rows(w, n_head) if n_head else w

        items.append((hf_tensor_name(t.name), t.shape, produce))
    files = ["config.json", "generation_config.json", "model.safetensors"]
    size = write_safetensors_streaming(out_dir / "model.safetensors", items, dtype,
                                       {"format": "pt", "source": "gguf"})
    write_json(out_dir / "config.json", config)
    write_json(out_dir / "generation_config.json",
                {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config})
    if meta.get("tokenizer.ggml.model") == "gpt2":
        tokenizer_from_gguf(meta).save(str(out_dir / "tokenizer.json"))
        write_json(out_dir / "tokenizer_config.json", tokenizer_config_from_gguf(meta))
        files += ["tokenizer.json", "tokenizer_config.json"]
    small = {k: v for k, v in meta.items() if k not in _BIG_ARRAYS}
    params = sum(math.prod(t.shape) for t in tensors)
    return GgufImport(tuple(sorted(files)), small, tensors, config, params, size)


def management_from_gguf(meta: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """``managementinfo.json`` from ``general.*``: name, version, provider (organization), license, tags."""
    from ptmpack.metadata.documents import management_template

    title = name or meta.get("general.name") or meta.get("general.basename") or "gguf-model"
    doc = management_template(str(title))
    if isinstance(meta.get("general.organization"), str) and meta["general.organization"].strip():
        doc["provider"] = meta["general.organization"].strip()
    if spdx := spdx_license(meta.get("general.license")):
        doc["license"] = spdx
    arch = meta.get("general.architecture", "unknown")
    quant = _file_type_name(meta.get("general.file_type"))
    doc["description"] = f"{arch} model imported from a GGUF file" + (f" ({quant} weights, dequantized)" if quant else "")
    doc["tags"] = [t for t in (arch, "gguf", quant, meta.get("general.size_label")) if isinstance(t, str) and t]
    return doc


def _file_type_name(code: object) -> str | None:
    from gguf import LlamaFileType

    try:
        return LlamaFileType(code).name.removeprefix("MOSTLY_").removeprefix("ALL_") if isinstance(code, int) else None
    except ValueError:
        return None


def technical_from_gguf(imp: GgufImport, dtype: str) -> dict[str, Any]:
    """``technicalinfo.json``: Table 67 from the ``<arch>.*`` keys, sizes of the written weights."""
    cfg, meta = imp.config, imp.metadata
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    tags = [cfg["model_type"]] + (["MQA" if kv == 1 else "GQA"] if kv < heads else [])
    counts = Counter(t.qtype for t in imp.tensors)
    return {
        "framework": "PyTorch",
        "environment": f"GGUF-v{meta.get('GGUF.version', 3)}",
        "config": {"torch_dtype": dtype, "rope_theta": cfg["rope_theta"], "rms_norm_eps": cfg["rms_norm_eps"],
                   "source_format": "GGUF", "source_tensor_types": dict(sorted(counts.items())),
                   "source_file_type": _file_type_name(meta.get("general.file_type")) or "unknown"},
        "parameters": imp.parameters,
        "model_size_bytes": imp.size_bytes,
        "task": {"type": "text-generation",
                 "description": f"{cfg['model_type']} ({cfg['architectures'][0]}) imported from GGUF"},
        "inputs": [{"name": "input_ids", "modality": "text", "dtype": "int64", "shape": [-1, -1]}],
        "outputs": [{"name": "logits", "modality": "text", "dtype": dtype, "shape": [-1, -1, cfg["vocab_size"]]}],
        "ptm_info": {
            "architecture": tags, "structure": "decoder-only", "num_layers": cfg["num_hidden_layers"],
            "num_heads": heads, "num_kv_heads": kv, "hidden_size": cfg["hidden_size"],
            "intermediate_size": cfg["intermediate_size"], "vocab_size": cfg["vocab_size"],
            "max_position": cfg["max_position_embeddings"],
        },
    }


def init_tree_from_gguf(dest: Path, gguf_path: Path, *, name: str | None = None, dtype: str = "float32",
                        graph: bool = True, management_fields: Mapping[str, str] | None = None) -> list[str]:
    """Create a package tree at ``dest`` from a GGUF file (``ptmpack init --from-gguf``).

    ``Model/`` receives the converted checkpoint (see :func:`convert_gguf`) and, with
    ``graph``, ``Model/graph.json``; ``Meta-info/`` the metadata filled from the GGUF
    keys, with ``management_fields`` (``provider``, ``license``, ``version``…) set over
    them. ``dest`` must not exist (or be an empty directory); nothing is left behind on failure.

    Returns:
        The relative POSIX paths of every directory (ending in ``/``) and file created, sorted.

    Raises:
        UsageError, InvalidTreeError, UnsupportedError: as :func:`convert_gguf`;
            ``dest`` exists and is not an empty directory.
    """
    from ptmpack.importers.publish import check_destination, listing, new_tree
    from ptmpack.ir.validate import GRAPH_FILE
    from ptmpack.metadata.documents import (
        MANAGEMENT_FILE,
        MANAGEMENT_SCHEMA,
        TECHNICAL_FILE,
        TECHNICAL_SCHEMA,
        validate_document,
    )

    check_destination(Path(dest))
    with new_tree(Path(dest)) as tmp:
        imp = convert_gguf(Path(gguf_path), tmp / "Model", dtype=dtype)
        mgmt = {**management_from_gguf(imp.metadata, name), **(management_fields or {})}
        technical = technical_from_gguf(imp, dtype)
        validate_document(MANAGEMENT_SCHEMA, mgmt, MANAGEMENT_FILE)
        validate_document(TECHNICAL_SCHEMA, technical, TECHNICAL_FILE)
        write_json(tmp / MANAGEMENT_FILE, mgmt)
        write_json(tmp / TECHNICAL_FILE, technical)
        files = [*(f"Model/{f}" for f in imp.files), MANAGEMENT_FILE, TECHNICAL_FILE]
        if graph:
            from ptmpack.ir.convert_hf import write_graph

            write_graph(tmp)
            files.append(GRAPH_FILE)
    return listing(files)
