"""What ``compress`` and ``unpack --dequantize`` report: typed results, each with ``to_json()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CompressReport:
    """The result of one ``compress`` run; :meth:`to_json` is what ``--json`` prints."""

    source: str
    target: str
    steps: tuple[dict[str, Any], ...]
    size_in: int
    size_out: int
    seconds: float

    @property
    def ratio(self) -> float:
        """Output size over input size."""
        return self.size_out / self.size_in if self.size_in else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "steps": list(self.steps), "size_in": self.size_in,
                "size_out": self.size_out, "ratio": round(self.ratio, 4), "seconds": self.seconds}


@dataclass(frozen=True)
class DequantizeReport:
    """What ``unpack --dequantize`` (or :func:`dequantize_tree`) changed in a tree."""

    layers: int
    """Quantized linears turned back into float weights (0: the tree had none)."""
    files: tuple[str, ...] = ()
    """The weight files rewritten, relative to the tree."""
    bits: int | None = None
    group_size: int | None = None
    """The scheme the weights were stored in (None: per channel, or nothing dequantized)."""
    folded_transforms: int = 0
    """Unmerged AffineQuant transforms folded into the float weights."""

    def to_json(self) -> dict[str, Any]:
        return {"layers": self.layers, "files": list(self.files), "bits": self.bits, "group_size": self.group_size,
                "folded_transforms": self.folded_transforms}
