"""``Model/residual.json``: the record of a delta package, as frozen dataclasses.

It says, for every file of the target, how ``apply`` rebuilds it (copy it from the
base, take it from the delta, or assemble a safetensors file from its exact header
and its tensors), and for every tensor its mode, the digests that bind it to the
base and to the target, and the error its quantization achieved. The byte-level
description is in docs/RESIDUAL.md. ``ResidualDoc.from_json(d.to_json()) == d``.
Parsing treats the document as hostile: every field is type-checked and any
defect raises :class:`IntegrityError` naming the JSON path.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from ptmpack.errors import IntegrityError, UnsupportedError
from ptmpack.jsonio import Fields, loads_strict

FORMAT = "ptmpack-residual"
VERSION = 1
RESIDUAL_JSON = "Model/residual.json"
DATA_DIR = "Model/residual"
ERROR_FIELDS = ("max_abs", "rel_fro", "result_rel_fro", "delta_rel")


class TensorMode(str, enum.Enum):
    """How a target tensor is rebuilt."""

    UNCHANGED = "unchanged"
    """Bit-identical to its base tensor; costs nothing."""
    QUANTIZED = "quantized"
    """B' = A + Q(Δ), Δ quantized per group at ``bits``; lossy, error recorded."""
    XOR = "xor"
    """Lossless: bits(B) = bits(A) XOR stored planes."""
    WHOLE = "whole"
    """Carried as is: new, reshaped or re-typed (no base tensor to build on)."""


class FileMode(str, enum.Enum):
    """How a target file is rebuilt."""

    SAME = "same"
    """Byte-identical to the base file at the same path: copied from the base."""
    CARRIED = "carried"
    """Stored whole in the delta at ``stored_as``."""
    TENSORS = "tensors"
    """A safetensors file assembled from its recorded header and its tensors."""


@dataclass(frozen=True)
class DataRef:
    """A tensor inside one of the delta's data files."""

    file: str
    name: str


@dataclass(frozen=True)
class BaseRef:
    """The base tensor a target tensor is built on, and the sha256 of its bytes."""

    file: str
    name: str
    sha256: str


@dataclass(frozen=True)
class ErrorRecord:
    """Achieved error of Q(Δ): max |Q(Δ)-Δ| and ‖Q(Δ)-Δ‖/‖Δ‖; ‖B'-B‖/‖Δ‖ after the cast back
    to the tensor's dtype (larger than rel_fro only for 16-bit tensors); and ‖Δ‖/‖A‖ for scale."""

    max_abs: float
    rel_fro: float
    result_rel_fro: float
    delta_rel: float


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a target safetensors file, in file order."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    mode: TensorMode
    target_sha256: str
    base: BaseRef | None = None
    reason: str | None = None
    bits: int | None = None
    group_size: int | None = None
    scale_dtype: str | None = None
    scale_exp: int | None = None
    data: dict[str, DataRef] = field(default_factory=dict)
    """Roles: ``codes``/``scales`` (quantized), ``planes`` (xor), ``tensor`` (whole)."""
    result_sha256: str | None = None
    """sha256 of the bytes apply produces, when lossy and not equal to the target's."""
    error: ErrorRecord | None = None

    @property
    def lossless(self) -> bool:
        return self.result_sha256 is None


@dataclass(frozen=True)
class FileEntry:
    """One file of the target package."""

    path: str
    mode: FileMode
    size: int
    sha256: str
    executable: bool = False
    stored_as: str | None = None
    header: str | None = None
    """The safetensors JSON header text exactly as in the target (padding included)."""
    result_sha256: str | None = None
    tensors: tuple[TensorEntry, ...] = ()


@dataclass(frozen=True)
class Settings:
    """What diff was asked for."""

    bits: int | str
    group_size: int
    max_error: float | None


