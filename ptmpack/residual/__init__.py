"""Residual updates (GB/T 42382.2 §8.2.6): ship a fine-tune B of a base A as a small delta.

``diff_residual`` writes Δ = B - A, quantized per group (or lossless), as a normal
package bound to A's manifest digest; ``apply_residual`` rebuilds B' = A + Q(Δ)
after checking that binding and every digest; ``summarize_residual`` condenses a
delta's ``Model/residual.json`` for ``inspect``. Format: docs/RESIDUAL.md.
"""

from __future__ import annotations

from ptmpack.lazy import lazy_exports

_EXPORTS = {
    "apply_residual": "apply", "DiffOptions": "diff", "diff_residual": "diff",
    "RESIDUAL_JSON": "record", "FileMode": "record", "ResidualDoc": "record", "TensorMode": "record",
    "ApplyReport": "report", "DiffReport": "report", "summarize_residual": "report",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports("ptmpack.residual", _EXPORTS)  # inspect needs only the record
