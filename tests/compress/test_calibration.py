"""Calibration text read in pieces: the ids of the whole text, and memory for the windows only (issue 18, item 15);
calibration never sees the held-out lines the quality check measures on (issue 17)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptmpack.compress.eval import calibration as calibration
from ptmpack.compress.eval.calibration import load_calibration, tokenize_file
from ptmpack.compress.eval.probe import calibration_end, calibration_part, held_out_lines
from ptmpack.compress.spec import CompressSpec
from ptmpack.errors import UsageError
from tests._support.tiny_models import sample_text, tiny_tree

MIXED = "Tab\there,  two spaces, a line\nand\n\nblank lines — ünïcödé 123 4567 don't x.y!  \n   indented"


def _text(words: int) -> str:
    text = sample_text(words, seed=3)
    parts = text.split(". ")
    return ". ".join(p + (f" {MIXED} " if i % 7 == 3 else "") for i, p in enumerate(parts))


def _metaspace_tree(tmp: Path) -> Path:
    """A tree whose tokenizer prepends ``▁`` to every sequence (Metaspace, prepend scheme "always")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator([_text(3000)], trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"],
                                                                show_progress=False))
    (tmp / "Model").mkdir(parents=True)
    tok.save(str(tmp / "Model" / "tokenizer.json"))
    return tmp


@pytest.mark.parametrize("kind", ["byte-level", "metaspace"])
def test_pieces_give_the_ids_of_the_whole_text(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenizers import Tokenizer

    tree = tiny_tree(tmp_path) if kind == "byte-level" else _metaspace_tree(tmp_path / "ms")
    text = _text(6000)
    path = tmp_path / "calib.txt"
    path.write_text(text, encoding="utf-8")
    whole = Tokenizer.from_file(str(tree / "Model" / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    monkeypatch.setattr(calibration, "PIECE_CHARS", 700)  # dozens of pieces
    monkeypatch.setattr(calibration, "READ_BYTES", 999)
    ids, digest = tokenize_file(tree, path)
    assert ids.tolist() == whole
    import hashlib

    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    prefix, _ = tokenize_file(tree, path, limit=500)
    assert 500 <= len(prefix) < len(whole) and prefix.tolist() == whole[: len(prefix)]


def test_a_bad_byte_after_the_windows_is_still_refused(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path)
    path = tmp_path / "calib.txt"
    good = _text(3000).encode("utf-8")
    path.write_bytes(good + b"\xff tail")
    with pytest.raises(UsageError, match=f"not UTF-8 text .* at byte {len(good)}"):
        load_calibration(tree, CompressSpec(quant="gptq", calib=path, nsamples=2, seqlen=16))


MEASURE = """
import json, resource, sys
from pathlib import Path
from ptmpack.compress.eval.calibration import load_calibration
from ptmpack.compress.spec import CompressSpec
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = load_calibration(Path(sys.argv[1]), CompressSpec(quant="gptq", calib=Path(sys.argv[2]), nsamples=4, seqlen=64))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kb": peak - base, "tokens": data.text_tokens, "windows": list(data.windows.shape)}))
"""


def test_a_large_text_costs_only_what_the_windows_need(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path)
    path = tmp_path / "big.txt"
    block = _text(20000)
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < 20_000_000:
            f.write(block)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(tree), str(path)], capture_output=True, text=True,
                          env=env, timeout=300, check=True)
    got = json.loads(proc.stdout)
    assert got["windows"] == [4, 64]
    assert got["tokens"] < 4 * 64 * 1000  # the pieces the windows need, not the 20 MB
    assert got["grew_kb"] < 150_000, f"calibration grew the resident set by {got['grew_kb'] / 1024:.0f} MiB"


def test_windows_are_unchanged_by_reading_in_pieces(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path)
    path = tmp_path / "calib.txt"
    path.write_text(_text(6000), encoding="utf-8")
    ids, _ = tokenize_file(tree, path)
    spec = CompressSpec(quant="gptq", calib=path, nsamples=3, seqlen=32)
    data = load_calibration(tree, spec)
    np.testing.assert_array_equal(data.windows, ids[: 3 * 32].reshape(3, 32))
    seeded = load_calibration(tree, CompressSpec(quant="gptq", calib=path, nsamples=3, seqlen=32, calib_seed=4))
    part, _ = tokenize_file(tree, path, end=calibration_end(path))
    assert seeded.text_tokens == len(part) < len(ids)  # the whole calibration part, not the held-out lines


def test_the_structure_steps_read_a_large_text_by_its_ends(tmp_path: Path) -> None:
    from ptmpack.compress.eval.probe import HEAD_BYTES, TAIL_BYTES, calibration_text, held_out_lines

    path = tmp_path / "big.txt"
    lines = [f"line {i} of the calibration text, long enough to matter." for i in range(400_000)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert path.stat().st_size > 4 * (HEAD_BYTES + TAIL_BYTES)
    text = calibration_text(CompressSpec(quant="rtn", calib=path))
    assert text is not None and len(text.encode()) <= HEAD_BYTES + TAIL_BYTES + 1
    assert text.startswith(lines[0]) and held_out_lines(text) == lines[-16:]


MARKER = "Zanzibarquux"
"""A word the sample text never uses, written into the held-out lines only."""


def _decoded(tree: Path, windows: np.ndarray) -> list[str]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tree / "Model" / "tokenizer.json"))
    return [tok.decode(row.tolist()) for row in windows]