@dataclass(frozen=True)
class ResidualDoc:
    """The whole ``Model/residual.json``."""

    base_manifest_sha256: str
    base_package_id: str
    settings: Settings
    files: tuple[FileEntry, ...]
    removed_files: tuple[str, ...] = ()
    removed_tensors: tuple[tuple[str, str], ...] = ()
    """(file, name) of base tensors the target no longer has."""
    target_manifest_sha256: str | None = None

    def tensors(self) -> list[tuple[FileEntry, TensorEntry]]:
        return [(f, t) for f in self.files for t in f.tensors]

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, no whitespace), UTF-8."""
        doc = {
            "format": FORMAT, "version": VERSION,
            "base": {"manifest_sha256": self.base_manifest_sha256, "package_id": self.base_package_id},
            "target": {"manifest_sha256": self.target_manifest_sha256},
            "settings": {"bits": self.settings.bits, "group_size": self.settings.group_size,
                         "max_error": self.settings.max_error},
            "files": [_file_json(f) for f in self.files],
            "removed_files": list(self.removed_files),
            "removed_tensors": [{"file": f, "name": n} for f, n in self.removed_tensors],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ResidualDoc:
        """Parse and type-check a residual.json.

        Raises:
            IntegrityError: not JSON, or a field missing or of the wrong type.
            UnsupportedError: a newer residual format version.
        """
        p = Fields(loads_strict(raw, RESIDUAL_JSON), f"{RESIDUAL_JSON}: $")
        if p.get("format", str) != FORMAT:
            raise IntegrityError(f"{RESIDUAL_JSON}: format is not {FORMAT!r}")
        version = p.get("version", int)
        if version != VERSION:
            raise UnsupportedError(f"{RESIDUAL_JSON}: residual format version {version}; this ptmpack reads {VERSION}")
        base = p.obj("base")
        target = p.obj("target")
        s = p.obj("settings")
        bits = s.get("bits", (int, str))
        max_error = s.optional("max_error", (int, float))
        return cls(
            base_manifest_sha256=base.sha256_hex("manifest_sha256"),
            base_package_id=base.get("package_id", str),
            target_manifest_sha256=target.sha256_hex("manifest_sha256", optional=True),
            settings=Settings(bits, s.get("group_size", int), None if max_error is None else float(max_error)),
            files=tuple(_file_from(f) for f in p.objs("files")),
            removed_files=tuple(p.strs("removed_files")),
            removed_tensors=tuple((r.get("file", str), r.get("name", str)) for r in p.objs("removed_tensors")),
        )


def _file_json(f: FileEntry) -> dict[str, Any]:
    doc: dict[str, Any] = {"path": f.path, "mode": f.mode.value, "size": f.size, "sha256": f.sha256,
                           "executable": f.executable}
    if f.stored_as is not None:
        doc["stored_as"] = f.stored_as
    if f.mode is FileMode.TENSORS:
        doc["header"] = f.header
        doc["result_sha256"] = f.result_sha256
        doc["tensors"] = [_tensor_json(t) for t in f.tensors]
    return doc


def _tensor_json(t: TensorEntry) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "mode": t.mode.value,
                           "target_sha256": t.target_sha256}
    optional = {"reason": t.reason, "bits": t.bits, "group_size": t.group_size, "scale_dtype": t.scale_dtype,
                "scale_exp": t.scale_exp, "result_sha256": t.result_sha256}
    doc.update({k: v for k, v in optional.items() if v is not None})
    if t.base is not None:
        doc["base"] = {"file": t.base.file, "name": t.base.name, "sha256": t.base.sha256}
    if t.data:
        doc["data"] = {role: {"file": r.file, "name": r.name} for role, r in t.data.items()}
    if t.error is not None:
        doc["error"] = {k: getattr(t.error, k) for k in ERROR_FIELDS}
    return doc


def _file_from(p: Fields) -> FileEntry:
    mode = p.enum("mode", FileMode)
    tensors = tuple(_tensor_from(t) for t in p.objs("tensors")) if mode is FileMode.TENSORS else ()
    return FileEntry(
        path=p.get("path", str), mode=mode, size=p.get("size", int), sha256=p.sha256_hex("sha256"),
        executable=p.get("executable", bool), stored_as=p.optional("stored_as", str),
        header=p.get("header", str) if mode is FileMode.TENSORS else None,
        result_sha256=p.sha256_hex("result_sha256") if mode is FileMode.TENSORS else None, tensors=tensors,
    )


def _tensor_from(p: Fields) -> TensorEntry:
    base = p.optional("base", dict)
    err = p.optional("error", dict)
    b = Fields(base, f"{p.where}.base") if base is not None else None
    e = Fields(err, f"{p.where}.error") if err is not None else None
    data = p.optional("data", dict) or {}
    refs = {role: Fields(v, f"{p.where}.data.{role}") for role, v in data.items()}
    return TensorEntry(
        name=p.get("name", str), dtype=p.get("dtype", str), shape=tuple(p.uints("shape")),
        mode=p.enum("mode", TensorMode), target_sha256=p.sha256_hex("target_sha256"),
        base=None if b is None else BaseRef(b.get("file", str), b.get("name", str), b.sha256_hex("sha256")),
        reason=p.optional("reason", str), bits=p.optional("bits", int), group_size=p.optional("group_size", int),
        scale_dtype=p.optional("scale_dtype", str), scale_exp=p.optional("scale_exp", int),
        data={role: DataRef(r.get("file", str), r.get("name", str)) for role, r in refs.items()},
        result_sha256=p.sha256_hex("result_sha256", optional=True),
        error=None if e is None else ErrorRecord(*(float(e.get(k, (int, float))) for k in ERROR_FIELDS)),
    )


