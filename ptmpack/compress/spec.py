"""What ``ptmpack compress`` is asked to do: one frozen record shared by every step.

The fields are the contract of docs/COMPRESSION.md and of the three step authors
(quantization, AffineQuant, structure); :meth:`CompressSpec.check` refuses combinations
that cannot be run before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptmpack.compress.methods import OPTIONS, SLOTS, choices, method
from ptmpack.errors import UsageError

WEIGHT_BITS = (2, 3, 4, 8)
"""The fixed sets below are options' values; method names are read from the methods table when checked."""
DEFAULT_GROUPS = (128, 64, 32)
"""Candidate default group sizes, largest first: the default is the largest dividing every input width."""
PRUNE_TARGETS = ("heads", "query-heads", "ffn", "both")
DEVICES = ("cpu", "cuda")
GPTQ_ORDERS = ("layer", "linear")


def require_torch(purpose: str) -> Any:
    """The torch module, imported now: the methods that train or solve in PyTorch call this first.

    Raises:
        UnsupportedError: PyTorch is not installed (exit 6); the message names ``purpose`` (``"--quant ptq"``).
    """
    from ptmpack.errors import UnsupportedError

    try:
        import torch
    except ImportError:
        raise UnsupportedError(f"{purpose} needs PyTorch", hint="pip install 'ptmpack[torch]'") from None
    return torch


def check_device(device: str) -> None:
    """Refuse a compute device this machine does not have, whatever the method (exit 6): THE device check of
    compress (the API calls it before any work; the GPTQ solver's backend calls it too).

    Raises:
        UsageError: a device name not in :data:`DEVICES`.
        UnsupportedError: ``cuda`` without PyTorch or without a CUDA device PyTorch can see.
    """
    if device not in DEVICES:
        raise UsageError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cpu":
        return
    from ptmpack.errors import UnsupportedError

    if not require_torch(f"--device {device}").cuda.is_available():
        raise UnsupportedError("--device cuda: PyTorch sees no CUDA device on this machine", hint="use --device cpu")


@dataclass(frozen=True)
class RunDefaults:
    """Calibration size and reconstruction epochs a method runs with when the user gives none."""

    nsamples: int
    seqlen: int
    epochs: int


DEFAULT_RUN = RunDefaults(nsamples=32, seqlen=512, epochs=10)
"""rtn, gptq, ptq and the structure steps: 32 windows of 512 tokens, 10 epochs (ptq)."""
METHOD_RUN_DEFAULTS: dict[str, RunDefaults] = {"affine": RunDefaults(nsamples=32, seqlen=512, epochs=5)}
"""Methods whose defaults differ. AffineQuant trains every block ``nsamples / 4 x epochs`` steps; one
4x512-token step of a SmolLM2-135M block took about 0.5 s on the 2 cores with little else running
(3.5 s for the 6 steps of a block at 8x512, 3 epochs), so 32x512 (the same windows GPTQ takes) with 5
epochs, 1200 steps for 30 blocks, is about 10 min of training plus quality checks and packing: inside
the 30-minute budget with room for a shared machine. 10 epochs would double the training time."""


def run_defaults(quant: str | None) -> RunDefaults:
    """The calibration size and epochs ``quant`` uses when ``--nsamples``/``--seqlen``/``--epochs`` are not given."""
    return METHOD_RUN_DEFAULTS.get(quant or "", DEFAULT_RUN)


def defaults_help(what: str) -> str:
    """``--help`` text naming each method's default for ``what`` (``nsamples``, ``seqlen`` or ``epochs``)."""
    common = getattr(DEFAULT_RUN, what)
    special = [f"{getattr(d, what)} for {m}" for m, d in METHOD_RUN_DEFAULTS.items() if getattr(d, what) != common]
    return f"default: {', '.join(special)}, {common} otherwise" if special else f"default: {common}"


