"""An OCI image layout directory as a package store (``oci:DIR[:TAG]``).

The layout is the one of the OCI image specification: ``oci-layout``,
``index.json`` (one descriptor per tagged manifest, the tag in the
``org.opencontainers.image.ref.name`` annotation) and ``blobs/sha256/<hex>``.
Blobs are written to a temporary name and renamed, and ``index.json`` is rewritten
whole under an exclusive lock, so concurrent pushes and a crash never leave a
half-written blob or index. Tools such as ``oras`` and ``skopeo`` read the same
directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ptmpack.distribution.oci import (
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    REF_NAME,
    canonical_json,
    load_document,
    read_blob_file,
    sha256_digest,
)
from ptmpack.distribution.reference import Reference
from ptmpack.distribution.storetypes import BlobTarget
from ptmpack.errors import IntegrityError, UsageError, raise_environment_fault

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
MAX_INDEX_BYTES = 64 * 1024 * 1024


class LayoutStore:
    """Read and write packages in an OCI image layout directory."""

    def __init__(self, ref: Reference, *, create: bool) -> None:
        self.ref = ref
        self.root = Path(ref.location)
        if not (self.root / LAYOUT_FILE).is_file():
            if not create:
                raise UsageError(f"{self.root} is not an OCI image layout (no {LAYOUT_FILE})",
                                 hint="push a package there first, or check the path after oci:")
            self._init()

    def _init(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"{self.root} exists and is not a directory")
        if self.root.is_dir() and any(p.name not in (LAYOUT_FILE, INDEX_FILE, "blobs") for p in self.root.iterdir()):
            raise UsageError(f"{self.root} is a non-empty directory without {LAYOUT_FILE}",
                             hint="give a new or empty directory for an OCI layout")
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        if not (self.root / INDEX_FILE).exists():
            self._write_atomic(self.root / INDEX_FILE, canonical_json(_empty_index()))
        self._write_atomic(self.root / LAYOUT_FILE, canonical_json(LAYOUT_VERSION))

    def close(self) -> None:
        """Nothing to release; present so every store is used alike."""


    # blobs
    def blob_path(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        return self.root / "blobs" / algo / hexd

    def has_blob(self, digest: str, size: int) -> bool:
        p = self.blob_path(digest)
        return p.is_file() and p.stat().st_size == size

    def put_blob(self, digest: str, size: int, read: Callable[[int, int], bytes],
                 progress: Callable[[int], None]) -> int:
        """Copy a blob in, checking its digest on the way; returns the bytes written."""
        target = self.blob_path(digest)
        h = hashlib.sha256()
        with self._temp(target.parent) as (f, tmp):
            pos = 0
            while pos < size:
                block = read(pos, min(8 * 1024 * 1024, size - pos))
                h.update(block)
                f.write(block)
                pos += len(block)
                progress(len(block))
            f.flush()
            if "sha256:" + h.hexdigest() != digest:
                raise IntegrityError(f"blob {digest} changed while it was copied")
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        return size

    def fetch_blob_into(self, digest: str, size: int, target: BlobTarget, progress: Callable[[int], None]) -> int:
        """Copy a blob into ``target`` (whole: a local copy needs no resume), checking its digest; the bytes copied.

        Raises:
            IntegrityError: the layout lacks the blob, or it does not match its digest (``target`` recorded empty).
        """
        if not self.has_blob(digest, size):
            raise IntegrityError(f"{self.root} lacks blob {digest} (or holds it at the wrong size)")
        h = hashlib.sha256()
        with open(self.blob_path(digest), "rb") as f:
            pos = 0
            while block := f.read(8 * 1024 * 1024):
                h.update(block)
                os.pwrite(target.fd, block, target.offset + pos)
                pos += len(block)
                progress(len(block))
        if pos != size or "sha256:" + h.hexdigest() != digest:
            target.record(0)
            raise IntegrityError(f"{self.blob_path(digest)} does not match its digest: the layout is corrupt",
                                 hint="nothing was written")
        target.record(size)
        return size

    def fetch_range(self, digest: str, start: int, length: int) -> bytes | None:
        """``length`` bytes of a blob from ``start`` (checked against the chunk index by the caller).

        Raises:
            IntegrityError: the blob is missing or shorter than the range.
        """
        try:
            with open(self.blob_path(digest), "rb") as f:
                data = os.pread(f.fileno(), length, start)
        except FileNotFoundError:
            raise IntegrityError(f"{self.root} lacks blob {digest}") from None
        if len(data) != length:
            raise IntegrityError(f"{self.root}: blob {digest} is shorter than the manifest says")
        return data

    def read_small(self, digest: str, limit: int) -> bytes:
        """A small blob (manifest, config, recipe), digest-checked."""
        return read_blob_file(self.blob_path(digest), digest, limit, f"the layout {self.root}")

    # manifests and tags
    def index(self) -> dict[str, Any]:
        p = self.root / INDEX_FILE
        if p.stat().st_size > MAX_INDEX_BYTES:
            raise IntegrityError(f"{p} is larger than {MAX_INDEX_BYTES} bytes")
        doc = load_document(p.read_bytes(), str(p))
        if not isinstance(doc.get("manifests", []), list):
            raise IntegrityError(f"{p}: manifests must be a list")
        return doc

    def cancel(self) -> None:
        """Nothing to interrupt: a layout's reads and writes are local and short."""

    def tags(self, limit: int | None = None) -> list[str]:
        """Every tag of the layout (the first ``limit``), sorted."""
        return sorted({m["annotations"][REF_NAME] for m in self.index().get("manifests", [])
                       if isinstance(m, dict) and isinstance(m.get("annotations"), dict)
                       and isinstance(m["annotations"].get(REF_NAME), str)})[:limit]

    def resolve(self, target: str) -> str | None:
        """The manifest digest a tag or digest names, or None when the layout has no such manifest."""
        if target.startswith("sha256:"):
            return target if self.blob_path(target).is_file() else None
        for m in self.index().get("manifests", []):
            if isinstance(m, dict) and (m.get("annotations") or {}).get(REF_NAME) == target:
                digest = m.get("digest")
                return digest if isinstance(digest, str) else None
        return None

    def get_manifest(self, target: str) -> tuple[bytes, str] | None:
        digest = self.resolve(target)
        if digest is None:
            return None
        return self.read_small(digest, 4 * 1024 * 1024), digest

    def put_manifest(self, data: bytes, tag: str | None, artifact_type: str) -> tuple[str, bool]:
        """Store a manifest and point ``tag`` at it; returns (digest, whether anything changed)."""
        return self._put(data, tag, {"mediaType": MANIFEST_MEDIA_TYPE, "artifactType": artifact_type})

    def put_index(self, data: bytes, tag: str) -> str:
        """Store an image index under ``tag`` (the referrers tag schema, which layouts use too); returns its digest."""
        return self._put(data, tag, {"mediaType": INDEX_MEDIA_TYPE})[0]

    def referrers(self, digest: str) -> list[dict[str, object]] | None:
        """None: a layout has no referrers API; its referrers are listed under the fallback tag."""
        return None

    def _put(self, data: bytes, tag: str | None, kind: dict[str, str]) -> tuple[str, bool]:
        digest = sha256_digest(data)
        changed = False
        if not self.has_blob(digest, len(data)):
            self.put_blob(digest, len(data), lambda pos, n: data[pos: pos + n], lambda n: None)
            changed = True
        entry: dict[str, Any] = {**kind, "digest": digest, "size": len(data)}
        with self._locked():
            index = self.index()
            manifests = [m for m in index.get("manifests", []) if isinstance(m, dict)]
            if tag is None:  # by digest: listed without a name, so layout tools keep it
                if any(m.get("digest") == digest for m in manifests):
                    return digest, changed
                keep = [*manifests, entry]
            else:
                old = [m for m in manifests if (m.get("annotations") or {}).get(REF_NAME) == tag]
                if len(old) == 1 and old[0].get("digest") == digest:
                    return digest, changed
                keep = [m for m in manifests if (m.get("annotations") or {}).get(REF_NAME) != tag]
                keep.append({**entry, "annotations": {REF_NAME: tag}})
            index["manifests"] = keep
            self._write_atomic(self.root / INDEX_FILE, canonical_json(index))
        return digest, True

    # helpers
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock on the layout folder itself (flock on its descriptor): no lock file is left in it."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the lock

    @contextlib.contextmanager
    def _temp(self, folder: Path) -> Iterator[tuple[Any, str]]:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".ptmpack-tmp-", dir=folder)
        except OSError as exc:
            raise_environment_fault(exc, folder)
            raise
        try:
            with os.fdopen(fd, "wb") as f:
                yield f, tmp
        except OSError as exc:  # a full disk names the layout, not a descriptor
            raise_environment_fault(exc, self.root)
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _write_atomic(self, target: Path, data: bytes) -> None:
        with self._temp(target.parent) as (f, tmp):
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)


def _empty_index() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
