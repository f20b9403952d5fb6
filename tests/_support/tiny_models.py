"""Tiny synthetic Hugging Face checkpoints (LLaMA, BERT) for behaviour tests of the compress steps.

Weights are random (seeded) and written by the safetensors library; the tokenizer is a
byte-level BPE trained by the ``tokenizers`` library on :func:`sample_text`. No quality claim
is ever made on these models (SPEC §9): they exercise code paths, shapes and layouts.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np

WORDS = ("model", "weights", "package", "quantized", "layer", "group", "scale", "the", "of", "and", "a", "to",
         "in", "is", "for", "tensor", "linear", "error", "calibration", "window", "token", "text", "zero", "point")


def sample_text(words: int = 4000, seed: int = 0) -> str:
    """Deterministic pseudo-English text (sentences of random words from a small vocabulary)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(words):
        w = WORDS[int(rng.integers(len(WORDS)))]
        out.append(w.capitalize() if i % 9 == 0 else w)
        if i % 9 == 8:
            out[-1] += "."
    return " ".join(out) + "\n"


def _tokenizer(path: Path, vocab: int) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>", "[CLS]", "[SEP]", "[PAD]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([sample_text(2000, seed=1)], trainer)
    tok.save(str(path))
    return tok.get_vocab_size()


def _save(path: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path),
              metadata={"format": "pt"})


