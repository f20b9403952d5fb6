# ruff: noqa: RUF001, RUF002 - formulas quote the standard's symbols
"""AffineQuant on one LLaMA decoder block (GB/T 42382.2 §7.3.1.1, Table 44; Ma et al., ICLR 2024).

Three transforms are learned per block, with learnable weight clipping for all seven linears:

* ``attn_in``: hidden width ``d``, between ``input_layernorm`` and q/k/v: ``W_{q,k,v}·Cᵀ``,
  activations ``(h − δ)·C⁻¹``;
* ``mlp_in``: the same between ``post_attention_layernorm`` and gate/up;
* ``attn_vo``: one ``head_dim`` matrix per **key/value head** between v_proj and o_proj. With
  grouped-query attention the value of kv head ``j`` feeds query heads ``j·g … j·g+g−1``, so
  v_proj's rows of head ``j`` become ``T_j^{-ᵀ}·W`` while o_proj's columns of each of those query
  heads become ``W·T_jᵀ``: the transform lives at the kv width and is repeated for the query
  heads that share it. (A shift ``δ`` passes through attention unchanged because softmax rows
  sum to one.) down_proj has no transform (its input comes through SwiGLU).

Training minimises the MSE between the full-precision block's output on full-precision inputs
and the quantized block's output on the quantized model's inputs, with AdamW, by epochs of the
calibration windows; the gradual mask and the dominance check are in
:mod:`.affine_transforms`. During training every linear runs with its *effective* weight
``Q(W·Cᵀ)·C^{-ᵀ}`` (and bias ``b + (W − W_eff)·δ``), which equals running the transformed
activations through the quantized transformed weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ptmpack.compress.quant.affine.quantizer import Clipping, QuantFormat, QuantizedTensor, fake_quantize, quantize
from ptmpack.compress.quant.affine.torch_llama import LINEARS, DecoderLayer
from ptmpack.compress.quant.affine.transforms import (
    AffineTransform,
    band_width,
    block_inverse,
    diagonal_blocks,
    gradual_mask,
    smooth_scales,
)
from ptmpack.errors import UsageError

TRANSFORM_KINDS = ("block", "full", "diagonal", "identity")
IN_PROJ = {"attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
           "mlp_in": ("mlp.gate_proj", "mlp.up_proj")}
NORM_OF = {"attn_in": "input_layernorm", "mlp_in": "post_attention_layernorm"}


@dataclass(frozen=True)
class AffineOptions:
    """Settings of one AffineQuant run (defaults: the budgeted CPU configuration)."""

    bits: int = 4
    group_size: int = 64
    symmetric: bool = False
    epochs: int = 10
    alpha: float = 1e-2
    """Stability factor: the value of unfrozen off-diagonal mask entries."""
    lr: float = 5e-3
    lwc_lr: float = 1e-2
    batch_size: int = 4
    smooth_strength: float = 0.5
    shift: bool = True
    transform: str = "block"
    """block (the hidden-width transforms block-diagonal, ``block_size`` wide: what cannot merge is stored at
    ``d·block`` instead of ``d²`` values), full (paper: dense ``d × d``), diagonal (every inverse merges into
    norms/v_proj), identity (A fixed to I: RTN + LWC)."""
    block_size: int = 64
    """Width of the diagonal blocks of a ``block`` transform; a hidden width it does not divide uses
    ``gcd(d, block_size)``."""
    lwc: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORM_KINDS:
            raise UsageError(f"affine transform must be one of {', '.join(TRANSFORM_KINDS)}, not {self.transform!r}")
        if self.epochs < 0 or self.batch_size < 1:
            raise UsageError("epochs must be ≥ 0 and batch size ≥ 1")
        if self.block_size < 1:
            raise UsageError(f"affine block size must be ≥ 1, not {self.block_size}")

    def block_of(self, dim: int) -> int | None:
        """The diagonal block width of the hidden-width transforms at ``dim``, or None for a dense transform."""
        return math.gcd(dim, self.block_size) if self.transform == "block" else None

    @property
    def fmt(self) -> QuantFormat:
        return QuantFormat(self.bits, self.group_size, self.symmetric)


@dataclass
class BlockResult:
    """What AffineQuant produced for one block (names are local to the block, e.g. ``mlp.up_proj``)."""

    quantized: dict[str, QuantizedTensor]
    floats: dict[str, torch.Tensor]
    """Merged float tensors that replace or join the block's: norm weights, projection biases."""
    transforms: dict[str, tuple[torch.Tensor, torch.Tensor | None]]
    """Unmerged transforms by the norm they follow: (M, shift ``[d]`` or None), ``y = (x − shift)·Mᵀ``; M is
    ``[d, d]`` (full) or its diagonal blocks ``[d/b, b, b]`` (block: ``y_k = (x − shift)_k·M_kᵀ`` per block k)."""
    outputs: torch.Tensor
    """The quantized block's output on the quantized inputs: the next block's input."""
    fp_outputs: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)


