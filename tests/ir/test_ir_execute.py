"""The reference executor: whole tiny models against torch written out by hand, model-level
properties without torch, weights streamed from packages, float16 compute, sub-graph calls,
freeing of temporaries, and error reporting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from rich.console import Console
from safetensors.numpy import save_file

from ptmpack import api
from ptmpack.cli.graph_view import show_model
from ptmpack.errors import GraphError
from ptmpack.ir import execute
from ptmpack.ir.check import check_model_file
from ptmpack.ir.execute import Executor, run
from ptmpack.ir.model import Attribute, AttrType
from ptmpack.ir.registry import ExecContext
from ptmpack.storage.package import open_package
from tests._support.irbuild import GraphBuilder, model, tiny_bert, tiny_llama
from tests._support.trees import write_tree

IDS = np.array([[1, 5, 3, 9, 2, 7], [4, 4, 0, 10, 8, 6]], np.int64)


def _llama_torch(w: dict[str, np.ndarray], ids: np.ndarray, heads: int = 4, kv: int = 2, layers: int = 2) -> np.ndarray:
    """LLaMA's forward pass as Hugging Face writes it, in torch."""
    import torch
    import torch.nn.functional as F

    W = {k: torch.from_numpy(v) for k, v in w.items()}
    b, s = ids.shape
    dim = W["embed"].shape[1]
    hd = dim // heads
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.outer(torch.arange(s).float(), inv_freq)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()

    def rope(x: Any) -> Any:
        return x * cos + torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1) * sin

    h = F.embedding(torch.from_numpy(ids), W["embed"])
    for i in range(layers):
        p = f"l{i}."
        x = F.rms_norm(h, (dim,), W[p + "ln1"], eps=1e-5)
        q = F.linear(x, W[p + "wq"]).view(b, s, heads, hd).transpose(1, 2)
        k = F.linear(x, W[p + "wk"]).view(b, s, kv, hd).transpose(1, 2)
        v = F.linear(x, W[p + "wv"]).view(b, s, kv, hd).transpose(1, 2)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, dim)
        h = h + F.linear(a, W[p + "wo"])
        x = F.rms_norm(h, (dim,), W[p + "ln2"], eps=1e-5)
        h = h + F.linear(F.silu(F.linear(x, W[p + "wg"])) * F.linear(x, W[p + "wu"]), W[p + "wd"])
    return F.linear(F.rms_norm(h, (dim,), W["norm"], eps=1e-5), W["lm_head"]).numpy()


def _bert_torch(w: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray, heads: int = 3) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    W = {k: torch.from_numpy(v) for k, v in w.items()}
    b, s = ids.shape
    dim = W["word"].shape[1]
    e = F.embedding(torch.from_numpy(ids), W["word"]) + W["position"][:s] + W["token_type"][0]
    e = F.layer_norm(e, (dim,), W["emb_ln_w"], W["emb_ln_b"], eps=1e-12)

    def split(x: Any) -> Any:
        return x.view(b, s, heads, dim // heads).transpose(1, 2)

    q, k, v = (split(F.linear(e, W[n], W[n + "_b"])) for n in ("wq", "wk", "wv"))
    keep = torch.from_numpy(mask.astype(bool))[:, None, None, :]
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(b, s, dim)
    n1 = F.layer_norm(F.linear(a, W["wo"], W["wo_b"]) + e, (dim,), W["ln1_w"], W["ln1_b"], eps=1e-12)
    up = F.gelu(F.linear(n1, W["w1"], W["w1_b"]))
    return F.layer_norm(F.linear(up, W["w2"], W["w2_b"]) + n1, (dim,), W["ln2_w"], W["ln2_b"], eps=1e-12).numpy()


@pytest.mark.torch
def test_tiny_llama_matches_torch() -> None:
    pytest.importorskip("torch")
    m, w = tiny_llama()
    got = run(m, {"ids": IDS, **w})["logits"]
    np.testing.assert_allclose(got, _llama_torch(w, IDS), rtol=1e-4, atol=1e-4)


@pytest.mark.torch
def test_tiny_bert_matches_torch() -> None:
    pytest.importorskip("torch")
    m, w = tiny_bert()
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], np.int64)
    got = run(m, {"ids": IDS, "mask": mask, **w})["hidden"]
    np.testing.assert_allclose(got, _bert_torch(w, IDS, mask), rtol=1e-4, atol=1e-4)


