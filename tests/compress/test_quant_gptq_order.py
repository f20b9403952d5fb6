"""Which activations build each linear's Hessian: layer-wise (llm-compressor's order) or linear-wise.

The block-by-block calibration (:func:`ptmpack.compress.quant.gptq.step.calibrate_and_quantize`) is
checked against a brute-force reference that reruns the whole IR once per layer (or per linear)
with the earlier weights fed already quantized, on tiny LLaMA, BERT and GPT-2 trees. The solver is
replaced by RTN (the Hessian is recorded, not used), so both sides quantize identically and
only the activations differ. With every window in one mini-batch the block runner gives the
reference's Hessians bit for bit; with one window per mini-batch they differ only by float32
summation order.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptmpack.compress.eval.blocks import layer_index, layer_of
from ptmpack.compress.eval.probe import feeds_for
from ptmpack.compress.quant.gptq.step import calibrate_and_quantize
from ptmpack.compress.quant.linear import QuantizedSpill, Target, find_targets, load_model
from ptmpack.compress.quant.pack_quantized import QuantizedWeight
from ptmpack.compress.quant.rtn import quantize_rtn
from ptmpack.compress.tree.weights import WeightFiles
from tests._support.target_inputs import hessian, target_inputs
from tests._support.tiny_models import tiny_tree


@pytest.fixture(scope="module", params=["llama", "bert", "gpt2"])
def tree(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tree(tmp_path_factory.mktemp(request.param), request.param)


def _windows(tree: Path) -> np.ndarray:
    return np.random.default_rng(0).integers(5, 200, size=(3, 12))


def _rtn(w: np.ndarray) -> QuantizedWeight:
    return quantize_rtn(w, 3, 16)


def _one_pass(tree: Path, sequential: str, batch_tokens: int | None = None
              ) -> tuple[dict[str, np.ndarray], list[Target]]:
    targets = find_targets(load_model(tree))
    seen: dict[str, np.ndarray] = {}
    order = iter(targets)

    def solve(w: np.ndarray, h: np.ndarray, *, overwrite_hessian: bool = False) -> QuantizedWeight:
        seen[next(order).prefix] = np.array(h)
        return _rtn(w)

    with tempfile.TemporaryDirectory() as scratch:
        calibrate_and_quantize(tree, targets, WeightFiles(tree / "Model"), _windows(tree), solve, lambda *a: None,
                               QuantizedSpill(Path(scratch)), sequential=sequential, batch_tokens=batch_tokens)
    return seen, targets


def _inputs_with(tree: Path, quantized: list[Target], wanted: set[str]) -> dict[str, np.ndarray]:
    """One plain IR run with ``quantized`` targets' weights fed as RTN; the input of each ``wanted`` target."""
    model = load_model(tree)
    tensors = WeightFiles(tree / "Model")
    feeds: dict[str, Any] = feeds_for(model, _windows(tree))
    for t in quantized:
        w = tensors[t.weight]
        deq = _rtn(w.T if t.transposed else w).dequantize(np.float32)
        feeds[t.weight] = deq.T if t.transposed else deq
    return target_inputs(tree, model, feeds, wanted)


def _assert_close(a: np.ndarray, b: np.ndarray, batch_tokens: int | None) -> None:
    if batch_tokens is None:  # every window in one mini-batch: the same kernels on the same arrays
        np.testing.assert_array_equal(a, b)
    else:  # one window per mini-batch: XᵀX summed per window, in float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max()))


@pytest.mark.parametrize("batch_tokens", [None, 1])
def test_layer_wise_hessians_are_the_float_layer_on_the_quantized_input(tree: Path, batch_tokens: int | None) -> None:
    seen, targets = _one_pass(tree, "layer", batch_tokens)
    layers = layer_index([t.prefix for t in targets])
    for b in sorted(set(layers.values())):
        here = {t.prefix for t in targets if layers[t.prefix] == b}
        ref = _inputs_with(tree, [t for t in targets if layers[t.prefix] < b], here)
        for p in here:
            _assert_close(seen[p], hessian(ref[p]), batch_tokens)


@pytest.mark.parametrize("batch_tokens", [None, 1])
def test_linear_wise_hessians_follow_every_earlier_quantized_linear(tree: Path, batch_tokens: int | None) -> None:
    seen, targets = _one_pass(tree, "linear", batch_tokens)
    for i, t in enumerate(targets):
        ref = _inputs_with(tree, targets[:i], {t.prefix})
        _assert_close(seen[t.prefix], hessian(ref[t.prefix]), batch_tokens)


def test_the_two_orders_differ_after_the_first_linears_of_a_layer(tree: Path) -> None:
    layer, _ = _one_pass(tree, "layer")
    linear, targets = _one_pass(tree, "linear")
    first = targets[0]
    np.testing.assert_array_equal(layer[first.prefix], linear[first.prefix])  # same input: the embeddings
    later = [t for t in targets if layer_of(t.prefix) == layer_of(first.prefix)][-1]
    assert not np.allclose(layer[later.prefix], linear[later.prefix], rtol=1e-3)


def test_layer_names() -> None:
    assert layer_of("model.layers.12.self_attn.q_proj") == "model.layers.12"
    assert layer_of("h.3.attn.c_attn") == "h.3"
    assert layer_of("bert.encoder.layer.0.attention.self.query") == "bert.encoder.layer.0"
    assert layer_of("pooler.dense") == "pooler.dense"
    assert layer_index(["a.0.q", "a.0.k", "a.1.q", "head"]) == {"a.0.q": 0, "a.0.k": 0, "a.1.q": 1, "head": 2}


def test_an_unknown_order_is_refused(tree: Path) -> None:
    from ptmpack.errors import UsageError

    with pytest.raises(UsageError):
        calibrate_and_quantize(tree, [], WeightFiles(tree / "Model"), _windows(tree), _rtn, lambda *a: None,
                               QuantizedSpill(tree), sequential="random")