def _marked_lines(lines: int, sentences: int = 3) -> list[str]:
    """``lines`` clean lines of sample text; each of the last 16 holds the marker."""
    text = sample_text(lines * sentences * 9, seed=7).strip()
    parts = text.split(". ")
    rows = [". ".join(parts[i * sentences:(i + 1) * sentences]).strip().rstrip(".") + "." for i in range(lines)]
    return [f"{row[:-1]} {MARKER}." if i >= lines - 16 else row for i, row in enumerate(rows)]


@pytest.mark.parametrize("shape", ["lines", "paragraph", "short"])
@pytest.mark.parametrize("seed", [None, 11])
def test_no_calibration_window_holds_a_held_out_line(tmp_path: Path, shape: str, seed: int | None) -> None:
    """The marker word sits in the held-out lines only: neither the first windows (all the calibration
    part holds) nor seeded random ones (as many as it has tokens) ever contain it."""
    tree = tiny_tree(tmp_path)
    count = 24 if shape == "short" else 60  # 24 lines: the second half (12) is held out
    rows = _marked_lines(count, sentences=1 if shape == "paragraph" else 3)  # a paragraph holds out sentences
    if shape == "short":
        rows = [r.replace(f" {MARKER}", "") for r in rows[:12]] + rows[12:]  # marker in the held-out half only
    text = " ".join(rows) + "\n" if shape == "paragraph" else "\n".join(rows) + "\n"
    path = tmp_path / "calib.txt"
    path.write_text(text, encoding="utf-8")
    held = held_out_lines(text)
    assert len(held) == (12 if shape == "short" else 16) and all(MARKER in h for h in held)
    assert MARKER not in calibration_part(text)
    ids, _ = tokenize_file(tree, path)
    part, _ = tokenize_file(tree, path, end=calibration_end(path))
    seqlen = 16
    spec = CompressSpec(quant="gptq", calib=path, nsamples=len(part) if seed else len(part) // seqlen,
                        seqlen=seqlen, calib_seed=seed)
    data = load_calibration(tree, spec)
    assert data.text_tokens == len(part) < len(ids)
    assert MARKER in "".join(_decoded(tree, ids[None]))  # the tokenizer can spell the marker
    assert not any(MARKER in w for w in _decoded(tree, data.windows))
    if seed is None:  # the first windows run up to the end of the calibration part
        np.testing.assert_array_equal(data.windows.ravel(), part[: data.windows.size])
        assert data.windows.size > len(part) - seqlen
    else:  # every random window is a slice of the calibration part's ids
        slices = {tuple(w) for w in np.lib.stride_tricks.sliding_window_view(part, seqlen).tolist()}
        assert all(tuple(w) in slices for w in data.windows.tolist())


