"""Run a packaged model through the IR: next-token top-k, embeddings, perplexity.

The library side of ``ptmpack run`` and ``ptmpack eval``. A package's model is its
``Model/graph.json``, or — when it has none — the graph :mod:`ptmpack.ir.convert_hf`
builds from ``Model/config.json`` and the tensor table, so any supported Hugging Face
checkpoint runs without a conversion step. Text is tokenized with the package's own
``Model/tokenizer.json`` (the ``tokenizers`` library), special tokens included as the
tokenizer's post-processor adds them. Weights stream from the package as the executor
needs them (:class:`ptmpack.ir.execute.Executor`).

Decoders (models whose output is ``logits``) give next-token top-k and perplexity;
encoders (``last_hidden_state``) give sentence embeddings pooled over the real tokens
only (the attention mask; never over padding) as the package's sentence-transformers
Pooling module says (``modules.json`` names its folder, ``1_Pooling/`` by default; mean
pooling when there is none), L2-normalised when ``modules.json`` lists a ``Normalize``
module. A tokenizer saved with fixed-length padding (all-MiniLM-L6-v2 pads to 128) is
used without it: a single text is never padded, a batch only to its longest text.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import GraphError, UsageError
from ptmpack.ir.convert_hf import TensorMeta, build_model
from ptmpack.ir.execute import Executor
from ptmpack.ir.model import ModelStructure
from ptmpack.ir.registry import ExecContext
from ptmpack.ir.validate import GRAPH_FILE, SAFETENSORS_DTYPES
from ptmpack.storage.package import Package, open_package

TOKENIZER_FILE = "Model/tokenizer.json"
CONFIG_FILE = "Model/config.json"
DEFAULT_WINDOW = 1024
"""Longest sequence one perplexity forward pass takes when the config states no limit."""
_LOGSUMEXP_ROWS = 64


@dataclass(frozen=True)
class TopToken:
    """One candidate next token."""

    id: int
    token: str
    logit: float
    prob: float


@dataclass(frozen=True)
class RunResult:
    """What ``ptmpack run`` shows: the input ids and either next-token candidates or an embedding."""

    kind: str
    """``"logits"`` (decoder) or ``"embedding"`` (encoder)."""
    tokens: tuple[int, ...]
    top: tuple[TopToken, ...] = ()
    embedding: tuple[float, ...] = ()
    seconds: float = 0.0
    pooling: str = ""
    """Embeddings: the pooling modes applied (``mean``, ``cls``, ``max``…, joined by ``+`` when several)."""
    normalized: bool = False

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "tokens": list(self.tokens), "seconds": round(self.seconds, 4)}
        if self.kind == "logits":
            doc["top"] = [{"id": t.id, "token": t.token, "logit": t.logit, "prob": t.prob} for t in self.top]
        else:
            doc.update(embedding=list(self.embedding), pooling=self.pooling, normalized=self.normalized)
        return doc


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of a decoder on a text: exp of the mean next-token negative log-likelihood."""

    tokens: int
    """Tokens read (after ``max_tokens``); all but the first are predicted."""
    predicted: int
    nll: float
    perplexity: float
    windows: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "predicted": self.predicted, "nll": self.nll, "perplexity": self.perplexity,
                "windows": self.windows, "seconds": round(self.seconds, 4),
                "tokens_per_second": round(self.tokens_per_second, 2)}


@dataclass(frozen=True)
class EmbeddingsResult:
    """Sentence embeddings of the lines of a text file."""

    embeddings: np.ndarray = field(repr=False)
    """``[lines, hidden]`` float32."""
    pooling: str
    normalized: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        e = self.embeddings
        sims = e @ e.T if len(e) > 1 else np.zeros((1, 1))
        off = sims[~np.eye(len(sims), dtype=bool)] if len(e) > 1 else np.zeros(1)
        return {"count": int(e.shape[0]), "dim": int(e.shape[1]) if e.ndim == 2 else 0, "pooling": self.pooling,
                "normalized": self.normalized, "mean_norm": float(np.linalg.norm(e, axis=-1).mean()) if len(e) else 0.0,
                "mean_pairwise_dot": float(off.mean()), "seconds": round(self.seconds, 4)}


def graph_from_package(pkg: Package) -> ModelStructure:
    """The package's IR model: ``Model/graph.json``, else built from ``Model/config.json``.

    Raises:
        GraphError: graph.json is invalid, or there is neither graph.json nor config.json.
        UnsupportedError: config.json names an architecture the converter does not know.
    """
    names = {f.path for f in pkg.files}
    if GRAPH_FILE in names:
        return ModelStructure.loads(pkg.read_file(GRAPH_FILE), f"{pkg.path}:{GRAPH_FILE}")
    if CONFIG_FILE not in names:
        raise GraphError(f"{pkg.path} has neither {GRAPH_FILE} nor {CONFIG_FILE}: nothing to run",
                         hint="import the model with 'ptmpack init --from-hf' or '--from-gguf'")
    config = _json(pkg, CONFIG_FILE)
    tensors = {t.name: TensorMeta(SAFETENSORS_DTYPES[t.dtype], tuple(t.shape), path)
               for path, t in pkg.tensors() if path.count("/") == 1 and t.dtype in SAFETENSORS_DTYPES}
    return build_model(config, tensors, name=Path(str(pkg.path)).name)


