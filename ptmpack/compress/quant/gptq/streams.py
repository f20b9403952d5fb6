"""Layer-wise GPTQ calibration in one IR pass: two streams in one batch.

llm-compressor's sequential pipeline calibrates every linear of a decoder layer on that layer's
input with the layer's *float* weights, quantizes them all, and hands the *quantized* layer's
output to the next layer. Doing that op by op in one forward pass needs two versions of every
activation inside the current layer, so the calibration windows go in twice, as one batch:

* stream A (first half): the quantized model. Every target linear applies its quantized weight.
* stream B (second half): the float weights of the layer being calibrated on A's input to it.
  Each linear's Hessian comes from its stream-B input.

Stream B differs from A only after a linear of the current layer. Each variable remembers the
layer whose float weights made its halves differ (:attr:`Streams.tag`); when a later layer has
started, an operator reading such a variable gets it with B's half replaced by A's (the reset),
so every layer starts from the quantized model's activations in both streams.

A target linear gets both weights at once: its input becomes ``[[X_A, 0], [0, X_B]]`` (features
concatenated, one stream in each half) and its weight ``[W_q, W_f]``, so one product yields
``X_A·W_qᵀ`` for A and ``X_B·W_fᵀ`` for B (four times the float work of one stream; the
calibration pass is cheap next to the solver).

Layers are named by the target prefixes: everything up to the last all-digit component
(``model.layers.3.self_attn.q_proj`` is in ``model.layers.3``; GPT-2's ``h.3.attn.c_attn`` in
``h.3``; BERT's ``encoder.layer.3.attention.self.query`` in ``encoder.layer.3``); a target
without one is a layer of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ptmpack.errors import UnsupportedError


def layer_of(prefix: str) -> str:
    """The layer a target belongs to: its prefix up to the last all-digit component (itself if none)."""
    parts = prefix.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return ".".join(parts[: i + 1])
    return prefix


def layer_index(prefixes: list[str]) -> dict[str, int]:
    """Target prefix -> index of its layer, layers numbered in order of first appearance."""
    order: dict[str, int] = {}
    out = {}
    for p in prefixes:
        out[p] = order.setdefault(layer_of(p), len(order))
    return out


def _slots(node: Any, inputs: dict[str, Any]) -> Iterator[tuple[str, int | None, str]]:
    """(slot, index in a variadic slot or None, variable name) of each input that holds a value."""
    for slot, names in node.inputs.items():
        if slot not in inputs:
            continue
        if isinstance(inputs[slot], list):
            for i, name in enumerate(names):
                yield slot, i, name
        elif names:
            yield slot, None, names[0]


class Streams:
    """Bookkeeping of the two streams: which variables differ between them, and since which layer."""

    def __init__(self, windows: int) -> None:
        self.windows = windows
        """Rows per stream (the batch fed is twice this)."""
        self.current = -1
        """Index of the layer being calibrated (the layer of the last target reached)."""
        self.tag: dict[str, int] = {}
        """Variable -> the layer whose float weights made its two halves differ."""

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(A half, B half) of an activation whose leading axis is batch-major.

        Raises:
            UnsupportedError: the leading axis is not a multiple of the doubled batch.
        """
        n = x.shape[0] if x.ndim else 0
        if n == 0 or n % (2 * self.windows):
            raise UnsupportedError(f"layer-wise calibration cannot split an activation of shape {list(x.shape)} "
                                   f"into two streams of {self.windows} windows")
        return x[: n // 2], x[n // 2:]

    def before(self, node: Any, inputs: dict[str, Any], layer: int | None) -> dict[str, Any]:
        """Reset stale inputs (B := A) and tag the operator's outputs; ``layer``: the target's layer, if any."""
        if layer is not None:
            self.current = max(self.current, layer)
        diverged = layer is not None
        for slot, i, name in _slots(node, inputs):
            tag = self.tag.get(name)
            if tag is None:
                continue
            if tag < self.current:
                value = inputs[slot] if i is None else inputs[slot][i]
                a, _ = self.split(np.asarray(value))
                reset = np.concatenate((a, a))
                if i is None:
                    inputs[slot] = reset
                else:
                    inputs[slot] = [*inputs[slot][:i], reset, *inputs[slot][i + 1:]]
            else:
                diverged = True
        for names in node.outputs.values():
            for name in names:
                if diverged:
                    self.tag[name] = self.current
                else:
                    self.tag.pop(name, None)
        return inputs

    def both_weights(self, x: np.ndarray, quantized: np.ndarray, float_w: np.ndarray, transposed: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Input and weight that apply ``quantized`` to stream A and ``float_w`` to stream B in one product.

        Weights are ``[out, in]`` (``transposed``: the operator takes ``[in, out]``, as GPT-2's matmul).
        """
        a, b = self.split(x)
        width = x.shape[-1]
        both = np.zeros((*x.shape[:-1], 2 * width), dtype=np.result_type(x.dtype, np.float32))
        both[: len(a), ..., :width] = a
        both[len(a):, ..., width:] = b
        w = np.concatenate((quantized, float_w.astype(quantized.dtype, copy=False)), axis=1)
        return both, (np.ascontiguousarray(w.T) if transposed else w)
