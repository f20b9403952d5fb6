"""What a compress step is handed besides the tree: the spec, a progress callback, calibration data.

Calibration is lazy: a step that needs none (RTN, magnitude pruning) never tokenizes the
text, and the steps that do share one tokenization per run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptmpack.compress.spec import CompressSpec


@dataclass(frozen=True)
class CalibrationData:
    """Calibration token windows and where they came from (recorded in technicalinfo.compression)."""

    windows: np.ndarray = field(repr=False)
    """``(nsamples, seqlen)`` int64 token ids."""
    text_sha256: str
    """sha256 of the calibration file's bytes."""
    text_tokens: int
    """Tokens tokenized: the whole text for random windows, else the pieces the windows and held-out tail need."""
    source: str
    """The calibration file's name (no directories: a path may be private)."""
    selection: str
    """``"first"`` (consecutive windows from the start) or ``"random:SEED"``."""
    held_out: np.ndarray | None = field(default=None, repr=False)
    """Up to ``seqlen`` tokens of the text no window covers (for the before/after quality check), if any."""

    def record(self) -> dict[str, Any]:
        """The JSON-ready description stored with each step that used these windows."""
        n, length = self.windows.shape
        return {"file": self.source, "sha256": self.text_sha256, "text_tokens": self.text_tokens,
                "nsamples": int(n), "seqlen": int(length), "tokens": int(n * length), "selection": self.selection}


def no_progress(label: str, done: int, total: int) -> None:
    """A progress callback that shows nothing."""


@dataclass(frozen=True)
class StepContext:
    """Everything a step's ``apply(tree, ctx)`` gets besides the tree."""

    spec: CompressSpec
    progress: Callable[[str, int, int], None] = no_progress
    """``(label, done, total)``: called per layer, so the CLI can draw one bar per step."""
    calibration: Callable[[], CalibrationData] | None = None
    """Lazy calibration windows; None when the run has no ``--calib`` text."""

    def calib(self) -> CalibrationData:
        """The calibration windows.

        Raises:
            UsageError: the step needs calibration text but none was given.
        """
        from ptmpack.errors import UsageError

        if self.calibration is None:
            raise UsageError(f"--quant {self.spec.quant or ''} / --prune need calibration text",
                             hint="give --calib TEXTFILE")
        return self.calibration()
