"""Every combination of a structure step and a quantizer that makes sense runs; the others are refused with their reason.

The table is docs/COMPRESSION.md "Combinations". Tiny random models (no quality claim): each
package that is produced must run in the IR and give finite outputs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptmpack.compress.pipeline import compress
from ptmpack.compress.spec import CompressSpec
from ptmpack.config import PackConfig
from ptmpack.errors import UnsupportedError
from ptmpack.ir.runner import LoadedModel
from tests._support.tiny_models import sample_text, tiny_tree

FOLD_AFFINE = {"fold_norm": "affine"}
FOLD_UNIFIED = {"fold_norm": "unified"}
PRUNE_FFN = {"prune": "ffn", "flops_budget": 0.8, "prune_method": "magnitude"}
PRUNE_HEADS = {"prune": "heads", "flops_budget": 0.8, "prune_method": "magnitude"}
PRUNE_FFN_STRUCTURE = {"prune": "ffn", "flops_budget": 0.8, "prune_method": "structure"}
PRUNE_HEADS_STRUCTURE = {"prune": "heads", "flops_budget": 0.8, "prune_method": "structure"}
PRUNE_QUERY_HEADS = {"prune": "query-heads", "flops_budget": 0.9, "prune_method": "magnitude"}

RUNS = [
    ("llama", FOLD_AFFINE, "rtn"), ("llama", FOLD_AFFINE, "gptq"),
    ("llama", FOLD_UNIFIED, "rtn"), ("llama", FOLD_UNIFIED, "gptq"),
    ("llama", PRUNE_FFN, "rtn"), ("llama", PRUNE_FFN, "gptq"),
    ("bert", PRUNE_FFN, "rtn"), ("bert", PRUNE_FFN, "gptq"),
    ("bert", PRUNE_HEADS, "rtn"), ("bert", PRUNE_HEADS, "gptq"),
    ("bert", FOLD_UNIFIED, "rtn"), ("bert", FOLD_UNIFIED, "gptq"),
    ("llama", PRUNE_HEADS, "rtn"), ("llama", PRUNE_HEADS, "gptq"),
    ("llama-mha", PRUNE_HEADS, "rtn"), ("llama-mha", PRUNE_HEADS, "gptq"),
    ("llama", PRUNE_QUERY_HEADS, "rtn"), ("llama", PRUNE_QUERY_HEADS, "gptq"),
]
TORCH_RUNS = [("llama", FOLD_AFFINE, "affine"), ("llama", FOLD_UNIFIED, "affine"), ("llama", PRUNE_FFN, "affine"),
              ("llama", FOLD_AFFINE, "ptq"),
              ("llama", PRUNE_FFN_STRUCTURE, "gptq"), ("bert", PRUNE_FFN_STRUCTURE, "rtn"), ("bert", {}, "ptq"),
              ("llama", PRUNE_HEADS, "affine"), ("llama", PRUNE_HEADS, "ptq"), ("llama", PRUNE_HEADS_STRUCTURE, "rtn"),
              ("llama-mha", PRUNE_HEADS, "affine"), ("llama-mha", PRUNE_HEADS, "ptq"),
              ("llama", PRUNE_QUERY_HEADS, "affine"), ("llama", PRUNE_QUERY_HEADS, "ptq"),
              ("llama", FOLD_UNIFIED, "ptq"), ("llama", PRUNE_FFN, "ptq"), ("bert", PRUNE_HEADS, "ptq"),
              ("bert", PRUNE_FFN, "ptq"), ("bert", FOLD_UNIFIED, "ptq"),
              ("llama", {**FOLD_UNIFIED, **PRUNE_FFN_STRUCTURE}, "rtn"), ("bert", {**FOLD_UNIFIED, **PRUNE_HEADS_STRUCTURE}, "ptq")]
REFUSED = [
    ("bert", FOLD_AFFINE, "rtn", "no normalization can be folded exactly"),
    # without PyTorch, AffineQuant is refused for that first (the no-torch CI pass)
    pytest.param("bert", PRUNE_HEADS, "affine", "decoder", marks=[pytest.mark.torch, pytest.mark.skipif(
        importlib.util.find_spec("torch") is None, reason="needs PyTorch (pip install 'ptmpack[torch]')")]),
    ("bert", PRUNE_QUERY_HEADS, "rtn", "own keys and values"),
]


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compose")
    return {kind: tiny_tree(root / kind, kind) for kind in ("llama", "llama-mha", "bert")}


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(sample_text(3000, seed=5), encoding="utf-8")
    return path


def _spec(pre: dict[str, Any], quant: str, calib: Path) -> CompressSpec:
    return CompressSpec(quant=quant, bits=4, calib=calib, nsamples=2, seqlen=32, epochs=1, **pre)


def _runs(trees: dict[str, Path], kind: str, pre: dict[str, Any], quant: str, calib: Path, tmp: Path) -> None:
    out = tmp / "out.ptm"
    report = compress(trees[kind], out, _spec(pre, quant, calib), PackConfig())
    assert [s.step for s in report.steps] == [*(k for k in ("fold_norm", "prune") if k in pre), "quant"]
    # the calibration text is one paragraph: the structure steps hold its last sentences out
    with LoadedModel.open(out) as lm:
        ops = {o.type for o in lm.model.main_graph.operators}
        y = lm.forward((np.arange(12) % 50)[None])
    assert np.isfinite(y).all() and "quantized_linear" in ops


@pytest.mark.parametrize(("kind", "pre", "quant"), RUNS, ids=lambda v: str(v))
def test_the_combination_runs(trees: dict[str, Path], calib: Path, tmp_path: Path,
                              kind: str, pre: dict[str, Any], quant: str) -> None:
    _runs(trees, kind, pre, quant, calib, tmp_path)


@pytest.mark.torch
@pytest.mark.parametrize(("kind", "pre", "quant"), TORCH_RUNS, ids=lambda v: str(v))
def test_the_combination_runs_with_torch(trees: dict[str, Path], calib: Path, tmp_path: Path,
                                         kind: str, pre: dict[str, Any], quant: str) -> None:
    pytest.importorskip("torch")  # the learned steps train on the IR in torch; transformers is not needed
    _runs(trees, kind, pre, quant, calib, tmp_path)


@pytest.mark.parametrize(("kind", "pre", "quant", "reason"), REFUSED, ids=lambda v: str(v))
def test_the_combination_is_refused_with_its_reason(trees: dict[str, Path], calib: Path, tmp_path: Path,
                                                    kind: str, pre: dict[str, Any], quant: str, reason: str) -> None:
    with pytest.raises(UnsupportedError, match=reason) as err:
        compress(trees[kind], tmp_path / "out.ptm", _spec(pre, quant, calib), PackConfig())
    assert err.value.exit_code == 6 and not (tmp_path / "out.ptm").exists()