def test_decoder_is_causal_and_batch_independent() -> None:
    m, w = tiny_llama()
    full = run(m, {"ids": IDS, **w})["logits"]
    prefix = run(m, {"ids": IDS[:, :3], **w})["logits"]
    np.testing.assert_allclose(prefix, full[:, :3], rtol=1e-5, atol=1e-5)  # later tokens do not leak back
    alone = run(m, {"ids": IDS[1:], **w})["logits"]
    np.testing.assert_allclose(alone, full[1:], rtol=1e-5, atol=1e-5)


def test_encoder_ignores_padding() -> None:
    m, w = tiny_bert()
    short = run(m, {"ids": IDS[:1, :4], "mask": np.ones((1, 4), np.int64), **w})["hidden"]
    padded = run(m, {"ids": IDS[:1], "mask": np.array([[1, 1, 1, 1, 0, 0]]), **w})["hidden"]
    np.testing.assert_allclose(padded[:, :4], short, rtol=1e-5, atol=1e-5)


def test_float16_compute_is_close_to_float32() -> None:
    m, w = tiny_llama()
    f32 = run(m, {"ids": IDS, **w})["logits"]
    f16 = run(m, {"ids": IDS, **w}, ctx=ExecContext(compute_dtype="float16"))["logits"]
    assert f16.dtype == np.float16
    np.testing.assert_allclose(f16.astype(np.float32), f32, rtol=2e-2, atol=2e-2)
    with pytest.raises(GraphError, match="compute dtype"):
        run(m, {"ids": IDS, **w}, ctx=ExecContext(compute_dtype="int8"))


def _write_package(root: Path, m: Any, w: dict[str, np.ndarray]) -> Path:
    write_tree(root)
    save_file(w, str(root / "Model" / "model.safetensors"))
    (root / "Model" / "graph.json").write_bytes(m.dumps())
    return root


def test_weights_stream_from_tree_and_ptm_packages(tmp_path: Path) -> None:
    m, w = tiny_llama()
    want = run(m, {"ids": IDS, **w})["logits"]
    tree = _write_package(tmp_path / "tree", m, w)
    report = check_model_file(tree)
    assert report.tensors_checked == len(w) and report.parameters == len(w) and report.warnings == ()
    with open_package(tree) as pkg:
        np.testing.assert_array_equal(run(m, {"ids": IDS}, package=pkg)["logits"], want)
    ptm = tmp_path / "m.ptm"
    api.pack(tree, ptm)
    assert check_model_file(ptm).tensors_checked == len(w)
    with open_package(ptm) as pkg:
        np.testing.assert_array_equal(run(m, {"ids": IDS}, package=pkg)["logits"], want)


def test_bfloat16_weights_are_converted(tmp_path: Path) -> None:
    g = GraphBuilder()
    x, wv, yv = g.var("x", "float32", (2, 3)), g.var("w", "bfloat16", (4, 3), param=True, tensor="w"), g.var("y", "float32", (2, 4))
    g.op("linear", {"X": x, "W": wv}, {"Y": yv})
    m = model(g, inputs=[x], outputs=[yv])
    weight = np.arange(12, dtype=np.float32).reshape(4, 3).astype(ml_dtypes.bfloat16)
    tree = _write_package(tmp_path / "t", m, {"w": weight})
    with open_package(tree) as pkg:
        got = run(m, {"x": np.ones((2, 3), np.float32)}, package=pkg)["y"]
    np.testing.assert_array_equal(got, np.ones((2, 3)) @ weight.astype(np.float32).T)


def test_temporaries_and_weights_are_freed_after_last_use(monkeypatch: pytest.MonkeyPatch) -> None:
    peak = {"values": 0}

    class Counting(dict):  # type: ignore[type-arg]
        def __setitem__(self, key: str, value: Any) -> None:
            super().__setitem__(key, value)
            peak["values"] = max(peak["values"], len(self))

    original = execute._Scope.__init__

    def init(self: Any, graph: Any, parent: Any) -> None:
        original(self, graph, parent)
        self.values = Counting()

    monkeypatch.setattr(execute._Scope, "__init__", init)
    m, w = tiny_llama(layers=4)
    run(m, {"ids": IDS, **w})
    total = len(m.main_graph.variables)
    assert total > 100 and peak["values"] <= 8, (total, peak)


