"""What a registry may know about a package: the OCI config blob and the manifest annotations.

The config blob (``application/vnd.ptmpack.package.config.v1+json``) holds only what
the file's clear headers already say (size, digests, flags, entry count, the base
of a residual package), so it is safe for encrypted packages. Annotations come
from ``Meta-info/managementinfo.json`` and are written only for packages that are
not encrypted: an encrypted package's names and metadata never leave the
ciphertext (SPEC §8).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class PackageConfig:
    """The config blob: facts from the clear headers of the ``.ptm``."""

    size: int
    sha256: str
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


def read_facts(reader: PackageReader, sha256: str) -> PackageConfig:
    """The config of an open package (``sha256`` is the whole file's digest, computed by the caller)."""
    base = None if reader.sealed else reader.manifest.residual_base
    return PackageConfig(reader.size, sha256, reader.trailer.manifest_sha256.hex(), reader.header.flags,
                         reader.header.entry_count, base)


def annotations(path: Path, config: PackageConfig) -> dict[str, str]:
    """Manifest annotations: metadata for clear packages, nothing from metadata when encrypted.

    Raises:
        IntegrityError: managementinfo.json is damaged (its digest fails) or not JSON.
    """
    out = {ANN_PACKAGE_SHA256: config.sha256}
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
        if not any(f.path == MANAGEMENT_FILE for f in pkg.files):
            return {}
        data = pkg.read_file(MANAGEMENT_FILE)
    doc = loads_strict(data, f"{path}: {MANAGEMENT_FILE}")
    return doc if isinstance(doc, dict) else {}

