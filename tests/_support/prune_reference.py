"""The reference for structure-aware pruning's importance pass: the whole transformers model, masks in hooks.

This is how ``ptmpack.compress.structure.prune.importance`` computed the mask gradients and
per-sample Fisher rows before it ran block by block on the package's IR: every window through
the whole Hugging Face model (BertModel, or AutoModelForCausalLM with ``labels=ids``), the masks
multiplying each head's output where it enters the attention output projection and each FFN
neuron's where it enters the down projection (forward pre-hooks). transformers is the peer the
block-wise pass is checked against; only the tests use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.structure.prune.importance import Importance
from tests._support.struct_models import MASK_SITES


def hf_importance(model_dir: Path, family: str, windows: np.ndarray, targets: tuple[str, ...], *,
                  probes: int = 2, seed: int = 0) -> Importance:
    """Masks, gradients and Fisher rows of ``targets`` over ``windows``, computed in the whole transformers model.

    Decoders: one row per window (the gradient of its LM loss); encoders: one row per (window,
    probe), the gradient of ``(pooled · r)`` for ``r ~ N(0, I)`` from ``torch.Generator().manual_seed(seed)``.
    """
    import torch
    import transformers

    cls = transformers.BertModel if family == "bert" else transformers.AutoModelForCausalLM
    kwargs = {"add_pooling_layer": False} if family == "bert" else {}
    model = cls.from_pretrained(str(model_dir), dtype=torch.float32, **kwargs).eval()
    model.requires_grad_(False)
    cfg = model.config
    layers, heads = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    ffn = int(cfg.intermediate_size)
    masks = {"heads": torch.ones(layers, heads, requires_grad=True), "ffn": torch.ones(layers, ffn, requires_grad=True)}
    hooks = []
    modules = [tuple(w.format(i).removesuffix(".weight") for w in MASK_SITES[family]) for i in range(layers)]
    for i, (attn_out, down) in enumerate(modules):
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

    def grad_of(loss: Any, retain: bool) -> np.ndarray:
        got = torch.autograd.grad(loss, [masks[t] for t in targets], retain_graph=retain)
        return np.concatenate([g.detach().double().numpy().ravel() for g in got])

    try:
        for row in np.asarray(windows, np.int64):
            ids = torch.tensor(row[None])
            if family == "bert":
                pooled = model(input_ids=ids).last_hidden_state.mean(1)[0]
                for _ in range(probes):
                    r = torch.randn(pooled.shape, generator=gen)
                    rows.append(grad_of((pooled * r).sum(), True))
            else:
                g = grad_of(model(input_ids=ids, labels=ids).loss, False)
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
