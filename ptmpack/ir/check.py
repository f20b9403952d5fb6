"""Check a model file for the CLI (``ptmpack graph check``): load ``Model/graph.json`` from a
package or read a bare graph.json, validate it (with the package's tensors when there is a
package), and report what was checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import GraphError, PtmError, UsageError
from ptmpack.ir.model import ModelStructure
from ptmpack.ir.validate import GRAPH_FILE, check_package_tensors, validate
from ptmpack.storage.package import Package, open_package

MAX_GRAPH_BYTES = 64 * 1024 * 1024
"""Largest bare graph.json read (the package reader has its own limit for small files)."""


@dataclass(frozen=True)
class CheckReport:
    """What ``check_model_file`` found: the model, its size, and the warnings."""

    source: str
    model: ModelStructure
    warnings: tuple[str, ...]
    graphs: int
    operators: int
    variables: int
    parameters: int
    tensors_checked: int
    """Parameters matched against the package's tensors (0 for a bare graph.json)."""

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "source": self.source, "model": self.model.name, "graphs": self.graphs,
                "operators": self.operators, "variables": self.variables, "parameters": self.parameters,
                "tensors_checked": self.tensors_checked, "warnings": list(self.warnings)}


def load_model(source: Package | Path | str, opener: Opener | None = None) -> tuple[ModelStructure, Package | None]:
    """The model of a package (its ``Model/graph.json``) or of a bare graph.json file.

    Returns the package too when one was opened (the caller closes it).

    Raises:
        GraphError: no graph.json in the package, or it is not a valid IR document.
        UsageError: the path does not exist.
    """
    if isinstance(source, Package):
        return _model_of(source), source
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".json":
        if path.stat().st_size > MAX_GRAPH_BYTES:
            raise GraphError(f"{path} is over {MAX_GRAPH_BYTES} bytes; not a graph.json ptmpack reads")
        return ModelStructure.loads(path.read_bytes(), str(path)), None
    package = open_package(path, opener)
    try:
        return _model_of(package), package
    except PtmError:
        package.close()
        raise


def _model_of(package: Package) -> ModelStructure:
    try:
        package.file(GRAPH_FILE)
    except UsageError:
        raise GraphError(f"{package.path} has no {GRAPH_FILE}",
                         hint="make one with 'ptmpack init --from-hf' or '--from-gguf'") from None
    return ModelStructure.loads(package.read_file(GRAPH_FILE), f"{package.path}:{GRAPH_FILE}")


def check_model_file(source: Package | Path | str, *, opener: Opener | None = None) -> CheckReport:
    """Load and validate a model: a package (``.ptm`` or tree) with its tensors, or a bare graph.json.

    Raises:
        GraphError: the model breaks an IR rule (exit 5).
        PtmError: the package cannot be opened or read.
    """
    model, package = load_model(source, opener)
    try:
        warnings = validate(model)
        checked = 0
        if package is not None:
            checked, more = check_package_tensors(model, package)
            warnings += more
    finally:
        if package is not None and package is not source:
            package.close()
    variables = [v for g in model.graphs for v in g.variables]
    return CheckReport(
        source=str(source.path if isinstance(source, Package) else source), model=model, warnings=tuple(warnings),
        graphs=len(model.graphs), operators=sum(len(g.operators) for g in model.graphs), variables=len(variables),
        parameters=sum(v.persistable for v in variables), tensors_checked=checked)
