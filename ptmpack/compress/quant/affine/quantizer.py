# ruff: noqa: RUF002 - formulas use mathematical symbols
"""Group-wise uniform weight quantization in torch, with learnable weight clipping (LWC).

The integer convention is compressed-tensors' (what ``pack-quantized`` stores): signed codes
``q ∈ [−2^(b−1), 2^(b−1) − 1]``, one scale (and, when asymmetric, one zero point in the same
signed range) per group of ``group_size`` consecutive input columns of a row; dequantization is
``(q − zero_point) · scale``. Ranges always include zero (as compressed-tensors computes them),
so the zero point is representable. Without clipping (``clip`` None) this is plain round-to-nearest
min/max quantization (RTN).

LWC (OmniQuant, reused by AffineQuant): per group, the upper and lower bounds are shrunk by
``sigmoid(θ)`` with learnable ``θ`` (initialised at 4, i.e. 0.982); rounding uses the
straight-through estimator so gradients reach θ and, through the weight, the transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptmpack.errors import UsageError

CLIP_INIT = 4.0
SCALE_MIN = 1e-8


@dataclass(frozen=True)
class QuantFormat:
    """Bit width, group size (input columns per scale) and symmetry of a weight quantization."""

    bits: int
    group_size: int
    symmetric: bool = False

    def __post_init__(self) -> None:
        if self.bits not in (2, 3, 4, 8):
            raise UsageError(f"unsupported weight bit width {self.bits} (choose 2, 3, 4 or 8)")
        if self.group_size < 1:
            raise UsageError(f"group size must be positive, got {self.group_size}")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def check(self, shape: tuple[int, ...], where: str) -> None:
        """Raises UsageError when the group size does not divide the input width (no ragged groups)."""
        if len(shape) != 2 or shape[1] % self.group_size:
            raise UsageError(f"{where}: group size {self.group_size} does not divide the input width "
                             f"of a {tuple(shape)} weight", hint="choose a --group-size that divides it (e.g. 64)")


@dataclass(frozen=True)
class QuantizedTensor:
    """A quantized ``[out, in]`` weight: int8 codes, float32 group scales ``[out, in/g]``, zero points (or None)."""

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    fmt: QuantFormat

    def dequantize(self) -> torch.Tensor:
        """``(q − zero_point) · scale`` as float32 ``[out, in]``."""
        g = self.fmt.group_size
        q = self.q.to(torch.float32)
        if self.zero_point is not None:
            q = q - self.zero_point.to(torch.float32).repeat_interleave(g, dim=1)
        return q * self.scale.repeat_interleave(g, dim=1)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest (ties to even) in the forward pass, identity in the backward pass."""
    return (x.round() - x).detach() + x


class Clipping(torch.nn.Module):
    """Learnable clipping factors of one weight: ``sigmoid(θ_up)``, ``sigmoid(θ_low)`` per group."""

    def __init__(self, rows: int, groups: int, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.up = torch.nn.Parameter(torch.full((rows, groups, 1), CLIP_INIT, device=device))
        self.low = torch.nn.Parameter(torch.full((rows, groups, 1), CLIP_INIT, device=device))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(self.up), torch.sigmoid(self.low)


def _qparams(w: torch.Tensor, fmt: QuantFormat, clip: Clipping | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (unsigned domain, rounded) per group of ``w`` viewed ``[rows, groups, g]``."""
    wmax = w.amax(dim=-1, keepdim=True)
    wmin = w.amin(dim=-1, keepdim=True)
    if clip is not None:
        up, low = clip.factors()
        wmax, wmin = wmax * up, wmin * low
    wmax = torch.clamp(wmax, min=0.0)
    wmin = torch.clamp(wmin, max=0.0)
    if fmt.symmetric:
        absmax = torch.maximum(wmax, -wmin)
        scale = torch.clamp(absmax / ((fmt.qmax - fmt.qmin) / 2), min=SCALE_MIN)
        return scale, torch.zeros_like(scale)
    scale = torch.clamp((wmax - wmin) / (fmt.qmax - fmt.qmin), min=SCALE_MIN)
    zero = torch.clamp(round_ste(-wmin / scale), 0, fmt.qmax - fmt.qmin)
    return scale, zero


def fake_quantize(w: torch.Tensor, fmt: QuantFormat, clip: Clipping | None = None) -> torch.Tensor:
    """Quantize-dequantize ``w`` ``[out, in]`` differentiably (STE rounding)."""
    rows, cols = w.shape
    g = w.reshape(rows, cols // fmt.group_size, fmt.group_size)
    scale, zero = _qparams(g, fmt, clip)
    if fmt.symmetric:
        q = torch.clamp(round_ste(g / scale), fmt.qmin, fmt.qmax)
    else:
        q = torch.clamp(round_ste(g / scale) + zero, 0, fmt.qmax - fmt.qmin) - zero
    return (q * scale).reshape(rows, cols)


@torch.no_grad()
def quantize(w: torch.Tensor, fmt: QuantFormat, clip: Clipping | None = None) -> QuantizedTensor:
    """Integer codes, scales and zero points of ``w`` ``[out, in]``; its dequantization equals :func:`fake_quantize`.

    Raises:
        UsageError: the group size does not divide the input width.
    """
    fmt.check(tuple(w.shape), "quantize")
    rows, cols = w.shape
    g = w.reshape(rows, cols // fmt.group_size, fmt.group_size)
    scale, zero = _qparams(g, fmt, clip)
    offset = -fmt.qmin
    if fmt.symmetric:
        q = torch.clamp(torch.round(g / scale), fmt.qmin, fmt.qmax)
        zp = None
    else:
        q = torch.clamp(torch.round(g / scale) + zero, 0, fmt.qmax - fmt.qmin) - offset
        zp = (zero[..., 0] - offset).to(torch.int8)
    return QuantizedTensor(q.reshape(rows, cols).to(torch.int8), scale[..., 0].to(torch.float32), zp, fmt)
