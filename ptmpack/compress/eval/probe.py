"""Before/after measurements every structure step reports (issue 10, item 6).

A :class:`Probe` runs the package's IR model (``Model/graph.json``) on held-out text before a
step edits the tree, and again after: per-layer output error (the relative Frobenius error of
each transformer layer's output), the model-level metric (mean cosine of sentence embeddings
for encoders, perplexity for decoders), the weight bytes and the FLOPs per token.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.report import Quality, StepRecord
from ptmpack.compress.step import StepContext
from ptmpack.compress.tree.checkpoint import Checkpoint, read_json
from ptmpack.errors import UsageError

DEFAULT_TEXT = (
    "The committee approved the new budget after a long debate.\n"
    "A small boat drifted slowly across the quiet harbour at dawn.\n"
    "Researchers measured the temperature of the river every morning for a year.\n"
    "She learned to play the violin when she was seven years old.\n"
    "The old library reopened with a larger collection of maps and letters.\n"
    "Heavy rain flooded several roads in the northern part of the city.\n"
    "The software update fixed a bug that crashed the program on startup.\n"
    "Farmers in the valley grow apples, pears and a little wheat.\n"
)
"""Held-out sentences used when a step is given no text (so every run reports a quality figure)."""

_LAYER = re.compile(r"layers\.(\d+)\.")
_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h)\.\d+\.")


def flops_per_token(ck: Checkpoint, config: dict[str, Any], seq: int = 128) -> int:
    """Forward FLOPs per token at sequence length ``seq``, from the tensors' shapes.

    Every 2-D ``*.weight`` inside the transformer layers and the LM head costs ``2·out·in`` (a
    multiply-add per weight); attention scores and the weighted sum cost ``4·seq·width`` per
    layer, ``width`` being the query projection's output width. Embedding look-ups are free.
    Shapes, not config, decide, so a pruned checkpoint is costed as it is.
    """
    total = 0
    for name, t in ck.tensors.items():
        if t.ndim != 2 or not name.endswith(".weight") or "embed" in name:
            continue
        if _BLOCK.search(name) or name == "lm_head.weight":
            total += 2 * int(t.shape[0]) * int(t.shape[1])
            if name.endswith(("attention.self.query.weight", "self_attn.q_proj.weight")):
                total += 4 * seq * int(t.shape[0])
    if config.get("model_type") != "bert" and "lm_head.weight" not in ck.tensors:
        emb = next((t for n, t in ck.tensors.items() if n.endswith("embed_tokens.weight")), None)
        if emb is not None:
            total += 2 * int(emb.shape[0]) * int(emb.shape[1])
    return total


HEAD_BYTES = 4 << 20
"""At most this much of the start of a calibration file is read for the structure steps' windows."""
TAIL_BYTES = 64 << 10
"""The end of the file read for the held-out lines (when the file is larger than the head)."""


