"""The table of compress methods: which slot each fills, where its step lives, whether it needs calibration text.

A plain table (no numpy or torch), so option choices (the CLI's, through
``ptmpack.api.compress_choices``) and checks are read from it without loading any method. The pipeline imports a method's module by the ``entry`` written here when
the method runs. Adding a method is one module with a class implementing
:class:`ptmpack.compress.step.Step` and one row below (docs/ARCHITECTURE.md shows an example).
"""

from __future__ import annotations

from dataclasses import dataclass

SLOTS = ("merge_lora", "merge_adapter", "fold_norm", "prune", "quant")
"""The steps of a run, in the fixed order they run in (merge → fold → prune → quant)."""
OPTIONS = {"merge_lora": "merge-lora", "merge_adapter": "merge-adapter", "fold_norm": "fold-norm",
           "prune": "prune-method", "quant": "quant"}
"""Slot -> the ``compress`` option that runs it (``--prune-method structure``), for choices and messages."""
NAMED = ("fold_norm", "prune", "quant")
"""The slots whose option's value is a method name (the merge options take an adapter path or a switch)."""


@dataclass(frozen=True)
class Method:
    """One way to fill a slot."""

    name: str
    """What the user names (``--quant NAME``, ``--fold-norm NAME``, ``--prune-method NAME``)."""
    slot: str
    """One of :data:`SLOTS`."""
    entry: str
    """``module:Class`` of the step: a class implementing :class:`ptmpack.compress.step.Step`, built without arguments."""
    needs_calibration: bool
    """Whether the step refuses to run without ``--calib`` text."""
    summary: str


METHODS: tuple[Method, ...] = (
    Method("lora", "merge_lora", "ptmpack.compress.structure.lora:LoraStep", False,
           "merge a PEFT LoRA adapter into the base weights"),
    Method("adapters", "merge_adapter", "ptmpack.compress.structure.merge_adapter:AdapterStep", False,
           "re-parameterize the package's transfer adapters into the base weights"),
    Method("affine", "fold_norm", "ptmpack.compress.structure.fold_norm:FoldNormStep", False,
           "fold norm scales and biases into the next linears (exact)"),
    Method("unified", "fold_norm", "ptmpack.compress.structure.fold_norm:FoldNormStep", True,
           "replace norms by calibrated statistics, folded where possible"),
    Method("structure", "prune", "ptmpack.compress.structure.prune.step:PruneStep", True,
           "prune heads/FFN neurons by calibrated second-order importance"),
    Method("magnitude", "prune", "ptmpack.compress.structure.prune.step:PruneStep", False,
           "prune heads/FFN neurons by weight magnitude"),
    Method("rtn", "quant", "ptmpack.compress.quant.rtn:RtnStep", False,
           "round-to-nearest group quantization, one layer at a time"),
    Method("gptq", "quant", "ptmpack.compress.quant.gptq.step:GptqStep", True,
           "GPTQ from calibration activations"),
    Method("affine", "quant", "ptmpack.compress.quant.affine.step:AffineStep", True,
           "AffineQuant: learned transforms with quantization"),
    Method("ptq", "quant", "ptmpack.compress.quant.ptq.step:PtqStep", True,
           "weight and static activation quantization with bias compensation"),
)


def choices(slot: str) -> tuple[str, ...]:
    """The method names of ``slot``, in table order."""
    return tuple(m.name for m in METHODS if m.slot == slot)


def method(slot: str, name: str) -> Method | None:
    """The method ``name`` of ``slot``, or None."""
    return next((m for m in METHODS if m.slot == slot and m.name == name), None)
