"""The structure steps' calibration: the text of ``--calib`` (head and tail of a large file), its
calibration part (without the held-out lines :mod:`ptmpack.compress.eval.quality` measures on),
and token windows of it shaped like the model's real inputs.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.spec import CompressSpec
from ptmpack.compress.step import StepContext
from ptmpack.compress.tree.checkpoint import read_json
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

HEAD_BYTES = 4 << 20
"""At most this much of the start of a calibration file is read for the structure steps' windows."""
TAIL_BYTES = 64 << 10
"""The end of the file read for the held-out lines (when the file is larger than the head)."""


def _read_ends(calib: Path) -> tuple[bytes, bytes, int]:
    """``(head, tail, tail_at)``: the whole file as ``head`` (``tail`` empty) when it is at most
    :data:`HEAD_BYTES` + :data:`TAIL_BYTES`, else its first ``HEAD_BYTES`` cut at a line end and its
    last ``TAIL_BYTES`` from the first line start in them, which begins at byte ``tail_at``.
    """
    with open(calib, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= HEAD_BYTES + TAIL_BYTES:
            whole = f.read()
            return whole, b"", len(whole)
        head = f.read(HEAD_BYTES)
        f.seek(size - TAIL_BYTES)
        tail = f.read()
    head = head[: head.rfind(b"\n") + 1]  # whole lines only (a line end is never inside a UTF-8 character)
    cut = tail.find(b"\n") + 1
    return head, tail[cut:], size - TAIL_BYTES + cut


def _decode_ends(calib: Path) -> tuple[str, str, int]:
    """:func:`_read_ends` decoded: ``(head, tail, tail_at)``; the file is read once per run (the held-out
    text, the end of the calibration part and the structure steps' text all start here), again only
    when it changed (its size or modification time).

    Raises:
        UsageError: the file cannot be read as UTF-8 text (the message names the first bad byte).
    """
    try:
        st = os.stat(calib)
    except OSError as exc:
        raise UsageError(f"{calib}: cannot read the text ({exc})") from None
    return _decode_ends_of(str(calib), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _decode_ends_of(calib: str, size: int, mtime_ns: int) -> tuple[str, str, int]:
    """:func:`_decode_ends` of one version of the file (``size`` and ``mtime_ns`` are the cache key)."""
    try:
        head, tail, tail_at = _read_ends(Path(calib))
    except OSError as exc:
        raise UsageError(f"{calib}: cannot read the text ({exc})") from None
    for raw, at in ((head, 0), (tail, tail_at)):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"{calib}: not UTF-8 text ({exc.reason} at byte {at + exc.start})") from None
    return head.decode("utf-8"), tail.decode("utf-8"), tail_at


def calibration_text(spec: CompressSpec) -> str | None:
    """The text of ``spec.calib``, or None when the run was given none.

    A file larger than :data:`HEAD_BYTES` + :data:`TAIL_BYTES` is not read whole: its first
    ``HEAD_BYTES`` (cut at a line end) for the calibration windows and its last :data:`TAIL_BYTES`
    lines for the held-out lines, joined by a newline.

    Raises:
        UsageError: the file cannot be read as UTF-8 text.
    """
    if spec.calib is None:
        return None
    head, tail, _ = _decode_ends(Path(spec.calib))
    return head + "\n" + tail if tail else head


def calibration_end(calib: Path) -> int:
    """The byte offset in ``calib`` where its calibration part ends: the end of the last line (or
    sentence) of :func:`calibration_part` of :func:`calibration_text`, so that everything from it on
    — the :func:`held_out_lines` the quality check measures on — is never calibrated on.

    Reads what :func:`calibration_text` reads (at most ``HEAD_BYTES + TAIL_BYTES``), never the whole
    of a large file. ``calib[:end]`` is exactly ``calibration_part(text)`` when the text's lines are
    newline-separated with no blank lines and no spaces around them.

    Raises:
        UsageError: the file cannot be read as UTF-8 text.
    """
    head, tail, tail_at = _decode_ends(Path(calib))
    text = head + "\n" + tail if tail else head
    end = _calibration_end_char(text)
    if end <= len(head):
        return len(head[:end].encode("utf-8"))
    return tail_at + len(tail[: end - len(head) - 1].encode("utf-8"))


HELD_OUT = 16
"""How many of the text's last non-empty lines are held out of calibration and used for the quality report."""


def _spans(text: str) -> list[tuple[int, int]]:
    """Where each non-empty line of ``text`` lies, spaces around it excluded (``text[a:b]`` is the
    stripped line); a text on one line (a paragraph) gives its sentences instead.
    """
    spans: list[tuple[int, int]] = []
    at = 0
    for line in text.splitlines(keepends=True):  # line ends are whitespace, so strip() drops them too
        if line.strip():
            start = at + len(line) - len(line.lstrip())
            spans.append((start, at + len(line.rstrip())))
        at += len(line)
    if len(spans) == 1:
        start, end = spans[0]
        spans, at = [], start
        for sep in [*re.finditer(r"(?<=[.!?])\s+", text[start:end]), None]:
            stop = start + sep.start() if sep else end
            piece = text[at:stop]
            if piece.strip():
                spans.append((at + len(piece) - len(piece.lstrip()), at + len(piece.rstrip())))
            at = start + sep.end() if sep else end
    return spans


def _calibration_lines(count: int) -> int:
    """How many of a text's ``count`` lines are calibration (the first ones); the rest are held out:
    the last :data:`HELD_OUT`, or the second half of a text of at most ``2 * HELD_OUT`` lines."""
    return count - HELD_OUT if count > 2 * HELD_OUT else count // 2


def _calibration_end_char(text: str) -> int:
    """The index in ``text`` where its calibration part ends (0 when it has none)."""
    spans = _spans(text)
    n = _calibration_lines(len(spans))
    return spans[n - 1][1] if n else 0


def held_out_lines(text: str | None) -> list[str]:
    """The held-out sentences the quality check measures on: the lines of ``text`` after its
    :func:`calibration_part` (the last :data:`HELD_OUT`, or the second half of a short text), or,
    without a text, all the built-in sentences (nothing calibrates on them)."""
    if not text:
        return [DEFAULT_TEXT[a:b] for a, b in _spans(DEFAULT_TEXT)]
    spans = _spans(text)
    return [text[a:b] for a, b in spans[_calibration_lines(len(spans)):]]


def calibration_part(text: str) -> str:
    """``text`` without its held-out lines (what calibration may see): its calibration lines joined by newlines."""
    spans = _spans(text)
    return "\n".join(text[a:b] for a, b in spans[: _calibration_lines(len(spans))])


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
            return with_special_tokens(lm, ids[None])
        n = min(nsamples, len(ids) // seqlen)
        return with_special_tokens(lm, ids[: n * seqlen].reshape(n, seqlen))


def with_special_tokens(lm: Any, windows: np.ndarray) -> np.ndarray:
    """Windows shaped like an encoder's real inputs: the first and last token replaced by the ones its
    tokenizer puts around every text (BERT's [CLS] … [SEP]), whose activations are the largest.

    ``lm`` is the open package (a ``LoadedModel``). Decoders, and tokenizers that add nothing, get
    the windows unchanged.
    """
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
    if ctx.calibration is not None and spec.calib is not None and not encoder:  # a decoder's windows are plain text
        return np.asarray(ctx.calib().windows, np.int64)
    text = calibration_text(spec)
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
