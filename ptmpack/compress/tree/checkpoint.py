"""Read and rewrite the Hugging Face checkpoint inside a package tree's ``Model/`` (structure steps).

The structure and transfer steps (LoRA and adapter merges, norm folding, pruning, PTQ) all edit
``Model/*.safetensors`` and ``Model/config.json`` in place and then re-describe the result in
``Model/graph.json``. This module holds that shared plumbing: load every top-level tensor as a
float numpy array (remembering its file and dtype), write the files back through the safetensors
library (temp file, then rename), and rebuild the graph with :mod:`ptmpack.ir.convert_hf`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.tree import documents
from ptmpack.errors import InvalidTreeError

MODEL = "Model"
CONFIG = "Model/config.json"
GRAPH = "Model/graph.json"
TECHNICAL = "Meta-info/technicalinfo.json"


@dataclass
class Checkpoint:
    """The tensors of ``Model/*.safetensors`` (top level only) with the file and dtype each came from.

    ``tensors`` may be edited, added to (``file_of`` defaults a new tensor to the first file) or
    deleted from; :meth:`save` writes every file back.
    """

    tree: Path
    tensors: dict[str, np.ndarray]
    file_of: dict[str, str]
    dtype_of: dict[str, np.dtype]
    metadata: dict[str, dict[str, str] | None] = field(default_factory=dict)

    @classmethod
    def load(cls, tree: Path) -> Checkpoint:
        """Read every top-level ``Model/*.safetensors`` of ``tree`` (in their stored dtypes, bfloat16 included).

        Raises:
            InvalidTreeError: no safetensors file, an invalid one, or a tensor name in two files.
        """
        from ptmpack.compress.tree.weights import WeightFiles

        tree = Path(tree)
        weights = WeightFiles(tree / MODEL)
        ck = cls(tree, {}, {}, {}, dict(weights.metadata))
        for name in weights.names():
            arr = weights.read(name)
            ck.tensors[name], ck.file_of[name], ck.dtype_of[name] = arr, weights.file_of(name), arr.dtype
        return ck

    def f64(self, name: str) -> np.ndarray:
        """Tensor ``name`` in float64 (transforms are computed in double precision, stored in the original dtype).

        Raises:
            InvalidTreeError: no such tensor.
        """
        if name not in self.tensors:
            raise InvalidTreeError(f"{self.tree / MODEL}: checkpoint has no tensor {name!r}")
        return np.asarray(self.tensors[name], np.float64)

    def set(self, name: str, value: np.ndarray, *, like: str | None = None) -> None:
        """Store ``value`` as tensor ``name`` in the dtype (and file) of ``name`` or of ``like``."""
        ref = name if name in self.dtype_of else like
        dtype = self.dtype_of.get(ref, np.dtype(np.float32)) if ref else np.dtype(np.float32)
        self.tensors[name] = np.ascontiguousarray(np.asarray(value).astype(dtype))
        self.dtype_of[name] = dtype
        self.file_of.setdefault(name, self.file_of.get(ref, next(iter(self.metadata))) if ref else next(iter(self.metadata)))

    def delete(self, name: str) -> None:
        for table in (self.tensors, self.file_of, self.dtype_of):
            table.pop(name, None)

    def nbytes(self) -> int:
        return int(sum(t.nbytes for t in self.tensors.values()))

    def save(self, files: Collection[str] | None = None) -> None:
        """Write the safetensors files back (each through a temp file renamed over the original): those named in
        ``files`` (names as in :attr:`file_of`), or every one.

        Raises:
            InvalidTreeError: a file cannot be written.
        """
        from ptmpack.compress.tree.weights import write_safetensors

        for fname, meta in self.metadata.items():
            if files is not None and fname not in files:
                continue
            write_safetensors(self.tree / MODEL / fname,
                              {n: t for n, t in self.tensors.items() if self.file_of[n] == fname}, meta)


def read_json(tree: Path, rel: str) -> dict[str, Any]:
    """A JSON object from the tree (:func:`ptmpack.compress.tree.documents.read_json` of ``tree/rel``).

    Raises:
        InvalidTreeError: missing, unreadable or not an object.
    """
    return documents.read_json(Path(tree) / rel)


def write_json(tree: Path, rel: str, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` to ``tree/rel`` through a temp file and a rename."""
    documents.write_json(Path(tree) / rel, doc)


def open_tree(tree: Path) -> Any:
    """The package tree opened with the storage layer's ``open_package`` (a context manager)."""
    from ptmpack.storage.package import open_package

    return open_package(Path(tree))


def refresh_parameters(ck: Checkpoint) -> None:
    """Set technicalinfo ``parameters`` to the element count of the checkpoint's tensors (as ``init`` counts it)."""
    path = ck.tree / TECHNICAL
    if path.is_file():
        doc = read_json(ck.tree, TECHNICAL)
        doc["parameters"] = int(sum(t.size for t in ck.tensors.values()))
        write_json(ck.tree, TECHNICAL, doc)


def update_ptm_info(tree: Path, **fields: int) -> None:
    """Set Table 67 fields (``num_heads``, ``intermediate_size``, …) in technicalinfo ``ptm_info``, if present."""
    path = Path(tree) / TECHNICAL
    if not path.is_file():
        return
    doc = read_json(tree, TECHNICAL)
    info = doc.get("ptm_info")
    if isinstance(info, dict):
        info.update(fields)
        write_json(tree, TECHNICAL, doc)


def refuse_unmerged_adapters(tree: Path, step: str) -> None:
    """Refuse a step that rewrites the linears while ``Model/adapters/`` still sits in front of them.

    Raises:
        UsageError: the package carries unmerged adapters.
    """
    from ptmpack.errors import UsageError

    if (Path(tree) / MODEL / "adapters" / "adapter_config.json").is_file():
        raise UsageError(f"{step} would change the linear layers the package's unmerged adapters act on",
                         hint="add --merge-adapter (it runs first)")
