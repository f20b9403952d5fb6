"""Calibration text read in pieces: the ids of the whole text, and memory for the windows only (issue 18, item 15)."""

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
    assert seeded.text_tokens == len(ids)


def test_the_structure_steps_read_a_large_text_by_its_ends(tmp_path: Path) -> None:
    from ptmpack.compress.eval.probe import HEAD_BYTES, TAIL_BYTES, calibration_text, held_out_lines

    path = tmp_path / "big.txt"
    lines = [f"line {i} of the calibration text, long enough to matter." for i in range(400_000)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert path.stat().st_size > 4 * (HEAD_BYTES + TAIL_BYTES)
    text = calibration_text(CompressSpec(quant="rtn", calib=path))
    assert text is not None and len(text.encode()) <= HEAD_BYTES + TAIL_BYTES + 1
    assert text.startswith(lines[0]) and held_out_lines(text) == lines[-16:]
