# ruff: noqa: RUF002 - formulas quote the standard's Greek letters
"""Block-wise W·A post-training quantization with channel compensation and cascaded reconstruction (§7.3.1.2).

Run on the Hugging Face model of ``Model/`` (BertModel or a LLaMA-family causal LM), one
transformer block at a time, every ``nn.Linear`` of the block swapped for a :class:`QLinear`:

* weights: per-output-channel symmetric ``bits``-bit codes, step ``s_w``;
* activations: each linear's input quantized per tensor (asymmetric, ``act_bits``), step ``s_a``;
* channel compensation (a): per input channel, shift ``b`` (the channel's mid-range) and scale
  ``c ≥ 1`` (its half-range over a threshold τ picked per linear by grid search on the layer's
  output error); the quantizer sees ``(x - b) / c``, the linear gets ``W·diag(c)`` and ``bias + W·b``;
* cascaded reconstruction (b): step 1 learns ``s_w`` and ``s_a`` jointly, each bounded to
  ``s₀·(1 ± θ)`` around its offline statistic (``s = s₀(1 + θ·tanh p)``), minimizing the block
  output MSE (formula (32)); step 2 learns each weight's rounding direction (formula (33), soft
  rounding with an annealed regularizer pushing it to 0 or 1, then hardened).

Blocks are processed in order; block ℓ's quantized input is block ℓ-1's quantized output,
its target the float block's output on the float input.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.errors import UnsupportedError

THETA = 0.3
"""θ of formula (32): learned steps stay within ±30 % of the offline statistics."""
_ZETA, _GAMMA = 1.1, -0.1
COMP_QUANTILES = (0.0, 1.0, 0.999, 0.99, 0.95, 0.9, 0.75)
"""Candidate thresholds τ of channel compensation, as quantiles of the channels' half-ranges (1.0: shift
only; 0.0: no compensation, so a linear whose held-out error it does not lower keeps none)."""


@dataclass(frozen=True)
class LinearResult:
    """What one quantized linear stores: compensated float weight, codes, steps, compensation."""

    name: str
    codes: np.ndarray
    w_scale: np.ndarray
    bias: np.ndarray | None
    a_scale: float
    a_zero: int
    comp_scale: np.ndarray | None
    comp_shift: np.ndarray | None
    rel_error: float


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise UnsupportedError("--quant ptq needs PyTorch", hint="pip install 'ptmpack[torch]'") from None
    return torch


def _modules(torch: Any) -> Any:
    nn, fn = torch.nn, torch.nn.functional

    def round_ste(x: Any) -> Any:
        return (torch.round(x) - x).detach() + x

    class QLinear(nn.Module):
        """A linear with fake-quantized input and weight, learnable steps and rounding."""

        def __init__(self, lin: Any, bits: int, act_bits: int, shift: Any, scale: Any, lo: float, hi: float) -> None:
            super().__init__()
            w = lin.weight.detach().double()
            b = lin.bias.detach().double() if lin.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
            self.shift, self.scale = shift.float(), scale.float()
            self.register_buffer("w", (w * scale.double()[None, :]).float())
            self.register_buffer("b", (b + w @ shift.double()).float())
            self.qw = 2 ** (bits - 1) - 1
            self.qa_lo, self.qa_hi = -(2 ** (act_bits - 1)), 2 ** (act_bits - 1) - 1
            self.sw0 = (self.w.abs().amax(1).clamp_min(1e-8) / self.qw)
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            self.sa0 = torch.tensor(max(hi - lo, 1e-8) / (self.qa_hi - self.qa_lo))
            self.za = float(np.clip(np.round(self.qa_lo - lo / float(self.sa0)), self.qa_lo, self.qa_hi))
            self.pw = nn.Parameter(torch.zeros_like(self.sw0))
            self.pa = nn.Parameter(torch.zeros(()))
            self.v: Any = None
            self.hard = False

        def steps(self) -> tuple[Any, Any]:
            return self.sw0 * (1 + THETA * torch.tanh(self.pw)), self.sa0 * (1 + THETA * torch.tanh(self.pa))

        def start_rounding(self) -> None:
            sw = self.steps()[0].detach()
            frac = (self.w / sw[:, None]) - torch.floor(self.w / sw[:, None])
            h = frac.clamp(0.01, 0.99)
            self.v = nn.Parameter(-torch.log((_ZETA - _GAMMA) / (h - _GAMMA) - 1))

        def h(self) -> Any:
            return torch.clamp(torch.sigmoid(self.v) * (_ZETA - _GAMMA) + _GAMMA, 0, 1)

        def codes(self) -> Any:
            sw = self.steps()[0]
            if self.v is None:
                q = round_ste(self.w / sw[:, None])
            else:
                h = (self.h() >= 0.5).float() if self.hard else self.h()
                q = torch.floor(self.w / sw[:, None]).detach() + h
            return torch.clamp(q, -self.qw - 1, self.qw)

        def forward(self, x: Any) -> Any:
            sw, sa = self.steps()
            xc = (x - self.shift) / self.scale
            xq = (torch.clamp(round_ste(xc / sa) + self.za, self.qa_lo, self.qa_hi) - self.za) * sa
            return fn.linear(xq, self.codes() * sw[:, None], self.b)

    return QLinear


def _layers(model: Any, family: str) -> list[Any]:
    return list(model.encoder.layer) if family == "bert" else list(model.model.layers)


def _linears(block: Any, torch: Any) -> list[tuple[str, Any]]:
    return [(n, m) for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]


def _set(block: Any, name: str, module: Any) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, leaf, module)


def _out(y: Any) -> Any:
    return y[0] if isinstance(y, (tuple, list)) else y


def _compensation(torch: Any, qlinear: Any, lin: Any, x: Any, bits: int, act_bits: int) -> Any:
    """Channel compensation of one linear's input ``x`` [tokens, C]; returns the chosen QLinear.

    The threshold τ is chosen by cross-validation: channel statistics from the first half of the
    calibration tokens, the layer's output error measured on the second half, so a τ that clips
    values the statistics did not see loses. ``q = 1`` (τ = the largest half-range) is the
    shift-only candidate, ``q = 0`` no compensation at all; the final shift and scale use all tokens.
    """

    def stats(t: Any, q: float) -> tuple[Any, Any]:
        if q == 0.0:  # the identity: no compensation
            return torch.zeros(t.shape[-1]), torch.ones(t.shape[-1])
        lo, hi = t.amin(0), t.amax(0)
        shift, half = (hi + lo) / 2, ((hi - lo) / 2).clamp_min(1e-8)
        tau = torch.quantile(half, q) if q < 1.0 else half.max()
        return shift, torch.clamp(half / tau, min=1.0)

    def build(t: Any, q: float) -> Any:
        shift, scale = stats(t, q)
        xc = (t - shift) / scale
        return qlinear(lin, bits, act_bits, shift, scale, float(xc.min()), float(xc.max()))

    half_n = max(1, x.shape[0] // 2)
    fit, check = x[:half_n], x[half_n:] if x.shape[0] > 1 else x
    with torch.no_grad():
        ref = lin(check)
        errs = {q: float(((build(fit, q)(check) - ref) ** 2).mean()) for q in COMP_QUANTILES}
    return build(x, min(errs, key=errs.get))


def calibration_batches(windows: np.ndarray, start: int | None, tokens: int | None = None
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The calibration windows as model inputs: ``(ids [B, T], valid [B, T] bool)`` per batch.

    ``start`` None: every window is one sequence. Otherwise the windows are an encoder's packed
    sentences (:func:`ptmpack.compress.eval.probe.calibration_windows`), each beginning with
    token ``start`` ([CLS]): the stream is split back into its sentences, each run as its own
    sequence (positions from 0, attention inside the sentence) as the encoder sees text at
    inference, and consecutive sentences are padded into batches of about ``tokens`` tokens
    (default: the window length). Packed windows attend across sentences and continue the
    positions, which shifts the activation statistics (measured on MiniLM: 2.8 % of held-out
    attention-output values fell outside the per-channel calibration range, 0.24 % per sentence).
    """
    windows = np.asarray(windows, np.int64)
    if start is None or windows.size == 0 or windows[0, 0] != start:
        return [(row[None], np.ones((1, row.size), bool)) for row in windows]
    flat = windows.reshape(-1)
    sentences = np.split(flat, np.flatnonzero(flat == start)[1:])
    budget = tokens or windows.shape[1]
    batches: list[tuple[np.ndarray, np.ndarray]] = []
    group: list[np.ndarray] = []
    for i, sent in enumerate(sentences):
        group.append(sent)
        if sum(g.size for g in group) >= budget or i == len(sentences) - 1:
            width = max(g.size for g in group)
            ids = np.zeros((len(group), width), np.int64)
            valid = np.zeros((len(group), width), bool)
            for r, g in enumerate(group):
                ids[r, : g.size], valid[r, : g.size] = g, True
            batches.append((ids, valid))
            group = []
    return batches


