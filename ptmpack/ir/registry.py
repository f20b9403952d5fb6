"""The operator registry: a typed definition of every operator the IR may use.

An :class:`OpDef` names its input and output slots (with dtype constraints and
whether they are optional or variadic), its attributes (types and defaults), a
shape-inference function and a numpy reference kernel. Operator modules in
``ptmpack.ir.ops`` register themselves with :func:`op`; ``lookup`` rejects
unknown operator types unless they are namespaced ``custom.``.

Kernel contract: ``kernel(ctx, inputs, attrs) -> outputs`` where ``inputs`` maps
each input slot to an array (a list of arrays for variadic slots, ``None`` for an
absent optional slot), ``attrs`` holds every attribute with defaults applied,
and ``outputs`` maps each output slot to an array (or list). Inference has the
same shape with :class:`TensorType` in place of arrays.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ptmpack.errors import GraphError
from ptmpack.ir.model import AttrType, attr_value_ok

CUSTOM_PREFIX = "custom."
OP_MODULES = ("basic", "transformer", "comm", "modules", "multimodal", "tuning", "rag", "quantized", "affine", "fakequant")
"""Modules under ``ptmpack.ir.ops`` that register operators, loaded on first lookup."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of an attribute that every node must set."""


@dataclass(frozen=True)
class TensorType:
    """What inference knows about a value: dtype and shape (-1 where unknown)."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Slot:
    """An input or output slot of an operator."""

    name: str
    doc: str = ""
    optional: bool = False
    variadic: bool = False
    dtypes: tuple[str, ...] | None = None
    """Allowed dtypes; None allows any."""


@dataclass(frozen=True)
class AttrDef:
    """An attribute of an operator, with its type and default (``REQUIRED`` when none)."""

    name: str
    type: AttrType
    default: Any = REQUIRED
    doc: str = ""


@dataclass
class ExecContext:
    """Run-time settings handed to kernels: compute dtype, and the rank/group of communication ops."""

    compute_dtype: str = "float32"
    rank: int = 0
    world_size: int = 1
    comm: Any = None
    """The communication backend of collective ops (simulated group or torch.distributed)."""
    training: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    """Per-run scratch space for kernels that keep state (e.g. optimizer moments)."""


Values = Mapping[str, Any]
InferFn = Callable[[Values, Mapping[str, Any]], dict[str, Any]]
KernelFn = Callable[[ExecContext, Values, Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class OpDef:
    """A registered operator: its slots, attributes, shape inference and reference kernel."""

    name: str
    table: str
    """Where the standard defines it (e.g. "Table 5"), or "basic" for general operators."""
    doc: str
    inputs: tuple[Slot, ...]
    outputs: tuple[Slot, ...]
    attributes: tuple[AttrDef, ...]
    infer: InferFn
    kernel: KernelFn
    training: bool = False
    """True for training-time operators (optimizers, regularizers) that run as one update step."""

    def attribute(self, name: str) -> AttrDef | None:
        return next((a for a in self.attributes if a.name == name), None)

    def resolve_attributes(self, given: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Attribute values with defaults applied, each checked against its declared type.

        Raises:
            GraphError: an unknown attribute, a missing required one, or a wrong type.
        """
        known = {a.name for a in self.attributes}
        unknown = sorted(set(given) - known)
        if unknown:
            raise GraphError(f"{where}: {self.name} has no attribute(s) {', '.join(unknown)}")
        out: dict[str, Any] = {}
        for a in self.attributes:
            if a.name in given:
                value = given[a.name]
                if not attr_value_ok(a.type, value):
                    raise GraphError(f"{where}: attribute {a.name} of {self.name} must be {a.type.value}, got {value!r}")
                out[a.name] = value
            elif a.default is REQUIRED:
                raise GraphError(f"{where}: {self.name} needs attribute {a.name} ({a.type.value})")
            else:
                out[a.name] = a.default
        return out


_REGISTRY: dict[str, OpDef] = {}
_loaded = False
_load_lock = threading.RLock()


def register(opdef: OpDef) -> OpDef:
    """Add an operator; a second definition of the same name is a programming error."""
    if opdef.name in _REGISTRY:
        raise ValueError(f"operator {opdef.name!r} registered twice")
    _REGISTRY[opdef.name] = opdef
    return opdef


def op(name: str, *, table: str, inputs: Sequence[Slot], outputs: Sequence[Slot],
       attributes: Sequence[AttrDef] = (), infer: InferFn, training: bool = False) -> Callable[[KernelFn], KernelFn]:
    """Decorator registering ``kernel`` under ``name``; its docstring is the operator's doc."""

    def deco(kernel: KernelFn) -> KernelFn:
        register(OpDef(name, table, (kernel.__doc__ or "").strip(), tuple(inputs), tuple(outputs),
                       tuple(attributes), infer, kernel, training))
        return kernel

    return deco


def _load() -> None:
    """Import every operator module once; thread-safe, and retried if an import failed."""
    global _loaded
    if _loaded:
        return
    with _load_lock:
        if not _loaded:
            for module in OP_MODULES:
                importlib.import_module(f"ptmpack.ir.ops.{module}")
            _loaded = True


def lookup(name: str) -> OpDef | None:
    """The definition of operator ``name``; None for a ``custom.`` operator.

    Raises:
        GraphError: the operator is unknown and not namespaced ``custom.``.
    """
    _load()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(CUSTOM_PREFIX) and len(name) > len(CUSTOM_PREFIX):
        return None
    raise GraphError(f"unknown operator {name!r} (custom operators must be namespaced 'custom.')")


def all_ops() -> list[OpDef]:
    """Every registered operator, sorted by name."""
    _load()
    return sorted(_REGISTRY.values(), key=lambda o: o.name)


def same_as(slot: str, out: str = "Y") -> InferFn:
    """Inference for elementwise operators: output ``out`` has the type of input ``slot``."""

    def infer(inputs: Values, attrs: Mapping[str, Any]) -> dict[str, Any]:
        return {out: inputs[slot]}

    return infer
