# ruff: noqa: RUF002 - formulas quote the standard
"""Calibration-data importance of attention heads and FFN neurons (§7.3.2), computed with PyTorch.

Each prunable unit (a head, an FFN neuron) gets a mask variable ``m = 1`` multiplying its output
where it enters the next projection (the attention output projection, the FFN down projection),
inside the Hugging Face model loaded from ``Model/``. Pruning a set S is ``Δm = -1`` on S, and the
loss change is approximated by the Taylor expansion of formulas (34)–(38):
``ΔL(S) ≈ -Σ_{i∈S} g_i + ½ Δmᵀ F Δm``, with the Hessian replaced by the empirical Fisher
``F = mean_s v_s v_sᵀ`` of per-sample gradients ``v_s`` over the masks of *all* groups — so the
cross terms between heads and FFN neurons (the λ_ij blocks of (38)-(39)) are kept, not only the
diagonal. For a decoder the loss is the language-model NLL of each calibration window. An
encoder has no labels: its "loss" is the distance of the pooled sentence embedding to the
unpruned one, whose gradient vanishes at ``m = 1``; its Fisher (Gauss-Newton) matrix
``JᵀJ`` is estimated with random projections, ``v_s = ∂(rᵀ f)/∂m`` for ``r ~ N(0, I)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.tree.torch_hf import load_hf


@dataclass(frozen=True)
class Importance:
    """Per-unit first-order gradients and per-sample Fisher factors, units grouped and ordered."""

    units: dict[str, list[tuple[int, int]]]
    """group ("heads", "ffn") → (layer, index) of each unit, in mask order."""
    grad: np.ndarray
    """``[n]`` mean gradient of the loss w.r.t. each mask (zero for encoders)."""
    samples: np.ndarray
    """``[N, n]`` per-sample gradients v_s: ``F ≈ samplesᵀ samples / N``."""
    offset: dict[str, int]
    """group → index of its first unit in ``grad`` / ``samples`` columns."""

    def merged(self, group: str, size: int) -> Importance:
        """The same estimate with every ``size`` consecutive units of ``group`` (one layer's) made one unit.

        One mask shared by the units of a run (all of them pruned or none) has, by the chain rule,
        the sum of their gradients as its gradient, per sample too; so the Taylor and Fisher terms of
        removing the whole run stay exact. Used for LLaMA-family KV groups: query heads
        ``k·size … (k+1)·size − 1`` read KV head ``k``, and are pruned with it.
        """
        if size == 1 or group not in self.units:
            return self
        total = self.grad.shape[0]
        target, units, offset, at = np.empty(total, np.int64), {}, {}, 0
        for g in sorted(self.offset, key=self.offset.__getitem__):
            start, u, step = self.offset[g], self.units[g], size if g == group else 1
            target[start:start + len(u)] = at + np.arange(len(u)) // step
            units[g], offset[g] = [(layer, j // step) for layer, j in u[::step]], at
            at += len(u) // step
        starts = np.flatnonzero(np.r_[True, np.diff(target) != 0])  # target never decreases: runs of one unit
        return Importance(units, np.add.reduceat(self.grad, starts), np.add.reduceat(self.samples, starts, axis=1),
                          offset)

    def diag_score(self) -> np.ndarray:
        """Estimated loss increase of removing each unit alone: ``-g_i + ½ F_ii``."""
        return -self.grad + 0.5 * (self.samples ** 2).mean(0)

    def loss_change(self, chosen: np.ndarray) -> float:
        """``-Σ g_S + ½ Δmᵀ F Δm`` for the units whose mask indices are ``chosen``."""
        if len(chosen) == 0:
            return 0.0
        s = self.samples[:, chosen].sum(1)
        return float(-self.grad[chosen].sum() + 0.5 * (s ** 2).mean())


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        from ptmpack.errors import UnsupportedError as U

        raise U("structure-aware pruning needs PyTorch", hint="pip install 'ptmpack[torch]'") from None
    return torch


def _sites(family: str, layers: int) -> list[tuple[str, str]]:
    """(attention output projection, FFN down projection) module names per layer."""
    if family == "bert":
        return [(f"encoder.layer.{i}.attention.output.dense", f"encoder.layer.{i}.output.dense") for i in range(layers)]
    return [(f"model.layers.{i}.self_attn.o_proj", f"model.layers.{i}.mlp.down_proj") for i in range(layers)]


def importance(model_dir: Path, family: str, windows: np.ndarray, targets: tuple[str, ...], *,
               probes: int = 2, seed: int = 0) -> Importance:
    """Masks, gradients and Fisher factors of the ``targets`` groups over the calibration ``windows``.

    Raises:
        UnsupportedError: PyTorch or transformers missing, or the checkpoint does not load.
    """
    torch = _torch()
    model = load_hf(model_dir, family, purpose="structure-aware pruning", hint="use --prune-method magnitude")
    model.requires_grad_(False)  # only the masks need gradients: autograd then keeps no weight-gradient inputs
    cfg = model.config
    layers, heads = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    ffn = int(cfg.intermediate_size)
    masks = {"heads": torch.ones(layers, heads, requires_grad=True), "ffn": torch.ones(layers, ffn, requires_grad=True)}
    hooks = []
    for i, (attn_out, down) in enumerate(_sites(family, layers)):
        if "heads" in targets:
            def scale_heads(mod: Any, args: tuple[Any, ...], i: int = i) -> tuple[Any, ...]:
                x = args[0]
                y = (x.view(*x.shape[:-1], heads, head_dim) * masks["heads"][i][:, None]).view(x.shape)
                return (y, *args[1:])
            hooks.append(model.get_submodule(attn_out).register_forward_pre_hook(scale_heads))
        if "ffn" in targets:
            def scale_ffn(mod: Any, args: tuple[Any, ...], i: int = i) -> tuple[Any, ...]:
                return (args[0] * masks["ffn"][i], *args[1:])
            hooks.append(model.get_submodule(down).register_forward_pre_hook(scale_ffn))
    gen = torch.Generator().manual_seed(seed)
    rows, grads = [], []
    try:
        for row in np.asarray(windows, np.int64):
            ids = torch.tensor(row[None])
            if family == "bert":
                pooled = model(input_ids=ids).last_hidden_state.mean(1)[0]
                for _ in range(probes):
                    r = torch.randn(pooled.shape, generator=gen)
                    rows.append(_grads(torch, (pooled * r).sum(), masks, targets, retain=True))
            else:
                out = model(input_ids=ids, labels=ids)
                g = _grads(torch, out.loss, masks, targets, retain=False)
                rows.append(g)
                grads.append(g)
    finally:
        for h in hooks:
            h.remove()
    units: dict[str, list[tuple[int, int]]] = {}
    offset, at = {}, 0
    for t in targets:
        n = heads if t == "heads" else ffn
        units[t] = [(i, j) for i in range(layers) for j in range(n)]
        offset[t], at = at, at + layers * n
    samples = np.stack(rows)
    grad = np.mean(grads, axis=0) if grads else np.zeros(samples.shape[1])
    return Importance(units, grad, samples, offset)


def _grads(torch: Any, loss: Any, masks: dict[str, Any], targets: tuple[str, ...], *, retain: bool) -> np.ndarray:
    got = torch.autograd.grad(loss, [masks[t] for t in targets], retain_graph=retain)
    return np.concatenate([g.detach().double().numpy().ravel() for g in got])
