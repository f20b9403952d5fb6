"""Calibration windows from a text file, tokenized by the package's own tokenizer.

Deterministic by default: the first ``nsamples`` consecutive ``seqlen``-token windows of
the text (no special tokens added, so windows are plain text and a peer tool fed the same
ids sees the same tokens). ``--calib-seed S`` draws the window starts at random instead
(numpy's PCG64 with seed ``S``). The tokens after the last consecutive window, when there
are any, are kept back for the before/after quality check.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ptmpack.compress.context import CalibrationData
from ptmpack.compress.spec import CompressSpec
from ptmpack.errors import UsageError

TOKENIZER = "Model/tokenizer.json"


def tokenize_file(tree: Path, text_file: Path) -> tuple[list[int], str]:
    """Token ids of ``text_file`` by ``tree``'s tokenizer (no special tokens) and the file's sha256.

    Raises:
        UsageError: a missing or non-UTF-8 file, no tokenizer in the package, or no ``tokenizers``.
    """
    try:
        raw = Path(text_file).read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{text_file}: no such calibration file") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{text_file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
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
    return list(tok.encode(text, add_special_tokens=False).ids), hashlib.sha256(raw).hexdigest()


def windows_of(ids: list[int], nsamples: int, seqlen: int, seed: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(nsamples, seqlen)`` windows and the held-out tail (None when nothing is left).

    Raises:
        UsageError: the text is shorter than one window.
    """
    arr = np.asarray(ids, dtype=np.int64)
    available = len(arr) // seqlen
    if available < 1:
        raise UsageError(f"the calibration text has {len(arr)} tokens, fewer than one --seqlen {seqlen} window")
    if seed is None:
        n = min(nsamples, available)
        windows = arr[: n * seqlen].reshape(n, seqlen)
        tail = arr[n * seqlen: (n + 1) * seqlen]
        return windows, (tail if len(tail) >= 2 else None)
    starts = np.random.default_rng(seed).integers(0, len(arr) - seqlen + 1, size=nsamples)
    return np.stack([arr[s:s + seqlen] for s in starts]), None


def load_calibration(tree: Path, spec: CompressSpec) -> CalibrationData:
    """The calibration windows ``spec`` asks for, from ``spec.calib`` and the tree's tokenizer.

    Raises:
        UsageError: no ``--calib`` file, or see :func:`tokenize_file` and :func:`windows_of`.
    """
    if spec.calib is None:
        raise UsageError("this step needs calibration text", hint="give --calib TEXTFILE")
    ids, digest = tokenize_file(tree, spec.calib)
    windows, held = windows_of(ids, spec.nsamples, spec.seqlen, spec.calib_seed)
    selection = "first" if spec.calib_seed is None else f"random:{spec.calib_seed}"
    return CalibrationData(windows, digest, len(ids), Path(spec.calib).name, selection, held)
