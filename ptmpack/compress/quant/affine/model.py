"""AffineQuant over a whole LLaMA-family model, block by block (GB/T 42382.2 §7.3.1.1).

Block 0's inputs are the token embeddings of the calibration windows. Each block is learned
on the quantized model's inputs against the full-precision model's outputs; the quantized
block's output (in deployed form) becomes the next block's quantized input and the
full-precision block's output the next full-precision input, as in the reference
implementation.

:func:`affine_quantize_checkpoint` reads the checkpoint one tensor at a time instead of taking a
whole model: the embedding table is read for block 0's inputs and dropped, then each block's
tensors are read when its turn comes and dropped when it is done, so what is resident is one
block's parameters and training state, the ``[n, seq, hidden]`` activations of the quantized and
the full-precision model, and what the caller keeps of each finished block.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ptmpack.compress.quant.affine.block import AffineOptions, BlockResult, affine_quantize_block
from ptmpack.compress.quant.affine.torch_llama import (
    AFFINE,
    EMBED,
    LAYER_PREFIX,
    CausalLM,
    DecoderLayer,
    LlamaConfig,
    as_tensor,
)

Progress = Callable[[str, int, int], None]
Finished = Callable[[DecoderLayer, BlockResult], None]
"""Called with each block and its result as soon as the block is done (before the next one is read)."""


@dataclass
class ModelResult:
    """Per-layer results, keyed by layer index, plus run statistics."""

    layers: dict[int, BlockResult] = field(default_factory=dict)
    seconds: float = 0.0

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-ready record per block: losses, final output MSE, dominance violations, unmerged transforms."""
        out = []
        for i, r in sorted(self.layers.items()):
            s = r.stats
            out.append({"layer": i, "final_mse": s["final_mse"],
                        "loss_first_epoch": s["loss_per_epoch"][0] if s["loss_per_epoch"] else None,
                        "loss_last_epoch": s["loss_per_epoch"][-1] if s["loss_per_epoch"] else None,
                        "dominance_violations": s["dominance_violations"], "dominance_checks": s["dominance_checks"],
                        "unmerged_transforms": sorted(r.transforms)})
        return out

    def violations(self) -> dict[str, int]:
        """Total steps undone by the dominance check, and total checks."""
        v = sum(sum(r.stats["dominance_violations"].values()) for r in self.layers.values())
        c = sum(sum(r.stats["dominance_checks"].values()) for r in self.layers.values())
        return {"violations": v, "checks": c}


def deployed_params(layer: DecoderLayer, result: BlockResult) -> dict[str, torch.Tensor]:
    """The block's parameters as a compressed package stores them, with weights dequantized (for checks and eval)."""
    params = dict(layer.params)
    params.update({f"{n}.weight": q.dequantize() for n, q in result.quantized.items()})
    params.update(result.floats)
    for norm, (m, shift) in result.transforms.items():
        params[f"{norm}.{AFFINE}.weight"] = m
        if shift is not None:
            params[f"{norm}.{AFFINE}.shift"] = shift
    return params


def affine_quantize_model(model: CausalLM, windows: np.ndarray, opts: AffineOptions, *,
                          progress: Progress | None = None, log: Callable[[str], None] | None = None,
                          replace: bool = False) -> ModelResult:
    """Learn and quantize every block of ``model`` on calibration ``windows`` ``(n, seq)`` token ids.

    With ``replace`` each block of ``model`` is swapped for its deployed form (dequantized
    weights, merged tensors, explicit transforms) as soon as it is done, so ``model`` then
    evaluates as the compressed package would.

    Raises:
        UsageError: a group size that does not divide a linear's input width.
    """
    ids = torch.as_tensor(np.asarray(windows, dtype=np.int64), device=torch.device(opts.device))
    with torch.no_grad():
        x = model.embeddings(ids)

    def swap(layer: DecoderLayer, r: BlockResult) -> None:
        model.layers[layer.index] = DecoderLayer(deployed_params(layer, r), layer.config, layer.index,
                                                 identity_norms=layer.identity_norms)

    return _quantize_blocks(x, list(model.layers), len(model.layers), opts, progress=progress, log=log,
                            finished=swap if replace else None)


def affine_quantize_checkpoint(read: Callable[[str], Any], names: Iterable[str], config: LlamaConfig,
                               windows: np.ndarray, opts: AffineOptions, *, identity_norms: Collection[str] = (),
                               progress: Progress | None = None, finished: Finished | None = None) -> ModelResult:
    """Learn and quantize every block of a checkpoint read one tensor at a time (``read(name)``, numpy or torch).

    Each block's tensors are read when its turn comes and released after ``finished(layer,
    result)`` has taken what it keeps (module doc). ``identity_norms`` as for
    :meth:`CausalLM.from_tensors`.

    Raises:
        UsageError: a group size that does not divide a linear's input width.
        UnsupportedError: a tensor a block needs is missing.
    """
    device = torch.device(opts.device)
    ids = torch.as_tensor(np.asarray(windows, dtype=np.int64), device=device)
    with torch.no_grad():
        x = torch.nn.functional.embedding(ids, as_tensor(read(EMBED), device=device))
    names = list(names)

    def blocks() -> Iterator[DecoderLayer]:
        for i in range(config.num_layers):
            head = f"{LAYER_PREFIX}{i}."
            yield DecoderLayer.from_tensors({n: read(n) for n in names if n.startswith(head)}, config, i,
                                            device=device, identity_norms=identity_norms)

    return _quantize_blocks(x, blocks(), config.num_layers, opts, progress=progress, finished=finished)


def _quantize_blocks(x: torch.Tensor, layers: Iterable[DecoderLayer], total: int, opts: AffineOptions, *,
                     progress: Progress | None = None, log: Callable[[str], None] | None = None,
                     finished: Finished | None = None) -> ModelResult:
    """The block loop: block 0 reads ``x`` (the windows' embeddings); each block's quantized output feeds the next."""
    start = time.perf_counter()
    x_q, x_fp = x, x.clone()
    result = ModelResult()
    for done, layer in enumerate(layers, 1):
        t0 = time.perf_counter()
        r = affine_quantize_block(layer, x_q, opts, fp_inputs=x_fp)
        x_q, x_fp = r.outputs, r.fp_outputs
        r.outputs = r.fp_outputs = torch.empty(0)
        result.layers[layer.index] = r
        if finished is not None:
            finished(layer, r)
        if log is not None:
            s = r.stats
            log(f"layer {layer.index}: mse {s['final_mse']:.4g}, epochs {[round(v, 5) for v in s['loss_per_epoch']]}, "
                f"dominance violations {s['dominance_violations']}, {time.perf_counter() - t0:.1f} s")
        if progress is not None:
            progress("affine", done, total)
        del layer  # released before the next block is read, not after
    result.seconds = time.perf_counter() - start
    return result
