"""Typed results of the storage verbs; each has ``to_json()`` for ``--json`` and CI.

Engines keep their own report types beside their code (``ptmpack.residual.report``,
``ptmpack.compress``, ``ptmpack.distribution``); ``ptmpack.api`` re-exports them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ptmpack.format.manifest import Manifest
from ptmpack.format.spec import Flags


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class PackReport:
    """What ``pack`` wrote: the output file and its manifest."""

    output: str
    manifest: Manifest
    file_bytes: int

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {"output": self.output, "package_id": m.package_id.hex(), "entries": len(m.entries),
                "raw_bytes": sum(e.raw_length for e in m.entries), "file_bytes": self.file_bytes,
                "flags": [f.name for f in Flags if m.flags & f]}


@dataclass(frozen=True)
class UnpackReport:
    """What ``unpack`` wrote."""

    target: str
    files: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` checked; any failure raises instead."""

    path: str
    kind: str
    entries: int
    bytes: int
    encrypted: bool
    signed: bool
    signature: str
    """'verified', 'unchecked' (signed but no public key given), or 'none'."""
    signer: str | None
    checks: tuple[str, ...]
    decrypted: bool = True
    """For an encrypted package: False when it was checked without its key (signature and layout only).
    Not in ``to_json()`` for a package that was never encrypted."""

    def to_json(self) -> dict[str, Any]:
        doc = {k: _plain(v) for k, v in asdict(self).items()}
        if not self.encrypted:
            del doc["decrypted"]  # said only of an encrypted package
        return doc


@dataclass(frozen=True)
class InspectReport:
    """A package or tree described: headers, entries, metadata, totals and (optionally) tensors.

    ``header``, ``manifest``, ``signature`` and ``encryption`` are ``None`` for a tree;
    ``residual`` only for residual packages; ``tensors`` only when asked for.
    """

    path: str
    type: str
    entries: tuple[dict[str, Any], ...]
    metadata: dict[str, Any]
    totals: dict[str, int]
    file_size: int | None = None
    header: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    signature: dict[str, Any] | None = None
    encryption: dict[str, Any] | None = None
    residual: dict[str, Any] | None = None
    tensors: tuple[dict[str, Any], ...] | None = None
    sealed: bool = False
    """An encrypted package inspected without its key: only the clear header, signer and key slots are known
    (``"sealed": true`` in ``to_json()``; absent otherwise)."""

    def quantization(self) -> dict[str, Any] | None:
        """The weight quantization scheme the package records (``technicalinfo.json``'s
        ``compression.quantization``: method, bits, group size, symmetric, format), or None for float weights.

        With a scheme, ``to_json()`` reports ``totals.stored_elements`` instead of ``totals.parameters``:
        the tensors then count packed words and scales, not model parameters.
        """
        technical = self.metadata.get("technicalinfo")
        compression = technical.get("compression") if isinstance(technical, dict) else None
        scheme = compression.get("quantization") if isinstance(compression, dict) else None
        return dict(scheme) if isinstance(scheme, dict) else None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"path": self.path, "type": self.type}
        if self.sealed:
            doc["sealed"] = True
        if self.type == "file":
            doc.update(file_size=self.file_size, header=self.header, manifest=self.manifest,
                       signature=self.signature)
            if self.encryption is not None:
                doc["encryption"] = self.encryption
        scheme = self.quantization()
        totals = dict(self.totals)
        if scheme is not None and "parameters" in totals:
            # Packed weights: the tensors hold int32 words, scales and zero points, not the model's parameters.
            totals["stored_elements"] = totals.pop("parameters")
        doc.update(entries=list(self.entries), metadata=self.metadata, totals=totals)
        if scheme is not None:
            doc["quantization"] = scheme
        if self.residual is not None:
            doc["residual"] = self.residual
        if self.tensors is not None:
            doc["tensors"] = list(self.tensors)
        return doc
