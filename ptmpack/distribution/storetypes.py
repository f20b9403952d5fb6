"""The types every distribution module shares, in a module that imports none of them.

``Store`` is what push, pull and ls ask of a place that holds packages; the
registry repository (:mod:`ptmpack.distribution.registry`) and the OCI layout
directory (:mod:`ptmpack.distribution.layout`) both implement it. Capabilities
only some stores have are small protocols of their own, checked at run time
with ``isinstance`` (regclient's ``scheme`` does the same), so callers never
branch on a store's class:

* :class:`BlobMounter` — link a blob from another repository of the same registry;
* :class:`LocalBlobs` — the blob is already a file on this machine (read it in place).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ptmpack.errors import ENVIRONMENT_ERRNOS, EnvironmentFault, IntegrityError


@dataclass(frozen=True)
class ClientOptions:
    """How to reach a registry."""

    plain_http: bool = False
    ca_file: Path | None = None
    workers: int = 4
    timeout_s: float = 60.0
    """Connect and per-request timeout."""
    speed_limit: int = 1024
    speed_time_s: float = 30.0
    """A transfer that moves fewer than ``speed_limit`` bytes/s over ``speed_time_s`` seconds stops (exit 9),
    like curl's ``--speed-limit``/``--speed-time``; a peer silent that long times out the same way."""
    deadline_s: float | None = None
    """Overall time limit for the whole operation (``pull --timeout``); None: none."""
    retries: int = 6
    """Attempts per blob download after a connection failure (each resumes with Range)."""
    upload_chunk: int = 64 * 1024 * 1024
    """Blobs larger than this are uploaded in PATCH chunks of this size (each PATCH costs the registry a round of
    bookkeeping, measured in docs/DISTRIBUTION.md §11; still under the 100 MB request limits some proxies set)."""
    receive_buffer: int | None = None
    """SO_RCVBUF of every connection; None (the default) leaves it to the kernel's autotuning.

    Bytes that reached this machine but not yet the partial file are lost when the
    process is killed, and autotuning lets up to tens of MiB sit in the socket when the
    writer falls behind. A bound (Linux doubles it for bookkeeping) caps that loss, but
    also caps one connection's window: 1.5 MiB allows about 15 MB/s over a 100 ms path.
    Throughput on real links matters more than a few MiB re-fetched after a kill, so the
    kernel decides unless a caller asks."""


class BlobTarget:
    """Where a download writes: byte ``i`` of the blob goes to ``offset + i`` of the open file ``fd``.

    ``kept`` bytes from the blob's start are already there (what a killed run left);
    the download resumes after them. :meth:`record` is called after every write with
    the bytes now there, and with 0 when the download starts over, so the owner can
    journal it (a partial blob file needs no journal: its size is the record).
    """

    def __init__(self, fd: int, offset: int = 0, kept: int = 0,
                 journal: Callable[[int], None] | None = None) -> None:
        self.fd, self.offset, self.kept = fd, offset, kept
        self.journal = journal

    def record(self, kept: int) -> None:
        """``kept`` bytes from the blob's start are written (0: starting over)."""
        self.kept = kept
        if self.journal is not None:
            self.journal(kept)


@runtime_checkable
class Store(Protocol):
    """A repository or layout holding packages: blobs by digest, manifests by tag or digest.

    Every method may raise :class:`~ptmpack.errors.KeyAccessError` (credentials
    refused) or a registry error (unreachable, failing); reads raise
    :class:`~ptmpack.errors.IntegrityError` when bytes do not match their digest.
    """

    def get_manifest(self, target: str) -> tuple[bytes, str] | None:
        """The manifest a tag or digest names and its digest; None when there is none."""
        ...

    def fetch_blob_into(self, digest: str, size: int, target: BlobTarget, progress: Callable[[int], None]) -> int:
        """Write the blob into ``target`` after the ``target.kept`` bytes already there, digest-checked; returns
        bytes moved. On a digest mismatch ``target`` is recorded empty and IntegrityError raised."""
        ...

    def fetch_range(self, digest: str, start: int, length: int) -> bytes | None:
        """Exactly ``length`` bytes of a blob from ``start``; None when the store cannot serve ranges."""
        ...

    def has_blob(self, digest: str, size: int) -> bool:
        """Whether the store holds the blob at that size."""
        ...

    def put_blob(self, digest: str, size: int, read: Callable[[int, int], bytes],
                 progress: Callable[[int], None]) -> int:
        """Store a blob whose bytes ``read(offset, n)`` returns; returns the bytes sent."""
        ...

    def put_manifest(self, data: bytes, tag: str | None, artifact_type: str) -> tuple[str, bool]:
        """Store a manifest under ``tag`` (or by digest only); returns its digest and whether anything changed."""
        ...

    def tags(self, limit: int | None = None) -> list[str]:
        """Every tag, sorted; with ``limit``, at most that many (one page: for a hint)."""
        ...

    def cancel(self) -> None:
        """Make transfers in flight fail now (Ctrl-C, SIGTERM); a no-op where nothing is in flight."""
        ...

    def put_index(self, data: bytes, tag: str) -> str:
        """Store an OCI image index under ``tag`` (the referrers fallback); returns its digest."""
        ...

    def referrers(self, digest: str) -> list[dict[str, object]] | None:
        """The referrers API's descriptors for a manifest; None when the store has no referrers API."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class BlobMounter(Protocol):
    """A store that can link a blob from another repository instead of receiving it again."""

    def mount_blob(self, digest: str, source_repo: str) -> bool:
        """True when the blob is now in this repository."""
        ...


@runtime_checkable
class LocalBlobs(Protocol):
    """A store whose blobs are files on this machine (a layout directory): read in place, never copied first."""

    def blob_path(self, digest: str) -> Path:
        """Where the blob's bytes are."""
        ...


class TransferProgress(Protocol):
    """Progress hook the CLI implements; ``advance`` may be called from worker threads."""

    def start(self, label: str, total: int) -> None: ...
    def advance(self, n: int) -> None: ...


class NoProgress:
    """The progress hook that shows nothing."""

    def start(self, label: str, total: int) -> None:
        """Nothing to show."""

    def advance(self, n: int) -> None:
        """Nothing to show."""


def fetch_blob(store: Store, digest: str, size: int, partial: Path, progress: Callable[[int], None]) -> int:
    """Complete the file ``partial`` with a blob's bytes from ``store``, resuming what it holds; returns bytes moved.

    The file's size is its record of what arrived (:meth:`Store.fetch_blob_into` writes after it);
    it is locked while written, so a second process waits, then finds it complete.

    Raises:
        IntegrityError: the bytes do not match the digest (the partial file is removed).
        EnvironmentFault: the disk refused a write (the partial file is removed, exit 8).
        RegistryError: the store stayed unreachable through every retry.
    """
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one process per blob; a second waits, then finds it done
            target = BlobTarget(fd, 0, os.fstat(fd).st_size, journal=lambda n: os.ftruncate(fd, 0) if n == 0 else None)
            return store.fetch_blob_into(digest, size, target, progress)
        except IntegrityError:
            partial.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        with contextlib.suppress(FileNotFoundError):  # it cannot finish: do not leave it to fill the disk again
            partial.unlink()
        raise EnvironmentFault(f"{partial}: {exc.strerror or exc} (downloading blob {digest})",
                               hint="free some space or point XDG_CACHE_HOME elsewhere; the partial "
                                    "download was removed") from None