def tiny_llama(directory: Path, *, hidden: int = 64, inter: int = 128, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, seed: int = 0) -> Path:
    """A LLaMA checkpoint directory (config.json, model.safetensors, tokenizer.json); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer(directory / "tokenizer.json", 320)
    rng = np.random.default_rng(seed)
    hd = hidden // heads
    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.normal(0, 0.5, (vocab, hidden)),
                                "model.norm.weight": 1 + 0.1 * rng.normal(size=hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj": (heads * hd, hidden), "self_attn.k_proj": (kv_heads * hd, hidden),
                  "self_attn.v_proj": (kv_heads * hd, hidden), "self_attn.o_proj": (hidden, heads * hd),
                  "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)}
        for name, shape in shapes.items():
            t[f"{p}{name}.weight"] = rng.normal(0, 1 / np.sqrt(shape[1]), shape)
        t[f"{p}input_layernorm.weight"] = 1 + 0.1 * rng.normal(size=hidden)
        t[f"{p}post_attention_layernorm.weight"] = 1 + 0.1 * rng.normal(size=hidden)
    _save(directory / "model.safetensors", t)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "vocab_size": vocab, "max_position_embeddings": 256,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": True,
              "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "float32"}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def tiny_bert(directory: Path, *, hidden: int = 64, inter: int = 128, layers: int = 2, heads: int = 4,
              seed: int = 0) -> Path:
    """A BERT encoder checkpoint directory (BertModel tensor names, with a pooler); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer(directory / "tokenizer.json", 320)
    rng = np.random.default_rng(seed)
    t: dict[str, np.ndarray] = {"embeddings.word_embeddings.weight": rng.normal(0, 0.5, (vocab, hidden)),
                                "embeddings.position_embeddings.weight": rng.normal(0, 0.1, (128, hidden)),
                                "embeddings.token_type_embeddings.weight": rng.normal(0, 0.1, (2, hidden)),
                                "embeddings.LayerNorm.weight": np.ones(hidden), "embeddings.LayerNorm.bias": np.zeros(hidden),
                                "pooler.dense.weight": rng.normal(0, 0.1, (hidden, hidden)),
                                "pooler.dense.bias": np.zeros(hidden)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        shapes = {"attention.self.query": (hidden, hidden), "attention.self.key": (hidden, hidden),
                  "attention.self.value": (hidden, hidden), "attention.output.dense": (hidden, hidden),
                  "intermediate.dense": (inter, hidden), "output.dense": (hidden, inter)}
        for name, shape in shapes.items():
            t[f"{p}{name}.weight"] = rng.normal(0, 1 / np.sqrt(shape[1]), shape)
            t[f"{p}{name}.bias"] = rng.normal(0, 0.02, shape[0])
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[f"{p}{norm}.weight"] = 1 + 0.1 * rng.normal(size=hidden)
            t[f"{p}{norm}.bias"] = 0.02 * rng.normal(size=hidden)
    _save(directory / "model.safetensors", t)
    config = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": hidden, "intermediate_size": inter,
              "num_hidden_layers": layers, "num_attention_heads": heads, "vocab_size": vocab,
              "max_position_embeddings": 128, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
              "pad_token_id": 4}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def tiny_gpt2(directory: Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> Path:
    """A GPT-2 checkpoint directory (Conv1D weights stored ``[in, out]``); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer(directory / "tokenizer.json", 320)
    rng = np.random.default_rng(seed)
    t: dict[str, np.ndarray] = {"wte.weight": rng.normal(0, 0.5, (vocab, hidden)),
                                "wpe.weight": rng.normal(0, 0.1, (128, hidden)),
                                "ln_f.weight": np.ones(hidden), "ln_f.bias": np.zeros(hidden)}
    for i in range(layers):
        p = f"h.{i}."
        for name, (n_in, n_out) in {"attn.c_attn": (hidden, 3 * hidden), "attn.c_proj": (hidden, hidden),
                                    "mlp.c_fc": (hidden, 4 * hidden), "mlp.c_proj": (4 * hidden, hidden)}.items():
            t[f"{p}{name}.weight"] = rng.normal(0, 1 / np.sqrt(n_in), (n_in, n_out))
            t[f"{p}{name}.bias"] = rng.normal(0, 0.02, n_out)
        for norm in ("ln_1", "ln_2"):
            t[f"{p}{norm}.weight"] = 1 + 0.1 * rng.normal(size=hidden)
            t[f"{p}{norm}.bias"] = 0.02 * rng.normal(size=hidden)
    _save(directory / "model.safetensors", t)
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": hidden, "n_layer": layers,
              "n_head": heads, "vocab_size": vocab, "n_positions": 128, "layer_norm_epsilon": 1e-5,
              "activation_function": "gelu_new", "bos_token_id": 0, "eos_token_id": 1}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def tiny_tree(tmp: Path, kind: str = "llama") -> Path:
    """A ptmpack package tree imported (``init --from-hf``) from a tiny checkpoint; returns the tree.

    ``kind``: ``llama`` (grouped KV heads: 4 query heads, 2 KV heads), ``llama-mha`` (4 and 4), ``bert``, ``gpt2``.
    """
    from ptmpack.importers.hf import init_tree

    makers = {"llama": tiny_llama, "llama-mha": partial(tiny_llama, kv_heads=4), "bert": tiny_bert, "gpt2": tiny_gpt2}
    ck = makers[kind](tmp / f"{kind}-hf")
    tree = tmp / f"{kind}-tree"
    init_tree(tree, from_hf=ck)
    return tree


def reshard(directory: Path, shards: int, dtype: str = "F32") -> list[str]:
    """Rewrite ``directory/model.safetensors`` as ``shards`` Hugging Face shards in ``dtype`` (``F32`` or ``BF16``).

    Writes ``model-0000i-of-0000n.safetensors`` and ``model.safetensors.index.json`` (the
    ``weight_map`` of a sharded ``save_pretrained``) with ptmpack's own header encoder, and
    removes the single file. Returns the shard names.
    """
    from safetensors.numpy import load_file

    from ptmpack.tensors.dtypes import numpy_dtype
    from ptmpack.tensors.stwriter import encode_header

    single = directory / "model.safetensors"
    tensors = load_file(str(single))
    names = list(tensors)
    per = -(-len(names) // shards)
    files, weight_map, total = [], {}, 0
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {n: tensors[n].astype(numpy_dtype(dtype)) for n in names[i * per:(i + 1) * per]}
        header = encode_header(((n, dtype, a.shape) for n, a in chunk.items()), {"format": "pt"})
        with open(directory / file, "wb") as f:
            f.write(header)
            for a in chunk.values():
                f.write(np.ascontiguousarray(a).tobytes())
        weight_map.update(dict.fromkeys(chunk, file))
        total += sum(a.nbytes for a in chunk.values())
        files.append(file)
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    single.unlink()
    return files
