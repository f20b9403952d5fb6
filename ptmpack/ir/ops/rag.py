# ruff: noqa: RUF002 - formulas quote the standard's symbols
"""Retrieval-augmented generation operators of GB/T 42382.2 §7.4.7 (Tables 52–56).

The workflow of the standard maps onto the operators as: query input → ``QueryEncoding``;
documents → ``DocumentEncoding``; ``SimilarityComputation`` scores every (query, document) pair;
``DocumentRetrieval`` keeps the top k (retrieval, step b); ``ResultIntegration`` joins the chosen
documents' token ids with the query's (step c; the standard gives it no table of its own, so it
is documented with Table 56); the generator model runs; ``OutputGeneration`` picks the next token
greedily (step d). Encoders pool token embeddings that a transformer graph has already computed,
so any encoder model can feed them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ptmpack.errors import GraphError
from ptmpack.ir.model import AttrType
from ptmpack.ir.ops.blocks import Shapes, known, prepared
from ptmpack.ir.ops.numeric import ALL_DTYPES, FLOAT_DTYPES, INDEX_DTYPES, out
from ptmpack.ir.registry import AttrDef, ExecContext, Slot, op

A = AttrType
F = FLOAT_DTYPES
POOLINGS = ("mean", "cls", "max")
METRICS = ("cosine", "dot", "l2")


# ---- encoders ------------------------------------------------------------------------------

def pool(tokens: np.ndarray, mask: np.ndarray | None, pooling: str, normalize: bool) -> np.ndarray:
    """One vector per sequence from token embeddings ``[..., L, D]`` and an optional mask ``[..., L]``.

    Raises:
        GraphError: unknown pooling.
    """
    valid = np.ones(tokens.shape[:-1], bool) if mask is None else np.asarray(mask) != 0
    if pooling == "mean":
        y = (tokens * valid[..., None]).sum(-2) / np.maximum(valid.sum(-1, keepdims=True), 1)
    elif pooling == "cls":
        y = tokens[..., 0, :]
    elif pooling == "max":
        y = np.where(valid[..., None], tokens, -np.inf).max(-2) if tokens.shape[-2] else tokens.sum(-2)
        y = np.where(np.isneginf(y), 0.0, y)
    else:
        raise GraphError(f"encoding: pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    if normalize:
        y = y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
    return y


def _enc_infer(name: str) -> Any:
    def infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
        c = Shapes(name, inputs)
        c.bind("token_embeddings", "... L D")
        c.bind("attention_mask", "... L")
        if attrs["pooling"] not in POOLINGS:
            c.fail(f"pooling must be one of {', '.join(POOLINGS)}, not {attrs['pooling']!r}")
        if attrs["pooling"] == "cls" and c["L"] == 0:
            c.fail("cls pooling needs at least one token")
        return {"embeddings": c.out("... D")}

    return infer


def _encoding(name: str, table: str, what: str) -> None:
    def kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
        p = prepared(ctx, inputs)
        return {"embeddings": out(ctx, pool(p["token_embeddings"], p.get("attention_mask"), attrs["pooling"],
                                            attrs["normalize"]))}

    kernel.__doc__ = f"""Encodes {what} as one vector each by pooling an encoder's token embeddings.

    ``mean``: average of the tokens whose ``attention_mask`` is non-zero (0 for a sequence with
    none, as sentence-transformers' clamped mean); ``cls``: the first token (BERT's [CLS]);
    ``max``: element-wise maximum over the unmasked tokens. With ``normalize`` the result is
    scaled to unit L2 norm (zero vectors stay zero), so that ``dot`` similarity is the cosine.
    """
    op(name, table=table,
       inputs=[Slot("token_embeddings", f"encoder output for the {what} [..., L, D]", dtypes=F),
               Slot("attention_mask", "[..., L], non-zero for real tokens", optional=True, dtypes=ALL_DTYPES)],
       outputs=[Slot("embeddings", "[..., D]")],
       attributes=[AttrDef("pooling", A.STRING, "mean", "mean, cls or max"),
                   AttrDef("normalize", A.BOOL, True, "scale each embedding to unit L2 norm")],
       infer=_enc_infer(name))(kernel)


_encoding("DocumentEncoding", "Table 53", "documents")
_encoding("QueryEncoding", "Table 54", "queries")


# ---- scoring and retrieval -------------------------------------------------------------------

def similarity(query: np.ndarray, docs: np.ndarray, metric: str) -> np.ndarray:
    """Scores ``[..., N]`` of queries ``[..., D]`` against documents ``[N, D]``; higher is more similar.

    Raises:
        GraphError: unknown metric.
    """
    if metric == "dot":
        return query @ docs.T
    if metric == "cosine":
        qn = query / np.maximum(np.linalg.norm(query, axis=-1, keepdims=True), 1e-8)
        dn = docs / np.maximum(np.linalg.norm(docs, axis=-1, keepdims=True), 1e-8)
        return qn @ dn.T
    if metric == "l2":
        sq = (query * query).sum(-1, keepdims=True) - 2 * query @ docs.T + (docs * docs).sum(-1)
        return -np.sqrt(np.maximum(sq, 0.0))
    raise GraphError(f"SimilarityComputation: metric must be one of {', '.join(METRICS)}, not {metric!r}")


def _sim_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("SimilarityComputation", inputs)
    c.bind("query", "... D")
    c.bind("documents", "N D")
    if attrs["metric"] not in METRICS:
        c.fail(f"metric must be one of {', '.join(METRICS)}, not {attrs['metric']!r}")
    return {"scores": c.out("... N")}


@op("SimilarityComputation", table="Table 55",
    inputs=[Slot("query", "query embeddings [..., D]", dtypes=F), Slot("documents", "document embeddings [N, D]", dtypes=F)],
    outputs=[Slot("scores", "[..., N], higher means more similar")],
    attributes=[AttrDef("metric", A.STRING, "cosine", "cosine, dot or l2")],
    infer=_sim_infer)
def sim_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Similarity of each query to each document: ``cosine`` ``q·d / (‖q‖‖d‖)`` (norms floored at
    1e-8), ``dot`` ``q·d``, or ``l2`` the negated Euclidean distance ``-‖q - d‖₂``, so that for every
    metric a larger score is a better match.
    """
    p = prepared(ctx, inputs)
    return {"scores": out(ctx, similarity(p["query"], p["documents"], attrs["metric"]))}


