"""Converters (Hugging Face and GGUF → IR) and the runner, on tiny generated models.

The torch-marked tests check each converted model against an independent implementation:
transformers' BertModel / GPT2LMHeadModel / LlamaForCausalLM / Qwen2ForCausalLM with random
weights, and transformers' own GGUF loader (``from_pretrained(gguf_file=...)``) on a tiny
GGUF written with the ``gguf`` package, quantized with its quantizers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ptmpack.errors import InvalidTreeError, UnsupportedError, UsageError
from ptmpack.importers.gguf import (
    config_from_gguf,
    hf_tensor_name,
    init_tree_from_gguf,
    spdx_license,
    tokenizer_from_gguf,
    unpermute_rows,
    write_safetensors_streaming,
)
from ptmpack.importers.hf import init_tree
from ptmpack.ir.check import check_model_file
from ptmpack.ir.convert_hf import TensorMeta, build_model, model_from_dir, write_graph, write_graph_if_supported
from ptmpack.ir.model import ModelStructure
from ptmpack.ir.runner import (
    LoadedModel,
    embed_texts,
    eval_embeddings,
    parse_token_list,
    perplexity,
    run_model,
    sequence_nll,
)
from ptmpack.ir.validate import validate

LLAMA_CFG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
             "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order (pairs), written from its definition: halves → interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_tensors(cfg: dict, rng: np.random.Generator, *, tied: bool = True, bias: bool = False) -> dict[str, np.ndarray]:
    h, m, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
    t = {"model.embed_tokens.weight": rng.standard_normal((v, h)), "model.norm.weight": 1 + 0.1 * rng.standard_normal(h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
                  "self_attn.o_proj": (h, h), "mlp.gate_proj": (m, h), "mlp.up_proj": (m, h), "mlp.down_proj": (h, m)}
        t.update({f"{p}{k}.weight": rng.standard_normal(s) * 0.1 for k, s in shapes.items()})
        if bias:
            t.update({f"{p}self_attn.{x}_proj.bias": rng.standard_normal(shapes[f"self_attn.{x}_proj"][0]) * 0.1
                      for x in "qkv"})
        t[f"{p}input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(h)
        t[f"{p}post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(h)
    if not tied:
        t["lm_head.weight"] = rng.standard_normal((v, h)) * 0.1
    return {k: np.asarray(a, np.float32) for k, a in t.items()}


def metas(tensors: dict[str, np.ndarray]) -> dict[str, TensorMeta]:
    return {k: TensorMeta("float32", a.shape, "Model/model.safetensors") for k, a in tensors.items()}


def byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of the 256 byte values (bytes_to_unicode), from its definition."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}


def tiny_vocab() -> tuple[list[str], list[str], list[int]]:
    """A byte-level BPE vocabulary: a control token, the 256 bytes, and a few merges (one multi-digit)."""
    bc = byte_alphabet()
    sp = bc[ord(" ")]
    tokens, merges = ["<|endoftext|>", *(bc[b] for b in range(256))], []
    for a, b in ((sp, "t"), ("h", "e"), (sp + "t", "he"), (sp, "a"), ("i", "n"), (sp, sp), ("1", "2")):
        merges.append(f"{a} {b}")
        tokens.append(a + b)
    return tokens, merges, [3] + [1] * (len(tokens) - 1)


def write_tiny_gguf(path: Path, cfg: dict, tensors: dict[str, np.ndarray], *, pre: str = "gpt2") -> None:
    """A llama GGUF as llama.cpp writes one: its names, permuted Q/K rows, mixed quantizations."""
    gguf = pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    tokens, merges, types = tiny_vocab()
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("Tiny Llama")
    w.add_organization("ptmpack-tests")
    w.add_license("mit")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    kinds = (Q.Q8_0, Q.Q4_0, Q.F16, Q.Q4_1, Q.F32, Q.Q5_0)
    reverse = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    for i, (name, value) in enumerate(tensors.items()):
        if name in top:
            gname = top[name]
        else:
            parts = name.split(".")
            gname = f"blk.{parts[2]}.{reverse['.'.join(parts[3:-1])]}.{parts[-1]}"
            if "attn_q" in gname or "attn_k" in gname:
                value = llamacpp_permute(value, heads if "attn_q" in gname else kv)
        kind = kinds[i % len(kinds)]
        if value.ndim == 1 or kind is Q.F32:
            w.add_tensor(gname, value)
        elif kind is Q.F16:
            w.add_tensor(gname, value.astype(np.float16))
        else:
            w.add_tensor(gname, quants.quantize(value, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    pytest.importorskip("tokenizers")
    d = tmp_path_factory.mktemp("gguf")
    cfg = {**LLAMA_CFG, "vocab_size": len(tiny_vocab()[0])}
    tensors = llama_tensors(cfg, np.random.default_rng(1), tied=False)
    write_tiny_gguf(d / "tiny.gguf", cfg, tensors)
    return d / "tiny.gguf", tensors


# ---- GGUF pieces --------------------------------------------------------------------------


def test_unpermute_inverts_llamacpp_order() -> None:
    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    assert np.array_equal(unpermute_rows(llamacpp_permute(w, 8), 8), w)
    assert not np.array_equal(llamacpp_permute(w, 8), w)
    b = np.arange(64, dtype=np.float32)
    assert np.array_equal(unpermute_rows(llamacpp_permute(b, 4), 4), b)


def test_streaming_safetensors_reads_back(tmp_path: Path) -> None:
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(5, np.float32) * 0.5}
    items = [(k, v.shape, lambda v=v: v.astype(np.float64)) for k, v in arrays.items()]
    size = write_safetensors_streaming(tmp_path / "x.safetensors", items, "float16")
    back = load_file(str(tmp_path / "x.safetensors"))
    assert size == 2 * 11 and set(back) == set(arrays)
    assert all(back[k].dtype == np.float16 and np.array_equal(back[k], arrays[k]) for k in arrays)
    with pytest.raises(InvalidTreeError, match="declared"):
        write_safetensors_streaming(tmp_path / "y.safetensors", [("a", (3,), lambda: np.zeros(4))])


def test_tensor_names_and_config_errors() -> None:
    assert hf_tensor_name("blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    assert [spdx_license(v) for v in ("apache-2.0", "GPL-3.0", "llama3.2", "other", None)] == [
        "Apache-2.0", "GPL-3.0-only", "LicenseRef-llama3.2", None, None]
    with pytest.raises(UnsupportedError, match="rope_freqs"):
        hf_tensor_name("rope_freqs.weight")
    meta = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64,
            "llama.feed_forward_length": 128, "llama.attention.head_count": 4, "llama.vocab_size": 10}
    cfg = config_from_gguf(meta, {"token_embd.weight": (12, 64)})
    assert cfg["tie_word_embeddings"] and cfg["num_key_value_heads"] == 4 and cfg["head_dim"] == 16
    assert cfg["vocab_size"] == 12  # the embedding's rows, not llama.vocab_size
    with pytest.raises(UnsupportedError, match="'falcon'"):
        config_from_gguf({**meta, "general.architecture": "falcon"}, {})
    with pytest.raises(UnsupportedError, match=r"llama\.block_count"):
        config_from_gguf({k: v for k, v in meta.items() if k != "llama.block_count"}, {})
    with pytest.raises(UnsupportedError, match="rope scaling"):
        config_from_gguf({**meta, "llama.rope.scaling.type": "yarn"}, {})


def test_gguf_tokenizer_rules() -> None:
    pytest.importorskip("tokenizers")
    tokens, merges, types = tiny_vocab()
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.pre": "gpt2"}
    tok = tokenizer_from_gguf(meta)
    enc = tok.encode("the 12<|endoftext|> the")
    assert enc.tokens == ["t", "he", "Ġ", "12", "<|endoftext|>", "Ġthe"]
    assert tok.decode(enc.ids, skip_special_tokens=False) == "the 12<|endoftext|> the"
    digits = tokenizer_from_gguf({**meta, "tokenizer.ggml.pre": "smollm"})  # llama.cpp splits every digit first
    assert digits.encode("the 12").tokens == ["t", "he", "Ġ", "1", "2"]
    bos = tokenizer_from_gguf({**meta, "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.bos_token_id": 0})
    assert bos.encode("a").ids == [0, tokens.index("a")]
    with pytest.raises(UnsupportedError, match="'llama'"):
        tokenizer_from_gguf({**meta, "tokenizer.ggml.model": "llama"})


def test_gguf_import_tree(tiny_gguf: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    path, tensors = tiny_gguf
    created = init_tree_from_gguf(tmp_path / "pkg", path)
    assert {"Model/graph.json", "Model/model.safetensors", "Model/tokenizer.json", "Model/config.json",
            "Meta-info/managementinfo.json", "Meta-info/technicalinfo.json"} <= set(created)
    mgmt = json.loads((tmp_path / "pkg/Meta-info/managementinfo.json").read_text())
    tech = json.loads((tmp_path / "pkg/Meta-info/technicalinfo.json").read_text())
    assert (mgmt["name"], mgmt["provider"], mgmt["license"]) == ("Tiny Llama", "ptmpack-tests", "MIT")
    assert tech["ptm_info"]["num_kv_heads"] == 2 and tech["ptm_info"]["architecture"] == ["llama", "GQA"]
    assert tech["parameters"] == sum(a.size for a in tensors.values())
    report = check_model_file(tmp_path / "pkg")
    assert report.tensors_checked == len(tensors) and not report.warnings
    got = load_file(str(tmp_path / "pkg/Model/model.safetensors"))
    assert set(got) == set(tensors)
    exact = "model.layers.0.input_layernorm.weight"  # F32 in the file: exactly the original
    assert np.array_equal(got[exact], tensors[exact])
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight"):
        assert np.abs(got[name] - tensors[name]).max() < 0.05, name  # quantized, in HF row order again
    from ptmpack import api
    from ptmpack.format import spec

    api.pack(tmp_path / "pkg", tmp_path / "pkg.ptm", api.PackConfig(compression=spec.Compression.ZSTD))
    with LoadedModel.open(tmp_path / "pkg") as tree_lm, LoadedModel.open(tmp_path / "pkg.ptm") as file_lm:
        assert run_model(file_lm, text="the theta", top_k=4).top == run_model(tree_lm, text="the theta", top_k=4).top
    with pytest.raises(UsageError, match="exists"):
        init_tree_from_gguf(tmp_path / "pkg", path)
    with pytest.raises(InvalidTreeError, match="not a readable GGUF"):
        init_tree_from_gguf(tmp_path / "bad", tmp_path / "pkg/Model/config.json")
    assert not (tmp_path / "bad").exists()


# ---- Hugging Face structure ---------------------------------------------------------------


def test_llama_graph_structure_tied_untied_bias() -> None:
    rng = np.random.default_rng(0)
    tied = build_model(LLAMA_CFG, metas(llama_tensors(LLAMA_CFG, rng)))
    assert validate(tied) == [] and tied.inputs == ("input_ids",) and tied.outputs == ("logits",)
    head = next(o for o in tied.main_graph.operators if o.name == "logits")
    assert head.inputs["W"] == ("model.embed_tokens.weight",)
    attn = [o for o in tied.main_graph.operators if o.type == "attention"]
    assert len(attn) == 2 and attn[0].attributes["num_kv_heads"].value == 2 and attn[0].attributes["causal"].value
    assert ModelStructure.loads(tied.dumps()) == tied
    untied = build_model({**LLAMA_CFG, "model_type": "qwen2"}, metas(llama_tensors(LLAMA_CFG, rng, tied=False, bias=True)))
    assert next(o for o in untied.main_graph.operators if o.name == "logits").inputs["W"] == ("lm_head.weight",)
    assert "Bias" in next(o for o in untied.main_graph.operators if o.name == "layers.0.q").inputs
    assert validate(untied) == []


def test_converter_rejections(tmp_path: Path) -> None:
    tensors = metas(llama_tensors(LLAMA_CFG, np.random.default_rng(0)))
    with pytest.raises(UnsupportedError, match="model_type 't5'"):
        build_model({**LLAMA_CFG, "model_type": "t5"}, tensors)
    tree = tmp_path / "t5"
    (tree / "Model").mkdir(parents=True)
    (tree / "Model/config.json").write_text(json.dumps({"model_type": "t5"}))
    save_file({"x": np.zeros(2, np.float32)}, str(tree / "Model/model.safetensors"))
    assert write_graph_if_supported(tree) is None and not (tree / "Model/graph.json").exists()
    with pytest.raises(UnsupportedError, match="'llama3'"):
        build_model({**LLAMA_CFG, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, tensors)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(UnsupportedError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        build_model(LLAMA_CFG, tensors)


def _tiny_tokenizer() -> str:
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", "the", "cat", "sat", "on", "mat", "a", "dog", "."] + [f"w{i}" for i in range(50)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


@pytest.fixture
def llama_tree(tmp_path: Path) -> Path:
    ck = tmp_path / "ck"
    ck.mkdir()
    save_file(llama_tensors(LLAMA_CFG, np.random.default_rng(3)), str(ck / "model.safetensors"))
    (ck / "config.json").write_text(json.dumps(LLAMA_CFG))
    (ck / "tokenizer.json").write_text(_tiny_tokenizer())
    init_tree(tmp_path / "tree", from_hf=ck)
    (tmp_path / "tree/Model/graph.json").unlink(missing_ok=True)  # in case init writes one: test both ways
    return tmp_path / "tree"


def test_runner_on_tiny_llama(llama_tree: Path) -> None:
    with LoadedModel.open(llama_tree) as lm:  # no graph.json: built from config.json on the fly
        fly = run_model(lm, text="the cat sat on the mat", top_k=3)
        assert fly.kind == "logits" and fly.tokens == (1, 2, 3, 4, 1, 5) and len(fly.top) == 3
        assert fly.top[0].prob >= fly.top[1].prob >= fly.top[2].prob
        logits = lm.forward(np.array([fly.tokens]))[0]
        ppl = perplexity(lm, "the cat sat on the mat", max_tokens=5)
        nll, n = sequence_nll(logits[:5], np.array(fly.tokens[:5]))
        lp = logits[:4] - np.log(np.exp(logits[:4].astype(np.float64)).sum(-1, keepdims=True))
        assert n == 4 and ppl.predicted == 4 and nll == pytest.approx(-lp[np.arange(4), fly.tokens[1:5]].sum(), rel=1e-6)
        assert ppl.perplexity == pytest.approx(np.exp(nll / 4), rel=1e-9)
        windowed = perplexity(lm, "the cat sat on the mat", window=3)
        assert (windowed.windows, windowed.predicted) == (3, 5)
        with pytest.raises(UsageError):
            run_model(lm, text="a", tokens=[1])
        with pytest.raises(UsageError, match="token ids"):
            run_model(lm, tokens=[1, 300])
        with pytest.raises(UsageError, match="fewer than two"):
            perplexity(lm, "the")
    assert parse_token_list(" 1, 2 ,3") == [1, 2, 3]
    for bad in ("", "1,-2", "a,b"):
        with pytest.raises(UsageError, match="--tokens"):
            parse_token_list(bad)
    write_graph(llama_tree)
    with pytest.raises(InvalidTreeError, match="already exists"):
        write_graph(llama_tree)
    with LoadedModel.open(llama_tree) as lm:
        assert run_model(lm, tokens=list(fly.tokens), top_k=3).top == fly.top
    (llama_tree / "Model/tokenizer.json").unlink()
    with LoadedModel.open(llama_tree) as lm, pytest.raises(UsageError, match="tokenizer"):
        run_model(lm, text="the cat")


def test_runner_on_tiny_bert(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    h, cfg = 32, {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 32, "num_hidden_layers": 1,
                  "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 59, "max_position_embeddings": 16}
    t = {"embeddings.word_embeddings.weight": (59, h), "embeddings.position_embeddings.weight": (16, h),
         "embeddings.token_type_embeddings.weight": (2, h), "embeddings.LayerNorm.weight": (h,),
         "embeddings.LayerNorm.bias": (h,)}
    p = "encoder.layer.0."
    for part, shape in (("attention.self.query", (h, h)), ("attention.self.key", (h, h)), ("attention.self.value", (h, h)),
                        ("attention.output.dense", (h, h)), ("intermediate.dense", (64, h)), ("output.dense", (h, 64))):
        t[f"{p}{part}.weight"], t[f"{p}{part}.bias"] = shape, shape[:1]
    for part in ("attention.output.LayerNorm", "output.LayerNorm"):
        t[f"{p}{part}.weight"], t[f"{p}{part}.bias"] = (h,), (h,)
    ck = tmp_path / "ck"
    (ck / "1_Pooling").mkdir(parents=True)
    save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in t.items()}, str(ck / "model.safetensors"))
    (ck / "config.json").write_text(json.dumps(cfg))
    (ck / "tokenizer.json").write_text(_tiny_tokenizer())
    (ck / "1_Pooling/config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (ck / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Normalize"}]))
    init_tree(tmp_path / "tree", from_hf=ck)
    with LoadedModel.open(tmp_path / "tree") as lm:
        assert lm.model.inputs == ("input_ids", "attention_mask", "token_type_ids")
        one = run_model(lm, tokens=[1, 2, 3])
        assert one.kind == "embedding" and len(one.embedding) == h
        assert np.linalg.norm(one.embedding) == pytest.approx(1.0, abs=1e-5)
        hidden = lm.forward(np.array([[1, 2, 3]]))
        assert np.allclose(one.embedding, hidden[0, 0] / np.linalg.norm(hidden[0, 0]), atol=1e-6)  # CLS pooling
        res = eval_embeddings(lm, "the cat sat\n\na dog\nthe mat on the cat .\n")
        assert res.embeddings.shape == (3, h) and res.pooling == "cls" and res.normalized
        alone = embed_texts(lm, ["a dog"])
        assert np.allclose(res.embeddings[1], alone[0], atol=1e-5)  # padding does not change an embedding
        assert res.to_json()["count"] == 3
        with pytest.raises(UsageError, match="decoder"):
            perplexity(lm, "the cat sat")


# ---- against transformers -----------------------------------------------------------------


def _save_hf(model: object, d: Path) -> Path:
    model.save_pretrained(str(d), safe_serialization=True)  # type: ignore[attr-defined]
    return d


@pytest.mark.torch
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "qwen2"])
def test_hf_families_match_transformers(family: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
             "vocab_size": 120, "max_position_embeddings": 64}
    if family == "bert":
        ref = tf.BertModel(tf.BertConfig(**small, hidden_act="gelu"))
    elif family == "gpt2":
        ref = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=120, n_positions=64))
    elif family == "llama":
        ref = tf.LlamaForCausalLM(tf.LlamaConfig(**small, num_key_value_heads=2, rope_theta=500.0))
    else:
        ref = tf.Qwen2ForCausalLM(tf.Qwen2Config(**small, num_key_value_heads=1, tie_word_embeddings=True))
    ref = ref.eval()
    model = model_from_dir(_save_hf(ref, tmp_path / "ck"))
    assert validate(model) == []
    init_tree(tmp_path / "tree", from_hf=tmp_path / "ck")
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 120, size=(2, 11))
    with LoadedModel.open(tmp_path / "tree") as lm:
        if family == "bert":
            mask = np.ones_like(ids)
            mask[1, 7:] = 0
            types = (np.arange(11) >= 5).astype(np.int64)[None].repeat(2, 0)
            got = lm.forward(ids, mask, types)
            with torch.no_grad():
                want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                           token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
        else:
            got = lm.forward(ids)
            with torch.no_grad():
                want = ref(torch.tensor(ids)).logits.numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.torch
def test_gguf_matches_transformers_gguf_loader(tiny_gguf: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    path, _ = tiny_gguf
    init_tree_from_gguf(tmp_path / "pkg", path)
    ref = tf.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ours = load_file(str(tmp_path / "pkg/Model/model.safetensors"))
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert set(state) == set(ours)
    assert all(np.array_equal(state[k], ours[k]) for k in ours)  # same dequantization, same row order
    tok = tf.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    with LoadedModel.open(tmp_path / "pkg") as lm:
        for text in ("the theta in then", "  at the<|endoftext|>end\n\ttab", "ünï 🎉 12 the"):
            assert lm.encode(text) == tok(text)["input_ids"], text
        ids = np.array([lm.encode("the theta in then the a")])
        got = lm.forward(ids)
    with torch.no_grad():
        want = ref(torch.tensor(ids)).logits.numpy()
    assert np.abs(got - want).max() <= 1e-4
