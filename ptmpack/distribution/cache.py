"""The local content cache: every blob a pull fetched, by digest, so it is never fetched again.

Layout under ``$XDG_CACHE_HOME/ptmpack`` (default ``~/.cache/ptmpack``)::

    blobs/sha256/<hex>      complete blobs, digest-checked before they were renamed here, read-only
    partial/sha256/<hex>    downloads in progress; a later pull resumes them with HTTP Range
    origins/<host>.json     digest -> a repository of that registry known to hold it (for mounts)

Blobs are content-addressed, so the cache is shared by every registry and
repository and needs no index. Deleting the folder is always safe.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

CACHE_SUBDIR = "ptmpack"
MAX_ORIGINS = 200_000
"""Digests remembered per registry host (the oldest are forgotten first)."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ptmpack``, else ``~/.cache/ptmpack``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / CACHE_SUBDIR


class BlobCache:
    """Content-addressed blob files under one root directory."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def blob_path(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        return self.root / "blobs" / algo / hexd

    def partial_path(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        return self.root / "partial" / algo / hexd

    def has(self, digest: str, size: int) -> bool:
        p = self.blob_path(digest)
        try:
            return p.stat().st_size == size
        except FileNotFoundError:
            return False

    def commit(self, digest: str) -> Path:
        """Move a finished (digest-checked) download into the cache."""
        target = self.blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = self.partial_path(digest)
        os.chmod(partial, 0o444)
        os.replace(partial, target)
        return target

    def put_bytes(self, digest: str, data: bytes) -> Path:
        """Store a small blob already held in memory (and already digest-checked)."""
        target = self.blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ptmpack-tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return target

    def put_checked(self, digest: str, data: bytes) -> Path:
        """Store bytes found locally (e.g. in a package on disk) after checking their digest.

        Raises:
            ValueError: the bytes do not match ``digest`` (nothing is stored).
        """
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"bytes do not match {digest}")
        return self.put_bytes(digest, data)

    def read_small(self, digest: str, limit: int) -> bytes | None:
        """A small cached blob, re-checked against its digest; None (and dropped) when absent or damaged."""
        p = self.blob_path(digest)
        try:
            if p.stat().st_size > limit:
                return None
            data = p.read_bytes()
        except FileNotFoundError:
            return None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            self.drop(digest)
            return None
        return data

    def _origins_file(self, host: str) -> Path:
        return self.root / "origins" / (re.sub(r"[^A-Za-z0-9._-]", "_", host) + ".json")

    def origins(self, host: str) -> dict[str, str]:
        """digest -> a repository of registry ``host`` that held it when last pushed or pulled (best effort)."""
        try:
            doc = json.loads(self._origins_file(host).read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in doc.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(doc, dict) else {}

    def remember(self, host: str, repository: str, digests: Iterable[str]) -> None:
        """Note that ``repository`` on ``host`` holds ``digests``, so a push elsewhere on that host can mount them."""
        path = self._origins_file(host)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            known = self.origins(host)
            for d in digests:
                known.pop(d, None)
                known[d] = repository
            kept = dict(list(known.items())[-MAX_ORIGINS:])
            fd, tmp = tempfile.mkstemp(prefix=".ptmpack-tmp-", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(kept, f, separators=(",", ":"))
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def drop(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.blob_path(digest))


def damaged(paths: dict[str, Path], workers: int) -> list[str]:
    """Re-hash files that claim to hold the blobs ``digest -> path`` (in parallel); the digests that do not match."""
    def one(item: tuple[str, Path]) -> str | None:
        digest, path = item
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(8 * 1024 * 1024):
                h.update(block)
        return None if "sha256:" + h.hexdigest() == digest else digest

    with cf.ThreadPoolExecutor(max(1, workers)) as pool:
        return [d for d in pool.map(one, paths.items()) if d is not None]
