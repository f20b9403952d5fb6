"""The Step protocol every compress method implements, what a step is handed, and the typed record it returns.

A method (a row of :mod:`ptmpack.compress.methods`) names a class implementing :class:`Step`;
the pipeline builds it, calls :meth:`Step.check` on the spec before any work, then
:meth:`Step.run` on the working tree with a :class:`StepContext`, and gets a :class:`StepRecord`
whose :meth:`StepRecord.to_json` is what ``technicalinfo.compression.steps`` and ``--json`` hold.

Calibration is lazy: a step that needs none (RTN, magnitude pruning) never tokenizes the
text, and the steps that do share one tokenization per run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ptmpack.compress.report import StepRecord
from ptmpack.compress.spec import CompressSpec


@dataclass(frozen=True)
class CalibrationData:
    """Calibration token windows and where they came from (recorded in technicalinfo.compression)."""

    windows: np.ndarray = field(repr=False)
    """``(nsamples, seqlen)`` int64 token ids."""
    text_sha256: str
    """sha256 of the calibration file's bytes."""
    text_tokens: int
    """Tokens tokenized from the calibration part (the text before the held-out lines, which calibration never
    sees): all of it for random windows, else the pieces the windows need."""
    source: str
    """The calibration file's name (no directories: a path may be private)."""
    selection: str
    """``"first"`` (consecutive windows from the start) or ``"random:SEED"``."""

    def record(self) -> dict[str, Any]:
        """The JSON-ready description stored with each step that used these windows."""
        n, length = self.windows.shape
        return {"file": self.source, "sha256": self.text_sha256, "text_tokens": self.text_tokens,
                "nsamples": int(n), "seqlen": int(length), "tokens": int(n * length), "selection": self.selection}


def no_progress(label: str, done: int, total: int) -> None:
    """A progress callback that shows nothing."""


@dataclass(frozen=True)
class StepContext:
    """Everything a step's ``run(tree, ctx)`` gets besides the tree."""

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


class Step(Protocol):
    """One compress method: the class a row of :mod:`ptmpack.compress.methods` names as ``module:Class``.

    The pipeline builds it without arguments, calls :meth:`check` for every step of the run
    before the input is even unpacked, then :meth:`run` on the working tree in slot order.
    """

    def check(self, spec: CompressSpec) -> None:
        """Refuse settings this method cannot run with, before any work is done.

        Raises:
            UsageError: options that do not go with this method.
            UnsupportedError: a combination the method cannot compute (the reason in the message).
        """

    def run(self, tree: Path, ctx: StepContext) -> StepRecord:
        """Rewrite the working ``tree`` (``Model/`` and ``config.json``) and say what was done.

        Raises:
            UsageError: a setting the model contradicts (a group size that does not divide a width).
            UnsupportedError: a model this method cannot handle (architecture, missing torch/CUDA).
            PtmError: reading or writing the tree failed.
        """
