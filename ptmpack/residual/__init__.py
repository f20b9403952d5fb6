"""Residual updates (GB/T 42382.2 §8.2.6): ship a fine-tune B of a base A as a small delta.

``diff_residual`` writes Δ = B - A, quantized per group (or lossless), as a normal
package bound to A's manifest digest; ``apply_residual`` rebuilds B' = A + Q(Δ)
after checking that binding and every digest; ``summarize_residual`` condenses a
delta's ``Model/residual.json`` for ``inspect``. Format: docs/RESIDUAL.md.
"""

from ptmpack.residual.apply import apply_residual
from ptmpack.residual.diff import DiffOptions, diff_residual
from ptmpack.residual.record import RESIDUAL_JSON, FileMode, ResidualDoc, TensorMode
from ptmpack.residual.report import ApplyReport, DiffReport, summarize_residual

__all__ = [
    "RESIDUAL_JSON",
    "ApplyReport",
    "DiffOptions",
    "DiffReport",
    "FileMode",
    "ResidualDoc",
    "TensorMode",
    "apply_residual",
    "diff_residual",
    "summarize_residual",
]