def test_subgraph_call_with_ancestor_reads_and_reuse() -> None:
    main, sub = GraphBuilder(0), GraphBuilder(1, parent=0)
    x, scale = main.var("x", "float32", (2, 3)), main.var("scale", "float32", (3,), param=True)
    y1, y2 = main.var("y1", "float32", (2, 3)), main.var("y2", "float32", (2, 3))
    inp, t, o = sub.var("in", "float32", (2, 3)), sub.var("t", "float32", (2, 3)), sub.var("out", "float32", (2, 3))
    sub.op("mul", {"A": inp, "B": scale}, {"Y": t})  # reads the main graph's parameter
    sub.op("relu", {"X": t}, {"Y": o})
    for src, dst in ((x, y1), (y1, y2)):
        main.op("call", {"X": [src]}, {"Y": [dst]}, graph=Attribute(AttrType.GRAPH, 1), graph_inputs=["in"],
                graph_outputs=["out"])
    m = model(main, sub, inputs=[x], outputs=[y2])
    xv, sv = np.array([[1.0, -2.0, 3.0], [-1.0, 2.0, 0.5]], np.float32), np.array([2.0, 1.0, -1.0], np.float32)
    got = run(m, {"x": xv, "scale": sv})
    np.testing.assert_allclose(got["y2"], np.maximum(np.maximum(xv * sv, 0) * sv, 0))
    assert "sub-graph 1" in _render(m)


def _render(m: Any) -> str:
    console = Console(record=True, width=200)
    console.print(show_model(m))
    return console.export_text()


def test_show_model_lists_graphs_variables_and_attributes() -> None:
    m, _ = tiny_llama(layers=1)
    text = _render(m)
    for needle in ("tiny-llama", "main graph 0", "l0.attn", "attention", "num_kv_heads: int = 2", "embed float32[11, 16]",
                   "ids int64[?, ?]", "Model/model.safetensors:embed"):
        assert needle in text, needle


def test_requested_outputs_and_feed_errors() -> None:
    m, w = tiny_llama(layers=1)
    got = run(m, {"ids": IDS, **w}, outputs=["l0.q", "logits"])
    assert got["l0.q"].shape == (2, 6, 16) and got["logits"].shape == (2, 6, 11)
    with pytest.raises(GraphError, match="not given"):
        run(m, w)
    with pytest.raises(GraphError, match="shape"):
        run(m, {"ids": IDS[0], **w})
    with pytest.raises(GraphError, match="must be int64"):
        run(m, {"ids": IDS.astype(np.float32), **w})
    with pytest.raises(GraphError, match="neither"):
        run(m, {"ids": IDS, "bogus": IDS, **w})
    with pytest.raises(GraphError, match="parameter 'norm' fed with shape"):
        run(m, {"ids": IDS, **w, "norm": np.ones(3, np.float32)})
    with pytest.raises(GraphError, match="parameter 'embed' has no value"):
        run(m, {"ids": IDS})
    with pytest.raises(GraphError, match=r"operator 'embed' \(embedding\): id out of range|operator 'embed' \(embedding\): embedding id"):
        run(m, {"ids": IDS + 100, **w})
    with pytest.raises(GraphError, match="requested output"):
        run(m, {"ids": IDS, **w}, outputs=["nope"])


def test_custom_operators_validate_but_do_not_run() -> None:
    g = GraphBuilder()
    x, yv = g.var("x", "float32", (2,)), g.var("y", "float32", (2,))
    g.op("custom.fancy", {"In": x}, {"Out": yv}, alpha=1.5)
    m = model(g, inputs=[x], outputs=[yv])
    with pytest.raises(GraphError, match="custom operator has no kernel"):
        Executor(m).run({"x": np.zeros(2, np.float32)})


def test_check_model_file_on_bare_json_and_missing_graph(tmp_path: Path) -> None:
    m, _ = tiny_llama(layers=1)
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(m.to_json()))
    report = check_model_file(path)
    assert report.tensors_checked == 0 and report.operators == len(m.main_graph.operators)
    write_tree(tmp_path / "plain")
    with pytest.raises(GraphError, match=r"no Model/graph\.json"):
        check_model_file(tmp_path / "plain")
