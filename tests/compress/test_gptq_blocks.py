"""GPTQ block by block: the block plan, spans of the IR graph, and the quantized weights written as they are made.

The block runner (:mod:`ptmpack.compress.eval.blocks`) must compute what one whole-model run
computes: running the blocks one after another gives the model's own output bit for bit, and
the GPTQ step through it (with the quantized weights set aside in a spill and written into the
rewritten weight files) stores exactly what the solver makes from the Hessians of a brute-force
reference (the whole IR rerun per layer with the earlier layers fed quantized).
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptmpack.compress.eval.blocks import BlockRunner, batches, layer_of, plan_blocks
from ptmpack.compress.eval.probe import feeds_for
from ptmpack.compress.quant.gptq.solver import backend, gptq_quantize
from ptmpack.compress.quant.gptq.step import calibrate_and_quantize
from ptmpack.compress.quant.linear import QuantizedSpill, Target, find_targets, load_model
from ptmpack.compress.quant.pack_quantized import QuantizedWeight, quantized_tensors
from ptmpack.compress.tree.weights import WeightFiles
from tests._support.target_inputs import hessian, target_inputs
from tests._support.tiny_models import tiny_tree


@pytest.fixture(scope="module", params=["llama", "bert", "gpt2"])
def tree(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tree(tmp_path_factory.mktemp(request.param), request.param)


def _windows() -> np.ndarray:
    return np.random.default_rng(1).integers(5, 200, size=(5, 12))


def test_one_block_per_layer_with_a_small_state_between(tree: Path) -> None:
    from ptmpack.ir.execute import Executor

    model = load_model(tree)
    targets = find_targets(model)
    blocks = plan_blocks(model, [t.weight for t in targets])
    ops = model.main_graph.operators
    assert len(blocks) == len({layer_of(t.prefix) for t in targets}) == 2  # the tiny models have 2 layers
    assert [u.weight for b in blocks for u in b.uses] == [t.weight for t in targets]
    for b, nxt in itertools.pairwise(blocks):
        assert b.stop == nxt.start
        assert ops[nxt.start].name.startswith("layers.1.")  # the next layer starts at its own first operator
    epilogue = [o.type for o in ops[blocks[-1].stop:]]  # a decoder's final norm and LM head; an encoder has none
    assert epilogue in ([], ["rms_norm", "linear"], ["layer_norm", "linear"])
    assert not any(u.op >= blocks[-1].stop for u in blocks[-1].uses)
    ex = Executor(model, None)
    for b in blocks[1:]:  # the residual stream plus what every layer reads (positions, the attention mask)
        assert 1 <= len(ex.live_at(b.start)) <= 2


@pytest.mark.parametrize(("batch_tokens", "parts"), [(2048, 1), (24, 3)])
def test_running_the_blocks_one_after_another_is_the_whole_model(tree: Path, batch_tokens: int, parts: int) -> None:
    """Bit for bit with every window in one mini-batch; in mini-batches of 2 windows, up to BLAS's blocking of
    the smaller products (float32 rounding)."""
    from ptmpack.ir.execute import Executor
    from ptmpack.storage.package import open_package

    model = load_model(tree)
    feeds = feeds_for(model, _windows())
    with open_package(tree) as pkg:
        whole = Executor(model, pkg).run(feeds)
    blocks = plan_blocks(model, [t.weight for t in find_targets(model)])
    runner = BlockRunner(model, WeightFiles(tree / "Model"), feeds, blocks, batch_tokens=batch_tokens)
    assert len(runner.state) == parts
    for b in blocks:
        runner.advance(b, runner.params(b.start, b.stop))
    start, stop = blocks[-1].stop, len(model.main_graph.operators)  # the epilogue
    params = runner.params(start, stop)
    got = np.concatenate([runner.executor.run_span(start, stop, s, list(model.outputs), params)[model.outputs[0]]
                          for s in runner.state])
    if parts == 1:
        np.testing.assert_array_equal(got, whole[model.outputs[0]])
    else:
        np.testing.assert_allclose(got, whole[model.outputs[0]], rtol=1e-5, atol=1e-5)


def test_batches_cover_every_window_once() -> None:
    assert batches(5, 512, 2048) == [slice(0, 4), slice(4, 5)]
    assert batches(3, 4096, 2048) == [slice(0, 1), slice(1, 2), slice(2, 3)]  # one window at least


def test_gptq_through_the_blocks_writes_what_the_reference_solves(tree: Path) -> None:
    """Layer order, real solver, act-order: every stored tensor equals the reference's, bit for bit."""
    model = load_model(tree)
    targets = find_targets(model)
    weights = WeightFiles(tree / "Model")
    xp = backend("cpu")

    def solve(w: np.ndarray, h: np.ndarray, *, overwrite_hessian: bool = False) -> QuantizedWeight:
        return gptq_quantize(w, h, 4, 16, True, act_order=True, xp=xp, overwrite_hessian=overwrite_hessian)

    with tempfile.TemporaryDirectory() as scratch:
        spill = QuantizedSpill(Path(scratch))
        calibrate_and_quantize(tree, targets, weights, _windows(), solve, lambda *a: None, spill)
        got = {t.prefix: spill.tensors(t.prefix) for t in targets}
        rows = dict(spill.rows)
    layers: dict[str, list[Target]] = {}
    for t in targets:
        layers.setdefault(layer_of(t.prefix), []).append(t)
    fed: dict[str, np.ndarray] = {}
    for group in layers.values():
        inputs = target_inputs(tree, model, {**feeds_for(model, _windows()), **fed}, {t.prefix for t in group})
        for t in group:
            w = weights.read(t.weight)
            w = w.T if t.transposed else w
            q = solve(w, hessian(inputs[t.prefix]))
            want = quantized_tensors(t.prefix, q)
            assert sorted(want) == sorted(got[t.prefix])
            for name, array in want.items():
                np.testing.assert_array_equal(got[t.prefix][name], array, err_msg=name)
            deq = q.dequantize(np.float32)
            fed[t.weight] = deq.T if t.transposed else deq
            assert rows[t.prefix]["name"] == t.prefix and rows[t.prefix]["rel_error"] > 0