def step_text(ctx: StepContext) -> str | None:
    """The text of ``ctx.spec.calib`` (a pipeline StepContext), or None when the step was given none.

    A file larger than :data:`HEAD_BYTES` is not read whole: its first ``HEAD_BYTES`` (cut at a
    line end) for the calibration windows and its last :data:`TAIL_BYTES` lines for the held-out
    lines, joined by a newline.

    Raises:
        UsageError: the file cannot be read as UTF-8 text.
    """
    calib = ctx.spec.calib
    if calib is None:
        return None
    try:
        with open(calib, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= HEAD_BYTES + TAIL_BYTES:
                return f.read().decode("utf-8")
            head = f.read(HEAD_BYTES)
            f.seek(size - TAIL_BYTES)
            tail = f.read()
        head = head[: head.rfind(b"\n") + 1]  # whole lines only (a line end is never inside a UTF-8 character)
        tail = tail[tail.find(b"\n") + 1:]
        return (head + b"\n" + tail).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{calib}: cannot read the text ({exc})") from None


HELD_OUT = 16
"""How many of the text's last non-empty lines are held out of calibration and used for the quality report."""


def _lines(text: str) -> list[str]:
    """The non-empty lines of ``text``; a text on one line (a paragraph) is split into its sentences."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) == 1:
        lines = [s.strip() for s in re.split(r"(?<=[.!?])\s+", lines[0]) if s.strip()]
    return lines


def held_out_lines(text: str | None, *, limit: int = HELD_OUT) -> list[str]:
    """The held-out sentences: the last ``limit`` non-empty lines of ``text`` (or the built-in text)."""
    return _lines(text or DEFAULT_TEXT)[-limit:]


def calibration_part(text: str) -> str:
    """``text`` without its held-out lines (what calibration may see)."""
    lines = _lines(text)
    return "\n".join(lines[:-HELD_OUT] if len(lines) > 2 * HELD_OUT else lines[: len(lines) // 2])


def sentence_start_id(tree: Path) -> int | None:
    """The token each sentence of an encoder's :func:`calibration_windows` begins with ([CLS]).

    None for decoders and for tokenizers that add no leading special token (then the windows
    hold plain text and cannot be split back into sentences).
    """
    from ptmpack.ir.runner import LoadedModel

    with LoadedModel.open(tree) as lm:
        if lm.kind != "embedding":
            return None
        tok = lm.tokenizer
        tok.no_truncation()
        tok.no_padding()
        enc = tok.encode("a")
    return int(enc.ids[0]) if enc.ids and enc.special_tokens_mask[0] else None


def calibration_windows(tree: Path, text: str, *, nsamples: int = 8, seqlen: int = 128) -> np.ndarray:
    """Up to ``nsamples`` consecutive ``seqlen``-token windows ``[n, seqlen]`` of the calibration part of ``text``.

    Decoders: the text's tokens. Encoders: its sentences, each tokenized with its special tokens
    ([CLS] … [SEP]) and packed, so special tokens (the largest activations) appear as in real inputs.

    Raises:
        UsageError: the text gives fewer than ``seqlen`` tokens (a shorter single window is used when it gives at least 8).
    """
    from ptmpack.ir.runner import LoadedModel

    with LoadedModel.open(tree) as lm:
        tok = lm.tokenizer
        tok.no_truncation()  # tokenizer.json may truncate or pad every text (MiniLM: to 128 tokens)
        tok.no_padding()
        part = calibration_part(text)
        if lm.kind == "embedding":  # an encoder sees single sentences: pack them, each with its special tokens
            sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", part) if s.strip()]
            found: list[int] = []
            for start in range(0, len(sentences), 256):  # only as many sentences as the windows need
                found.extend(i for e in tok.encode_batch(sentences[start:start + 256]) for i in e.ids)
                if len(found) >= nsamples * seqlen:
                    break
            ids = np.asarray(found, np.int64)
        else:
            ids = np.asarray(tok.encode(part).ids, np.int64)
        limit = lm.config.get("max_position_embeddings")
    if isinstance(limit, int):
        seqlen = min(seqlen, limit)
    if len(ids) < seqlen:
        if len(ids) < 8:
            raise UsageError(f"the calibration text gives only {len(ids)} tokens", hint="give a longer --calib text")
        return with_special_tokens(tree, ids[None])
    n = min(nsamples, len(ids) // seqlen)
    return with_special_tokens(tree, ids[: n * seqlen].reshape(n, seqlen))


def with_special_tokens(tree: Path, windows: np.ndarray) -> np.ndarray:
    """Windows shaped like an encoder's real inputs: the first and last token replaced by the ones its
    tokenizer puts around every text (BERT's [CLS] … [SEP]), whose activations are the largest.

    Decoders, and tokenizers that add nothing, get the windows unchanged.
    """
    from ptmpack.ir.runner import LoadedModel

    with LoadedModel.open(tree) as lm:
        if lm.kind != "embedding":
            return windows
        enc = lm.tokenizer.encode("")
        around = [i for i, m in zip(enc.ids, enc.attention_mask, strict=True) if m]  # a padding setting may pad it
    out = np.array(windows, np.int64, copy=True)
    if len(around) >= 1 and out.shape[1] >= 3:
        out[:, 0] = around[0]
    if len(around) >= 2 and out.shape[1] >= 3:
        out[:, -1] = around[-1]
    return out


def step_windows(tree: Path, ctx: StepContext, *, nsamples: int = 8, seqlen: int = 128) -> np.ndarray:
    """Calibration windows for a pipeline step: for a decoder the StepContext's own calibration when it
    has one; for an encoder (and without it) :func:`calibration_windows` of ``ctx.spec.calib``.

    Raises:
        UsageError: no calibration text was given.
    """
    spec = ctx.spec
    encoder = read_json(tree, "Model/config.json").get("model_type") == "bert"
    if ctx.calibration is not None and spec.calib is not None and not encoder:
        return with_special_tokens(tree, np.asarray(ctx.calib().windows, np.int64))
    text = step_text(ctx)
    if text is None:
        raise UsageError("this step needs calibration text", hint="give --calib TEXT")
    return calibration_windows(tree, text, nsamples=spec.nsamples or nsamples, seqlen=spec.seqlen or seqlen)


def feeds_for(model: Any, ids: np.ndarray) -> dict[str, np.ndarray]:
    """The executor feeds for ``[batch, seq]`` ids (all-ones mask, zero token types where the model takes them)."""
    feeds = {"input_ids": np.asarray(ids, np.int64)}
    if "attention_mask" in model.inputs:
        feeds["attention_mask"] = np.ones_like(feeds["input_ids"])
    if "token_type_ids" in model.inputs:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    return feeds


@dataclass
class Snapshot:
    """What one model computed on the held-out text."""

    kind: str
    layers: dict[str, np.ndarray]
    metric: float
    embeddings: np.ndarray | None
    size: int
    flops: int


def _layer_outputs(model: Any) -> list[str]:
    """The output variable of each transformer layer: the last operator whose name starts with ``layers.i.``."""
    last: dict[int, str] = {}
    for node in model.main_graph.operators:
        m = _LAYER.match(node.name)
        if m:
            outs = [n for names in node.outputs.values() for n in names]
            last[int(m.group(1))] = outs[0]
    return [last[i] for i in sorted(last)]


def snapshot(tree: Path, text: str | None, *, max_tokens: int = 128) -> Snapshot:
    """Run the tree's model on held-out text and keep what :func:`compare` needs.

    Encoders: the pooled embeddings of the held-out sentences and each layer's output on them.
    Decoders: the perplexity of the first ``max_tokens`` tokens and each layer's output on them.

    Raises:
        PtmError: the tree has no runnable graph or tokenizer.
    """
    from ptmpack.ir.runner import LoadedModel, embed_texts

    ck = Checkpoint.load(tree)
    config = read_json(tree, "Model/config.json")
    size, flops = ck.nbytes(), flops_per_token(ck, config)
    del ck
    lines = held_out_lines(text)
    with LoadedModel.open(tree) as lm:
        names = _layer_outputs(lm.model)
        limit = lm.config.get("max_position_embeddings")
        max_tokens = min(max_tokens, limit) if isinstance(limit, int) and limit > 1 else max_tokens
        if lm.kind == "embedding":
            emb = embed_texts(lm, lines)
            tok = lm.tokenizer
            enc = tok.encode(" ".join(lines[:4]))
            ids = np.asarray([enc.ids[:max_tokens]], np.int64)
            feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            if "token_type_ids" in lm.model.inputs:
                feeds["token_type_ids"] = np.zeros_like(ids)
            layers = lm.executor.run(feeds, names)
            return Snapshot("embedding", layers, 1.0, emb, size, flops)
        from ptmpack.ir.runner import sequence_nll

        ids = np.asarray(lm.encode("\n".join(lines))[:max_tokens], np.int64)[None]
        out = lm.executor.run({"input_ids": ids}, [*names, lm.model.outputs[0]])
        nll, n = sequence_nll(out.pop(lm.model.outputs[0])[0], ids[0])
        return Snapshot("logits", out, float(np.exp(nll / max(n, 1))), None, size, flops)


def measured(step: str, record: dict[str, Any], before: Snapshot, after: Snapshot) -> StepRecord:
    """The step record of a structure step: ``record`` (its ``"method"`` and details) with :func:`compare`'s fields."""
    quality, fields = compare(before, after)
    details = {k: v for k, v in record.items() if k != "method"}
    return StepRecord(step, str(record["method"]), quality, details={**details, **fields})


def compare(before: Snapshot, after: Snapshot) -> tuple[Quality, dict[str, Any]]:
    """The quality change and the report fields shared by every step: sizes, FLOPs, per-layer error rows."""
    rows = []
    for (name, a), b in zip(before.layers.items(), after.layers.values(), strict=False):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        rel = float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(a64), 1e-30)) if a64.shape == b64.shape else None
        rows.append({"layer": name, "relative_error": rel})
    if before.kind == "embedding" and before.embeddings is not None and after.embeddings is not None:
        x, y = before.embeddings.astype(np.float64), after.embeddings.astype(np.float64)
        cos = (x * y).sum(-1) / np.maximum(np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1), 1e-30)
        quality = Quality("embedding_cosine_to_before", 1.0, float(cos.mean()), {"sentences": len(cos)})
    else:
        quality = Quality("perplexity", before.metric, after.metric)
    return quality, {"size_before": before.size, "size_after": after.size, "flops_before": before.flops,
                     "flops_after": after.flops, "layers": rows}