def test_the_calibration_part_is_tokenized_as_calibration_part_gives_it(tmp_path: Path) -> None:
    """For clean lines (no blank lines, no spaces around them) the file up to the calibration end is
    calibration_part(text): its ids are those of calibration_part tokenized whole."""
    from tokenizers import Tokenizer

    tree = tiny_tree(tmp_path)
    tok = Tokenizer.from_file(str(tree / "Model" / "tokenizer.json"))
    for count in (60, 20):
        text = "\n".join(_marked_lines(count)) + "\n"
        path = tmp_path / f"calib{count}.txt"
        path.write_text(text, encoding="utf-8")
        end = calibration_end(path)
        assert text[:end] == calibration_part(text)
        part, _ = tokenize_file(tree, path, end=end)
        assert part.tolist() == tok.encode(calibration_part(text), add_special_tokens=False).ids


def test_a_large_text_stops_before_its_held_out_lines(tmp_path: Path) -> None:
    """A file read by its ends: the calibration end falls in the tail, before the last 16 lines."""
    from ptmpack.compress.eval.probe import HEAD_BYTES, TAIL_BYTES

    lines = [f"line {i} of the calibration text, long enough to matter." for i in range(200_000)]
    path = tmp_path / "big.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert path.stat().st_size > HEAD_BYTES + TAIL_BYTES
    data = path.read_bytes()
    end = calibration_end(path)
    assert data[:end].decode() == "\n".join(lines[:-16])


def test_a_text_all_held_out_is_refused_with_the_reason(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path)
    path = tmp_path / "calib.txt"
    path.write_text("\n".join(_marked_lines(4)) + "\n", encoding="utf-8")
    part, _ = tokenize_file(tree, path, end=calibration_end(path))
    with pytest.raises(UsageError, match=f"held-out lines .* excluded .* has {len(part)} tokens, fewer than one"):
        load_calibration(tree, CompressSpec(quant="gptq", calib=path, nsamples=2, seqlen=4 * len(part) + 64))


@pytest.mark.parametrize("paragraph", [False, True])
def test_calibration_part_and_held_out_lines_split_every_text_in_two(paragraph: bool) -> None:
    """Every line (or sentence) is either calibration or held out, never both: the last 16, or the
    second half of a text of at most 32."""
    for count in range(1, 40):
        rows = [f"Sentence {i} of the text." for i in range(count)]
        text = (" " if paragraph else "\n  \n").join(rows)
        part, held = calibration_part(text), held_out_lines(text)
        calib = part.split("\n") if part else []
        assert calib + held == rows
        assert len(held) == (16 if count > 32 else count - count // 2)


def test_the_text_is_read_once_for_the_held_out_lines_and_the_calibration_end(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """held_out (the quality check), calibration_end (the windows) and the structure steps' text all read
    the file's ends; they are read from disk once, and again after the file changes."""
    import builtins

    from ptmpack.compress.eval.probe import calibration_text
    from ptmpack.compress.eval.quality import held_out

    path = tmp_path / "calib.txt"
    path.write_text("\n".join(f"line {i} of the text." for i in range(60)) + "\n", encoding="utf-8")
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file: object, *args: object, **kwargs: object) -> object:
        if str(file) == str(path):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", counting_open)
    spec = CompressSpec(quant="gptq", calib=path)
    lines = held_out(spec).lines
    end = calibration_end(path)
    text = calibration_text(spec)
    assert len(opened) == 1
    assert lines[0] == "line 44 of the text." and text is not None and path.read_bytes()[:end].decode() == \
        "\n".join(f"line {i} of the text." for i in range(44))
    path.write_text("one other line.\nand a second.\n", encoding="utf-8")
    opened.clear()
    assert held_out(CompressSpec(quant="gptq", calib=path)).lines == ("and a second.",)
    assert len(opened) == 1  # the changed file is read again
