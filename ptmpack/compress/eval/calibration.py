"""Calibration windows from a text file, tokenized by the package's own tokenizer.

Deterministic by default: the first ``nsamples`` consecutive ``seqlen``-token windows of
the text (no special tokens added, so windows are plain text and a peer tool fed the same
ids sees the same tokens). ``--calib-seed S`` draws the window starts at random instead
(numpy's PCG64 with seed ``S``). Both draw only from the file's calibration part, which ends
where its held-out lines begin (:func:`ptmpack.compress.eval.probe.calibration_end`): the
quality check measures on those lines (:mod:`ptmpack.compress.eval.quality`, the same text for
every method), so calibration and evaluation text never overlap.

The file is read and tokenized in pieces (:data:`PIECE_CHARS` characters), never whole: a
``tokenizers`` encoding keeps offsets and masks per token, so a 20 MB text cost 3.5 GiB. Each
piece ends just before a single space between two non-space characters — a place where every
pre-tokenizer in use (byte-level BPE, Metaspace, whitespace/WordPiece) splits anyway — and is
tokenized with a lead-in of the previous piece's last :data:`LEAD_CHARS` characters whose
tokens are dropped, so that what a tokenizer does at the start of a sequence (a prepended
``▁``) happens in the lead-in: the ids are those of the whole text tokenized at once (the tests
compare them). For the consecutive windows only the pieces the windows need are tokenized; the
rest of the file (the held-out lines included) is still read, in blocks, to hash it and check it
is UTF-8. Random windows need the whole calibration part's ids (int32, 4 bytes a token).
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.eval.probe import HELD_OUT, calibration_end
from ptmpack.compress.spec import CompressSpec
from ptmpack.compress.step import CalibrationData
from ptmpack.errors import UsageError

TOKENIZER = "Model/tokenizer.json"
READ_BYTES = 1 << 20
"""Bytes read from the calibration file at a time."""
PIECE_CHARS = 1 << 18
"""Characters tokenized at a time (about; a piece ends at the first split point after this many)."""
LEAD_CHARS = 256
"""Characters of the previous piece tokenized again in front of the next one, their tokens dropped."""
_SPLIT = re.compile(r"(?<=\S) (?=\S)")
"""A single space between two non-space characters: every pre-tokenizer splits before it."""


def _tokenizer(tree: Path) -> Any:
    tok_path = Path(tree) / TOKENIZER
    if not tok_path.is_file():
        raise UsageError(f"the package carries no {TOKENIZER} to tokenize the calibration text with")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UsageError("tokenizing calibration text needs the 'tokenizers' package", hint="pip install tokenizers") from None
    tok = Tokenizer.from_file(str(tok_path))
    tok.no_truncation()
    tok.no_padding()
    return tok


def _text_blocks(text_file: Path, digest: Any, end: int | None = None) -> Iterator[str]:
    """The file's text in decoded blocks, every byte hashed into ``digest``.

    With ``end`` (a byte offset at a character boundary), only the text before it is yielded; the
    rest is still read, hashed and checked, yielding nothing (the caller drains the iterator).

    Raises:
        UsageError: a missing or non-UTF-8 file.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    consumed = 0
    try:
        with open(text_file, "rb") as f:
            while True:
                raw = f.read(READ_BYTES)
                digest.update(raw)
                pending = len(decoder.getstate()[0])
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as exc:
                    raise UsageError(f"{text_file}: not UTF-8 text ({exc.reason} at byte "
                                     f"{consumed - pending + exc.start})") from None
                if end is not None:  # the decoded text holds the bytes [consumed - pending, ...)
                    keep = end - (consumed - pending)
                    if keep <= 0:
                        text = ""
                    elif keep < pending + len(raw):
                        text = text.encode("utf-8")[:keep].decode("utf-8")
                consumed += len(raw)
                if text:
                    yield text
                if not raw:
                    return
    except FileNotFoundError:
        raise UsageError(f"{text_file}: no such calibration file") from None


def _pieces(blocks: Iterator[str]) -> Iterator[tuple[str, int]]:
    """``(text, lead)``: pieces of the text, each after a ``lead``-character repeat of the previous one's end."""
    buffer, lead = "", ""
    for block in blocks:
        buffer += block
        while len(buffer) > PIECE_CHARS:
            cut = _SPLIT.search(buffer, PIECE_CHARS)
            if cut is None or cut.start() + 1 >= len(buffer):  # no split point yet (or one that may not be): read on
                break
            piece, buffer = buffer[: cut.start()], buffer[cut.start():]
            yield lead + piece, len(lead)
            lead = _lead(piece)
    if buffer:
        yield lead + buffer, len(lead)


