"""Stream a package tree into a ``.ptm`` file with bounded memory.

Layout (SPEC §3): file header and key slots, then per entry a model header, its
path, padding to 4096 and the data, then the manifest, the optional signature
block and the trailer. Entry headers are written with placeholders and
back-patched once the entry's stored length and digest are known. Chunk
encoding (compression, transform, encryption) is supplied by the caller and run
on a thread pool; at most ``2 * workers`` chunks are in flight at any time.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import mmap
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from ptmpack import __version__
from ptmpack.errors import InvalidTreeError
from ptmpack.format import spec
from ptmpack.format.atomic import atomic_file
from ptmpack.format.digest import KernelCopier, hash_map, prefix_digest
from ptmpack.format.manifest import EntryRecord, Manifest, TensorRecord
from ptmpack.format.records import FileHeader, ModelHeader, Trailer
from ptmpack.format.tree import SourceFile

STAGE_BYTES = 4 * 1024 * 1024
"""Headers and small entries are gathered in a buffer of this size and written in one go."""
SMALL_ENTRY = 1024 * 1024
"""Raw entries up to this size are read into the buffer; larger ones are copied by the kernel."""
ZEROS = bytes(spec.ALIGNMENT)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _check_size(src: SourceFile, size: int) -> None:
    if size != src.size:
        raise InvalidTreeError(f"{src.source} changed size while being packed ({src.size} -> {size} bytes)")


@dataclass(frozen=True)
class EntryPlan:
    """How one source file is to be stored: its codec id and chunk size (0 for raw)."""

    source: SourceFile
    codec: int
    chunk_size: int
    tensors: tuple[TensorRecord, ...] | None = None


class ChunkEncoder(Protocol):
    """Turns one raw chunk of an entry into its stored body (compressed and/or sealed)."""

    def __call__(self, index: int, plan_codec: int, path: str, kind: int, counter: int, last: bool, raw: bytes) -> bytes: ...


@dataclass(frozen=True)
class PackageOptions:
    """Everything about the package as a whole that the writer needs."""

    package_id: bytes
    flags: int
    created: str
    keyslots: bytes = b""
    residual_base: str | None = None
    workers: int = 2
    sign: Callable[[bytes, bytes], bytes] | None = None
    """Given (manifest sha256, sha256 of every byte before the signature block), returns the signature block."""


def write_package(
    target: Path,
    plans: Sequence[EntryPlan],
    options: PackageOptions,
    encode: ChunkEncoder | None,
    *,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    before_commit: Callable[[], object] | None = None,
) -> Manifest:
    """Write ``plans`` as a package at ``target`` atomically and return its manifest.

    ``before_commit``, when given, runs once the file is complete and before it is renamed
    into place; whatever it raises leaves nothing at the target.

    Raises:
        UsageError: the target exists and ``force`` is not set.
        PtmError: from the encoder; nothing is left at the target.
    """
    encrypted = bool(options.flags & spec.Flags.ENCRYPTED)
    with atomic_file(target, force=force) as out, cf.ThreadPoolExecutor(max(1, options.workers)) as pool:
        w = _Writer(out, options, encode, pool, encrypted, progress or (lambda n: None))
        manifest = w.run(plans)
        if before_commit is not None:
            before_commit()
    return manifest


class _Writer:
    """Writes at the file-descriptor level with explicit offsets.

    Small entries are read whole straight into a staging buffer (one ``open``, ``read``,
    ``close`` per file and no per-file allocation), hashed there and written out with the
    headers of their neighbours in a few large writes. Large raw entries are copied by the
    kernel (``copy_file_range``, else ``sendfile``, else read/write) while a pool thread
    hashes the source through a read-only map; their headers are patched once the digest
    is known, so several entries are hashed in parallel with the copying.
    """

    def __init__(self, out: BinaryIO, options: PackageOptions, encode: ChunkEncoder | None,
                 pool: cf.ThreadPoolExecutor, encrypted: bool, progress: Callable[[int], None]) -> None:
        self.out, self.options, self.encode, self.pool = out, options, encode, pool
        self.encrypted, self.progress = encrypted, progress
        self.fd = out.fileno()
        self.stage = bytearray(STAGE_BYTES)
        self.view = memoryview(self.stage)
        self.fill = 0
        """Bytes of ``stage`` in use; they belong at file offset ``self.base``."""
        self.base = 0
        self.pending: deque[tuple[int, cf.Future[bytes]]] = deque()
        """(entry index, digest future) of large raw entries whose headers await their digest."""
        self.entries: list[EntryRecord] = []
        self.copier = KernelCopier()

    @property
    def pos(self) -> int:
        return self.base + self.fill

    def run(self, plans: Sequence[EntryPlan]) -> Manifest:
        opts = self.options
        header_size = spec.align_up(FileHeader.SIZE + len(opts.keyslots))
        models = sum(1 for p in plans if p.source.kind == spec.Kind.MODEL)
        header = FileHeader(opts.flags, models, len(plans), opts.package_id, len(opts.keyslots), header_size)
        self._emit(header.pack())
        self._emit(opts.keyslots)
        self._pad_to(header_size)
        try:
            for i, plan in enumerate(plans):
                self._entry(i, plan)
            self._settle(0)
        finally:
            for _, fut in self.pending:  # an error above: let running hashes finish before the maps go
                fut.cancel()
                with contextlib.suppress(BaseException):
                    fut.result()
        self._flush()
        manifest = Manifest(opts.package_id, opts.created, f"ptmpack {__version__}", opts.flags,
                            tuple(self.entries), opts.residual_base)
        self._finish(manifest)
        return manifest

    # ------------------------------------------------------------------ output

    def _flush(self) -> None:
        if self.fill:
            _pwrite_all(self.fd, self.view[:self.fill], self.base)
            self.base += self.fill
            self.fill = 0

    def _emit(self, data: bytes | memoryview) -> None:
        n = len(data)
        if self.fill + n > len(self.stage):
            self._flush()
            if n > len(self.stage) // 2:
                _pwrite_all(self.fd, data, self.base)
                self.base += n
                return
        self.view[self.fill:self.fill + n] = data
        self.fill += n

    def _pad_to(self, offset: int) -> None:
        gap = offset - self.pos
        if gap > len(self.stage) - self.fill:
            self._flush()
        self.view[self.fill:self.fill + gap] = bytes(gap) if gap > len(ZEROS) else ZEROS[:gap]
        self.fill += gap

    def _patch(self, offset: int, data: bytes) -> None:
        """Overwrite bytes already emitted at ``offset`` (still staged or already written)."""
        if offset >= self.base:
            self.view[offset - self.base: offset - self.base + len(data)] = data
        else:
            _pwrite_all(self.fd, data, offset)

    # ------------------------------------------------------------------ entries

    def _entry(self, index: int, plan: EntryPlan) -> None:
        src = plan.source
        path_bytes = b"" if self.encrypted else src.path.encode("utf-8")
        header_offset = self.pos
        data_offset = spec.data_offset(spec.VERSION_MINOR, header_offset, path_bytes, src.size, plan.codec)
        if plan.codec:
            self._emit(ModelHeader(index, src.kind, plan.codec, len(path_bytes), 0, 0, plan.chunk_size,
                                   bytes(32)).pack())
            self._emit(path_bytes)
            self._pad_to(data_offset)
            with open(src.source, "rb") as f:
                raw_length, digest, chunks = self._chunked(f, index, plan)
            _check_size(src, raw_length)
            stored_length = self.pos - data_offset
            final = ModelHeader(index, src.kind, plan.codec, len(path_bytes), stored_length, raw_length,
                                plan.chunk_size, bytes(32) if self.encrypted else digest)
            self._patch(header_offset, final.pack())
            self.entries.append(EntryRecord(index, src.path, src.kind, header_offset, data_offset, stored_length,
                                            raw_length, plan.codec, plan.chunk_size, digest, src.executable,
                                            chunks, plan.tensors))
            return
        size = src.size
        if size <= SMALL_ENTRY:
            if self.fill + (data_offset - header_offset) + size + 1 > len(self.stage):
                self._flush()
            digest = self._small(index, src, path_bytes, header_offset, data_offset)
        else:
            digest = None
            self._large(index, src, path_bytes, header_offset, data_offset)
        self.entries.append(EntryRecord(index, src.path, src.kind, header_offset, data_offset, size, size, 0, 0,
                                        digest or bytes(32), src.executable, (), plan.tensors))

    def _small(self, index: int, src: SourceFile, path_bytes: bytes, header_offset: int, data_offset: int) -> bytes:
        """Read the file straight into the staging buffer after room for its header and path,
        hash it there, then fill in the header, path and padding around it (no allocation but
        the digest)."""
        at = self.fill
        path_at = at + spec.MODEL_HEADER.size
        start = at + (data_offset - header_offset)
        window = self.view[start:start + src.size + 1]  # one byte more, to see a file that grew
        fd = os.open(src.source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            got = os.readv(fd, [window])
            while 0 < got < src.size:  # a short read of a regular file only happens at its end, but be exact
                more = os.readv(fd, [window[got:]])
                if not more:
                    break
                got += more
        finally:
            os.close(fd)
        _check_size(src, got)
        with window[:got] as data:
            digest = hashlib.sha256(data).digest()
        window.release()
        spec.MODEL_HEADER.pack_into(self.stage, at, spec.ENTRY_MAGIC, index, src.kind, 0, len(path_bytes), got, got,
                                    0, digest)
        self.view[path_at:path_at + len(path_bytes)] = path_bytes
        pad_at = path_at + len(path_bytes)
        if start > pad_at:  # the buffer is reused: padding must be written, not assumed
            self.view[pad_at:start] = ZEROS[:start - pad_at]
        self.fill = start + got
        self.progress(got)
        return digest

    def _large(self, index: int, src: SourceFile, path_bytes: bytes, header_offset: int, data_offset: int) -> None:
        """Kernel-copy a raw file while a pool thread hashes it through a map; patch the header later."""
        size = src.size
        self._emit(ModelHeader(index, src.kind, 0, len(path_bytes), size, size, 0, bytes(32)).pack())
        self._emit(path_bytes)
        self._pad_to(data_offset)
        self._flush()
        fd = os.open(src.source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            before = os.fstat(fd)
            _check_size(src, before.st_size)
            mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
            self._settle(2 * max(1, self.options.workers) - 1)
            self.pending.append((index, self.pool.submit(hash_map, mapped)))
            copied = self.copier.copy(fd, self.fd, size, 0, data_offset)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if copied != size or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise InvalidTreeError(f"{src.source} changed while being packed")
        self.base = data_offset + size
        self.progress(size)

    def _settle(self, keep: int) -> None:
        """Wait for digests until at most ``keep`` are pending; patch each finished entry's header."""
        while len(self.pending) > keep:
            index, fut = self.pending.popleft()
            digest = fut.result()
            e = self.entries[index]  # recorded right after _large returned, before the next entry
            self.entries[index] = dataclasses.replace(e, sha256=digest)
            hdr = ModelHeader(index, e.kind, 0, len(e.path.encode("utf-8")), e.stored_length, e.raw_length, 0, digest)
            self._patch(e.header_offset, hdr.pack())

    def _chunked(self, f: BinaryIO, index: int, plan: EntryPlan) -> tuple[int, bytes, tuple[tuple[int, int], ...]]:
        assert self.encode is not None, "a chunked entry needs an encoder"
        h = hashlib.sha256()
        window: deque[cf.Future[bytes]] = deque()
        chunks: list[tuple[int, int]] = []
        cursor = 0
        total = 0
        src = plan.source
        remaining = src.size
        counter = 0
        limit = 2 * max(1, self.options.workers)

        def drain(keep: int) -> None:
            nonlocal cursor
            while len(window) > keep:
                body = window.popleft().result()
                frame = spec.CHUNK_PREFIX.pack(len(body))
                self._emit(frame)
                self._emit(body)
                chunks.append((cursor, len(frame) + len(body)))
                cursor += len(frame) + len(body)

        while True:
            raw = f.read(min(plan.chunk_size, remaining)) if remaining > 0 else b""
            remaining -= len(raw)
            last = remaining <= 0
            h.update(raw)
            total += len(raw)
            window.append(self.pool.submit(self.encode, index, plan.codec, src.path, int(src.kind), counter, last, raw))
            self.progress(len(raw))
            drain(limit)
            counter += 1
            if last:
                break
        drain(0)
        return total, h.digest(), tuple(chunks)

    def _finish(self, manifest: Manifest) -> None:
        body = manifest.to_json()
        if self.encrypted:
            body = self._seal_manifest(body)
        offset = self.pos
        self._emit(body)
        digest = hashlib.sha256(body).digest()
        signature_offset = 0
        if self.options.sign is not None:
            signature_offset = self.pos
            self._flush()
            self._emit(self.options.sign(digest, prefix_digest(self.fd, signature_offset)))
        self._emit(Trailer(offset, len(body), digest, signature_offset).pack())
        self._flush()

    def _seal_manifest(self, body: bytes) -> bytes:
        assert self.encode is not None
        size = spec.MAX_CHUNK_SIZE
        parts = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
        out = bytearray()
        for counter, part in enumerate(parts):
            sealed = self.encode(spec.MANIFEST_ENTRY_INDEX, 0, "", 0, counter, counter == len(parts) - 1, part)
            out += spec.CHUNK_PREFIX.pack(len(sealed)) + sealed
        return bytes(out)