class _Learner:
    """The learnable state of one block: transforms, clipping, and the weights they act on."""

    def __init__(self, layer: DecoderLayer, opts: AffineOptions, stats: dict[str, torch.Tensor]) -> None:
        self.layer, self.opts, self.c = layer, opts, layer.config
        p, c, dev = layer.params, layer.config, layer.params["input_layernorm.weight"].device
        learn = opts.transform != "identity"
        self.t: dict[str, AffineTransform] = {}
        for key, names in IN_PROJ.items():
            wmax = torch.stack([p[f"{n}.weight"].abs().amax(0) for n in names]).amax(0)
            diag = smooth_scales(stats[key], wmax, opts.smooth_strength) if learn else torch.ones_like(wmax)
            # a shift after a norm needs an explicit operator, so only the full transform learns one
            shift = opts.shift and opts.transform in ("full", "block")
            self.t[key] = AffineTransform(diag[None], shift=shift, learn_matrix=learn)
        wo = p["self_attn.o_proj.weight"].abs().amax(0).view(c.num_kv_heads, c.kv_groups, c.head_dim).amax(1)
        diag = smooth_scales(stats["attn_vo"], wo, opts.smooth_strength) if learn else torch.ones_like(wo)
        self.t["attn_vo"] = AffineTransform(diag, shift=opts.shift and learn, learn_matrix=learn)
        fmt = opts.fmt
        for n in LINEARS:
            fmt.check(tuple(p[f"{n}.weight"].shape), f"layer {layer.index} {n}")
        self.clips = {n: Clipping(p[f"{n}.weight"].shape[0], p[f"{n}.weight"].shape[1] // fmt.group_size, dev)
                      for n in LINEARS} if opts.lwc else {}
        self.dev = dev
        self.block = opts.block_of(c.hidden_size)

    def masks(self, epoch: int) -> dict[str, torch.Tensor]:
        """The gradual masks of ``epoch``: the band grows to the whole matrix (``full``, and ``attn_vo``'s
        per-head blocks) or to the whole diagonal block (``block``) by the last epoch; ``diagonal`` stays 1 wide."""
        e, learn = self.opts.epochs, self.opts.transform in ("full", "block")
        out = {}
        for key, t in self.t.items():
            block = self.block if key in IN_PROJ else None
            band = band_width(block or t.d, epoch, e) if learn else 1
            out[key] = gradual_mask(t.d, band, self.opts.alpha, block=block, device=self.dev)
        return out

    def parameters(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = []
        tp = [q for t in self.t.values() for q in (t.A, t.shift) if q is not None and q.requires_grad]
        if tp:
            groups.append({"params": tp, "lr": self.opts.lr})
        cp = [q for clip in self.clips.values() for q in clip.parameters()]
        if cp:
            groups.append({"params": cp, "lr": self.opts.lwc_lr})
        return groups

    def _mats(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m: dict[str, torch.Tensor] = {}
        for key in IN_PROJ:
            m[key] = self.t[key].matrix(masks[key])[0]
            m[key + "_inv"] = block_inverse(m[key], self.block)
        vo = self.t["attn_vo"]
        blocks = vo.matrix(masks["attn_vo"])
        inv = torch.linalg.inv(blocks)
        g = self.c.kv_groups
        m["vo_kv"], m["vo_kv_inv"] = torch.block_diag(*blocks), torch.block_diag(*inv)
        m["vo_q"] = torch.block_diag(*[blocks[i] for i in range(vo.n) for _ in range(g)])
        m["vo_q_inv"] = torch.block_diag(*[inv[i] for i in range(vo.n) for _ in range(g)])
        return m

    def _shift_q(self) -> torch.Tensor | None:
        s = self.t["attn_vo"].shift
        if s is None:
            return None
        return s.view(self.c.num_kv_heads, 1, self.c.head_dim).expand(-1, self.c.kv_groups, -1).reshape(-1)

    def transformed(self, name: str, m: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weight the quantizer sees: ``W·Cᵀ`` (and ``T^{-ᵀ}·`` for v_proj, ``·T_qᵀ`` for o_proj)."""
        w = self.layer.params[f"{name}.weight"]
        if self.opts.transform == "identity":
            return w
        key = "attn_in" if name.startswith("self_attn.") and name != "self_attn.o_proj" else "mlp_in"
        if name == "self_attn.o_proj":
            return w @ m["vo_q"].T
        if name == "mlp.down_proj":
            return w
        w = w @ m[key].T
        return m["vo_kv_inv"].T @ w if name == "self_attn.v_proj" else w

    def effective(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Overrides for :meth:`DecoderLayer.forward`: effective weights and biases in the original space."""
        fmt, p = self.opts.fmt, self.layer.params
        m = self._mats(masks) if self.opts.transform != "identity" else {}
        out: dict[str, torch.Tensor] = {}
        for name in LINEARS:
            wq = fake_quantize(self.transformed(name, m), fmt, self.clips.get(name))
            if self.opts.transform == "identity" or name == "mlp.down_proj":
                out[f"{name}.weight"] = wq
                continue
            if name == "self_attn.o_proj":
                we, shift = wq @ m["vo_q_inv"].T, self._shift_q()
            else:
                key = "attn_in" if name.startswith("self_attn.") else "mlp_in"
                we = wq @ m[key + "_inv"].T
                if name == "self_attn.v_proj":
                    we = m["vo_kv"].T @ we
                shift = self.t[key].shift
            out[f"{name}.weight"] = we
            if shift is not None:
                bias = (p[f"{name}.weight"] - we) @ shift
                old = p.get(f"{name}.bias")
                out[f"{name}.bias"] = bias if old is None else old + bias
        return out

    @torch.no_grad()
    def deployed(self, masks: dict[str, torch.Tensor]) -> tuple[dict[str, QuantizedTensor], dict[str, torch.Tensor],
                                                                dict[str, tuple[torch.Tensor, torch.Tensor | None]]]:
        """Integer weights, merged float tensors and unmerged transforms of the final state."""
        fmt, p, c = self.opts.fmt, self.layer.params, self.c
        m = self._mats(masks) if self.opts.transform != "identity" else {}
        quantized = {n: quantize(self.transformed(n, m), fmt, self.clips.get(n)) for n in LINEARS}
        floats: dict[str, torch.Tensor] = {}
        transforms: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        if self.opts.transform == "identity":
            return quantized, floats, transforms
        for key, norm in NORM_OF.items():
            cmat, shift = m[key], _nonzero(self.t[key].shift)
            if norm in self.layer.identity_norms:
                # a unified norm was folded away: no norm weight takes the diagonal, so all of C⁻¹ is stored
                d = torch.ones(cmat.shape[0], device=cmat.device)
                u_inv = m[key + "_inv"]
                block = 1 if self.opts.transform == "diagonal" else self.block
            else:
                d = cmat.diagonal()
                floats[f"{norm}.weight"] = p[f"{norm}.weight"] / d          # diagonal part merged into the norm
                u_inv = block_inverse(cmat / d[None, :], self.block)         # C = U·D, C⁻¹ = D⁻¹·U⁻¹
                block = self.block
            eye = torch.eye(len(d), device=d.device)
            if not torch.equal(u_inv, eye) or shift is not None:
                stored = u_inv.T if block is None else diagonal_blocks(u_inv.T, block)
                transforms[norm] = (stored.contiguous(), None if shift is None else (shift / d).detach().clone())
            if shift is not None:
                for n in IN_PROJ[key]:
                    b = p[f"{n}.weight"] @ shift + p.get(f"{n}.bias", 0)
                    floats[f"{n}.bias"] = b
        s_vo = _nonzero(self.t["attn_vo"].shift)
        if s_vo is not None:
            kv = floats.get("self_attn.v_proj.bias", p.get("self_attn.v_proj.bias"))
            kv = (torch.zeros(c.kv_dim, device=self.dev) if kv is None else kv) - s_vo
            floats["self_attn.v_proj.bias"] = kv @ m["vo_kv_inv"]
            b_o = p["self_attn.o_proj.weight"] @ self._shift_q()
            floats["self_attn.o_proj.bias"] = b_o + p["self_attn.o_proj.bias"] if "self_attn.o_proj.bias" in p else b_o
        return quantized, floats, transforms

    def enforce(self, masks: dict[str, torch.Tensor]) -> None:
        for key, t in self.t.items():
            if t.A.requires_grad:
                t.enforce_dominance(masks[key])


def _nonzero(shift: torch.Tensor | None) -> torch.Tensor | None:
    """A learned shift, or None when there is none or it stayed zero (then nothing needs to store it)."""
    return None if shift is None or not bool(shift.detach().any()) else shift.detach()


@torch.no_grad()
def _activation_stats(layer: DecoderLayer, inputs: torch.Tensor, batch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """FP outputs of ``inputs`` and per-channel |max| of the inputs of q/k/v, gate/up and o_proj (at kv width)."""
    c = layer.config
    acc: dict[str, torch.Tensor] = {}

    def capture(name: str, x: torch.Tensor) -> None:
        key = {"self_attn.q_proj": "attn_in", "mlp.gate_proj": "mlp_in", "self_attn.o_proj": "attn_vo"}.get(name)
        if key is not None:
            amax = x.abs().reshape(-1, x.shape[-1]).amax(0)
            acc[key] = amax if key not in acc else torch.maximum(acc[key], amax)

    outs = torch.cat([layer(inputs[i:i + batch], capture=capture) for i in range(0, len(inputs), batch)])
    acc["attn_vo"] = acc["attn_vo"].view(c.num_kv_heads, c.kv_groups, c.head_dim).amax(1)
    return outs, acc


def affine_quantize_block(layer: DecoderLayer, inputs: torch.Tensor, opts: AffineOptions, *,
                          fp_inputs: torch.Tensor | None = None,
                          progress: Callable[[int, float], None] | None = None) -> BlockResult:
    """Learn AffineQuant transforms and clipping for one block and quantize it.

    ``inputs`` ``[n, seq, hidden]`` are the quantized model's inputs to this block;
    ``fp_inputs`` the full-precision model's (default: the same). ``progress(epoch, loss)``
    is called after each epoch.

    Raises:
        UsageError: the group size does not divide a linear's input width, or bad options.
    """
    fp_inputs = inputs if fp_inputs is None else fp_inputs
    bs = opts.batch_size
    targets, act = _activation_stats(layer, fp_inputs, bs)
    learner = _Learner(layer, opts, act)
    groups = learner.parameters()
    losses: list[float] = []
    masks = learner.masks(max(opts.epochs - 1, 0))
    if opts.epochs > 0 and groups:
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        for epoch in range(opts.epochs):
            masks = learner.masks(epoch)
            total = 0.0
            for i in range(0, len(inputs), bs):
                with torch.enable_grad():
                    out = layer(inputs[i:i + bs], learner.effective(masks))
                    loss = torch.nn.functional.mse_loss(out, targets[i:i + bs])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                learner.enforce(masks)
                total += float(loss.detach()) * len(out)
            losses.append(total / len(inputs))
            if progress is not None:
                progress(epoch, losses[-1])
    with torch.no_grad():
        eff = learner.effective(masks)
        outputs = torch.cat([layer(inputs[i:i + bs], eff) for i in range(0, len(inputs), bs)])
        final = float(torch.nn.functional.mse_loss(outputs, targets))
    quantized, floats, transforms = learner.deployed(masks)
    stats = {"loss_per_epoch": losses, "final_mse": final,
             "dominance_violations": {k: t.violations for k, t in learner.t.items()},
             "dominance_checks": {k: t.checks for k, t in learner.t.items()}}
    return BlockResult(quantized, floats, transforms, outputs, targets, stats)
