"""The local content cache: every blob a pull fetched, by digest, so it is never fetched again.

Layout under ``$XDG_CACHE_HOME/ptmpack`` (default ``~/.cache/ptmpack``)::

    blobs/sha256/<hex>      complete blobs, digest-checked before they were renamed here, read-only
    partial/sha256/<hex>    downloads in progress; a later pull resumes them with HTTP Range
    origins/<host>.json     digest -> a repository of that registry known to hold it (for mounts)

Blobs are content-addressed, so the cache is shared by every registry and
repository and needs no index. Deleting the folder is always safe.

The cache is bounded: after every pull the least recently used blobs are removed
until it holds at most its size limit (``DEFAULT_LIMIT``, or what the caller sets;
the CLI reads ``PTMPACK_CACHE_SIZE``). A blob's modification time is its last use:
a pull touches every cached blob it reads. Blobs of the pull that just ran are
never evicted by it. ``ptmpack cache ls`` and ``cache prune`` show and shrink it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptmpack.format.atomic import replace_file

CACHE_SUBDIR = "ptmpack"
DEFAULT_LIMIT = 20 * 1024**3
"""Bytes of blobs kept after a pull (least recently used go first)."""
STALE_PARTIAL_S = 24 * 3600
"""A partial download untouched this long, and not locked by a running pull, is removed by a prune."""
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
        replace_file(target, data, mode=0o444)
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
            replace_file(path, json.dumps(kept, separators=(",", ":")).encode("utf-8"))

    def drop(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.blob_path(digest))

    def touch(self, digests: Iterable[str]) -> None:
        """Mark blobs as just used (their modification time), so eviction keeps them longest."""
        for d in digests:
            with contextlib.suppress(OSError):
                os.utime(self.blob_path(d))

    def entries(self) -> list[CacheEntry]:
        """Every complete blob, least recently used first."""
        out = []
        folder = self.root / "blobs"
        for path in folder.glob("*/*") if folder.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                out.append(CacheEntry(f"{path.parent.name}:{path.name}", st.st_size, st.st_mtime))
        return sorted(out, key=lambda e: (e.used, e.digest))

    def partials(self) -> list[Path]:
        folder = self.root / "partial"
        return sorted(p for p in folder.glob("*/*") if p.is_file()) if folder.is_dir() else []

    def prune(self, limit: int, keep: Iterable[str] = (), *, partials: bool = True) -> PruneReport:
        """Remove least recently used blobs until at most ``limit`` bytes remain (never those in ``keep``),
        and partial downloads left by pulls that ended long ago."""
        keep = set(keep)
        entries = self.entries()
        total = sum(e.size for e in entries)
        removed = freed = 0
        for e in entries:
            if total <= limit:
                break
            if e.digest in keep:
                continue
            self.drop(e.digest)
            total -= e.size
            removed += 1
            freed += e.size
        dropped = 0
        for p in self.partials() if partials else ():
            if _stale_and_free(p, limit == 0):
                dropped += 1
        return PruneReport(str(self.root), removed, freed, dropped, total, limit)


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


@dataclass(frozen=True)
class CacheEntry:
    """One cached blob: its digest, size and last use (seconds since the epoch)."""

    digest: str
    size: int
    used: float


@dataclass(frozen=True)
class PruneReport:
    """What a prune removed and what the cache holds now."""

    root: str
    blobs_removed: int
    bytes_freed: int
    partials_removed: int
    bytes_kept: int
    limit: int

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "command": "cache prune", **self.__dict__}


@dataclass(frozen=True)
class CacheListing:
    """The cache's folder, its blobs (least recently used first) and its size limit."""

    root: str
    entries: tuple[CacheEntry, ...]
    partials: int
    limit: int

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "command": "cache ls", "root": self.root, "blobs": len(self.entries), "bytes": self.bytes,
                "limit": self.limit, "partials": self.partials,
                "entries": [{"digest": e.digest, "size": e.size, "used": round(e.used, 3)} for e in self.entries]}


def list_cache(root: Path | None = None, limit: int = DEFAULT_LIMIT) -> CacheListing:
    """What the content cache at ``root`` (default: the user's) holds."""
    cache = BlobCache(root)
    return CacheListing(str(cache.root), tuple(cache.entries()), len(cache.partials()), limit)


def prune_cache(root: Path | None = None, limit: int = DEFAULT_LIMIT) -> PruneReport:
    """Shrink the content cache at ``root`` to ``limit`` bytes (0 empties it), least recently used first."""
    return BlobCache(root).prune(limit)


def _stale_and_free(path: Path, everything: bool) -> bool:
    """Remove a partial download no pull holds (its flock is free) and, unless ``everything``, that is old."""
    try:
        if not everything and time.time() - path.stat().st_mtime < STALE_PARTIAL_S:
            return False
        with open(path, "rb") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a pull is resuming it right now
            os.unlink(path)
            return True
    except FileNotFoundError:
        return False
