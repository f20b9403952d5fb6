"""What ``compress`` and ``unpack --dequantize`` report: typed results, each with ``to_json()``.

No numpy at import: the CLI reads these types through the api, and ``ptmpack --help`` loads no numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Quality:
    """The model's quality before and after a step (what the CLI prints as ``metric before -> after``)."""

    metric: str | None
    """``"perplexity"``, an embedding cosine, or None when nothing was measured."""
    before: float | None
    after: float | None
    about: Mapping[str, Any] = field(default_factory=dict)
    """What was measured on (text, sha256, tokens, …), written beside the numbers."""

    def to_json(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "metric": self.metric, **_json_safe(dict(self.about))}


@dataclass(frozen=True)
class QuantScheme:
    """How a quantization step stored the weights (also ``technicalinfo.compression.quantization``)."""

    bits: int
    format: str
    group_size: int | str | None = None
    """Input columns per scale, ``"channel"`` for per output channel, None where the method has no groups."""
    symmetric: bool | None = None
    """None where the method does not choose (PTQ)."""

    def to_json(self) -> dict[str, Any]:
        """The fields of the step record (only those the method set)."""
        out: dict[str, Any] = {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric,
                               "format": self.format}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class StepRecord:
    """What one step did: the typed fields the CLI and the package summary read, and the method's own details."""

    step: str
    """The slot (see :data:`ptmpack.compress.methods.SLOTS`)."""
    method: str
    """The method as recorded (``rtn``, ``fold_norm``, ``prune_structure``, …)."""
    quality: Quality | None = None
    scheme: QuantScheme | None = None
    """Set by quantization steps only."""
    unmerged_transforms: int = 0
    """AffineQuant transforms left in ``Model/graph.json`` (transformers skips them); 0 for every other step."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """The method's own JSON fields (per-layer rows, sizes, settings), written as they are."""
    wall_seconds: float | None = None
    """Set by the pipeline: the step's wall time."""

    def timed(self, seconds: float) -> StepRecord:
        """This record with ``wall_seconds`` set."""
        return replace(self, wall_seconds=round(seconds, 3))

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``technicalinfo.compression.steps`` and of ``compress --json``'s ``steps``."""
        out: dict[str, Any] = {"step": self.step, "method": self.method}
        if self.scheme is not None:
            out.update(self.scheme.to_json())
        out.update(_json_safe(dict(self.details)))
        if self.quality is not None:
            out["quality"] = self.quality.to_json()
        if self.wall_seconds is not None:
            out["wall_seconds"] = self.wall_seconds
        return out


def _json_safe(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and numpy arrays (kept by a step for its own use) dropped."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items() if not isinstance(v, np.ndarray)}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class CompressReport:
    """The result of one ``compress`` run; :meth:`to_json` is what ``--json`` prints."""

    source: str
    target: str
    steps: tuple[StepRecord, ...]
    size_in: int
    size_out: int
    seconds: float

    @property
    def ratio(self) -> float:
        """Output size over input size."""
        return self.size_out / self.size_in if self.size_in else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "steps": [s.to_json() for s in self.steps], "size_in": self.size_in,
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
