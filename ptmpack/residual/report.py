"""What diff and apply report, and the summary ``inspect`` shows for a residual package.

Reports are frozen records with ``to_json()`` for ``--json`` (one document CI can
check: sizes, per-tensor modes, bit widths and errors); :func:`summarize_residual`
condenses a ``Model/residual.json`` for ``ptmpack inspect``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from ptmpack.residual.record import FileMode, ResidualDoc, TensorMode


@dataclass(frozen=True)
class TensorRow:
    """One target tensor in a report: how it travels and what it costs in accuracy."""

    file: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    mode: str
    bits: int | None
    reason: str | None
    rel_fro: float | None
    """‖Q(Δ)-Δ‖/‖Δ‖ (quantized only; lossless modes are exact)."""
    result_rel_fro: float | None
    max_abs: float | None
    delta_rel: float | None


def tensor_rows(doc: ResidualDoc) -> tuple[TensorRow, ...]:
    """Every target tensor of ``doc`` in file order, plus one row per removed base tensor."""
    rows = []
    for f, t in doc.tensors():
        e = t.error
        rows.append(TensorRow(f.path, t.name, t.dtype, t.shape, t.mode.value, t.bits, t.reason,
                              e and e.rel_fro, e and e.result_rel_fro, e and e.max_abs, e and e.delta_rel))
    for path, name in doc.removed_tensors:
        rows.append(TensorRow(path, name, "", (), "removed", None, None, None, None, None, None))
    return tuple(rows)


def _mode_counts(rows: tuple[TensorRow, ...]) -> dict[str, int]:
    counts = Counter(r.mode for r in rows)
    return {m: counts.get(m, 0) for m in [*(m.value for m in TensorMode), "removed"]}


def _worst(rows: tuple[TensorRow, ...], attr: str) -> float:
    return max((getattr(r, attr) or 0.0 for r in rows), default=0.0)


@dataclass(frozen=True)
class DiffReport:
    """The outcome of ``diff --residual``."""

    output: str
    base_manifest_sha256: str
    delta_bytes: int
    """Size of the delta package file."""
    target_bytes: int
    """Raw size of all target files."""
    data_bytes: int
    """Uncompressed bytes of tensor data stored in the delta (before zstd)."""
    seconds: float
    files: dict[str, int]
    removed_files: tuple[str, ...]
    removed_tensors: int
    tensors: tuple[TensorRow, ...]

    @property
    def ratio(self) -> float:
        """Delta size as a fraction of the target's raw size."""
        return self.delta_bytes / self.target_bytes if self.target_bytes else 0.0

    @property
    def lossless(self) -> bool:
        return not any(r.mode == TensorMode.QUANTIZED.value for r in self.tensors)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True, "output": self.output, "base_manifest_sha256": self.base_manifest_sha256,
            "delta_bytes": self.delta_bytes, "target_bytes": self.target_bytes, "ratio": self.ratio,
            "data_bytes": self.data_bytes, "seconds": self.seconds, "lossless": self.lossless,
            "files": self.files, "removed_files": list(self.removed_files),
            "modes": _mode_counts(self.tensors), "bits": _bits(self.tensors),
            "max_rel_fro": _worst(self.tensors, "rel_fro"), "max_abs": _worst(self.tensors, "max_abs"),
            "tensors": [_row_json(r) for r in self.tensors],
        }


@dataclass(frozen=True)
class ApplyReport:
    """The outcome of ``apply``: what was rebuilt and how it was checked."""

    output: str
    base_manifest_sha256: str
    files: dict[str, int]
    bytes: int
    """Raw size of the rebuilt package's files."""
    package_bytes: int
    seconds: float
    lossless: bool
    """True when every tensor came back bit-exact to the target (no quantized tensor)."""
    tensors: tuple[TensorRow, ...]
    checks: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True, "output": self.output, "base_manifest_sha256": self.base_manifest_sha256,
            "files": self.files, "bytes": self.bytes, "package_bytes": self.package_bytes, "seconds": self.seconds,
            "lossless": self.lossless, "modes": _mode_counts(self.tensors), "bits": _bits(self.tensors),
            "max_rel_fro": _worst(self.tensors, "rel_fro"), "checks": list(self.checks),
            "tensors": [_row_json(r) for r in self.tensors],
        }


def _bits(rows: tuple[TensorRow, ...]) -> dict[str, int]:
    return dict(sorted(Counter(str(r.bits) for r in rows if r.bits is not None).items()))


def _row_json(r: TensorRow) -> dict[str, Any]:
    doc = asdict(r)
    doc["shape"] = list(r.shape)
    return {k: v for k, v in doc.items() if v is not None}


def summarize_residual(doc: ResidualDoc | bytes | str | dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready summary of a ``Model/residual.json`` for ``inspect``.

    Accepts the parsed record, its raw bytes/text, or the decoded JSON object. Says
    what the delta binds to (base manifest digest), what it was asked for, how many
    files and tensors travel in each mode, the bit widths used, the worst errors,
    and one row per tensor.

    Raises:
        IntegrityError / UnsupportedError: the document is malformed or of a newer version.
    """
    if isinstance(doc, dict):
        doc = json.dumps(doc)
    if isinstance(doc, str):
        doc = doc.encode("utf-8")
    if isinstance(doc, bytes):
        doc = ResidualDoc.from_json(doc)
    rows = tensor_rows(doc)
    return {
        "base_manifest_sha256": doc.base_manifest_sha256,
        "base_package_id": doc.base_package_id,
        "target_manifest_sha256": doc.target_manifest_sha256,
        "settings": asdict(doc.settings),
        "files": {m.value: sum(1 for f in doc.files if f.mode is m) for m in FileMode},
        "carried_files": [f.path for f in doc.files if f.mode is FileMode.CARRIED],
        "removed_files": list(doc.removed_files),
        "modes": _mode_counts(rows),
        "bits": _bits(rows),
        "lossless": not any(r.mode == TensorMode.QUANTIZED.value for r in rows),
        "max_rel_fro": _worst(rows, "rel_fro"),
        "max_abs": _worst(rows, "max_abs"),
        "tensors": [_row_json(r) for r in rows],
    }