def _json(pkg: Package, path: str) -> dict[str, Any]:
    try:
        doc = json.loads(pkg.read_file(path).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise GraphError(f"{pkg.path}:{path}: not valid UTF-8 JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise GraphError(f"{pkg.path}:{path}: not a JSON object")
    return doc


POOLING_MODES = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens",
                 "lasttoken")
"""sentence-transformers' pooling modes, in the order its Pooling module concatenates them."""


def _modules(pkg: Package) -> list[dict[str, Any]]:
    """The sentence-transformers pipeline of ``Model/modules.json`` (empty when absent or unreadable)."""
    if not pkg.has_file("Model/modules.json"):
        return []
    try:
        modules = json.loads(pkg.read_file("Model/modules.json").decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return []
    return [m for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []


def pooling_modes(pkg: Package) -> tuple[tuple[str, ...], bool]:
    """How the package's sentence-transformers pipeline pools and whether it normalises.

    The Pooling module's folder comes from ``modules.json`` (``1_Pooling`` when it names none);
    its ``config.json`` switches modes on with ``pooling_mode_<mode>`` (or names one as
    ``pooling_mode``). Without a Pooling config the embedding is the mean over real tokens.
    """
    modules = _modules(pkg)
    folder = next((str(m.get("path") or "") for m in modules if str(m.get("type", "")).endswith("Pooling")),
                  "1_Pooling")
    path = f"Model/{folder.strip('/')}/config.json"
    config = _json(pkg, path) if folder and pkg.has_file(path) else {}
    named = config.get("pooling_mode")
    modes = tuple(m.removesuffix("_token").removesuffix("_tokens") for m in POOLING_MODES
                  if config.get(f"pooling_mode_{m}") or named in (m, m.removesuffix("_tokens")))
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    return modes or ("mean",), normalize


class LoadedModel:
    """A package opened for running: its IR model, executor, tokenizer and pooling settings.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, pkg: Package, *, compute_dtype: str = "float32", owns: bool = False) -> None:
        self.pkg = pkg
        self._owns = owns
        self.model = graph_from_package(pkg)
        self.executor = Executor(self.model, pkg, ExecContext(compute_dtype=compute_dtype))
        outputs = set(self.model.outputs)
        if "logits" in outputs:
            self.kind = "logits"
        elif "last_hidden_state" in outputs:
            self.kind = "embedding"
        else:
            raise GraphError(f"{pkg.path}: model outputs {sorted(outputs)} are neither logits nor last_hidden_state")
        names = {f.path for f in pkg.files}
        self.config = _json(pkg, CONFIG_FILE) if CONFIG_FILE in names else {}
        self._tokenizer: Any = None
        self._has_tokenizer = TOKENIZER_FILE in names
        self.pooling_modes, self.normalize = pooling_modes(pkg)
        self.pooling = "+".join(self.pooling_modes)

    @classmethod
    def open(cls, path: Path | str, *, opener: Opener | None = None, compute_dtype: str = "float32") -> LoadedModel:
        """Open a ``.ptm`` file or a package tree for running.

        Raises:
            PtmError: the package cannot be opened, or has no runnable model.
        """
        pkg = open_package(Path(path), opener)
        try:
            return cls(pkg, compute_dtype=compute_dtype, owns=True)
        except BaseException:
            pkg.close()
            raise

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns:
            self.pkg.close()

    @property
    def tokenizer(self) -> Any:
        """The package's ``tokenizers.Tokenizer``.

        Raises:
            UsageError: the package carries no tokenizer.json, or ``tokenizers`` is not installed.
        """
        if self._tokenizer is None:
            if not self._has_tokenizer:
                raise UsageError(f"{self.pkg.path} carries no {TOKENIZER_FILE}",
                                 hint="run takes token ids with --tokens; eval needs the model's tokenizer.json in Model/")
            try:
                from tokenizers import Tokenizer
            except ImportError:
                raise UsageError("tokenizing text needs the 'tokenizers' package", hint="pip install tokenizers") from None
            tok = Tokenizer.from_str(self.pkg.read_file(TOKENIZER_FILE).decode("utf-8"))
            tok.no_padding()  # a saved fixed-length padding would make every text 128 tokens of mostly [PAD]
            self._tokenizer = tok
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (never padded), special tokens added as the tokenizer's post-processor says."""
        return list(self.tokenizer.encode(text).ids)

    def forward(self, ids: np.ndarray, mask: np.ndarray | None = None, type_ids: np.ndarray | None = None) -> np.ndarray:
        """Run the model on ``[batch, seq]`` ids; returns logits or the last hidden state."""
        ids = np.asarray(ids, dtype=np.int64)
        self._check_ids(ids)
        feeds: dict[str, np.ndarray] = {"input_ids": ids}
        if "attention_mask" in self.model.inputs:
            feeds["attention_mask"] = np.ones_like(ids) if mask is None else np.asarray(mask, dtype=np.int64)
        if "token_type_ids" in self.model.inputs:
            feeds["token_type_ids"] = np.zeros_like(ids) if type_ids is None else np.asarray(type_ids, dtype=np.int64)
        return self.executor.run(feeds)[self.model.outputs[0]]

    def _check_ids(self, ids: np.ndarray) -> None:
        vocab = self.config.get("vocab_size")
        if ids.size and (ids.min() < 0 or (isinstance(vocab, int) and ids.max() >= vocab)):
            raise UsageError(f"token ids must lie in [0, {vocab}); got {int(ids.min())}..{int(ids.max())}")
        limit = self.config.get("max_position_embeddings", self.config.get("n_positions"))
        if isinstance(limit, int) and ids.shape[-1] > limit:
            raise UsageError(f"{ids.shape[-1]} tokens exceed the model's {limit} positions")

    def pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Sentence embeddings ``[batch, hidden]`` from ``[batch, seq, hidden]`` and the attention mask.

        Only real tokens (mask 1) count; several modes are concatenated in sentence-transformers' order.
        """
        h = np.asarray(hidden, dtype=np.float32)
        m = np.asarray(mask, dtype=np.float32)[..., None]
        count = np.maximum(m.sum(axis=1), 1e-9)
        last = np.maximum(np.asarray(mask).sum(axis=1).astype(np.int64) - 1, 0)
        weights = m * np.arange(1, h.shape[1] + 1, dtype=np.float32)[None, :, None]
        pooled = {
            "cls": lambda: h[:, 0],
            "max": lambda: np.where(m > 0, h, -np.inf).max(axis=1),
            "mean": lambda: (h * m).sum(axis=1) / count,
            "mean_sqrt_len": lambda: (h * m).sum(axis=1) / np.sqrt(count),
            "weightedmean": lambda: (h * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9),
            "lasttoken": lambda: h[np.arange(len(h)), last],
        }
        e = np.concatenate([pooled[mode]() for mode in self.pooling_modes], axis=-1)
        if self.normalize:
            e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
        return e.astype(np.float32)


def _top_k(logits: np.ndarray, k: int, decode: Any) -> tuple[TopToken, ...]:
    row = logits.astype(np.float64)
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    k = max(1, min(k, row.shape[-1]))
    best = np.argpartition(-row, k - 1)[:k]
    best = best[np.argsort(-row[best], kind="stable")]
    return tuple(TopToken(int(i), decode(int(i)), float(row[i]), float(probs[i])) for i in best)


def run_model(lm: LoadedModel, *, text: str | None = None, tokens: Sequence[int] | None = None,
              top_k: int = 5) -> RunResult:
    """One forward pass: next-token top-k for a decoder, the pooled embedding for an encoder.

    Raises:
        UsageError: neither or both of ``text`` and ``tokens``, no tokens, bad ids, or no tokenizer for text.
        GraphError: the model fails to run.
    """
    if (text is None) == (tokens is None):
        raise UsageError("give exactly one of text or tokens")
    ids = lm.encode(text) if text is not None else [int(t) for t in tokens or ()]
    if not ids:
        raise UsageError("no tokens to run")
    start = time.perf_counter()
    arr = np.asarray([ids], dtype=np.int64)
    mask = np.ones_like(arr)  # one unpadded sequence: every token is real
    out = lm.forward(arr, mask)
    if lm.kind == "logits":
        decode = (lambda i: lm.tokenizer.decode([i], skip_special_tokens=False)) if lm._has_tokenizer else str
        top = _top_k(out[0, -1], top_k, decode)
        return RunResult("logits", tuple(ids), top=top, seconds=time.perf_counter() - start)
    emb = lm.pool(out, mask)[0]
    return RunResult("embedding", tuple(ids), embedding=tuple(float(v) for v in emb), seconds=time.perf_counter() - start,
                     pooling=lm.pooling, normalized=lm.normalize)


def sequence_nll(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """Sum of -log p(ids[t+1] | ids[..t]) over one sequence's ``[seq, vocab]`` logits, and the count.

    Log-sum-exp runs over row blocks in float64, so no second vocabulary-sized array is made.
    """
    total, n = 0.0, len(ids) - 1
    for start in range(0, n, _LOGSUMEXP_ROWS):
        rows = logits[start:min(start + _LOGSUMEXP_ROWS, n)].astype(np.float64)
        peak = rows.max(axis=-1, keepdims=True)
        lse = np.log(np.exp(rows - peak).sum(axis=-1)) + peak[:, 0]
        target = rows[np.arange(len(rows)), ids[start + 1:start + 1 + len(rows)]]
        total += float((lse - target).sum())
    return total, max(n, 0)


def perplexity(lm: LoadedModel, text: str, *, max_tokens: int | None = None,
               window: int | None = None) -> PerplexityResult:
    """Perplexity of the decoder on ``text`` (first ``max_tokens`` tokens), in windows of ``window`` tokens.

    Each window is one forward pass; consecutive windows share one token, so every token
    but the first is predicted exactly once (a window's first token is context only).

    Raises:
        UsageError: an encoder model, fewer than two tokens, or a bad ``max_tokens``/``window``.
    """
    if lm.kind != "logits":
        raise UsageError("perplexity needs a decoder (a model whose output is logits)", hint="use --embeddings")
    if max_tokens is not None and max_tokens < 2:
        raise UsageError("--max-tokens must be at least 2")
    ids = lm.encode(text)[:max_tokens] if max_tokens else lm.encode(text)
    if len(ids) < 2:
        raise UsageError("the text gives fewer than two tokens; nothing to predict")
    limit = lm.config.get("max_position_embeddings", lm.config.get("n_positions"))
    window = window or (min(limit, DEFAULT_WINDOW) if isinstance(limit, int) else DEFAULT_WINDOW)
    if window < 2:
        raise UsageError("the perplexity window must be at least 2 tokens")
    start = time.perf_counter()
    total, count, windows = 0.0, 0, 0
    arr = np.asarray(ids, dtype=np.int64)
    for begin in range(0, len(arr) - 1, window - 1):
        chunk = arr[begin:begin + window]
        logits = lm.forward(chunk[None])[0]
        nll, n = sequence_nll(logits, chunk)
        del logits
        total, count, windows = total + nll, count + n, windows + 1
    seconds = time.perf_counter() - start
    mean = total / count
    return PerplexityResult(len(ids), count, mean, math.exp(mean), windows, seconds)


def embed_texts(lm: LoadedModel, texts: Sequence[str], *, batch_size: int = 16,
                max_length: int | None = None) -> np.ndarray:
    """Pooled sentence embeddings ``[len(texts), hidden]`` of an encoder, in padded batches.

    Raises:
        UsageError: a decoder model, or a package without a tokenizer.
    """
    if lm.kind != "embedding":
        raise UsageError("embeddings need an encoder (a model whose output is last_hidden_state)")
    tok = lm.tokenizer
    limit = max_length or lm.config.get("max_position_embeddings") or 512
    tok.enable_truncation(max_length=int(limit))
    tok.enable_padding(pad_id=int(lm.config.get("pad_token_id") or 0))
    try:
        chunks = []
        for begin in range(0, len(texts), batch_size):
            enc = tok.encode_batch(list(texts[begin:begin + batch_size]))
            ids = np.asarray([e.ids for e in enc], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
            types = np.asarray([e.type_ids for e in enc], dtype=np.int64)
            chunks.append(lm.pool(lm.forward(ids, mask, types), mask))
    finally:
        tok.no_padding()
        tok.no_truncation()
    hidden = lm.model.main_graph.variable_map()[lm.model.outputs[0]].shape[-1]
    return np.concatenate(chunks) if chunks else np.zeros((0, max(hidden, 0)), np.float32)


def eval_embeddings(lm: LoadedModel, text: str, *, batch_size: int = 16) -> EmbeddingsResult:
    """Embeddings of every non-empty line of ``text`` (``ptmpack eval --embeddings``)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UsageError("the text file has no non-empty lines to embed")
    start = time.perf_counter()
    e = embed_texts(lm, lines, batch_size=batch_size)
    return EmbeddingsResult(e, lm.pooling, lm.normalize, time.perf_counter() - start)


def parse_token_list(text: str) -> list[int]:
    """Token ids from ``--tokens`` syntax: ``"1,2,3"`` (spaces allowed).

    Raises:
        UsageError: an item that is not a non-negative integer, or no items.
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or not all(t.isdigit() for t in items):
        raise UsageError(f"--tokens takes comma-separated non-negative integers, got {text!r}")
    return [int(t) for t in items]


def read_text(path: Path) -> str:
    """A UTF-8 text file for ``eval``.

    Raises:
        UsageError: missing or not UTF-8.
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
