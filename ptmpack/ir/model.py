"""The IR data model of GB/T 42382.2 §6.1 and its JSON form (``Model/graph.json``).

Model structure (Table 1) → computation graphs (Table 2: ``graph_id``,
``parent_graph_id`` = -1 for the main graph, ``forward_graph_id`` = -1 when there
is no forward graph) → operator nodes (Table 3: type, ``input``/``output`` as
map<string, list(VariableNode)>, ``attribute`` as map<string, Attribute>) and
variable nodes (parameters and temporaries). Operator slots name variables of
the same graph (or of an ancestor graph). ``ModelStructure.from_json(m.to_json())
== m`` for every valid model; ``from_json`` checks every type it reads.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ptmpack.errors import GraphError
from ptmpack.jsonio import loads_strict

IR_FORMAT = "ptmpack-ir"
IR_VERSION = 1
OPSET_VERSION = 1

DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")


class AttrType(str, enum.Enum):
    """Attribute value types (Table 3's ``Attribute``)."""

    INT = "int"
    FLOAT = "float"
    STRING = "string"
    BOOL = "bool"
    INTS = "ints"
    FLOATS = "floats"
    STRINGS = "strings"
    BOOLS = "bools"
    GRAPH = "graph"
    """A reference to a sub-graph by its ``graph_id``."""


_SCALAR_CHECK = {
    AttrType.INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
    AttrType.FLOAT: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    AttrType.STRING: lambda v: isinstance(v, str),
    AttrType.BOOL: lambda v: isinstance(v, bool),
    AttrType.GRAPH: lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
}
_LIST_OF = {AttrType.INTS: AttrType.INT, AttrType.FLOATS: AttrType.FLOAT,
            AttrType.STRINGS: AttrType.STRING, AttrType.BOOLS: AttrType.BOOL}


def attr_value_ok(kind: AttrType, value: object) -> bool:
    """Whether ``value`` is a valid value of attribute type ``kind``."""
    if kind in _LIST_OF:
        return isinstance(value, (list, tuple)) and all(_SCALAR_CHECK[_LIST_OF[kind]](v) for v in value)
    return _SCALAR_CHECK[kind](value)


@dataclass(frozen=True)
class Attribute:
    """A typed attribute value; list values are tuples, floats are Python floats."""

    type: AttrType
    value: Any

    def __post_init__(self) -> None:
        if not attr_value_ok(self.type, self.value):
            raise GraphError(f"attribute value {self.value!r} is not of type {self.type.value}")
        if self.type in _LIST_OF:
            conv = float if self.type is AttrType.FLOATS else (lambda v: v)
            object.__setattr__(self, "value", tuple(conv(v) for v in self.value))
        elif self.type is AttrType.FLOAT:
            object.__setattr__(self, "value", float(self.value))

    def to_json(self) -> dict[str, Any]:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"type": self.type.value, "value": value}

    @classmethod
    def from_json(cls, doc: object, where: str) -> Attribute:
        if not isinstance(doc, dict) or set(doc) != {"type", "value"}:
            raise GraphError(f"{where}: an attribute is {{'type': ..., 'value': ...}}")
        try:
            kind = AttrType(doc["type"])
        except ValueError:
            raise GraphError(f"{where}: unknown attribute type {doc['type']!r}") from None
        if not attr_value_ok(kind, doc["value"]):
            raise GraphError(f"{where}: value {doc['value']!r} is not of type {kind.value}")
        return cls(kind, doc["value"])


@dataclass(frozen=True)
class TensorRef:
    """Where a parameter's value lives: a tensor of a safetensors file in the package."""

    file: str
    name: str


