"""What a registry may know about a package: the facts of its clear headers, the metadata, the annotations.

For a native artifact the config blob (``application/vnd.ptmpack.package.config.v1+json``)
holds only what the file's clear headers already say (size, digests, flags, entry
count, the base of a residual package), so it is safe for encrypted packages. A
ModelPack artifact's config is the spec's (:func:`ptmpack.distribution.modelpack.model_config`),
and the same facts travel as ``org.ptmpack.package.*`` manifest annotations
(:meth:`PackageConfig.to_annotations`). Annotations from
``Meta-info/managementinfo.json`` are written only for packages that are not
encrypted: an encrypted package's names and metadata never leave the ciphertext (SPEC §8).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ptmpack.distribution.modelpack import FileLayer, model_config
from ptmpack.distribution.oci import (
    ANN_ENCRYPTED,
    ANN_PACKAGE_SHA256,
    ANN_RESIDUAL_BASE,
    MAX_CONFIG_BYTES,
    canonical_json,
    load_document,
)
from ptmpack.errors import IntegrityError
from ptmpack.format import spec
from ptmpack.format.reader import PackageReader
from ptmpack.jsonio import loads_strict

MANAGEMENT_FILE = "Meta-info/managementinfo.json"
ANNOTATION_KEYS = {
    "name": "org.opencontainers.image.title",
    "version": "org.opencontainers.image.version",
    "license": "org.opencontainers.image.licenses",
    "provider": "org.opencontainers.image.vendor",
    "description": "org.opencontainers.image.description",
    "homepage": "org.opencontainers.image.url",
    "created": "org.opencontainers.image.created",
    "model_id": "org.ptmpack.model_id",
}
"""managementinfo.json field -> annotation key (OCI's pre-defined keys where one fits)."""
MAX_ANNOTATION = 4096
TECHNICAL_FILE = "Meta-info/technicalinfo.json"
ANN_SIZE = "org.ptmpack.package.size"
ANN_MANIFEST_SHA256 = "org.ptmpack.package.manifest-sha256"
ANN_FLAGS = "org.ptmpack.package.flags"
ANN_ENTRIES = "org.ptmpack.package.entries"
ANN_CONTAINER = "org.ptmpack.package.container"
PRECISIONS = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3",
              "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
              "BOOL": "bool"}


@dataclass(frozen=True)
class PackageConfig:
    """The config blob: facts from the clear headers of the ``.ptm``."""

    size: int
    sha256: str | None
    """The whole file's digest (native artifacts); None for ModelPack ones, bound by the layer digests instead."""
    manifest_sha256: str
    flags: int
    entries: int
    residual_base: str | None = None

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & spec.Flags.ENCRYPTED)

    @property
    def residual(self) -> bool:
        return bool(self.flags & spec.Flags.RESIDUAL)

    def flag_names(self) -> list[str]:
        return [f.name for f in spec.Flags if self.flags & f and f.name]

    def to_bytes(self) -> bytes:
        doc = {"format": "ptmpack", "container": [spec.VERSION_MAJOR, spec.VERSION_MINOR], "size": self.size,
               "sha256": self.sha256, "manifest_sha256": self.manifest_sha256, "flags": self.flag_names(),
               "entries": self.entries}
        if self.residual_base is not None:
            doc["residual_base"] = self.residual_base
        return canonical_json(doc)

    def to_annotations(self) -> dict[str, str]:
        """The facts as ``org.ptmpack.package.*`` annotations (a ModelPack config has no room for them)."""
        out = {ANN_SIZE: str(self.size), ANN_MANIFEST_SHA256: self.manifest_sha256, ANN_FLAGS: ",".join(self.flag_names()),
               ANN_ENTRIES: str(self.entries), ANN_CONTAINER: f"{spec.VERSION_MAJOR}.{spec.VERSION_MINOR}"}
        if self.residual_base is not None:
            out[ANN_RESIDUAL_BASE] = self.residual_base
        return out

    @classmethod
    def from_annotations(cls, ann: dict[str, str], where: str) -> PackageConfig:
        """Raises: IntegrityError when an annotation is missing or malformed."""
        size, msha, flags, entries = (ann.get(k, "") for k in (ANN_SIZE, ANN_MANIFEST_SHA256, ANN_FLAGS, ANN_ENTRIES))
        if not size.isdigit() or not entries.isdigit() or len(msha) != 64 or len(size) > 20 or len(entries) > 20:
            raise IntegrityError(f"{where}: the ModelPack manifest lacks ptmpack's package annotations")
        value = 0
        for name in filter(None, flags.split(",")):
            if name not in spec.Flags.__members__:
                raise IntegrityError(f"{where}: unknown flag {name[:40]!r}")
            value |= spec.Flags[name]
        return cls(int(size), None, msha, value, int(entries), ann.get(ANN_RESIDUAL_BASE))

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> PackageConfig:
        """Raises: IntegrityError when malformed."""
        if len(data) > MAX_CONFIG_BYTES:
            raise IntegrityError(f"{where}: config of {len(data)} bytes is too large")
        doc = load_document(data, where)
        size, sha, msha, flags, entries = (doc.get(k) for k in ("size", "sha256", "manifest_sha256", "flags", "entries"))
        if (type(size) is not int or not isinstance(sha, str) or not isinstance(msha, str) or type(entries) is not int
                or not isinstance(flags, list) or doc.get("format") != "ptmpack"):
            raise IntegrityError(f"{where}: not a ptmpack package config")
        value = 0
        for name in flags:
            if name not in spec.Flags.__members__:
                raise IntegrityError(f"{where}: unknown flag {str(name)[:40]!r}")
            value |= spec.Flags[name]
        base = doc.get("residual_base")
        return cls(size, sha, msha, value, entries, base if isinstance(base, str) else None)


