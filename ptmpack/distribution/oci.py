"""OCI media types, descriptors and the image manifest of a package (docs/DISTRIBUTION.md §2).

A package is an OCI image manifest (schemaVersion 2) of one of two artifact
types: a CNCF ModelPack artifact (raw, unencrypted packages: one layer per file,
:mod:`ptmpack.distribution.modelpack`) or a ptmpack-native one (compressed or
encrypted packages: chunk blobs whose names and metadata stay in the
ciphertext). Both carry the ptmpack recipe layer that rebuilds the exact
``.ptm``. Documents are serialized canonically (sorted keys, no whitespace) so
pushing the same package twice yields the same manifest digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptmpack.errors import IntegrityError, UnsupportedError
from ptmpack.jsonio import loads_strict

ARTIFACT_TYPE = "application/vnd.ptmpack.package.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.ptmpack.package.config.v1+json"
RECIPE_MEDIA_TYPE = "application/vnd.ptmpack.recipe.v1+zstd"
CHUNK_MEDIA_TYPE = "application/vnd.ptmpack.chunk.v1"
MODEL_ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
ACCEPT_MANIFESTS = f"{MANIFEST_MEDIA_TYPE}, {INDEX_MEDIA_TYPE}"

REF_NAME = "org.opencontainers.image.ref.name"
"""Annotation naming a tag in an OCI layout's index.json."""
ANN_RESIDUAL_BASE = "org.ptmpack.residual.base"
ANN_RESIDUAL_TARGET = "org.ptmpack.residual.target"
ANN_PACKAGE_SHA256 = "org.ptmpack.package.sha256"
ANN_ENCRYPTED = "org.ptmpack.encrypted"

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""Largest manifest we read (the distribution spec's registries cap them at 4 MiB)."""
MAX_CONFIG_BYTES = 1024 * 1024


def sha256_digest(data: bytes) -> str:
    """The OCI digest string of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_blob_file(path: Path, digest: str, limit: int, holder: str) -> bytes:
    """A small blob (manifest, config, recipe) read from a local file, its size bounded and digest checked.

    Raises:
        IntegrityError: ``holder`` (the layout or store, for the message) lists the blob but lacks the file,
            the file is larger than ``limit``, or its bytes do not match ``digest``.
    """
    try:
        if path.stat().st_size > limit:
            raise IntegrityError(f"{path}: larger than {limit} bytes")
        data = path.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{holder} lists blob {digest} but does not hold it") from None
    if sha256_digest(data) != digest:
        raise IntegrityError(f"{path} does not match its digest: {holder} is corrupt", hint="nothing was written")
    return data


def canonical_json(doc: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte string per document."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says about one blob."""

    media_type: str
    digest: str
    size: int
    annotations: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return doc

    @classmethod
    def from_json(cls, doc: Any, where: str) -> Descriptor:
        if not isinstance(doc, dict):
            raise IntegrityError(f"{where}: a descriptor must be an object")
        media, digest, size = doc.get("mediaType"), doc.get("digest"), doc.get("size")
        if not isinstance(media, str) or not isinstance(digest, str) or type(size) is not int or size < 0:
            raise IntegrityError(f"{where}: descriptor needs mediaType, digest and a non-negative size")
        if not digest.startswith("sha256:") or len(digest) != 71 or not all(c in "0123456789abcdef" for c in digest[7:]):
            raise UnsupportedError(f"{where}: digest {digest[:80]!r} is not a sha256 digest", hint="ptmpack reads sha256 only")
        ann = doc.get("annotations") or {}
        if not isinstance(ann, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ann.items()):
            raise IntegrityError(f"{where}: annotations must map strings to strings")
        return cls(media, digest, size, tuple(sorted(ann.items())))


@dataclass(frozen=True)
class PackageManifest:
    """The OCI image manifest of one package: config, the recipe layer, and the file or chunk blobs."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: tuple[tuple[str, str], ...] = ()
    subject: Descriptor | None = None
    artifact_type: str = ARTIFACT_TYPE

    @property
    def recipe(self) -> Descriptor:
        """The ptmpack recipe layer (first in native manifests, last in ModelPack ones)."""
        return next(d for d in self.layers if d.media_type == RECIPE_MEDIA_TYPE)

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Every layer but the recipe: the blobs the recipe copies."""
        return tuple(d for d in self.layers if d.media_type != RECIPE_MEDIA_TYPE)

    @property
    def is_modelpack(self) -> bool:
        return self.artifact_type == MODEL_ARTIFACT_TYPE

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": self.artifact_type,
            "config": self.config.to_json(),
            "layers": [d.to_json() for d in self.layers],
        }
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        if self.subject is not None:
            doc["subject"] = self.subject.to_json()
        return canonical_json(doc)

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> PackageManifest:
        """Parse and check a manifest fetched from a store.

        Raises:
            IntegrityError: not valid JSON or malformed.
            UnsupportedError: a manifest of something other than a ptmpack package.
        """
        doc = _load(data, where)
        if doc.get("mediaType") == INDEX_MEDIA_TYPE or "manifests" in doc:
            raise UnsupportedError(f"{where} is an image index, not a ptmpack package",
                                   hint="pull a tag that ptmpack push wrote")
        config = Descriptor.from_json(doc.get("config"), f"{where} config")
        kind = doc.get("artifactType") or config.media_type
        if kind not in (ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, MODEL_ARTIFACT_TYPE):
            raise UnsupportedError(f"{where} is not a ptmpack package (it holds {str(kind)[:100]})",
                                   hint="ptmpack pulls what ptmpack push wrote; use docker/oras for other artifacts")
        layers = doc.get("layers")
        if not isinstance(layers, list) or not layers:
            raise IntegrityError(f"{where}: a ptmpack manifest needs at least its recipe layer")
        descs = tuple(Descriptor.from_json(d, f"{where} layer {i}") for i, d in enumerate(layers))
        recipes = [d for d in descs if d.media_type == RECIPE_MEDIA_TYPE]
        if len(recipes) != 1:
            hint = "ModelPack artifacts that ptmpack did not push hold no recipe; use a ModelPack client for them"
            raise UnsupportedError(f"{where}: {len(recipes)} ptmpack recipe layers ({RECIPE_MEDIA_TYPE}), expected one",
                                   hint=hint)
        ann = doc.get("annotations") or {}
        if not isinstance(ann, dict) or not all(isinstance(v, str) for v in ann.values()):
            raise IntegrityError(f"{where}: annotations must map strings to strings")
        subject = Descriptor.from_json(doc["subject"], f"{where} subject") if "subject" in doc else None
        artifact = MODEL_ARTIFACT_TYPE if kind == MODEL_ARTIFACT_TYPE else ARTIFACT_TYPE
        return cls(config, descs, tuple(sorted(ann.items())), subject, artifact)


def _load(data: bytes, where: str) -> dict[str, Any]:
    if len(data) > MAX_MANIFEST_BYTES:
        raise IntegrityError(f"{where}: {len(data)} bytes is larger than any manifest should be")
    doc = loads_strict(data, where)
    if not isinstance(doc, dict):
        raise IntegrityError(f"{where}: not a JSON object")
    return doc


def load_document(data: bytes, where: str) -> dict[str, Any]:
    """A small JSON object read from a store (config, index.json, tag list), strictly."""
    return _load(data, where)
