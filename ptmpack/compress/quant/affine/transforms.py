# ruff: noqa: RUF002 - formulas quote the standard's symbols
"""Learnable affine transforms of AffineQuant (GB/T 42382.2 §7.3.1.1, Table 44): matrices, gradual
mask, stability check.

A transform is a stack of ``n`` square matrices ``A`` (``n`` = 1 for a transform of the hidden
state, ``n`` = key/value heads for the per-head value→output transform) and an optional shift
``δ``. What acts on the model is the masked matrix ``C = A ⊙ GM``: weights become ``W·Cᵀ`` and
activations ``(x − δ)·C⁻¹``, so their product is unchanged before quantization.

Gradual mask ``GM`` at epoch ``e`` of ``E`` (0-based): a band of width
``⌊(d−1)·e/(E−1)⌋ + 1`` around the diagonal is unfrozen (``|i − j| < band``); the diagonal is 1,
unfrozen off-diagonal entries are the stability factor ``α``, the rest 0 (frozen: their gradient
is zero). At the last epoch the band covers the whole matrix. With one epoch the mask is the
final (full) one.

Stability: after every optimizer step each ``C`` must stay strictly diagonally dominant
(``|c_ii| > Σ_{j≠i} |c_ij|`` for every row), which by the Levy–Desplanques theorem makes it
invertible. A step that breaks it is undone: ``A`` goes back to the last dominant value and
the violation is counted.
"""

from __future__ import annotations

import torch


def band_width(dim: int, epoch: int, epochs: int) -> int:
    """Width of the unfrozen band at ``epoch`` (0-based) of ``epochs``: ``⌊(dim−1)·epoch/(epochs−1)⌋ + 1``."""
    if epochs <= 1:
        return dim
    return (dim - 1) * epoch // (epochs - 1) + 1


def gradual_mask(dim: int, band: int, alpha: float, *, block: int | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """``[dim, dim]`` mask: 1 on the diagonal, ``alpha`` where ``0 < |i−j| < band``, 0 elsewhere.

    With ``block`` the mask is also 0 outside the diagonal ``block × block`` blocks (``i // block ≠
    j // block``): the transform stays block-diagonal, and so does its inverse.
    """
    idx = torch.arange(dim, device=device)
    dist = (idx[:, None] - idx[None, :]).abs()
    open_ = dist < band
    if block is not None:
        open_ &= (idx[:, None] // block) == (idx[None, :] // block)
    mask = torch.where(open_, torch.full((dim, dim), float(alpha), device=device),
                       torch.zeros(dim, dim, device=device))
    mask.fill_diagonal_(1.0)
    return mask


def strictly_dominant(c: torch.Tensor) -> bool:
    """True when every matrix of ``c`` ``[..., d, d]`` is strictly diagonally dominant by rows."""
    a = c.detach().abs()
    diag = a.diagonal(dim1=-2, dim2=-1)
    off = a.sum(-1) - diag
    return bool((diag > off).all())


class AffineTransform(torch.nn.Module):
    """``n`` learnable ``d × d`` matrices (initialised diagonal) and an optional learnable shift of ``n·d``."""

    def __init__(self, diagonal: torch.Tensor, *, shift: bool, learn_matrix: bool = True) -> None:
        """``diagonal`` ``[n, d]`` is the initial diagonal (e.g. SmoothQuant scales)."""
        super().__init__()
        n, d = diagonal.shape
        self.n, self.d = n, d
        self.A = torch.nn.Parameter(torch.diag_embed(diagonal.detach().clone().float()),
                                    requires_grad=learn_matrix)
        self.shift = torch.nn.Parameter(torch.zeros(n * d, device=diagonal.device)) if shift else None
        self._good = self.A.detach().clone()
        self.violations = 0
        self.checks = 0

    def matrix(self, mask: torch.Tensor) -> torch.Tensor:
        """``C = A ⊙ GM`` ``[n, d, d]``."""
        return self.A * mask

    def block_diagonal(self, mask: torch.Tensor, repeat: int = 1) -> torch.Tensor:
        """``C`` as one ``[n·repeat·d]²`` block-diagonal matrix, each block repeated ``repeat`` times in a row."""
        c = self.matrix(mask)
        return torch.block_diag(*[c[i] for i in range(self.n) for _ in range(repeat)])

    @torch.no_grad()
    def enforce_dominance(self, mask: torch.Tensor) -> bool:
        """Keep ``A`` if ``A ⊙ GM`` is strictly diagonally dominant, else restore the last dominant ``A``.

        Returns whether the current value was kept.
        """
        self.checks += 1
        if strictly_dominant(self.matrix(mask)):
            self._good.copy_(self.A)
            return True
        self.A.copy_(self._good)
        self.violations += 1
        return False

    def is_diagonal(self, mask: torch.Tensor) -> bool:
        c = self.matrix(mask).detach()
        return bool((c - torch.diag_embed(c.diagonal(dim1=-2, dim2=-1))).abs().max() == 0)


def diagonal_blocks(c: torch.Tensor, block: int) -> torch.Tensor:
    """The ``block × block`` diagonal blocks ``[d / block, block, block]`` of a ``[d, d]`` matrix."""
    n = c.shape[0] // block
    return c.reshape(n, block, n, block).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def block_inverse(c: torch.Tensor, block: int | None) -> torch.Tensor:
    """``c⁻¹`` of a ``[d, d]`` matrix; with ``block``, of a block-diagonal one, block by block (the same
    inverse, cheaper, and exactly zero off the blocks)."""
    if block is None:
        return torch.linalg.inv(c)
    return torch.block_diag(*torch.linalg.inv(diagonal_blocks(c, block)))


def smooth_scales(act_max: torch.Tensor, weight_max: torch.Tensor, strength: float = 0.5) -> torch.Tensor:
    """SmoothQuant per-channel scales ``act_max^s / weight_max^(1−s)`` (``s`` = 0.5 by default), floored at 1e-5."""
    a = act_max.clamp(min=1e-5)
    w = weight_max.clamp(min=1e-5)
    return (a.pow(strength) / w.pow(1 - strength)).clamp(min=1e-5)