def read_facts(reader: PackageReader, sha256: str | None) -> PackageConfig:
    """The config of an open package (``sha256`` is the whole file's digest, computed by the caller)."""
    base = None if reader.sealed else reader.manifest.residual_base
    return PackageConfig(reader.size, sha256, reader.trailer.manifest_sha256.hex(), reader.header.flags,
                         reader.header.entry_count, base)


def annotations(path: Path, config: PackageConfig) -> dict[str, str]:
    """Manifest annotations: metadata for clear packages, nothing from metadata when encrypted.

    Raises:
        IntegrityError: managementinfo.json is damaged (its digest fails) or not JSON.
    """
    out = {ANN_PACKAGE_SHA256: config.sha256} if config.sha256 else {}
    if config.encrypted:
        out[ANN_ENCRYPTED] = "true"
        return out
    if config.residual_base:
        out[ANN_RESIDUAL_BASE] = config.residual_base
    doc = _management(path)
    for field, key in ANNOTATION_KEYS.items():
        value = doc.get(field)
        if isinstance(value, str) and value:
            out[key] = value[:MAX_ANNOTATION]
    return out


def _management(path: Path) -> dict[str, object]:
    from ptmpack.storage.package import open_package

    with open_package(path) as pkg:
        if not pkg.has_file(MANAGEMENT_FILE):
            return {}
        data = pkg.read_file(MANAGEMENT_FILE)
    return _json_object(data, f"{path}: {MANAGEMENT_FILE}")



def modelpack_config(path: Path, layers: list[FileLayer], recipe_digest: str) -> bytes:
    """The ModelPack config blob of a raw package: metadata, weight format and precision, ``diffIds``.

    Raises:
        IntegrityError: a metadata document is damaged.
    """
    from ptmpack.storage.package import is_safetensors, open_package

    with open_package(path) as pkg:
        docs = [_json_object(pkg.read_file(rel), f"{path}: {rel}") if pkg.has_file(rel) else {}
                for rel in (MANAGEMENT_FILE, TECHNICAL_FILE)]
        weights: dict[str, int] = {}
        formats = set()
        for f in pkg.files:
            if f.path.startswith("Model/") and is_safetensors(f.path):
                formats.add("safetensors")
                for t in f.tensors or ():
                    weights[t.dtype] = weights.get(t.dtype, 0) + t.end - t.begin
    precision = PRECISIONS.get(max(weights, key=weights.__getitem__)) if weights else None
    doc = model_config(docs[0], docs[1], [*(layer.digest for layer in layers), recipe_digest],
                       "safetensors" if formats else None, precision)
    return canonical_json(doc)


def _json_object(data: bytes, where: str) -> dict[str, object]:
    doc = loads_strict(data, where)
    return doc if isinstance(doc, dict) else {}
