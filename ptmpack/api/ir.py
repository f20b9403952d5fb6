"""Verbs over the chapter-6 IR: check and load ``Model/graph.json``, run and evaluate a packaged model."""

from __future__ import annotations

from pathlib import Path

from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import UsageError
from ptmpack.ir.check import CheckReport
from ptmpack.ir.model import Attribute, AttrType, Graph, ModelStructure, OperatorNode, VariableNode
from ptmpack.ir.runner import EmbeddingsResult, PerplexityResult, RunResult

__all__ = [
    "AttrType", "Attribute", "CheckReport", "EmbeddingsResult", "Graph", "ModelStructure", "OperatorNode",
    "PerplexityResult", "RunResult", "VariableNode", "evaluate", "graph_check", "load_graph", "run",
]


def graph_check(source: Path, *, opener: Opener | None = None) -> CheckReport:
    """Validate the IR of a package, a tree or a bare graph.json (raises GraphError, exit 5)."""
    from ptmpack.ir.check import check_model_file

    return check_model_file(Path(source), opener=opener)


def load_graph(source: Path, *, opener: Opener | None = None) -> ModelStructure:
    """The IR model of a package, a tree or a bare graph.json."""
    from ptmpack.ir.check import load_model

    model, package = load_model(Path(source), opener)
    if package is not None:
        package.close()
    return model


def run(package: Path, *, text: str | None = None, tokens: str | None = None, top_k: int = 5,
        compute_dtype: str = "float32", opener: Opener | None = None) -> RunResult:
    """Run a packaged model on one input (text, or comma-separated token ids): next-token top-k or the embedding.

    Raises:
        UsageError: neither or both of ``text`` and ``tokens``.
    """
    from ptmpack.ir.runner import LoadedModel, parse_token_list, run_model

    if (text is None) == (tokens is None):
        raise UsageError("give exactly one input: text or token ids")
    ids = parse_token_list(tokens) if tokens is not None else None
    with LoadedModel.open(Path(package), opener=opener, compute_dtype=compute_dtype) as lm:
        return run_model(lm, text=text, tokens=ids, top_k=top_k)


def evaluate(package: Path, *, perplexity_file: Path | None = None, embeddings_file: Path | None = None,
             max_tokens: int | None = None, compute_dtype: str = "float32",
             opener: Opener | None = None) -> PerplexityResult | EmbeddingsResult:
    """Perplexity of a decoder on a text file, or embeddings of an encoder for a file of sentences.

    Raises:
        UsageError: neither or both files given.
    """
    from ptmpack.ir.runner import LoadedModel, eval_embeddings, perplexity, read_text

    if (perplexity_file is None) == (embeddings_file is None):
        raise UsageError("give exactly one text: for perplexity or for embeddings")
    with LoadedModel.open(Path(package), opener=opener, compute_dtype=compute_dtype) as lm:
        if perplexity_file is not None:
            return perplexity(lm, read_text(Path(perplexity_file)), max_tokens=max_tokens)
        assert embeddings_file is not None
        return eval_embeddings(lm, read_text(Path(embeddings_file)))
