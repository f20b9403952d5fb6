"""What ``compress`` reports: the step records (as stored in technicalinfo.compression) and sizes."""

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
