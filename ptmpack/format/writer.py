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
import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from ptmpack import __version__
from ptmpack.errors import InvalidTreeError
from ptmpack.format import spec
from ptmpack.format.atomic import atomic_file
from ptmpack.format.digest import COPY_BLOCK, prefix_digest
from ptmpack.format.manifest import EntryRecord, Manifest, TensorRecord
from ptmpack.format.records import FileHeader, ModelHeader, Trailer
from ptmpack.format.tree import SourceFile


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
) -> Manifest:
    """Write ``plans`` as a package at ``target`` atomically and return its manifest.

    Raises:
        UsageError: the target exists and ``force`` is not set.
        PtmError: from the encoder; nothing is left at the target.
    """
    encrypted = bool(options.flags & spec.Flags.ENCRYPTED)
    with atomic_file(target, force=force) as out, cf.ThreadPoolExecutor(max(1, options.workers)) as pool:
        w = _Writer(out, options, encode, pool, encrypted, progress or (lambda n: None))
        manifest = w.run(plans)
    return manifest


class _Writer:
    def __init__(self, out: BinaryIO, options: PackageOptions, encode: ChunkEncoder | None,
                 pool: cf.ThreadPoolExecutor, encrypted: bool, progress: Callable[[int], None]) -> None:
        self.out, self.options, self.encode, self.pool = out, options, encode, pool
        self.encrypted, self.progress = encrypted, progress

    def run(self, plans: Sequence[EntryPlan]) -> Manifest:
        opts = self.options
        header_size = spec.align_up(FileHeader.SIZE + len(opts.keyslots))
        models = sum(1 for p in plans if p.source.kind == spec.Kind.MODEL)
        header = FileHeader(opts.flags, models, len(plans), opts.package_id, len(opts.keyslots), header_size)
        self.out.write(header.pack() + opts.keyslots)
        self._pad_to(header_size)
        entries = [self._entry(i, plan) for i, plan in enumerate(plans)]
        manifest = Manifest(opts.package_id, opts.created, f"ptmpack {__version__}", opts.flags,
                            tuple(entries), opts.residual_base)
        self._finish(manifest)
        return manifest

    def _pad_to(self, offset: int) -> None:
        gap = offset - self.out.tell()
        if gap:
            self.out.write(b"\0" * gap)

    def _entry(self, index: int, plan: EntryPlan) -> EntryRecord:
        src = plan.source
        path_bytes = b"" if self.encrypted else src.path.encode("utf-8")
        header_offset = self.out.tell()
        placeholder = ModelHeader(index, src.kind, plan.codec, len(path_bytes), 0, 0, plan.chunk_size, bytes(32))
        self.out.write(placeholder.pack() + path_bytes)
        data_offset = placeholder.data_offset(header_offset)
        self._pad_to(data_offset)
        with open(src.source, "rb") as f:
            if plan.codec:
                raw_length, digest, chunks = self._chunked(f, index, plan)
            else:
                raw_length, digest = self._raw(f)
                chunks = ()
        stored_length = self.out.tell() - data_offset
        if raw_length != src.size:
            raise InvalidTreeError(f"{src.source} changed size while being packed ({src.size} -> {raw_length} bytes)")
        final = ModelHeader(index, src.kind, plan.codec, len(path_bytes), stored_length, raw_length,
                            plan.chunk_size, bytes(32) if self.encrypted else digest)
        end = self.out.tell()
        self.out.seek(header_offset)
        self.out.write(final.pack())
        self.out.seek(end)
        return EntryRecord(index, src.path, src.kind, header_offset, data_offset, stored_length, raw_length,
                           plan.codec, plan.chunk_size, digest, src.executable, chunks, plan.tensors)

    def _raw(self, f: BinaryIO) -> tuple[int, bytes]:
        """Copy a file verbatim, hashing each block on a pool thread while it is written."""
        h = hashlib.sha256()
        buf = bytearray(COPY_BLOCK)
        view = memoryview(buf)
        total = 0
        while n := f.readinto(buf):
            block = view[:n]
            hashed = self.pool.submit(h.update, block)
            self.out.write(block)
            hashed.result()
            total += n
            self.progress(n)
        return total, h.digest()

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
                self.out.write(frame)
                self.out.write(body)
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
        offset = self.out.tell()
        self.out.write(body)
        digest = hashlib.sha256(body).digest()
        signature_offset = 0
        if self.options.sign is not None:
            signature_offset = self.out.tell()
            self.out.flush()
            self.out.write(self.options.sign(digest, prefix_digest(self.out.fileno(), signature_offset)))
        self.out.write(Trailer(offset, len(body), digest, signature_offset).pack())

    def _seal_manifest(self, body: bytes) -> bytes:
        assert self.encode is not None
        size = spec.MAX_CHUNK_SIZE
        parts = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
        out = bytearray()
        for counter, part in enumerate(parts):
            sealed = self.encode(spec.MANIFEST_ENTRY_INDEX, 0, "", 0, counter, counter == len(parts) - 1, part)
            out += spec.CHUNK_PREFIX.pack(len(sealed)) + sealed
        return bytes(out)
