"""The IR run in torch, block by block, computes what the numpy executor computes, and gradients flow through it.

What PTQ and structure-aware pruning train on (:mod:`ptmpack.compress.eval.torch_span`); the
models include the shapes earlier steps leave that transformers cannot load: unified norms
(an explicit ``unified_norm`` in BERT) and a LLaMA with per-layer FFN widths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ptmpack.compress.eval.blocks import BlockRunner, plan_blocks
from ptmpack.compress.eval.probe import feeds_for
from ptmpack.compress.quant.linear import find_targets, load_model
from ptmpack.compress.tree.weights import WeightFiles
from ptmpack.errors import UnsupportedError
from tests._support.tiny_models import tiny_tree

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
IDS = np.random.default_rng(0).integers(2, 50, (3, 16))


def _unified_bert(tmp: Path) -> Path:
    from ptmpack.compress.structure.fold_norm import fold_norm

    tree = tiny_tree(tmp, "bert")
    fold_norm(tree, "unified", IDS)
    return tree


def _pruned_llama(tmp: Path) -> Path:
    from ptmpack.compress.structure.prune.step import prune

    tree = tiny_tree(tmp, "llama")
    prune(tree, "ffn", 0.8, "magnitude")
    return tree


MAKERS = {"llama": lambda t: tiny_tree(t, "llama"), "bert": lambda t: tiny_tree(t, "bert"),
          "gpt2": lambda t: tiny_tree(t, "gpt2"), "bert-unified": _unified_bert, "llama-ffn-pruned": _pruned_llama}


@pytest.fixture(scope="module", params=list(MAKERS))
def tree(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return MAKERS[request.param](tmp_path_factory.mktemp(request.param))


def _runner(tree: Path) -> tuple[BlockRunner, list]:
    model = load_model(tree)
    blocks = plan_blocks(model, [t.weight for t in find_targets(model)])
    return BlockRunner(model, WeightFiles(tree / "Model"), feeds_for(model, IDS), blocks), blocks


def test_every_block_and_the_epilogue_match_the_numpy_executor(tree: Path) -> None:
    from ptmpack.compress.eval.torch_span import TorchSpan, as_torch

    runner, blocks = _runner(tree)
    ex = runner.executor
    ops = ex.model.main_graph.operators
    kinds = {o.type for o in ops}
    if "unified" in str(tree):
        assert "unified_norm" in kinds  # BERT's post-norms stay explicit operators
    for block, (start, stop) in [*((b, (b.start, b.stop)) for b in blocks), (None, (blocks[-1].stop, len(ops)))]:
        live = ex.live_at(stop)
        params = runner.params(start, stop)
        state = runner.state[0]
        want = ex.run_span(start, stop, state, live, params)
        got = TorchSpan(ex, start, stop).run({k: as_torch(v) for k, v in state.items()},
                                             {k: as_torch(v) for k, v in params.items()}, live)
        for n in live:
            if want[n].dtype.kind == "f":
                np.testing.assert_allclose(got[n].numpy(), want[n], rtol=1e-5, atol=1e-5 * np.abs(want[n]).max())
        if block is not None:
            runner.advance(block, params)


def test_a_swapped_linear_replaces_the_operator_and_gradients_reach_its_mask(tmp_path: Path) -> None:
    from ptmpack.compress.eval.torch_span import TorchSpan, as_torch

    runner, blocks = _runner(tiny_tree(tmp_path, "llama"))
    b = blocks[0]
    params = {k: as_torch(v) for k, v in runner.params(b.start, b.stop).items()}
    state = {k: as_torch(v) for k, v in runner.state[0].items()}
    live = runner.executor.live_at(b.stop)
    out = next(n for n in live if n != "position_ids")  # the residual stream
    span = TorchSpan(runner.executor, b.start, b.stop)
    plain = span.run(state, params, live)[out]
    down = next(u.weight for u in b.uses if "down_proj" in u.weight)
    mask = torch.ones(params[down].shape[1], requires_grad=True)
    masked = span.run(state, params, live, swap={down: lambda x, w, bias: torch.nn.functional.linear(x * mask, w, bias)})
    torch.testing.assert_close(masked[out], plain)  # a mask of ones changes nothing
    masked[out].square().sum().backward()
    assert mask.grad is not None and mask.grad.abs().sum() > 0
    zero = span.run(state, params, live, swap={down: lambda x, w, bias: torch.zeros(*x.shape[:-1], w.shape[0])})
    assert not torch.allclose(zero[out], plain)


def test_an_operator_without_a_torch_kernel_is_refused_by_name(tmp_path: Path) -> None:
    from ptmpack.compress.eval import torch_span

    runner, blocks = _runner(tiny_tree(tmp_path, "llama"))
    saved = torch_span.KERNELS.pop("silu")
    try:
        with pytest.raises(UnsupportedError, match=r"'silu'.*no torch kernel"):
            torch_span.TorchSpan(runner.executor, blocks[0].start, blocks[0].stop)
    finally:
        torch_span.KERNELS["silu"] = saved


def test_padded_sentences_of_an_encoder_batch_compute_what_each_computes_alone(tmp_path: Path) -> None:
    """PTQ calibrates an encoder on padded batches of sentences: the mask is a model input of the IR, so real
    tokens never attend to padding (the transformers path it replaced lost the mask after its first layer)."""
    from ptmpack.compress.eval.torch_span import TorchSpan, as_torch

    tree = tiny_tree(tmp_path, "bert")
    model = load_model(tree)
    blocks = plan_blocks(model, [t.weight for t in find_targets(model)])
    long, short = np.arange(2, 12), np.arange(20, 25)
    padded = np.zeros((2, 10), np.int64)
    padded[0], padded[1, :5] = long, short
    valid = padded > 0

    def outputs(ids: np.ndarray, keep: np.ndarray) -> np.ndarray:
        feed = feeds_for(model, ids)
        feed["attention_mask"] = keep.astype(np.int64)
        runner = BlockRunner(model, WeightFiles(tree / "Model"), [feed], blocks)
        state = {k: as_torch(v) for k, v in runner.state[0].items()}
        for b in blocks:
            params = {k: as_torch(v) for k, v in runner.params(b.start, b.stop).items()}
            state = TorchSpan(runner.executor, b.start, b.stop).run(state, params, runner.executor.live_at(b.stop))
        return state[model.outputs[0]].numpy()

    together = outputs(padded, valid)
    for row, ids in enumerate((long, short)):
        alone = outputs(ids[None], np.ones((1, len(ids)), bool))[0]
        np.testing.assert_allclose(together[row, : len(ids)], alone, rtol=1e-5, atol=1e-5)
    unmasked = outputs(padded, np.ones_like(valid))  # attending to the padding changes the short sentence
    assert not np.allclose(unmasked[1, :5], together[1, :5], atol=1e-3)