def _lead(piece: str) -> str:
    """The end of ``piece`` from a split point at least :data:`LEAD_CHARS` before its end ("" if none)."""
    cuts = [m.start() for m in _SPLIT.finditer(piece, max(0, len(piece) - 4 * LEAD_CHARS),
                                               max(0, len(piece) - LEAD_CHARS))]
    return piece[cuts[-1]:] if cuts else ""


def tokenize_file(tree: Path, text_file: Path, limit: int | None = None, *,
                  end: int | None = None) -> tuple[np.ndarray, str]:
    """Token ids of ``text_file`` by ``tree``'s tokenizer (no special tokens) and the file's sha256.

    With ``end``, only the text before byte ``end`` is tokenized (calibration passes
    :func:`~ptmpack.compress.eval.probe.calibration_end`). With ``limit``, tokenizing stops once at
    least ``limit`` ids are known: the ids are then a prefix of the text's ids. Either way the file
    is still hashed and checked whole.

    Raises:
        UsageError: a missing or non-UTF-8 file, no tokenizer in the package, or no ``tokenizers``.
    """
    tok = _tokenizer(tree)
    digest = hashlib.sha256()
    blocks = _text_blocks(Path(text_file), digest, end)
    parts: list[np.ndarray] = []
    count = 0
    for text, lead in _pieces(blocks):
        enc = tok.encode(text, add_special_tokens=False)
        ids = np.asarray(enc.ids, np.int32)
        if lead:
            ids = ids[np.fromiter((start >= lead for start, _ in enc.offsets), bool, len(ids))]
        parts.append(ids)
        count += len(ids)
        del enc
        if limit is not None and count >= limit:
            break
    for _ in blocks:  # hash (and check) the rest of the file
        pass
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    return ids.astype(np.int64), digest.hexdigest()


def windows_of(ids: list[int] | np.ndarray, nsamples: int, seqlen: int, seed: int | None, *,
               what: str = "the calibration text") -> np.ndarray:
    """``(nsamples, seqlen)`` windows: the first ones, or with ``seed`` at random starts.

    Raises:
        UsageError: the text (``what``, named in the message) is shorter than one window.
    """
    arr = np.asarray(ids, dtype=np.int64)
    available = len(arr) // seqlen
    if available < 1:
        raise UsageError(f"{what} has {len(arr)} tokens, fewer than one --seqlen {seqlen} window",
                         hint="give a longer --calib text or a smaller --seqlen")
    if seed is None:
        n = min(nsamples, available)
        return arr[: n * seqlen].reshape(n, seqlen)
    starts = np.random.default_rng(seed).integers(0, len(arr) - seqlen + 1, size=nsamples)
    return np.stack([arr[s:s + seqlen] for s in starts])


def load_calibration(tree: Path, spec: CompressSpec) -> CalibrationData:
    """The calibration windows ``spec`` asks for, from ``spec.calib`` and the tree's tokenizer.

    Only the file's calibration part is tokenized: it stops where the held-out lines the quality
    check measures on begin (:func:`~ptmpack.compress.eval.probe.calibration_end`), and
    ``text_tokens`` counts the tokens of that part that were tokenized.

    Raises:
        UsageError: no ``--calib`` file, or see :func:`tokenize_file` and :func:`windows_of`.
    """
    if spec.calib is None:
        raise UsageError("this step needs calibration text", hint="give --calib TEXTFILE")
    limit = None if spec.calib_seed is not None else spec.nsamples * spec.seqlen
    ids, digest = tokenize_file(tree, spec.calib, limit, end=calibration_end(spec.calib))
    what = ("the calibration part of --calib (the held-out lines the quality check measures on, the last "
            f"{HELD_OUT} or the second half of a short text, are excluded from calibration)")
    windows = windows_of(ids, spec.nsamples, spec.seqlen, spec.calib_seed, what=what)
    selection = "first" if spec.calib_seed is None else f"random:{spec.calib_seed}"
    return CalibrationData(windows, digest, len(ids), Path(spec.calib).name, selection)