def _ret_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("DocumentRetrieval", inputs)
    c.bind("scores", "... N")
    if attrs["top_k"] < 1:
        c.fail(f"top_k must be positive, got {attrs['top_k']}")
    k = min(attrs["top_k"], c["N"]) if known(c["N"]) else -1
    return {"indices": c.out(["...", k], "int64"), "top_scores": c.out(["...", k])}


@op("DocumentRetrieval", table="Table 52",
    inputs=[Slot("scores", "query-document scores [..., N] (SimilarityComputation)", dtypes=F)],
    outputs=[Slot("indices", "retrieved documents [..., k], best first (int64)"), Slot("top_scores", "[..., k]")],
    attributes=[AttrDef("top_k", A.INT, 5, "documents retrieved per query")],
    infer=_ret_infer)
def ret_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Top-k retrieval: the ``k = min(top_k, N)`` highest-scoring documents of each query, best
    first; equal scores keep document order (the lower index first), so results are
    deterministic. NaN scores rank last.
    """
    s = prepared(ctx, inputs)["scores"]
    k = min(attrs["top_k"], s.shape[-1])
    key = np.where(np.isnan(s), np.inf, -s)
    idx = np.argsort(key, axis=-1, kind="stable")[..., :k]
    return {"indices": idx.astype(np.int64), "top_scores": out(ctx, np.take_along_axis(s, idx, axis=-1))}


# ---- integration and generation --------------------------------------------------------------

def _ri_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("ResultIntegration", inputs)
    c.bind("doc_ids", "N Ld")
    c.bind("indices", "B k")
    c.bind("query_ids", "B Lq")
    if attrs["padding_side"] not in ("left", "right"):
        c.fail(f"padding_side must be left or right, not {attrs['padding_side']!r}")
    sep = 1 if attrs["separator_id"] >= 0 else 0
    total = c["k"] * (c["Ld"] + sep) + c["Lq"] if known(c["k"], c["Ld"], c["Lq"]) else -1
    dtype = inputs["query_ids"].dtype
    return {"context_ids": c.out(["B", total], dtype), "attention_mask": c.out(["B", total], "int64")}


@op("ResultIntegration", table="Table 56",
    inputs=[Slot("doc_ids", "token ids of the document collection [N, Ld], padded with pad_id", dtypes=INDEX_DTYPES),
            Slot("indices", "retrieved documents per query [B, k] (DocumentRetrieval)", dtypes=INDEX_DTYPES),
            Slot("query_ids", "token ids of the queries [B, Lq], padded with pad_id", dtypes=INDEX_DTYPES)],
    outputs=[Slot("context_ids", "[B, k·(Ld + sep) + Lq] generator input"),
             Slot("attention_mask", "[B, same], 1 on real tokens (int64)")],
    attributes=[AttrDef("pad_id", A.INT, 0, "padding token id, dropped from the inputs and used to fill"),
                AttrDef("separator_id", A.INT, -1, "token appended after each document; -1 for none"),
                AttrDef("padding_side", A.STRING, "left", "where the fill goes: left (decoder-only) or right")],
    infer=_ri_infer)
def ri_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Joins the retrieved documents with the query into one generator input (RAG step c).

    Row b is the non-pad tokens of ``doc_ids[indices[b, 0]]``, (``separator_id``), ``doc_ids[indices[b,
    1]]``, (``separator_id``), …, then the non-pad tokens of ``query_ids[b]``: best document first,
    the query last, next to where generation continues. Rows are filled with ``pad_id`` to the
    static width ``k·(Ld + sep) + Lq`` on ``padding_side`` (left by default, so the last position
    of every row is a real token for decoder-only generation).

    Raises:
        GraphError: a document index outside ``[0, N)``.
    """
    docs, idx, query = (np.asarray(inputs[k]) for k in ("doc_ids", "indices", "query_ids"))
    pad, sep = attrs["pad_id"], attrs["separator_id"]
    if idx.size and (idx.min() < 0 or idx.max() >= docs.shape[0]):
        raise GraphError(f"ResultIntegration: document indices must be in [0, {docs.shape[0]}), got {idx.min()}..{idx.max()}")
    width = idx.shape[1] * (docs.shape[1] + (sep >= 0)) + query.shape[1]
    ids = np.full((idx.shape[0], width), pad, query.dtype)
    mask = np.zeros((idx.shape[0], width), np.int64)
    for b in range(idx.shape[0]):
        parts = []
        for d in idx[b]:
            parts.append(docs[d][docs[d] != pad])
            if sep >= 0:
                parts.append(np.asarray([sep]))
        parts.append(query[b][query[b] != pad])
        row = np.concatenate(parts).astype(query.dtype) if parts else np.zeros(0, query.dtype)
        at = slice(width - len(row), width) if attrs["padding_side"] == "left" else slice(0, len(row))
        ids[b, at], mask[b, at] = row, 1
    return {"context_ids": ids, "attention_mask": mask}