@dataclass(frozen=True)
class CompressSpec:
    """The steps and settings of one ``compress`` run (SPEC §6, §7; issues 9 and 10)."""

    quant: str | None = None
    """``"rtn"`` | ``"gptq"`` | ``"affine"`` | ``"ptq"``; None: no quantization step."""
    bits: int = 4
    """Weight bits: 2, 3, 4 or 8."""
    act_bits: int | None = None
    """Activation bits (ptq only, e.g. 8)."""
    group_size: int | None = None
    """Input columns sharing one scale; None: the method's default (the largest of 128, 64, 32
    dividing every quantized input width; per-channel for ptq); 0: per output channel."""
    symmetric: bool = True
    """Symmetric codes without zero points (the default, as the CLI's): the scheme released transformers +
    compressed-tensors load (llm-compressor's W4A16 preset); False adds zero points (``--asym``), which load
    after ``unpack --dequantize``."""
    calib: Path | None = None
    """Calibration text file, tokenized with the package's own tokenizer."""
    nsamples: int | None = None
    """Calibration windows; None: the method's default (:func:`run_defaults`), filled in at construction."""
    seqlen: int | None = None
    """Tokens per calibration window; None: the method's default."""
    calib_seed: int | None = None
    """None: the first ``nsamples`` consecutive windows; an int: windows drawn at random with this seed."""
    epochs: int | None = None
    """Reconstruction epochs (affine, ptq); None: the method's default."""
    device: str = "cpu"
    fold_norm: str | None = None
    prune: str | None = None
    flops_budget: float | None = None
    """Fraction of the original FLOPs to keep, e.g. 0.7."""
    prune_method: str = "structure"
    merge_lora: Path | None = None
    """A PEFT adapter directory to merge."""
    merge_adapter: bool = False
    act_order: bool | None = None
    """GPTQ: quantize columns in order of decreasing Hessian diagonal (static groups, so groups stay contiguous).
    None: on for gptq (llm-compressor's default, ``actorder: static``), off otherwise."""
    gptq_order: str = "layer"
    """GPTQ's calibration order inside a decoder layer: ``layer`` (every linear of a layer on the layer's float
    weights, llm-compressor's sequential pipeline) or ``linear`` (each linear on the already-quantized earlier ones)."""
    defaulted: tuple[str, ...] = field(default=(), init=False, compare=False)
    """Which of ``nsamples``, ``seqlen``, ``epochs`` took the method's default (recorded in the step record)."""

    def __post_init__(self) -> None:
        """Resolve unset ``nsamples``/``seqlen``/``epochs`` to the method's defaults, here and only here,
        so every step reads plain integers."""
        chosen = run_defaults(self.quant)
        unset = tuple(name for name in ("nsamples", "seqlen", "epochs") if getattr(self, name) is None)
        for name in unset:
            object.__setattr__(self, name, getattr(chosen, name))
        object.__setattr__(self, "defaulted", unset)
        if self.act_order is None:
            object.__setattr__(self, "act_order", self.quant == "gptq")

    @staticmethod
    def defaults_help(what: str) -> str:
        """``--help`` text naming each method's default for ``what`` (``nsamples``, ``seqlen`` or ``epochs``)."""
        return defaults_help(what)

    def check(self) -> CompressSpec:
        """Return self when the settings are consistent.

        Raises:
            UsageError: an unknown method, bit width or device, a bad group size, window or budget,
                options given without the step they belong to, or no step at all.
        """
        if self.quant is not None and self.quant not in choices("quant"):
            raise UsageError(f"unknown quantization method {self.quant!r}", hint=f"use one of {', '.join(choices('quant'))}")
        if self.bits not in WEIGHT_BITS:
            raise UsageError(f"--bits {self.bits} is not supported", hint=f"use one of {', '.join(map(str, WEIGHT_BITS))}")
        if self.act_bits is not None and (self.quant != "ptq" or self.act_bits not in (4, 8, 16)):
            raise UsageError("--act-bits takes 4, 8 or 16 and goes with --quant ptq only")
        if self.group_size is not None and (isinstance(self.group_size, bool) or self.group_size < 0):
            raise UsageError(f"--group-size must be a positive integer (or 0: per channel), got {self.group_size!r}")
        assert self.nsamples is not None and self.seqlen is not None and self.epochs is not None  # __post_init__
        if self.nsamples < 1 or self.seqlen < 2:
            raise UsageError("--nsamples must be at least 1 and --seqlen at least 2")
        if self.epochs < 0:
            raise UsageError("--epochs must not be negative")
        if self.device not in DEVICES:
            raise UsageError(f"--device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.fold_norm is not None and self.fold_norm not in choices("fold_norm"):
            raise UsageError(f"--fold-norm takes {' or '.join(choices('fold_norm'))}, got {self.fold_norm!r}")
        if self.prune is not None and self.prune not in PRUNE_TARGETS:
            raise UsageError(f"--prune takes {', '.join(PRUNE_TARGETS)}, got {self.prune!r}")
        if self.prune_method not in choices("prune"):
            raise UsageError(f"--prune-method takes {' or '.join(choices('prune'))}, got {self.prune_method!r}")
        if (self.prune is None) != (self.flops_budget is None):
            raise UsageError("--prune and --flops-budget go together")
        if self.flops_budget is not None and not 0.0 < self.flops_budget <= 1.0:
            raise UsageError(f"--flops-budget must lie in (0, 1], got {self.flops_budget}")
        for slot in self.steps() if self.calib is None else ():
            if self.needs_calibration_for(slot):
                raise UsageError(f"--{OPTIONS[slot]} {self.method_name(slot)} needs calibration text: give --calib "
                                 "TEXTFILE")
        if self.act_order and self.quant != "gptq":
            raise UsageError("--act-order goes with --quant gptq only")
        if self.gptq_order not in GPTQ_ORDERS:
            raise UsageError(f"--gptq-order takes {' or '.join(GPTQ_ORDERS)}, got {self.gptq_order!r}")
        if not self.steps():
            raise UsageError("nothing to do: give --quant, --prune, --fold-norm, --merge-lora or --merge-adapter")
        return self

    def method_name(self, slot: str) -> str | None:
        """The method this spec runs in ``slot`` (see :mod:`ptmpack.compress.methods`), or None."""
        return {"merge_lora": "lora" if self.merge_lora is not None else None,
                "merge_adapter": "adapters" if self.merge_adapter else None,
                "fold_norm": self.fold_norm, "prune": self.prune_method if self.prune is not None else None,
                "quant": self.quant}[slot]

    def steps(self) -> tuple[str, ...]:
        """The steps (slots) this spec runs, in the pipeline's fixed order."""
        return tuple(slot for slot in SLOTS if self.method_name(slot) is not None)

    def needs_calibration_for(self, slot: str) -> bool:
        """Whether the method this spec runs in ``slot`` needs calibration text (the methods table says)."""
        found = method(slot, self.method_name(slot) or "")
        return found is not None and found.needs_calibration

    @property
    def needs_calibration(self) -> bool:
        """Whether any step of this spec needs calibration text."""
        return any(self.needs_calibration_for(slot) for slot in self.steps())
