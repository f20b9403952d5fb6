"""Prompt tuning, LoRA (Tables 50-51) and the RAG operators (Tables 52-56): shape inference against
the kernels, torch references, hand-computed retrieval cases and a whole RAG graph run by the executor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st

from ptmpack.errors import GraphError
from ptmpack.ir.execute import run as run_model
from ptmpack.ir.ops import rag, tuning
from tests._support.irbuild import GraphBuilder, model
from tests._support.opcheck import check_infer, randn, run

Case = tuple[dict[str, np.ndarray], dict[str, Any]]
Draw = Callable[..., Any]


def _prompt(draw: Draw, rng: np.random.Generator) -> Case:
    b, s, p, d = draw(st.integers(1, 3)), draw(st.integers(0, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    inputs = {"X": randn(rng, b, s, d), "prompt": randn(rng, p, d)}
    if draw(st.booleans()):
        inputs["attention_mask"] = rng.integers(0, 2, (b, s))
    return inputs, {"position": draw(st.sampled_from(["prepend", "append"]))}


def _lora(draw: Draw, rng: np.random.Generator) -> Case:
    r, din, dout = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    inputs = {"X": randn(rng, *draw(st.lists(st.integers(1, 3), max_size=2)), din), "W": randn(rng, dout, din),
              "A": randn(rng, r, din), "B": randn(rng, dout, r)}
    return inputs, {"rank": r, "alpha": 2.0}


def _encoding(draw: Draw, rng: np.random.Generator) -> Case:
    n, length, d = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    inputs = {"token_embeddings": randn(rng, n, length, d)}
    if draw(st.booleans()):
        inputs["attention_mask"] = rng.integers(0, 2, (n, length))
    return inputs, {"pooling": draw(st.sampled_from(rag.POOLINGS)), "normalize": draw(st.booleans())}


def _sim(draw: Draw, rng: np.random.Generator) -> Case:
    d = draw(st.integers(1, 4))
    q = randn(rng, *draw(st.lists(st.integers(1, 3), max_size=2)), d)
    return {"query": q, "documents": randn(rng, draw(st.integers(0, 5)), d)}, {"metric": draw(st.sampled_from(rag.METRICS))}


def _retrieval(draw: Draw, rng: np.random.Generator) -> Case:
    return {"scores": randn(rng, draw(st.integers(1, 3)), draw(st.integers(0, 6)))}, {"top_k": draw(st.integers(1, 7))}


def _integration(draw: Draw, rng: np.random.Generator) -> Case:
    n, k, b = draw(st.integers(1, 4)), draw(st.integers(0, 3)), draw(st.integers(1, 3))
    inputs = {"doc_ids": rng.integers(0, 5, (n, draw(st.integers(0, 4)))), "indices": rng.integers(0, n, (b, k)),
              "query_ids": rng.integers(0, 5, (b, draw(st.integers(0, 3))))}
    return inputs, {"separator_id": draw(st.sampled_from([-1, 9])), "padding_side": draw(st.sampled_from(["left", "right"]))}


def _generation(draw: Draw, rng: np.random.Generator) -> Case:
    b, v = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    logits = randn(rng, b, v) if draw(st.booleans()) else randn(rng, b, draw(st.integers(1, 3)), v)
    inputs = {"logits": logits}
    if draw(st.booleans()):
        inputs["input_ids"] = rng.integers(0, v, (b, draw(st.integers(0, 4))))
    return inputs, {"eos_id": draw(st.sampled_from([-1, 0]))}


CASES: dict[str, Callable[..., Case]] = {
    "prompt_tuning": _prompt, "lora": _lora, "DocumentEncoding": _encoding, "QueryEncoding": _encoding,
    "SimilarityComputation": _sim, "DocumentRetrieval": _retrieval, "ResultIntegration": _integration,
    "OutputGeneration": _generation,
}


# ---- prompt tuning and LoRA --------------------------------------------------------------------

def test_prompt_tuning_prepends_and_extends_the_mask() -> None:
    rng = np.random.default_rng(0)
    x, prompt = randn(rng, 2, 3, 4), randn(rng, 2, 4)
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.int32)
    got = run("prompt_tuning", {"X": x, "prompt": prompt, "attention_mask": mask})
    np.testing.assert_array_equal(got["Y"][:, :2], np.broadcast_to(prompt, (2, 2, 4)))
    np.testing.assert_array_equal(got["Y"][:, 2:], x)
    np.testing.assert_array_equal(got["attention_mask_out"], [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    assert got["attention_mask_out"].dtype == np.int32
    after = run("prompt_tuning", {"X": x, "prompt": prompt}, position="append")["Y"]
    np.testing.assert_array_equal(after[:, 3:], np.broadcast_to(prompt, (2, 2, 4)))


@pytest.mark.torch
def test_lora_matches_torch_and_merges_into_the_base_weight() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    p = {"X": randn(rng, 2, 5, 8), "W": randn(rng, 6, 8), "bias": randn(rng, 6), "A": randn(rng, 3, 8), "B": randn(rng, 6, 3)}
    got = run("lora", p, rank=3, alpha=6.0)["Y"]
    t = {k: torch.from_numpy(v) for k, v in p.items()}
    ref = F.linear(t["X"], t["W"], t["bias"]) + 2.0 * F.linear(F.linear(t["X"], t["A"]), t["B"])
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)
    merged = tuning.merge_lora(p["W"], p["A"], p["B"], 6.0, 3)
    np.testing.assert_allclose(p["X"] @ merged.T + p["bias"], got, atol=1e-5)
    np.testing.assert_allclose(merged, p["W"] + 2.0 * p["B"].astype(np.float64) @ p["A"], atol=1e-6)
    with pytest.raises(GraphError, match="attribute rank"):
        check_infer("lora", p, rank=2, alpha=1.0)


# ---- RAG ---------------------------------------------------------------------------------------

def test_encodings_pool_as_documented() -> None:
    tokens = np.array([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]], np.float32)
    mask = np.array([[1, 1, 0]])
    def enc(name: str, **attrs: Any) -> np.ndarray:
        return run(name, {"token_embeddings": tokens, "attention_mask": mask}, **attrs)["embeddings"]

    np.testing.assert_allclose(enc("DocumentEncoding", normalize=False), [[2.0, 2.0]])
    np.testing.assert_allclose(enc("QueryEncoding"), [[2 ** -0.5, 2 ** -0.5]], rtol=1e-6)
    np.testing.assert_allclose(enc("DocumentEncoding", pooling="max", normalize=False), [[3.0, 4.0]])
    np.testing.assert_allclose(enc("QueryEncoding", pooling="cls"), [[1.0, 0.0]])
    empty = run("DocumentEncoding", {"token_embeddings": tokens, "attention_mask": np.zeros((1, 3))}, pooling="max")
    np.testing.assert_array_equal(empty["embeddings"], [[0.0, 0.0]])


@pytest.mark.torch
def test_similarity_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    q, d = randn(rng, 3, 5), randn(rng, 7, 5)
    tq, td = torch.from_numpy(q).double(), torch.from_numpy(d).double()
    def sim(metric: str) -> np.ndarray:
        return run("SimilarityComputation", {"query": q, "documents": d}, metric=metric)["scores"]

    np.testing.assert_allclose(sim("dot"), (tq @ td.T).numpy(), rtol=1e-5, atol=1e-5)
    cos = torch.nn.functional.cosine_similarity(tq[:, None, :], td[None, :, :], dim=-1)
    np.testing.assert_allclose(sim("cosine"), cos.numpy(), atol=1e-6)
    np.testing.assert_allclose(sim("l2"), -torch.cdist(tq, td).numpy(), atol=1e-5)


def test_document_retrieval_top_k_with_ties_to_lower_index() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.9, np.nan], [3.0, 3.0, 3.0, 1.0, 2.0]], np.float32)
    got = run("DocumentRetrieval", {"scores": scores}, top_k=3)
    np.testing.assert_array_equal(got["indices"], [[1, 3, 2], [0, 1, 2]])
    np.testing.assert_allclose(got["top_scores"], [[0.9, 0.9, 0.5], [3.0, 3.0, 3.0]])
    everything = run("DocumentRetrieval", {"scores": scores}, top_k=10)
    np.testing.assert_array_equal(everything["indices"][0], [1, 3, 2, 0, 4])  # clamped to N, NaN last


def test_result_integration_compacts_documents_then_query() -> None:
    docs = np.array([[5, 6, 0], [7, 0, 0], [8, 9, 4]], np.int64)
    idx = np.array([[2, 1], [0, 0]])
    query = np.array([[11, 12], [13, 0]], np.int64)
    got = run("ResultIntegration", {"doc_ids": docs, "indices": idx, "query_ids": query}, separator_id=3)
    np.testing.assert_array_equal(got["context_ids"], [[0, 0, 8, 9, 4, 3, 7, 3, 11, 12], [0, 0, 0, 5, 6, 3, 5, 6, 3, 13]])
    np.testing.assert_array_equal(got["attention_mask"], [[0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]])
    right = run("ResultIntegration", {"doc_ids": docs, "indices": idx[:, :1], "query_ids": query}, padding_side="right")
    np.testing.assert_array_equal(right["context_ids"], [[8, 9, 4, 11, 12], [5, 6, 13, 0, 0]])
    with pytest.raises(GraphError, match="document indices"):
        run("ResultIntegration", {"doc_ids": docs, "indices": np.array([[3]]), "query_ids": query})


def test_output_generation_greedy_step() -> None:
    logits = np.array([[[0.0, 0.0, 0.0], [1.0, 5.0, 5.0]], [[9.0, 0.0, 0.0], [0.0, 0.0, 2.0]]], np.float32)
    got = run("OutputGeneration", {"logits": logits, "input_ids": np.array([[4, 4], [4, 0]], np.int32)}, eos_id=0)
    np.testing.assert_array_equal(got["next_token"], [1, 0])  # tie 1/2 → 1; row 1 already ended with eos 0
    np.testing.assert_array_equal(got["output_ids"], [[4, 4, 1], [4, 0, 0]])
    assert got["output_ids"].dtype == np.int32
    np.testing.assert_array_equal(run("OutputGeneration", {"logits": logits[:, 1]})["next_token"], [1, 2])


def test_rag_pipeline_runs_as_an_ir_graph() -> None:
    """Query and documents encoded, scored, retrieved, integrated and one token generated, by the executor."""
    g = GraphBuilder()
    g.var("q_tokens", shape=(1, 2, 2))
    g.var("d_tokens", shape=(3, 2, 2))
    g.var("doc_ids", "int64", (3, 2))
    g.var("query_ids", "int64", (1, 1))
    g.var("logits", shape=(1, 5))
    for name, dtype, shape in (("q", "float32", (1, 2)), ("d", "float32", (3, 2)), ("s", "float32", (1, 3)),
                               ("idx", "int64", (1, 2)), ("top", "float32", (1, 2)), ("ctx_ids", "int64", (1, 5)),
                               ("ctx_mask", "int64", (1, 5)), ("nxt", "int64", (1,)), ("out_ids", "int64", (1, 6))):
        g.var(name, dtype, shape)
    g.op("QueryEncoding", {"token_embeddings": "q_tokens"}, {"embeddings": "q"})
    g.op("DocumentEncoding", {"token_embeddings": "d_tokens"}, {"embeddings": "d"})
    g.op("SimilarityComputation", {"query": "q", "documents": "d"}, {"scores": "s"}, metric="dot")
    g.op("DocumentRetrieval", {"scores": "s"}, {"indices": "idx", "top_scores": "top"}, top_k=2)
    g.op("ResultIntegration", {"doc_ids": "doc_ids", "indices": "idx", "query_ids": "query_ids"},
         {"context_ids": "ctx_ids", "attention_mask": "ctx_mask"}, pad_id=0)
    g.op("OutputGeneration", {"logits": "logits", "input_ids": "ctx_ids"}, {"next_token": "nxt", "output_ids": "out_ids"})
    m = model(g, inputs=["q_tokens", "d_tokens", "doc_ids", "query_ids", "logits"], outputs=["idx", "out_ids"])
    feeds = {"q_tokens": np.array([[[1.0, 0.0], [1.0, 0.0]]], np.float32),
             "d_tokens": np.array([[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.2]], [[1.0, 1.0], [1.0, 1.0]]], np.float32),
             "doc_ids": np.array([[21, 22], [31, 0], [41, 42]]), "query_ids": np.array([[7]]),
             "logits": np.array([[0.0, 0.0, 0.0, 3.0, 1.0]], np.float32)}
    got = run_model(m, feeds)
    np.testing.assert_array_equal(got["idx"], [[1, 2]])  # cosines 0.995 and 0.707 beat 0
    np.testing.assert_array_equal(got["out_ids"], [[0, 31, 41, 42, 7, 3]])
