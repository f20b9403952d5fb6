# ruff: noqa: RUF002 - formulas quote the standard's Greek letters
"""Block-wise W·A post-training quantization with channel compensation and cascaded reconstruction (§7.3.1.2).

Run on the package's own IR in PyTorch (:mod:`ptmpack.compress.eval.torch_span`), one block of
the main graph at a time (:func:`ptmpack.compress.eval.blocks.plan_blocks`: one per layer), every
linear of the block replaced by a :class:`QLinear`:

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
its target the float block's output on the float input. Resident: one block's weights (read with
``pread`` when its turn comes), the block's float and quantized inputs and its float output for
every calibration batch (three ``tokens × hidden`` float32 states), and the activations inside the
block during one batch's forward and backward. A finished linear is handed to the caller and
dropped. Because the IR is what runs, the model may have any shape ptmpack's own steps leave:
per-layer FFN widths, pruned BERT heads, unified norms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.tree.weights import WeightFiles
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


def _modules(torch: Any) -> Any:
    nn, fn = torch.nn, torch.nn.functional

    def round_ste(x: Any) -> Any:
        return (torch.round(x) - x).detach() + x

    class QLinear(nn.Module):
        """A linear (weight ``[out, in]``, bias or None) with fake-quantized input and weight, learnable steps and
        rounding."""

        def __init__(self, weight: Any, bias: Any, bits: int, act_bits: int, shift: Any, scale: Any, lo: float,
                     hi: float) -> None:
            super().__init__()
            w = weight.detach().double()
            b = bias.detach().double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                             device=w.device)
            self.shift, self.scale = shift.float(), scale.float()
            self.register_buffer("w", (w * scale.double()[None, :]).float())
            self.register_buffer("b", (b + w @ shift.double()).float())
            self.qw = 2 ** (bits - 1) - 1
            self.qa_lo, self.qa_hi = -(2 ** (act_bits - 1)), 2 ** (act_bits - 1) - 1
            self.sw0 = (self.w.abs().amax(1).clamp_min(1e-8) / self.qw)
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            self.sa0 = torch.tensor(max(hi - lo, 1e-8) / (self.qa_hi - self.qa_lo), device=w.device)
            self.za = float(np.clip(np.round(self.qa_lo - lo / float(self.sa0)), self.qa_lo, self.qa_hi))
            self.pw = nn.Parameter(torch.zeros_like(self.sw0))
            self.pa = nn.Parameter(torch.zeros((), device=w.device))
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


def _compensation(torch: Any, qlinear: Any, weight: Any, bias: Any, x: Any, bits: int, act_bits: int) -> Any:
    """Channel compensation of one linear's input ``x`` [tokens, C]; returns the chosen QLinear.

    The threshold τ is chosen by cross-validation: channel statistics from the first half of the
    calibration tokens, the layer's output error measured on the second half, so a τ that clips
    values the statistics did not see loses. ``q = 1`` (τ = the largest half-range) is the
    shift-only candidate, ``q = 0`` no compensation at all; the final shift and scale use all tokens.
    """

    def stats(t: Any, q: float) -> tuple[Any, Any]:
        if q == 0.0:  # the identity: no compensation
            return torch.zeros(t.shape[-1], device=t.device), torch.ones(t.shape[-1], device=t.device)
        lo, hi = t.amin(0), t.amax(0)
        shift, half = (hi + lo) / 2, ((hi - lo) / 2).clamp_min(1e-8)
        tau = torch.quantile(half, q) if q < 1.0 else half.max()
        return shift, torch.clamp(half / tau, min=1.0)

    def build(t: Any, q: float) -> Any:
        shift, scale = stats(t, q)
        xc = (t - shift) / scale
        return qlinear(weight, bias, bits, act_bits, shift, scale, float(xc.min()), float(xc.max()))

    half_n = max(1, x.shape[0] // 2)
    fit, check = x[:half_n], x[half_n:] if x.shape[0] > 1 else x
    with torch.no_grad():
        ref = torch.nn.functional.linear(check, weight, bias)
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


Finished = Callable[[LinearResult], None]
"""Called with each quantized linear as its block completes (the caller stores it; nothing here keeps it)."""


def quantize_blocks(tree: Path, weights: WeightFiles, windows: np.ndarray, bits: int, act_bits: int, *,
                    compensate: bool, reconstruct: bool, epochs: int, finished: Finished, rounding: bool = True,
                    sentence_start: int | None = None, seed: int = 0, progress: Any = None,
                    device: str = "cpu") -> np.ndarray:
    """Quantize every linear of every layer of ``tree``'s model (weights read from ``weights``, its ``Model/``
    files), block by block, handing each to ``finished``.

    ``reconstruct`` runs the cascaded reconstruction's step 1 (steps) and, with ``rounding``, its
    step 2 (rounding); ``rounding=False`` stops after step 1 (the ablation's middle row).
    ``sentence_start``: see :func:`calibration_batches` (encoders: calibrate per sentence).
    Statistics and losses use real tokens only, never padding. ``device`` (``--device cuda``): where each
    block's weights, the calibration states and the training live; the IR's prologue and the files stay on the CPU.

    Returns the quantized last block's output on the first batch (for checking that the stored
    package computes the same).

    Raises:
        UnsupportedError: PyTorch missing, a model with no linear in its layers, or an operator
            with no torch kernel.
    """
    from ptmpack.compress.spec import require_torch

    torch = require_torch("--quant ptq")  # before torch_span, which imports torch
    from ptmpack.compress.eval.blocks import BlockRunner, layer_of, plan_blocks
    from ptmpack.compress.eval.probe import feeds_for
    from ptmpack.compress.eval.torch_span import TorchSpan, as_torch
    from ptmpack.compress.quant.linear import find_targets, load_model

    torch.manual_seed(seed)
    model = load_model(tree)
    targets = [t.weight for t in find_targets(model) if not t.transposed and layer_of(t.prefix) != t.prefix]
    if not targets:
        raise UnsupportedError(f"{tree}: the model has no linear inside a layer for --quant ptq to quantize")
    blocks = plan_blocks(model, targets)
    batches = calibration_batches(windows, sentence_start)
    feeds = []
    for ids, valid in batches:
        feed = feeds_for(model, ids)
        if "attention_mask" in feed:
            feed["attention_mask"] = valid.astype(np.int64)
        feeds.append(feed)
    runner = BlockRunner(model, weights, feeds, blocks)
    ex, ops = runner.executor, model.main_graph.operators
    x_fp = [{n: as_torch(v, device) for n, v in state.items()} for state in runner.state]
    runner.state = []
    x_q = list(x_fp)
    masks = [as_torch(valid, device) for _, valid in batches]
    QLinear = _modules(torch)
    simulated = None
    for done, block in enumerate(blocks, 1):
        params = {n: as_torch(v, device) for n, v in runner.params(block.start, block.stop).items()}
        span = TorchSpan(ex, block.start, block.stop)
        live = ex.live_at(block.stop)
        outs = [n for n in live if n not in x_fp[0]]  # what the block makes: the residual stream / hidden state
        with torch.no_grad():
            y_fp = [span.run(x, params, live) for x in x_fp]
            seen: dict[str, list[Any]] = {u.weight: [] for u in block.uses}
            for x, m in zip(x_q, masks, strict=True):
                span.run(x, params, outs, swap={u.weight: _recorder(torch, seen[u.weight], m) for u in block.uses})
        qs: dict[str, Any] = {}
        for u in block.uses:
            xin = torch.cat(seen.pop(u.weight))
            w, b = params[u.weight], params.get((ops[u.op].inputs.get("Bias") or ("",))[0])
            if compensate:
                qs[u.weight] = _compensation(torch, QLinear, w, b, xin, bits, act_bits)
            else:
                zeros, ones = torch.zeros(xin.shape[-1], device=device), torch.ones(xin.shape[-1], device=device)
                qs[u.weight] = QLinear(w, b, bits, act_bits, zeros, ones, float(xin.min()), float(xin.max()))
        swap = {w: (lambda x, weight, bias, q=q: q(x)) for w, q in qs.items()}
        if reconstruct and epochs > 0:
            targets_fp = [{n: y[n] for n in outs} for y in y_fp]
            _reconstruct(torch, partial(span.run, params=params, outputs=outs, swap=swap), list(qs.values()),
                         list(zip(x_q, masks, targets_fp, strict=True)), epochs, rounding=rounding)
        with torch.no_grad():
            x_q = [span.run(x, params, live, swap=swap) for x in x_q]
            for weight, q in qs.items():
                finished(_result(torch, weight[: -len(".weight")], q, compensate))
        x_fp, simulated = y_fp, x_q[0][outs[0]]
        del params, qs, swap
        if progress is not None:
            progress("ptq", done, len(blocks))
    return simulated.double().cpu().numpy()


def _recorder(torch: Any, into: list[Any], valid: Any) -> Any:
    """A swap for a linear that records its input on the real tokens, then computes the linear unchanged."""

    def run(x: Any, weight: Any, bias: Any) -> Any:
        into.append(x[valid].detach())
        return torch.nn.functional.linear(x, weight, bias)

    return run


def _result(torch: Any, name: str, q: Any, compensate: bool) -> LinearResult:
    sw, sa = q.steps()
    w_hat = q.codes() * sw[:, None]
    err = float(torch.linalg.norm(w_hat - q.w) / torch.linalg.norm(q.w).clamp_min(1e-12))
    comp = compensate and bool((q.scale != 1).any() or (q.shift != 0).any())
    def host(t: Any) -> np.ndarray:
        return t.double().cpu().numpy()

    return LinearResult(name, q.codes().round().to(torch.int8).cpu().numpy(), host(sw), host(q.b), float(sa),
                        int(q.za), host(q.scale) if comp else None, host(q.shift) if comp else None, err)


def _reconstruct(torch: Any, forward: Callable[[Any], dict[str, Any]], qs: list[Any],
                 data: list[tuple[Any, Any, dict[str, Any]]], epochs: int, *, rounding: bool = True) -> None:
    """Cascaded reconstruction on the block output MSE over real tokens.

    ``forward(state)`` runs the block with the QLinears ``qs``; ``data``: (quantized input state,
    real-token mask, float output by name) per batch. Step 1 learns the bounded steps; step 2
    (unless not ``rounding``) each weight's rounding.
    """
    norm = max(float(torch.stack([(y[n][m] ** 2).mean() for _, m, y in data for n in y]).mean()), 1e-12)

    def error(x: Any, m: Any, y: dict[str, Any]) -> Any:
        got = forward(x)
        return sum(((got[n] - y[n])[m] ** 2).mean() for n in y) / norm

    opt = torch.optim.Adam([p for q in qs for p in (q.pw, q.pa)], lr=1e-2)
    for _ in range(epochs):
        for x, m, y in data:
            opt.zero_grad()
            error(x, m, y).backward()
            opt.step()
    for q in qs:
        q.pw.requires_grad_(False)
        q.pa.requires_grad_(False)
    if not rounding:
        return
    for q in qs:
        q.start_rounding()
    opt = torch.optim.Adam([q.v for q in qs], lr=1e-2)
    total = max(1, 2 * epochs * len(data))
    step = 0
    for _ in range(2 * epochs):
        for x, m, y in data:
            beta = 20 - (20 - 2) * step / total
            opt.zero_grad()
            reg = sum((1 - (2 * q.h() - 1).abs() ** beta).mean() for q in qs)
            (error(x, m, y) + 0.01 * step / total * reg).backward()
            opt.step()
            step += 1
    for q in qs:
        q.hard = True