def quantize_blocks(model_dir: Path, family: str, windows: np.ndarray, bits: int, act_bits: int, *,
                    compensate: bool, reconstruct: bool, epochs: int, rounding: bool = True,
                    sentence_start: int | None = None, seed: int = 0,
                    progress: Any = None) -> tuple[dict[str, LinearResult], np.ndarray]:
    """Quantize every linear of every block.

    ``reconstruct`` runs the cascaded reconstruction's step 1 (steps) and, with ``rounding``, its
    step 2 (rounding); ``rounding=False`` stops after step 1 (the ablation's middle row).
    ``sentence_start``: see :func:`calibration_batches` (encoders: calibrate per sentence).
    Statistics and losses use real tokens only, never padding.

    Returns the result per linear (full module name) and the quantized last block's output on
    the first batch (for checking that the stored package computes the same).

    Raises:
        UnsupportedError: PyTorch or transformers missing, or the checkpoint does not load.
    """
    torch = _torch()
    from ptmpack.compress.tree.torch_hf import load_hf

    torch.manual_seed(seed)
    model = load_hf(model_dir, family, purpose="--quant ptq")
    for p in model.parameters():
        p.requires_grad_(False)
    QLinear = _modules(torch)
    layers = _layers(model, family)
    prefix = "encoder.layer" if family == "bert" else "model.layers"
    captured: list[tuple[Any, dict[str, Any]]] = []

    def grab(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kw = {k: v for k, v in kwargs.items()
              if k not in ("hidden_states", "past_key_values", "past_key_value", "use_cache")}
        captured.append(((args[0] if args else kwargs["hidden_states"]).detach(), kw))
        raise _Stop

    batches = calibration_batches(windows, sentence_start)
    hook = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        for ids, valid in batches:
            extra = {"attention_mask": torch.tensor(valid.astype(np.int64))} if family == "bert" else {"use_cache": False}
            with contextlib.suppress(_Stop):
                model(input_ids=torch.tensor(ids), **extra)
    hook.remove()
    kws = [kw for _, kw in captured]
    masks = [torch.tensor(valid) for _, valid in batches]
    x_fp = [x for x, _ in captured]
    x_q = list(x_fp)
    results: dict[str, LinearResult] = {}
    for li, block in enumerate(layers):
        with torch.no_grad():
            y_fp = [_out(block(x, **kw)).detach() for x, kw in zip(x_fp, kws, strict=True)]
        inputs: dict[str, list[Any]] = {}
        current: dict[str, Any] = {}
        hooks = [m.register_forward_pre_hook(
                     lambda mod, a, n=n, seen=inputs, cur=current: seen.setdefault(n, []).append(a[0][cur["m"]].detach()))
                 for n, m in _linears(block, torch)]
        with torch.no_grad():
            for x, kw, m in zip(x_q, kws, masks, strict=True):
                current["m"] = m
                block(x, **kw)
        for h in hooks:
            h.remove()
        for name, lin in _linears(block, torch):
            xin = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs[name]])
            if compensate:
                q = _compensation(torch, QLinear, lin, xin, bits, act_bits)
            else:
                ones = torch.ones(xin.shape[-1])
                q = QLinear(lin, bits, act_bits, torch.zeros(xin.shape[-1]), ones, float(xin.min()), float(xin.max()))
            _set(block, name, q)
        qs = [(n, m) for n, m in block.named_modules() if isinstance(m, QLinear)]
        if reconstruct and epochs > 0:
            _reconstruct(torch, block, qs, list(zip(x_q, kws, masks, y_fp, strict=True)), epochs, rounding=rounding)
        with torch.no_grad():
            new_q = [_out(block(x, **kw)).detach() for x, kw in zip(x_q, kws, strict=True)]
            for n, m in qs:
                sw, sa = m.steps()
                w_hat = m.codes() * sw[:, None]
                err = float(torch.linalg.norm(w_hat - m.w) / torch.linalg.norm(m.w).clamp_min(1e-12))
                comp = compensate and bool((m.scale != 1).any() or (m.shift != 0).any())
                results[f"{prefix}.{li}.{n}"] = LinearResult(
                    f"{prefix}.{li}.{n}", m.codes().round().to(torch.int8).numpy(), sw.double().numpy(),
                    m.b.double().numpy(), float(sa), int(m.za),
                    m.scale.double().numpy() if comp else None, m.shift.double().numpy() if comp else None, err)
        x_fp, x_q = y_fp, new_q
        if progress is not None:
            progress("ptq", li + 1, len(layers))
    return results, x_q[0].double().numpy()


