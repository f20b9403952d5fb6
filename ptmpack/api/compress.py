"""Verbs of chapter-7 compression: ``compress`` a package, ``dequantize`` a quantized tree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptmpack.compress.context import CalibrationData, StepContext
from ptmpack.compress.report import CompressReport
from ptmpack.compress.spec import CompressSpec
from ptmpack.config import PackConfig
from ptmpack.crypto.keyslots import Opener

__all__ = ["CalibrationData", "CompressReport", "CompressSpec", "StepContext", "compress", "dequantize"]


def compress(source: Path, target: Path, spec: CompressSpec, config: PackConfig | None = None, *,
             opener: Opener | None = None, force: bool = False,
             progress: Callable[[str, int, int], None] | None = None) -> CompressReport:
    """Compress the package ``source`` (``.ptm`` or tree) into the ``.ptm`` file ``target`` (SPEC §7).

    ``config`` packs the output as ``pack`` would (codec, encryption, signing); ``opener``
    opens an encrypted input; ``progress(label, done, total)`` is called per layer.

    Raises:
        UsageError (exit 2): bad options, a group size not dividing a layer, missing --calib, target exists.
        UnsupportedError (exit 6): a step not available, or a model a step cannot handle.
        PtmError: reading the input or writing the output failed (nothing is left at ``target``).
    """
    from ptmpack.compress.context import no_progress
    from ptmpack.compress.pipeline import compress as run

    return run(Path(source), Path(target), spec, config or PackConfig(), opener=opener, force=force,
               progress=progress or no_progress)


def dequantize(tree: Path) -> dict[str, Any]:
    """Turn the quantized linears of a package tree back into float weights, in place (``unpack --dequantize``)."""
    from ptmpack.compress.dequantize import dequantize_tree

    return dequantize_tree(Path(tree))