def _hessians_seen(tree: Path, device: Any) -> dict[str, np.ndarray]:
    targets = find_targets(load_model(tree))
    seen: dict[str, np.ndarray] = {}
    order = iter(targets)

    def solve(w: np.ndarray, h: np.ndarray, *, overwrite_hessian: bool = False) -> QuantizedWeight:
        from ptmpack.compress.quant.rtn import quantize_rtn

        seen[next(order).prefix] = np.array(h)
        return quantize_rtn(w, 4, 16)

    with tempfile.TemporaryDirectory() as scratch:
        calibrate_and_quantize(tree, targets, WeightFiles(tree / "Model"), _windows(), solve, lambda *a: None,
                               QuantizedSpill(Path(scratch)), device=device)
    return seen


def test_hessians_summed_on_a_torch_device_are_numpys(tree: Path) -> None:
    """The ``--device cuda`` accumulation, run here on torch's CPU device (no GPU on the test machine)."""
    torch = pytest.importorskip("torch")
    from ptmpack.compress.quant.gptq.solver import TorchBackend

    on_numpy = _hessians_seen(tree, None)
    on_torch = _hessians_seen(tree, TorchBackend(torch, "cpu"))
    assert on_numpy.keys() == on_torch.keys()
    for name, h in on_numpy.items():
        np.testing.assert_allclose(on_torch[name], h, rtol=1e-5, atol=1e-6 * float(np.abs(h).max()), err_msg=name)


def test_the_device_check_is_one_function() -> None:
    from ptmpack.compress.spec import check_device
    from ptmpack.errors import UnsupportedError, UsageError

    check_device("cpu")
    with pytest.raises(UsageError):
        check_device("tpu")
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        with pytest.raises(UnsupportedError, match="cuda"):
            check_device("cuda")
        with pytest.raises(UnsupportedError, match="cuda"):
            backend("cuda")