class _Stop(Exception):
    """Raised by the capture hook to skip the rest of the forward pass."""


def _reconstruct(torch: Any, block: Any, qs: list[tuple[str, Any]], data: list[tuple[Any, Any, Any, Any]],
                 epochs: int, *, rounding: bool = True) -> None:
    """Cascaded reconstruction on the block output MSE over real tokens; ``data``: (x_q, kwargs, valid, y_fp) per batch.

    Step 1 learns the bounded steps; step 2 (unless not ``rounding``) each weight's rounding.
    """
    norm = max(float(torch.stack([(y[m] ** 2).mean() for _, _, m, y in data]).mean()), 1e-12)

    def error(x: Any, kw: dict[str, Any], m: Any, y: Any) -> Any:
        return ((_out(block(x, **kw)) - y)[m] ** 2).mean() / norm

    params = [p for _, m in qs for p in (m.pw, m.pa)]
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(epochs):
        for x, kw, m, y in data:
            opt.zero_grad()
            error(x, kw, m, y).backward()
            opt.step()
    for _, m in qs:
        m.pw.requires_grad_(False)
        m.pa.requires_grad_(False)
    if not rounding:
        return
    for _, m in qs:
        m.start_rounding()
    opt = torch.optim.Adam([m.v for _, m in qs], lr=1e-2)
    total = max(1, 2 * epochs * len(data))
    step = 0
    for _ in range(2 * epochs):
        for x, kw, m, y in data:
            beta = 20 - (20 - 2) * step / total
            opt.zero_grad()
            reg = sum((1 - (2 * q.h() - 1).abs() ** beta).mean() for _, q in qs)
            (error(x, kw, m, y) + 0.01 * step / total * reg).backward()
            opt.step()
            step += 1
    for _, m in qs:
        m.hard = True