def _gen_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("OutputGeneration", inputs)
    logits = inputs["logits"]
    if len(logits.shape) not in (2, 3):
        c.fail(f"logits must be [B, V] or [B, L, V], got {list(logits.shape)}")
    c.bind("logits", "B V" if len(logits.shape) == 2 else "B L V")
    c.bind("input_ids", "B T")
    types = {"next_token": c.out("B", "int64")}
    if inputs.get("input_ids") is not None:
        types["output_ids"] = c.out(["B", c["T"] + 1 if known(c["T"]) else -1], inputs["input_ids"].dtype)
    return types


@op("OutputGeneration", table="Table 56",
    inputs=[Slot("logits", "generator logits [B, V] or [B, L, V] (the last position is used)", dtypes=F),
            Slot("input_ids", "tokens so far [B, T]", optional=True, dtypes=INDEX_DTYPES)],
    outputs=[Slot("next_token", "[B] (int64)"),
             Slot("output_ids", "[B, T+1], input_ids with next_token appended (when input_ids is given)",
                  optional=True)],
    attributes=[AttrDef("eos_id", A.INT, -1, "end-of-sequence id; a row whose last token is eos_id stays finished")],
    infer=_gen_infer)
def gen_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """One greedy decoding step of the generator (RAG step d).

    ``next_token[b] = argmax_v logits[b, -1, v]`` (the lowest id among equal maxima); a row whose
    last input token is ``eos_id`` (≥ 0) is finished and yields ``eos_id`` again. ``output_ids``
    appends the token to ``input_ids``. Decoding several tokens repeats the step in a loop
    sub-graph around the generator; sampling strategies are not part of this operator.
    """
    logits = prepared(ctx, inputs)["logits"]
    last = logits if logits.ndim == 2 else logits[:, -1, :]
    nxt = np.argmax(last, axis=-1).astype(np.int64)
    ids = inputs.get("input_ids")
    result: dict[str, Any] = {"next_token": nxt}
    if ids is not None:
        ids = np.asarray(ids)
        if attrs["eos_id"] >= 0 and ids.shape[1]:
            nxt = np.where(ids[:, -1] == attrs["eos_id"], attrs["eos_id"], nxt).astype(np.int64)
            result["next_token"] = nxt
        result["output_ids"] = np.concatenate([ids, nxt[:, None].astype(ids.dtype)], axis=1)
    return result
