"""Verbs of chapter-7 compression: ``compress`` a package, ``dequantize`` a quantized tree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ptmpack.compress.report import CompressReport, DequantizeReport, StepRecord
from ptmpack.compress.spec import CompressSpec, check_device
from ptmpack.config import PackConfig
from ptmpack.crypto.keyslots import Opener

__all__ = ["CompressReport", "CompressSpec", "DequantizeReport", "StepRecord", "check_device", "compress",
           "compress_choices", "dequantize"]

def compress_choices(option: str) -> tuple[str, ...]:
    """The values ``compress --OPTION`` accepts, for the CLI's choices (no numpy or torch is loaded).

    ``quant``, ``fold-norm`` and ``prune-method`` list the rows of the methods table
    (:func:`ptmpack.compress.methods.choices`, read now, so a new row is a new choice);
    ``bits``, ``prune``, ``gptq-order`` and ``device`` the fixed sets :class:`CompressSpec` checks.

    Raises:
        KeyError: an option with no fixed set of values.
    """
    from ptmpack.compress import spec
    from ptmpack.compress.methods import NAMED, OPTIONS, choices

    slot = next((s for s in NAMED if OPTIONS[s] == option), None)
    if slot is not None:
        return choices(slot)
    fixed: dict[str, tuple[object, ...]] = {"bits": spec.WEIGHT_BITS, "prune": spec.PRUNE_TARGETS,
                                            "gptq-order": spec.GPTQ_ORDERS, "device": spec.DEVICES}
    return tuple(str(v) for v in fixed[option])


def compress(source: Path, target: Path, spec: CompressSpec, config: PackConfig | None = None, *,
             opener: Opener | None = None, force: bool = False,
             progress: Callable[[str, int, int], None] | None = None) -> CompressReport:
    """Compress the package ``source`` (``.ptm`` or tree) into the ``.ptm`` file ``target`` (SPEC §7).

    ``config`` packs the output as ``pack`` would (codec, encryption, signing); ``opener``
    opens an encrypted input; ``progress(label, done, total)`` is called per layer.

    Raises:
        UsageError (exit 2): bad options, a group size not dividing a layer, missing --calib, target exists.
        UnsupportedError (exit 6): a step not available, a model a step cannot handle, or ``spec.device``
            not available here (checked before any work, for every method).
        PtmError: reading the input or writing the output failed (nothing is left at ``target``).
    """
    from ptmpack.compress.pipeline import compress as run
    from ptmpack.compress.step import no_progress

    check_device(spec.device)
    return run(Path(source), Path(target), spec, config or PackConfig(), opener=opener, force=force,
               progress=progress or no_progress)


def dequantize(tree: Path) -> DequantizeReport:
    """Turn the quantized linears of a package tree back into float weights, in place (``unpack --dequantize``)."""
    from ptmpack.compress.quant.dequantize import dequantize_tree

    return dequantize_tree(Path(tree))
