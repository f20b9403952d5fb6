# ruff: noqa: RUF001, RUF002 - formulas use mathematical symbols
"""A small functional PyTorch LLaMA-family decoder, built from Hugging Face-named tensors.

What the calibration-based compressors (AffineQuant, GPTQ) need from a decoder: run one block
on a batch of hidden states, swap any of its parameters for a learned or quantized stand-in
without copying the block, and see what goes into each linear. The arithmetic follows
``transformers``' ``LlamaDecoderLayer`` (which is also what ``ptmpack.ir.convert_hf`` builds as
IR): pre-RMSNorm, rotate-half RoPE, grouped-query causal attention, SwiGLU MLP, optional
projection biases. Weights are ``[out, in]`` and applied as ``x Wᵀ``.

Unified norms (``--fold-norm unified``, §7.2.4) are affine maps with fixed statistics that were
folded into the linears reading them, so the graph has no norm there any more: a block (or the
model's final norm) built with ``identity_norms`` passes those norms' inputs through unchanged,
as the IR model does.

GQA layout: key/value head ``j`` serves the query heads ``j·g … j·g + g − 1`` (``g`` =
heads / kv-heads), as ``repeat_kv`` in transformers.

torch is imported lazily by the callers of this module (``ptmpack.compress.quant.affine.step``), which
raise :class:`~ptmpack.errors.UnsupportedError` when it is missing; importing this module
itself needs torch.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ptmpack.errors import UnsupportedError

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
"""The linear layers of one block, by their name under ``model.layers.{i}.``."""
NORMS = ("input_layernorm", "post_attention_layernorm")
AFFINE = "affine_transform"
"""An unmerged AffineQuant transform after a norm is stored as ``{norm}.affine_transform.weight`` ``[d, d]``
(or its diagonal blocks ``[d/b, b, b]``) and optionally ``{norm}.affine_transform.shift`` ``[d]``; it computes
``(h − shift)·weightᵀ`` (block by block for the block-diagonal form)."""
LAYER_PREFIX = "model.layers."
FINAL_NORM = "model.norm.weight"
EMBED = "model.embed_tokens.weight"
_LLAMA_TYPES = ("llama", "mistral", "qwen2")

Capture = Callable[[str, torch.Tensor], None]
"""Called with (linear name, the tensor going into it) during a forward pass."""


@dataclass(frozen=True)
class LlamaConfig:
    """The shape of a LLaMA-family model, read from its ``config.json``."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    num_layers: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True

    @property
    def kv_groups(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> LlamaConfig:
        """Read a ``config.json`` document.

        Raises:
            UnsupportedError: not a LLaMA-family model, an activation other than SiLU, RoPE scaling,
                or inconsistent head counts.
        """
        if cfg.get("model_type") not in _LLAMA_TYPES:
            raise UnsupportedError(f"model_type {cfg.get('model_type')!r} is not a LLaMA-family decoder "
                                   f"({', '.join(_LLAMA_TYPES)})")
        if cfg.get("hidden_act", "silu") != "silu":
            raise UnsupportedError(f"hidden_act {cfg['hidden_act']!r} is not supported (SwiGLU with silu only)")
        scaling = cfg.get("rope_scaling")
        if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type", "default")) != "default":
            raise UnsupportedError("RoPE scaling is not supported (plain RoPE only)")
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        kv = int(cfg.get("num_key_value_heads") or heads)
        if heads % kv:
            raise UnsupportedError(f"{heads} attention heads are not a multiple of {kv} key/value heads")
        return cls(hidden, heads, kv, int(cfg.get("head_dim") or hidden // heads), int(cfg["intermediate_size"]),
                   int(cfg["num_hidden_layers"]), float(cfg.get("rms_norm_eps", 1e-6)),
                   float(cfg.get("rope_theta", 10000.0)), bool(cfg.get("tie_word_embeddings", True)))


def as_tensor(value: Any, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.Tensor:
    """A numpy array or tensor as a float tensor on ``device`` (copied, never sharing the caller's memory)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=dtype).clone()
    return torch.from_numpy(np.array(value, dtype=np.float32)).to(device=device, dtype=dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x²) + eps) · weight`` over the last axis."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_tables(seq_len: int, head_dim: int, theta: float, device: torch.device,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[seq, head_dim]`` for rotate-half RoPE at positions ``0 … seq−1``."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(device, dtype), angles.sin().to(device, dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[batch, heads, seq, head_dim]`` by position (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def _transform(p: Mapping[str, torch.Tensor], norm: str, h: torch.Tensor) -> torch.Tensor:
    """The explicit affine transform after ``norm``, when the block has one: ``(h − shift)·Mᵀ``."""
    m = p.get(f"{norm}.{AFFINE}.weight")
    if m is None:
        return h
    shift = p.get(f"{norm}.{AFFINE}.shift")
    h = h if shift is None else h - shift
    if m.dim() == 2:
        return F.linear(h, m)
    n, b_out, b_in = m.shape  # block-diagonal: y_k = h_k·M_kᵀ for each block k
    y = torch.einsum("...ni,noi->...no", h.reshape(*h.shape[:-1], n, b_in), m)
    return y.reshape(*h.shape[:-1], n * b_out)


class DecoderLayer:
    """One LLaMA decoder block as plain tensors plus a functional forward.

    ``params`` maps local names (``self_attn.q_proj.weight``, ``input_layernorm.weight``,
    optional ``….bias``, optional ``{norm}.affine_transform.weight``/``.shift``) to tensors. :meth:`forward` takes ``overrides`` with the same names,
    which replace the stored tensors for that call only: the way a compressor runs the block
    with transformed or fake-quantized weights and still gets gradients for them.
    ``identity_norms`` names the norms (``input_layernorm``, ``post_attention_layernorm``) that
    unified normalization folded away: they pass their input through.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], config: LlamaConfig, index: int = 0, *,
                 identity_norms: Collection[str] = ()) -> None:
        self.params = dict(params)
        self.config = config
        self.index = index
        self.identity_norms = frozenset(identity_norms)
        if not self.identity_norms <= set(NORMS):
            raise UnsupportedError(f"layer {index}: unknown norms {sorted(self.identity_norms - set(NORMS))}")
        self._rope: dict[tuple[int, str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        for name in (*(f"{n}.weight" for n in LINEARS), *(f"{n}.weight" for n in NORMS)):
            if name not in self.params:
                raise UnsupportedError(f"layer {index}: no tensor {name!r}")

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Any], config: LlamaConfig, layer_index: int, *,
                     prefix: str = LAYER_PREFIX, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu", identity_norms: Collection[str] = ()) -> DecoderLayer:
        """The block ``{prefix}{layer_index}.*`` of a checkpoint's tensor map (numpy arrays or tensors).

        ``identity_norms``: checkpoint names of norm weights folded away by unified normalization
        (``model.layers.3.input_layernorm.weight``); those of other blocks are ignored.

        Raises:
            UnsupportedError: a weight the block needs is missing.
        """
        head = f"{prefix}{layer_index}."
        params = {k[len(head):]: as_tensor(v, dtype, device) for k, v in tensors.items() if k.startswith(head)}
        folded = {n[len(head):-len(".weight")] for n in identity_norms if n.startswith(head) and n.endswith(".weight")}
        return cls(params, config, layer_index, identity_norms=folded)

    def tensors(self, prefix: str = LAYER_PREFIX) -> dict[str, torch.Tensor]:
        """The block's tensors under their checkpoint names."""
        return {f"{prefix}{self.index}.{k}": v for k, v in self.params.items()}

    def _tables(self, seq: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (seq, str(device), dtype)
        if key not in self._rope:
            self._rope[key] = rope_tables(seq, self.config.head_dim, self.config.rope_theta, device, dtype)
        return self._rope[key]

    def forward(self, x: torch.Tensor, overrides: Mapping[str, torch.Tensor] | None = None, *,
                capture: Capture | None = None) -> torch.Tensor:
        """The block's output for hidden states ``x`` ``[batch, seq, hidden]`` (causal attention, positions 0…).

        ``capture``, when given, is called with each linear's name and input, before the linear runs.
        """
        p = {**self.params, **(overrides or {})}
        c = self.config
        b, s, _ = x.shape

        def linear(name: str, inp: torch.Tensor) -> torch.Tensor:
            if capture is not None:
                capture(name, inp)
            return F.linear(inp, p[f"{name}.weight"], p.get(f"{name}.bias"))

        def norm(name: str, inp: torch.Tensor) -> torch.Tensor:
            h = inp if name in self.identity_norms else rms_norm(inp, p[f"{name}.weight"], c.rms_norm_eps)
            return _transform(p, name, h)

        h = norm("input_layernorm", x)
        q = linear("self_attn.q_proj", h).view(b, s, c.num_heads, c.head_dim).transpose(1, 2)
        k = linear("self_attn.k_proj", h).view(b, s, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = linear("self_attn.v_proj", h).view(b, s, c.num_kv_heads, c.head_dim).transpose(1, 2)
        cos, sin = self._tables(s, x.device, x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if c.kv_groups > 1:
            k = k.repeat_interleave(c.kv_groups, dim=1)
            v = v.repeat_interleave(c.kv_groups, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        a = a.transpose(1, 2).reshape(b, s, c.num_heads * c.head_dim)
        x = x + linear("self_attn.o_proj", a)
        h = norm("post_attention_layernorm", x)
        m = F.silu(linear("mlp.gate_proj", h)) * linear("mlp.up_proj", h)
        return x + linear("mlp.down_proj", m)

    __call__ = forward


class CausalLM:
    """A whole LLaMA-family decoder: embeddings, blocks, final norm and LM head (for calibration and eval)."""

    def __init__(self, embed: torch.Tensor, layers: list[DecoderLayer], norm: torch.Tensor | None,
                 head: torch.Tensor, config: LlamaConfig) -> None:
        """``norm`` None: the final norm was folded away by unified normalization (the identity)."""
        self.embed, self.layers, self.norm, self.head, self.config = embed, layers, norm, head, config

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Any], config: LlamaConfig, *,
                     dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                     identity_norms: Collection[str] = ()) -> CausalLM:
        """The model of a checkpoint's tensor map (``model.embed_tokens.weight``, ``model.layers.*``, …).

        ``identity_norms``: checkpoint names of the norm weights unified normalization folded away
        (``model.layers.0.input_layernorm.weight``, ``model.norm.weight``, …): those norms pass their input through.

        Raises:
            UnsupportedError: a tensor the model needs is missing.
        """
        for name in (EMBED, FINAL_NORM):
            if name not in tensors:
                raise UnsupportedError(f"checkpoint has no tensor {name!r}")
        embed = as_tensor(tensors[EMBED], dtype, device)
        head = as_tensor(tensors["lm_head.weight"], dtype, device) if "lm_head.weight" in tensors else embed
        layers = [DecoderLayer.from_tensors(tensors, config, i, dtype=dtype, device=device, identity_norms=identity_norms)
                  for i in range(config.num_layers)]
        final = None if FINAL_NORM in identity_norms else as_tensor(tensors[FINAL_NORM], dtype, device)
        return cls(embed, layers, final, head, config)

    def embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[batch, seq, hidden]``: the input of block 0."""
        return F.embedding(ids.to(self.embed.device), self.embed)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits of the last block's output."""
        h = hidden if self.norm is None else rms_norm(hidden, self.norm, self.config.rms_norm_eps)
        return F.linear(h, self.head)

    @torch.no_grad()
    def nll(self, ids: torch.Tensor) -> tuple[float, int]:
        """Summed next-token negative log-likelihood of one window ``[seq]`` and the number of predictions."""
        x = self.embeddings(ids[None])
        for layer in self.layers:
            x = layer(x)
        logits = self.logits(x)[0, :-1].double()
        target = ids[1:].to(logits.device)
        return float(F.cross_entropy(logits, target, reduction="sum")), int(target.numel())