@dataclass(frozen=True)
class VariableNode:
    """A variable: a parameter (``persistable``, usually with a ``tensor``) or a temporary."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    """Dimensions; -1 marks a dimension unknown until run time (e.g. batch, sequence)."""
    persistable: bool = False
    tensor: TensorRef | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                               "persistable": self.persistable}
        if self.tensor is not None:
            doc["tensor"] = {"file": self.tensor.file, "name": self.tensor.name}
        return doc

    @classmethod
    def from_json(cls, doc: object, where: str) -> VariableNode:
        d = _obj(doc, where, required=("name", "dtype", "shape"), allowed=("persistable", "tensor"))
        name, dtype, shape = d["name"], d["dtype"], d["shape"]
        if not isinstance(name, str) or not name:
            raise GraphError(f"{where}: variable name must be a non-empty string")
        if dtype not in DTYPES:
            raise GraphError(f"{where}: variable {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= -1 for s in shape):
            raise GraphError(f"{where}: variable {name!r} has an invalid shape {shape!r}")
        persistable = d.get("persistable", False)
        if not isinstance(persistable, bool):
            raise GraphError(f"{where}: persistable must be a boolean")
        tensor = None
        if "tensor" in d:
            t = _obj(d["tensor"], f"{where}.tensor", required=("file", "name"))
            if not isinstance(t["file"], str) or not isinstance(t["name"], str):
                raise GraphError(f"{where}.tensor: file and name are strings")
            tensor = TensorRef(t["file"], t["name"])
        return cls(name, dtype, tuple(shape), persistable, tensor)


@dataclass(frozen=True)
class OperatorNode:
    """An operation: its registered type, named input/output slots and typed attributes."""

    type: str
    name: str
    inputs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    outputs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    attributes: Mapping[str, Attribute] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type, "name": self.name,
            "inputs": {k: list(v) for k, v in self.inputs.items()},
            "outputs": {k: list(v) for k, v in self.outputs.items()},
            "attributes": {k: a.to_json() for k, a in self.attributes.items()},
        }

    @classmethod
    def from_json(cls, doc: object, where: str) -> OperatorNode:
        d = _obj(doc, where, required=("type", "name"), allowed=("inputs", "outputs", "attributes"))
        if not isinstance(d["type"], str) or not isinstance(d["name"], str) or not d["type"] or not d["name"]:
            raise GraphError(f"{where}: type and name must be non-empty strings")
        slots = {key: _slots(d.get(key, {}), f"{where}.{key}") for key in ("inputs", "outputs")}
        attrs_doc = d.get("attributes", {})
        if not isinstance(attrs_doc, dict):
            raise GraphError(f"{where}.attributes: expected an object")
        attrs = {k: Attribute.from_json(v, f"{where}.attributes.{k}") for k, v in attrs_doc.items()}
        return cls(d["type"], d["name"], slots["inputs"], slots["outputs"], attrs)


@dataclass(frozen=True)
class Graph:
    """A computation graph (Table 2) with its own variables and operators, in execution order."""

    graph_id: int
    parent_graph_id: int = -1
    forward_graph_id: int = -1
    variables: tuple[VariableNode, ...] = ()
    operators: tuple[OperatorNode, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "graph_id": self.graph_id, "parent_graph_id": self.parent_graph_id,
            "forward_graph_id": self.forward_graph_id,
            "variables": [v.to_json() for v in self.variables],
            "operators": [o.to_json() for o in self.operators],
        }

    @classmethod
    def from_json(cls, doc: object, where: str) -> Graph:
        d = _obj(doc, where, required=("graph_id",),
                 allowed=("parent_graph_id", "forward_graph_id", "variables", "operators"))
        ids = [d["graph_id"], d.get("parent_graph_id", -1), d.get("forward_graph_id", -1)]
        if not all(_is_int(i) and i >= -1 for i in ids) or ids[0] < 0:
            raise GraphError(f"{where}: graph ids are integers (graph_id ≥ 0, parent/forward ≥ -1)")
        variables = d.get("variables", [])
        operators = d.get("operators", [])
        if not isinstance(variables, list) or not isinstance(operators, list):
            raise GraphError(f"{where}: variables and operators are lists")
        return cls(
            ids[0], ids[1], ids[2],
            tuple(VariableNode.from_json(v, f"{where}.variables[{i}]") for i, v in enumerate(variables)),
            tuple(OperatorNode.from_json(o, f"{where}.operators[{i}]") for i, o in enumerate(operators)),
        )

    def variable_map(self) -> dict[str, VariableNode]:
        return {v.name: v for v in self.variables}


@dataclass(frozen=True)
class ModelStructure:
    """The model structure (Table 1): identity, interface, graphs and free-form metadata."""

    name: str
    graphs: tuple[Graph, ...]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    version: str = "1"
    producer: str = "ptmpack"
    opset_version: int = OPSET_VERSION
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def main_graph(self) -> Graph:
        """The graph whose ``parent_graph_id`` is -1 (exactly one must exist)."""
        mains = [g for g in self.graphs if g.parent_graph_id == -1]
        if len(mains) != 1:
            raise GraphError(f"model {self.name!r} has {len(mains)} main graphs (parent_graph_id -1); exactly one is needed")
        return mains[0]

    def graph(self, graph_id: int) -> Graph:
        for g in self.graphs:
            if g.graph_id == graph_id:
                return g
        raise GraphError(f"model {self.name!r} has no graph {graph_id}")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": IR_FORMAT, "ir_version": IR_VERSION, "name": self.name, "version": self.version,
            "producer": self.producer, "opset_version": self.opset_version,
            "inputs": list(self.inputs), "outputs": list(self.outputs),
            "metadata": dict(self.metadata), "graphs": [g.to_json() for g in self.graphs],
        }

    def dumps(self) -> bytes:
        """Canonical JSON bytes (sorted keys) as stored in ``Model/graph.json``."""
        return json.dumps(self.to_json(), sort_keys=True, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, doc: object) -> ModelStructure:
        d = _obj(doc, "$", required=("format", "ir_version", "name", "graphs"),
                 allowed=("version", "producer", "opset_version", "inputs", "outputs", "metadata"))
        if d["format"] != IR_FORMAT:
            raise GraphError(f"$: format is {d['format']!r}, expected {IR_FORMAT!r}")
        if d["ir_version"] != IR_VERSION:
            raise GraphError(f"$: IR version {d['ir_version']!r} is not supported (this ptmpack reads {IR_VERSION})")
        for key in ("inputs", "outputs"):
            if not isinstance(d.get(key, []), list) or not all(isinstance(s, str) for s in d.get(key, [])):
                raise GraphError(f"$.{key}: expected a list of variable names")
        metadata = d.get("metadata", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise GraphError("$.metadata: expected an object of strings")
        if not isinstance(d["graphs"], list) or not d["graphs"]:
            raise GraphError("$.graphs: expected a non-empty list")
        opset = d.get("opset_version", OPSET_VERSION)
        if not _is_int(opset):
            raise GraphError("$.opset_version: expected an integer")
        return cls(
            name=_str(d["name"], "$.name"), version=_str(d.get("version", "1"), "$.version"),
            producer=_str(d.get("producer", ""), "$.producer"), opset_version=opset,
            inputs=tuple(d.get("inputs", [])), outputs=tuple(d.get("outputs", [])), metadata=dict(metadata),
            graphs=tuple(Graph.from_json(g, f"$.graphs[{i}]") for i, g in enumerate(d["graphs"])),
        )

    @classmethod
    def loads(cls, raw: bytes, where: str = "graph.json") -> ModelStructure:
        """Parse ``Model/graph.json`` bytes.

        Raises:
            GraphError: not JSON, or not a valid IR document.
        """
        return cls.from_json(loads_strict(raw, where, error=GraphError))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str(v: object, where: str) -> str:
    if not isinstance(v, str):
        raise GraphError(f"{where}: expected a string")
    return v


def _obj(doc: object, where: str, *, required: tuple[str, ...], allowed: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise GraphError(f"{where}: expected an object")
    missing = [k for k in required if k not in doc]
    if missing:
        raise GraphError(f"{where}: missing {', '.join(missing)}")
    extra = [k for k in doc if k not in required and k not in allowed and not k.startswith("x-")]
    if extra:
        raise GraphError(f"{where}: unknown field(s) {', '.join(extra)} (extensions need an 'x-' prefix)")
    return doc


def _slots(doc: object, where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(doc, dict):
        raise GraphError(f"{where}: expected an object of slot → list of variable names")
    out: dict[str, tuple[str, ...]] = {}
    for slot, names in doc.items():
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise GraphError(f"{where}.{slot}: expected a list of variable names")
        out[slot] = tuple(names)
    return out
