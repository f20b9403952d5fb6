"""Chunk-digest indexes: build them at push, and at pull fetch only the ranges of a blob the machine lacks.

A ModelPack push hashes every file once in ``chunk``-byte ranges (the index that
travels in the ptmpack layer, :mod:`ptmpack.distribution.mapping`). A pull that
holds an older version of a file (the local package named as base, or the output
being replaced) hashes its own copy the same way, copies
every range whose digest the index lists, and fetches the rest with HTTP
``Range``, checking each fetched chunk against the index before it is written and
the rebuilt blob against its layer digest before it counts as downloaded. This is
zsync over OCI: registries store whole blobs, and clients move only what changed.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from ptmpack.distribution.mapping import ChunkIndex, Span, chunk_count
from ptmpack.distribution.modelpack import FileLayer
from ptmpack.distribution.storetypes import BlobTarget, Store
from ptmpack.errors import IntegrityError
from ptmpack.format.digest import range_digest

MAX_RUN = 64 * 1024 * 1024
"""Largest single Range request (consecutive missing chunks are fetched together up to this)."""


def index_blobs(path: Path, spans: list[Span], layers: list[FileLayer], chunk: int, workers: int,
                progress: Callable[[int], None]) -> tuple[list[FileLayer], ChunkIndex]:
    """Hash every file layer of a package in ``chunk``-byte ranges, reading each byte once.

    Parts of a split file get their own whole digest in the same pass. Returns the
    layers with every digest filled in, and the index.
    """
    blob_spans = [s for s in spans if s.blob]
    with open(path, "rb") as f, cf.ThreadPoolExecutor(max(1, workers)) as pool:
        fd = f.fileno()
        jobs = [pool.submit(_hash_chunks, fd, s.offset, s.length, chunk, not layer.digest, progress)
                for s, layer in zip(blob_spans, layers, strict=True)]
        done = [j.result() for j in jobs]
    out = [layer if layer.digest else replace(layer, digest=whole) for layer, (_, whole) in zip(layers, done, strict=True)]
    return out, ChunkIndex(chunk, {layer.digest: table for layer, (table, _) in zip(out, done, strict=True)})


def _hash_chunks(fd: int, offset: int, length: int, chunk: int, whole: bool,
                 progress: Callable[[int], None]) -> tuple[bytes, str]:
    table = bytearray()
    total = hashlib.sha256() if whole else None
    for pos in range(0, length, chunk):
        data = os.pread(fd, min(chunk, length - pos), offset + pos)
        if len(data) != min(chunk, length - pos):
            raise IntegrityError(f"the package ended at {offset + pos + len(data)} while it was read")
        table += hashlib.sha256(data).digest()
        if total is not None:
            total.update(data)
        progress(len(data))
    return bytes(table), "sha256:" + total.hexdigest() if total is not None else ""


class ChunkHasher:
    """The chunk digests of one blob, fed by the reads of its upload, so a push reads and hashes each byte once.

    Complete only when every byte arrived exactly once and in order; otherwise (an
    upload retried from an earlier offset, a blob that was mounted instead) the
    caller hashes the blob from the file.
    """

    def __init__(self, size: int, chunk: int) -> None:
        self.size, self.chunk = size, chunk
        self.pos, self.fill, self.broken = 0, 0, False
        self.digests = bytearray()
        self.current = hashlib.sha256()
        self.lock = threading.Lock()

    def feed(self, pos: int, data: bytes) -> None:
        """Account for ``data`` read at ``pos``."""
        with self.lock:
            if pos != self.pos or self.broken:
                self.broken = True
                return
            view = memoryview(data)
            i = 0
            while i < len(view):
                take = min(self.chunk - self.fill, len(view) - i)
                self.current.update(view[i: i + take])
                self.fill += take
                i += take
                if self.fill == self.chunk:
                    self.digests += self.current.digest()
                    self.current, self.fill = hashlib.sha256(), 0
            self.pos += len(view)

    def table(self) -> bytes | None:
        """The concatenated chunk digests, or None when the blob was not read exactly once in order."""
        if self.broken or self.pos != self.size:
            return None
        return bytes(self.digests + (self.current.digest() if self.fill else b""))


def hash_chunks(fd: int, offset: int, length: int, chunk: int, progress: Callable[[int], None]) -> bytes:
    """The concatenated chunk digests of ``length`` bytes of ``fd`` at ``offset``."""
    return _hash_chunks(fd, offset, length, chunk, False, progress)[0]


@dataclass(frozen=True)
class Region:
    """Bytes this machine holds: ``length`` bytes of ``path`` at ``offset`` (a file of a local package, a cached blob)."""

    path: Path
    offset: int
    length: int


class LocalChunks:
    """Chunks of local regions by SHA-256, each region hashed once in ``chunk``-byte steps from its start."""

    def __init__(self, chunk: int, regions: Iterable[Region], workers: int = 4) -> None:
        self.chunk = chunk
        self.where: dict[bytes, tuple[Path, int, int]] = {}
        regions = list(dict.fromkeys(regions))
        with cf.ThreadPoolExecutor(max(1, workers)) as pool:
            for region, table in zip(regions, pool.map(self._hash, regions), strict=True):
                for i in range(0, len(table), 32):
                    pos = region.offset + (i // 32) * chunk
                    self.where.setdefault(table[i: i + 32], (region.path, pos, min(chunk, region.offset
                                                                                   + region.length - pos)))

    def _hash(self, region: Region) -> bytes:
        try:
            with open(region.path, "rb") as f:
                return _hash_chunks(f.fileno(), region.offset, region.length, self.chunk, False, lambda n: None)[0]
        except (OSError, IntegrityError):
            return b""  # a local copy that vanished or shrank offers nothing

    def read(self, digest: bytes) -> bytes | None:
        """The local bytes whose SHA-256 is ``digest``, re-checked as read; None when no region has them."""
        found = self.where.get(digest)
        if found is None:
            return None
        path, offset, length = found
        try:
            with open(path, "rb") as f:
                data = os.pread(f.fileno(), length, offset)
        except OSError:
            return None
        return data if hashlib.sha256(data).digest() == digest else None


def fetch_by_ranges(store: Store, digest: str, size: int, table: list[bytes], chunk: int, local: LocalChunks,
                    target: BlobTarget, progress: Callable[[int], None]) -> int | None:
    """Rebuild blob ``digest`` in ``target`` from local chunks and Range requests; returns bytes fetched.

    Returns None when the store cannot serve ranges, so the caller downloads the blob
    whole (over what was written: every byte written here is a checked byte of the
    blob at its place). ``target`` is recorded complete only once the rebuilt blob
    matches its digest.

    Raises:
        IntegrityError: the index does not describe a blob of ``size`` bytes, a fetched range does not match
            its chunk digest, the store sent another range or more bytes than asked, or the rebuilt blob does
            not match ``digest``.
    """
    if len(table) != chunk_count(size, chunk):
        raise IntegrityError(f"the chunk index lists {len(table)} chunks for blob {digest} of {size} bytes")
    moved = 0
    runs: list[list[int]] = []
    for i, want in enumerate(table):
        data = local.read(want)
        if data is not None and len(data) == min(chunk, size - i * chunk):
            os.pwrite(target.fd, data, target.offset + i * chunk)
            progress(len(data))
        elif runs and runs[-1][-1] == i - 1 and (i - runs[-1][0] + 1) * chunk <= MAX_RUN:
            runs[-1].append(i)
        else:
            runs.append([i])
    for run in runs:
        start = run[0] * chunk
        length = min(size, (run[-1] + 1) * chunk) - start
        data = store.fetch_range(digest, start, length)
        if data is None:
            return None
        if len(data) != length:
            raise IntegrityError(f"blob {digest}: the store sent {len(data)} bytes for a range of {length}",
                                 hint="nothing was written")
        _check_run(data, table, run, chunk, start, digest)
        os.pwrite(target.fd, data, target.offset + start)
        moved += len(data)
        progress(len(data))
    if "sha256:" + range_digest(target.fd, target.offset, size).hex() != digest:
        raise IntegrityError(f"blob {digest} rebuilt from local chunks and fetched ranges does not match its "
                             "digest: the chunk index lies", hint="nothing was written")
    target.record(size)
    return moved


def _check_run(data: bytes, table: list[bytes], run: list[int], chunk: int, start: int, digest: str) -> None:
    for i in run:
        part = data[i * chunk - start: (i + 1) * chunk - start]
        if hashlib.sha256(part).digest() != table[i]:
            raise IntegrityError(f"bytes {i * chunk}-{i * chunk + len(part)} of blob {digest} do not match the chunk "
                                 "index: the registry served another range, or the index lies", hint="nothing was written")
