"""Structure-aware pruning's importance pass, block by block on the package's IR, against the whole transformers model.

The reference (``tests/_support/prune_reference.py``) is how the pass was computed before: every
window through the whole Hugging Face model with the masks in forward pre-hooks. The block-wise pass
must give the same mask gradients and per-sample Fisher rows (float32 summation order aside), and
run what transformers cannot load: a model whose norms ``--fold-norm unified`` replaced.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests._support.struct_models import forward, mask_sites, rel
from tests._support.tiny_models import tiny_tree

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
WINDOWS = np.random.default_rng(5).integers(2, 60, size=(3, 12))


@pytest.mark.parametrize(("kind", "targets"), [("llama", ("heads", "ffn")), ("llama-mha", ("heads", "ffn")),
                                               ("bert", ("heads", "ffn")), ("llama", ("ffn",)), ("bert", ("heads",))])
def test_block_wise_gradients_and_sample_rows_equal_the_whole_transformers_model(tmp_path: Path, kind: str,
                                                                                 targets: tuple[str, ...]) -> None:
    pytest.importorskip("transformers")
    from ptmpack.compress.structure.prune.importance import SCRATCH_PREFIX, importance
    from tests._support.prune_reference import hf_importance

    family = "bert" if kind == "bert" else "llama"
    tree = tiny_tree(tmp_path, kind)
    got = importance(tree, mask_sites(family, targets), WINDOWS, encoder=family == "bert", probes=2, seed=3)
    want = hf_importance(tree / "Model", family, WINDOWS, targets, probes=2, seed=3)
    assert got.units == want.units and got.offset == want.offset
    assert got.samples.shape == want.samples.shape == (len(WINDOWS) * (2 if family == "bert" else 1),
                                                       sum(len(u) for u in want.units.values()))
    scale = np.abs(want.samples).max()
    assert scale > 0 and np.abs(got.samples - want.samples).max() <= 1e-4 * scale
    if family == "bert":
        assert not got.grad.any() and not want.grad.any()
    else:
        assert np.abs(got.grad - want.grad).max() <= 1e-4 * np.abs(want.grad).max()
        np.testing.assert_allclose(got.grad, got.samples.mean(0))
    assert not list(tmp_path.glob(f"{SCRATCH_PREFIX}*"))  # the saved states are removed


def test_per_layer_counts_give_the_peer_rows_of_the_model_with_the_pruned_units_zeroed(tmp_path: Path) -> None:
    """A head- and FFN-pruned BERT (per-layer widths: transformers 5 cannot build it) lists each layer's real
    units, and their rows are the transformers rows of those units in the unpruned model with the removed units'
    outputs zeroed (the same function: a removed unit is a mask held at 0)."""
    pytest.importorskip("transformers")
    from ptmpack.compress.structure.prune.importance import importance
    from ptmpack.compress.structure.prune.step import prune
    from tests._support.prune_reference import hf_importance
    from tests._support.struct_models import bert_tensors, make_tree, zero_pruned_units

    cfg, t = bert_tensors()
    tree = make_tree(tmp_path, cfg, t)
    rec = prune(tree, "both", 0.6, "magnitude")
    heads, ffn = rec["layer_heads"], rec["layer_intermediate_sizes"]
    assert len(set(heads)) > 1 and len(set(ffn)) > 1
    got = importance(tree, mask_sites("bert", ("heads", "ffn")), WINDOWS, encoder=True)
    assert got.units["heads"] == [(i, j) for i, n in enumerate(heads) for j in range(n)]
    assert got.units["ffn"] == [(i, j) for i, n in enumerate(ffn) for j in range(n)]
    assert got.offset == {"heads": 0, "ffn": sum(heads)}
    zeroed = make_tree(tmp_path, cfg, zero_pruned_units(t, rec, 8, bert=True), name="zeroed")
    want = hf_importance(zeroed / "Model", "bert", WINDOWS, ("heads", "ffn"))
    removed = rec["removed_units"]
    kept = [want.offset[g] + u for g in ("heads", "ffn") for u, (layer, j) in enumerate(want.units[g])
            if j not in removed.get(g, {}).get(str(layer), [])]
    assert len(kept) == got.samples.shape[1]
    ref = want.samples[:, kept]
    assert np.abs(got.samples - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize(("kind", "target"), [("llama", "both"), ("bert", "both"), ("llama", "heads")])
def test_structure_pruning_after_unified_norms_equals_zeroing_and_the_package_runs(tmp_path: Path, kind: str,
                                                                                  target: str) -> None:
    """``--fold-norm unified`` leaves a checkpoint transformers cannot load; the importance pass runs it in the IR."""
    from ptmpack.compress.structure.fold_norm import fold_norm
    from ptmpack.compress.structure.prune.step import prune
    from ptmpack.compress.tree.rebuild import MARKER
    from ptmpack.ir.runner import LoadedModel
    from tests._support.struct_models import zero_pruned_units

    tree = tiny_tree(tmp_path, kind)
    fold_norm(tree, "unified", WINDOWS)
    assert MARKER in json.loads((tree / "Model/config.json").read_text())
    zeroed = shutil.copytree(tree, tmp_path / "zeroed")
    rec = prune(tree, target, 0.8, "structure", WINDOWS)
    assert rec["flops_fraction_kept"] <= 0.8 and sum(rec["removed"].values()) > 0
    path = zeroed / "Model/model.safetensors"
    save_file(zero_pruned_units(load_file(str(path)), rec, 16, bert=kind == "bert"), str(path),  # 64 wide, 4 heads
              metadata={"format": "pt"})
    ids = WINDOWS[:2]
    assert rel(forward(zeroed, ids), forward(tree, ids)) < 1e-5
    with LoadedModel.open(tree) as lm:
        kinds = [o.type for o in lm.model.main_graph.operators]
        assert np.isfinite(lm.forward(ids)).all()
    # the norms stay unified: LLaMA's folded away, BERT's post-norms explicit unified_norm operators
    assert "rms_norm" not in kinds if kind == "llama" else kinds.count("unified_norm") > 0


def test_compress_folds_unified_norms_then_prunes_structure_aware_into_a_package_that_runs(tmp_path: Path) -> None:
    """The CLI path: ``compress --fold-norm unified --prune both --prune-method structure --calib`` makes a package."""
    from ptmpack.compress.pipeline import compress
    from ptmpack.compress.spec import CompressSpec
    from ptmpack.config import PackConfig
    from ptmpack.ir.runner import LoadedModel
    from tests._support.tiny_models import sample_text

    calib = tmp_path / "calib.txt"
    calib.write_text(sample_text(3000, seed=5), encoding="utf-8")
    out = tmp_path / "out.ptm"
    spec = CompressSpec(fold_norm="unified", prune="both", flops_budget=0.8, prune_method="structure", calib=calib,
                        nsamples=2, seqlen=32)
    report = compress(tiny_tree(tmp_path, "llama"), out, spec, PackConfig())
    assert [s.step for s in report.steps] == ["fold_norm", "prune"]
    prune_record = report.steps[1].to_json()
    assert prune_record["method"] == "prune_structure", prune_record
    with LoadedModel.open(out) as lm:
        assert np.isfinite(lm.forward(WINDOWS[:1])).all()
