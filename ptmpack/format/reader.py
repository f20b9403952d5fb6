"""Read a ``.ptm`` package: random access from the trailer, cross-checked against every header.

Nothing read from the file is trusted before it is bounded: lengths by the file
size and the format's limits, offsets by the layout the manifest must describe
(entries contiguous from the end of the file header to the manifest). Raw
entries are served zero-copy from a read-only mmap; chunked entries decode only
the chunks a request touches. Chunk decoding and decryption are supplied by the
caller, once the key slots have been opened.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import mmap
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ptmpack.errors import IntegrityError, KeyAccessError, UnsupportedError, UsageError
from ptmpack.format import spec
from ptmpack.format.digest import hash_map, prefix_digest
from ptmpack.format.manifest import EntryRecord, Manifest
from ptmpack.format.records import FileHeader, ModelHeader, Trailer


class ChunkDecoder(Protocol):
    """Turns one stored chunk body back into its raw bytes, authenticating it when sealed."""

    def __call__(self, index: int, codec: int, path: str, kind: int, counter: int, last: bool,
                 body: bytes, raw_length: int) -> bytes: ...


Unlock = Callable[[FileHeader, bytes], ChunkDecoder]
"""Given the file header and the key-slot block, return the package's chunk decoder
(holding the data key when the package is encrypted)."""


@dataclass(frozen=True)
class Signature:
    """The raw signature block and what it must sign: the manifest digest and the file-prefix digest."""

    block: bytes
    manifest_sha256: bytes
    prefix_sha256: bytes


class PackageReader:
    """An open package. Use as a context manager; ``close()`` releases the mmap.

    Raises (from the constructor):
        IntegrityError: truncated, corrupt or tampered file.
        UnsupportedError: a newer format.
        KeyAccessError: the package is encrypted and no ``unlock`` was given.
    """

    def __init__(self, path: Path, *, unlock: Unlock | None = None, workers: int = 2, sealed_ok: bool = False) -> None:
        self.path = Path(path)
        self.workers = max(1, workers)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - kept open for the reader's lifetime
        except IsADirectoryError:
            raise UsageError(f"{path} is a directory, not a .ptm package") from None
        except OSError as exc:
            raise UsageError(f"cannot open {path}: {exc.strerror}") from None
        try:
            self._open(unlock, sealed_ok)
        except BaseException:
            self.close()
            raise

    def _open(self, unlock: Unlock | None, sealed_ok: bool) -> None:
        self.size = os.fstat(self._file.fileno()).st_size
        self._check_is_package()
        if self.size < FileHeader.SIZE + Trailer.SIZE:
            raise IntegrityError(f"{self.path}: {self.size} bytes is too short to be a ptmpack package (truncated?)")
        self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.header = FileHeader.unpack(self._mm[: FileHeader.SIZE])
        if self.header.version_minor not in spec.KNOWN_MINORS:
            # From 1.1 a minor version may change where data starts; guessing would misreport corruption.
            raise UnsupportedError(f"package format version 1.{self.header.version_minor} is newer than this "
                                   f"ptmpack reads (1.0 and 1.1)", hint="upgrade ptmpack")
        if self.header.header_size > self.size:
            raise IntegrityError("file header: key slots run past the end of the file (truncated)")
        self.keyslots = bytes(self._mm[FileHeader.SIZE: FileHeader.SIZE + self.header.keyslots_length])
        self.trailer = Trailer.unpack(self._mm[self.size - Trailer.SIZE:], self.size)
        if self.trailer.manifest_offset < self.header.header_size:
            raise IntegrityError("trailer: manifest overlaps the file header")
        self.encrypted = bool(self.header.flags & spec.Flags.ENCRYPTED)
        self._decode = unlock(self.header, self.keyslots) if unlock is not None else None
        stored = self._mm[self.trailer.manifest_offset: self.trailer.manifest_offset + self.trailer.manifest_length]
        if hashlib.sha256(stored).digest() != self.trailer.manifest_sha256:
            raise IntegrityError("manifest digest does not match the trailer: the package is corrupt or was altered")
        self._manifest: Manifest | None = None
        if self.encrypted and self._decode is None:
            if not sealed_ok:
                raise KeyAccessError(f"{self.path} is encrypted", hint="give a key: --passphrase-file, --key-file or --identity")
            return
        body = self._open_manifest(stored) if self.encrypted else stored
        self._manifest = Manifest.from_json(body)
        self._check_layout()

    def _check_is_package(self) -> None:
        """A file with the magic at neither end is some other file, not a damaged package (exit 6, not 3).

        A file cut inside the magic (empty, or a prefix of it) is a truncated package (exit 3).
        """
        head = os.pread(self._file.fileno(), len(spec.MAGIC), 0)
        tail = os.pread(self._file.fileno(), len(spec.END_MAGIC), max(0, self.size - len(spec.END_MAGIC)))
        if not spec.MAGIC.startswith(head) and tail != spec.END_MAGIC:
            raise UnsupportedError(f"{self.path} is not a ptmpack package (no PTMPACK magic at its start or end)",
                                   hint="give a .ptm made by ptmpack pack, or a package tree; "
                                        "import a checkpoint with ptmpack init --from-hf")

    def close(self) -> None:
        mm = getattr(self, "_mm", None)
        if mm is not None:
            # Arrays handed out zero-copy keep the map alive; it is then released with them.
            with contextlib.suppress(BufferError):
                mm.close()
            self._mm = None
        self._file.close()

    def __enter__(self) -> PackageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sealed(self) -> bool:
        """True when the package is encrypted and was opened without its key (manifest unreadable)."""
        return self._manifest is None

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            raise KeyAccessError(f"{self.path} is encrypted; its manifest needs the key",
                                 hint="give --passphrase-file, --key-file or --identity")
        return self._manifest

    @property
    def entries(self) -> tuple[EntryRecord, ...]:
        return self.manifest.entries

    def _open_manifest(self, stored: bytes) -> bytes:
        assert self._decode is not None
        out = bytearray()
        pos, counter = 0, 0
        while pos < len(stored):
            body, pos = self._frame(stored, pos, len(stored), "manifest")
            last = pos == len(stored)
            try:
                out += self._decode(spec.MANIFEST_ENTRY_INDEX, 0, "", 0, counter, last, body, spec.MAX_CHUNK_SIZE)
            except IntegrityError as exc:
                raise IntegrityError(f"manifest chunk {counter}: {exc.message}") from exc
            counter += 1
        if not counter:
            raise IntegrityError("manifest is empty")
        return bytes(out)

    @staticmethod
    def _frame(buf: bytes | mmap.mmap, pos: int, end: int, where: str) -> tuple[bytes, int]:
        if pos + spec.CHUNK_PREFIX.size > end:
            raise IntegrityError(f"{where}: chunk frame truncated")
        (length,) = spec.CHUNK_PREFIX.unpack_from(buf, pos)
        start = pos + spec.CHUNK_PREFIX.size
        if length > spec.MAX_CHUNK_SIZE + 1024 * 1024 or start + length > end:
            raise IntegrityError(f"{where}: chunk frame of {length} bytes runs past its end")
        return bytes(buf[start:start + length]), start + length

    def _check_layout(self) -> None:
        m, h = self.manifest, self.header
        if m.package_id != h.package_id:
            raise IntegrityError("manifest and file header name different package ids (spliced or altered)")
        if m.version != (h.version_major, h.version_minor):
            raise IntegrityError(f"file header says version {h.version_major}.{h.version_minor}, "
                                 f"the manifest {m.version[0]}.{m.version[1]}")
        if m.flags != h.flags:
            raise IntegrityError("manifest and file header disagree on the package flags")
        if len(m.entries) != h.entry_count:
            raise IntegrityError(f"file header says {h.entry_count} entries, manifest lists {len(m.entries)}")
        if sum(1 for e in m.entries if e.kind == spec.Kind.MODEL) != h.model_count:
            raise IntegrityError("file header model count disagrees with the manifest")
        if bool(h.flags & spec.Flags.SIGNED) != bool(self.trailer.signature_offset):
            raise IntegrityError("SIGNED flag and signature block disagree (signature stripped or added)")
        cursor = h.header_size
        minor, encrypted, data_offset = h.version_minor, self.encrypted, spec.data_offset
        for e in m.entries:
            if e.header_offset != cursor:
                raise IntegrityError(f"entry {e.index} ({e.path}): header at {e.header_offset}, expected {cursor}")
            path = b"" if encrypted else e.path.encode("utf-8")
            if e.data_offset != data_offset(minor, cursor, path, e.raw_length, e.codec):
                raise IntegrityError(f"entry {e.index} ({e.path}): data offset {e.data_offset} is not where the "
                                     f"header puts it")
            if encrypted and not e.codec:
                raise IntegrityError(f"entry {e.index} ({e.path}): stored unencrypted inside an encrypted package")
            cursor = e.data_offset + e.stored_length
        if cursor != self.trailer.manifest_offset:
            raise IntegrityError(f"entries end at {cursor}, manifest starts at {self.trailer.manifest_offset}")

    def signature(self) -> Signature | None:
        """The signature block and the digests it must cover, or None when unsigned.

        Reads every byte before the signature block once (the prefix digest); needs no key.
        """
        if not self.trailer.signature_offset:
            return None
        block = bytes(self._mm[self.trailer.signature_offset: self.size - Trailer.SIZE])
        prefix = prefix_digest(self._file.fileno(), self.trailer.signature_offset)
        return Signature(block, self.trailer.manifest_sha256, prefix)

    def entry_header(self, e: EntryRecord) -> ModelHeader:
        """Read the entry's own header and check it says what the manifest says.

        Raises:
            IntegrityError: any field differs (the two views disagree).
        """
        off = e.header_offset
        hdr = ModelHeader.unpack(self._mm[off: off + ModelHeader.SIZE], off)
        self._agree(e, hdr, self._mm[off + ModelHeader.SIZE: off + ModelHeader.SIZE + hdr.path_length])
        return hdr

    def _agree(self, e: EntryRecord, hdr: ModelHeader, path: bytes) -> None:
        expect_path = b"" if self.encrypted else e.path.encode("utf-8")
        expect_sha = bytes(32) if self.encrypted else e.sha256
        mine = (hdr.entry_index, hdr.kind, hdr.codec, path, hdr.stored_length, hdr.raw_length, hdr.chunk_size, hdr.sha256)
        theirs = (e.index, int(e.kind), e.codec, expect_path, e.stored_length, e.raw_length, e.chunk_size, expect_sha)
        if mine != theirs:
            names = ("index", "kind", "codec", "path", "stored_length", "raw_length", "chunk_size", "sha256")
            diff = [n for n, a, b in zip(names, mine, theirs, strict=True) if a != b]
            raise IntegrityError(f"entry {e.index} ({e.path}): header and manifest disagree on {', '.join(diff)}")

    def checked_entries(self) -> Iterator[EntryRecord]:
        """Every entry in file order, each after one read of its header by the sequential walk.

        Before an entry is yielded: its header sits where the manifest puts it, agrees with the
        manifest field by field, and the padding before its data is zero (as is the padding
        after the key slots, checked first). This is how verify and unpack hold the sequential
        view against the trailer view without reading any header twice.

        Raises:
            IntegrityError: the two views disagree, or a padding byte is not zero.
        """
        mm = self._mm
        start, end = FileHeader.SIZE + self.header.keyslots_length, self.header.header_size
        if end > start and mm[start:end].count(0) != end - start:
            raise IntegrityError(f"non-zero bytes in the padding at offsets {start}-{end}: the package was altered")
        for (pos, hdr, path), e in zip(self.walk_headers(), self.entries, strict=True):
            if pos != e.header_offset:
                raise IntegrityError(f"sequential walk finds entry {e.index} at {pos}, the manifest at {e.header_offset}")
            self._agree(e, hdr, path)
            start = pos + ModelHeader.SIZE + hdr.path_length
            if e.data_offset > start and mm[start:e.data_offset].count(0) != e.data_offset - start:
                raise IntegrityError(f"non-zero bytes in the padding at offsets {start}-{e.data_offset}: "
                                     "the package was altered")
            yield e

    def check_padding(self) -> None:
        """Every padding byte (after the key slots, after each header's path) must be zero.

        Padding is not covered by digests or the signature; requiring zeros makes a
        verified package byte-canonical, so nothing can hide in it.
        """
        minor = self.header.version_minor
        gaps = [(FileHeader.SIZE + self.header.keyslots_length, self.header.header_size)]
        gaps += [(pos + ModelHeader.SIZE + hdr.path_length, hdr.data_offset(pos, path, minor))
                 for pos, hdr, path in self.walk_headers()]
        mm = self._mm
        for start, end in gaps:
            if end > start and mm[start:end].count(0) != end - start:
                raise IntegrityError(f"non-zero bytes in the padding at offsets {start}-{end}: the package was altered")

    def walk_headers(self) -> Iterator[tuple[int, ModelHeader, bytes]]:
        """Walk the entry headers from the start of the file using only what each header says.

        This is the sequential view; ``verify`` checks it against the trailer view.
        """
        pos = self.header.header_size
        minor, end, mm = self.header.version_minor, self.trailer.manifest_offset, self._mm
        for _ in range(self.header.entry_count):
            if pos + ModelHeader.SIZE > end:
                raise IntegrityError(f"sequential walk: entry header at {pos} runs into the manifest")
            hdr = ModelHeader.unpack(mm[pos: pos + ModelHeader.SIZE], pos)
            path = mm[pos + ModelHeader.SIZE: pos + ModelHeader.SIZE + hdr.path_length]
            yield pos, hdr, path
            pos = hdr.data_offset(pos, path, minor) + hdr.stored_length
        if pos != self.trailer.manifest_offset:
            raise IntegrityError(f"sequential walk ends at {pos}, the trailer puts the manifest at {self.trailer.manifest_offset}")

    def raw_view(self, e: EntryRecord) -> memoryview:
        """Zero-copy view of a raw (codec 0) entry's bytes."""
        if e.codec:
            raise UsageError(f"{e.path} is stored compressed or encrypted; it has no raw view")
        return memoryview(self._mm)[e.data_offset: e.data_offset + e.raw_length]

    def map_view(self) -> memoryview:
        """A zero-copy view of the whole file; release it before closing the reader."""
        return memoryview(self._mm)

    def fileno(self) -> int:
        """The package's file descriptor (for kernel-side copies of raw entries)."""
        return self._file.fileno()

    def raw_digest(self, e: EntryRecord) -> bytes:
        """SHA-256 of a raw entry's bytes, hashed straight from the map (thread-safe; the
        hashed windows are dropped from the resident set as it goes)."""
        if e.codec:
            raise UsageError(f"{e.path} is stored compressed or encrypted; it has no raw bytes to hash")
        return hash_map(self._mm, e.data_offset, e.data_offset + e.raw_length, close=False)

    def check_entries(self, *, progress: Callable[[int], None] | None = None,
                      hashed: frozenset[int] = frozenset()) -> None:
        """Check every entry as :meth:`checked_entries` does, then its bytes against its SHA-256.

        Raw entries are hashed straight from the map: small ones inline, large ones on
        ``workers`` threads, several at once. Chunked entries are decoded (and their AEAD
        tags checked) by :meth:`iter_entry`. Raw entries whose index is in ``hashed``
        are not hashed again: the caller has already checked exactly these bytes against
        this digest (a pull that hashed each file as it arrived).

        Raises:
            IntegrityError: a header disagrees with the manifest, or a digest or tag is wrong.
        """
        progress = progress or (lambda n: None)
        pending: deque[tuple[EntryRecord, cf.Future[bytes]]] = deque()
        view = memoryview(self._mm)
        try:
            with cf.ThreadPoolExecutor(self.workers) as pool:
                for e in self.checked_entries():
                    if not e.codec and e.index in hashed:
                        progress(e.raw_length)
                        continue
                    if e.codec:
                        for block in self.iter_entry(e):
                            progress(len(block))
                        continue
                    if e.raw_length < PARALLEL_HASH_MIN:
                        with view[e.data_offset: e.data_offset + e.raw_length] as part:
                            _check_digest(e, hashlib.sha256(part).digest())
                        progress(e.raw_length)
                        continue
                    while len(pending) >= 2 * self.workers:
                        _settle(*pending.popleft(), progress)
                    pending.append((e, pool.submit(self.raw_digest, e)))
                while pending:
                    _settle(*pending.popleft(), progress)
        finally:
            view.release()

    def _pread(self, offset: int, length: int) -> bytes:
        """Read bytes with pread rather than through the map, so streaming does not grow RSS."""
        if offset + length > self.size:
            raise IntegrityError(f"read of {length} bytes at {offset} runs past the end of the file (truncated)")
        data = os.pread(self._file.fileno(), length, offset)
        if len(data) != length:
            raise IntegrityError(f"short read at offset {offset}: the file changed or is truncated")
        return data

    def read_chunk(self, e: EntryRecord, i: int) -> bytes:
        """Decode chunk ``i`` of a chunked entry."""
        if self._decode is None:
            raise UsageError("this package has compressed entries but the reader has no decoder")
        off, length = e.chunks[i]
        frame = self._pread(e.data_offset + off, length)
        body, end = self._frame(frame, 0, length, f"entry {e.index} ({e.path}) chunk {i}")
        if end != length:
            raise IntegrityError(f"entry {e.index} ({e.path}) chunk {i}: frame length disagrees with the chunk table")
        raw_len = e.chunk_raw_length(i)
        try:
            raw = self._decode(e.index, e.codec, e.path, int(e.kind), i, i == len(e.chunks) - 1, body, raw_len)
        except IntegrityError as exc:
            raise IntegrityError(f"entry {e.index} ({e.path}) chunk {i}: {exc.message}") from exc
        if len(raw) != raw_len:
            raise IntegrityError(f"entry {e.index} ({e.path}) chunk {i}: decoded {len(raw)} bytes, expected {raw_len}")
        return raw

    def read_range(self, e: EntryRecord, begin: int, end: int) -> bytes | memoryview:
        """Raw bytes [begin, end) of an entry, decoding only the chunks that overlap them."""
        if not 0 <= begin <= end <= e.raw_length:
            raise UsageError(f"byte range [{begin}, {end}) outside {e.path} ({e.raw_length} bytes)")
        self.entry_header(e)
        if not e.codec:
            return self.raw_view(e)[begin:end]
        if begin == end:
            return b""
        first, last = begin // e.chunk_size, (end - 1) // e.chunk_size
        parts = [self.read_chunk(e, i) for i in range(first, last + 1)]
        joined = parts[0] if len(parts) == 1 else b"".join(parts)
        offset = first * e.chunk_size
        return memoryview(joined)[begin - offset: end - offset]

    def iter_entry(self, e: EntryRecord, *, check_digest: bool = True, block: int = 8 * 1024 * 1024
                   ) -> Iterator[bytes]:
        """Stream an entry's raw bytes in order, decoding chunks ahead on a thread pool.

        With ``check_digest`` the sha256 is compared at the end and IntegrityError raised
        on mismatch, so a consumer must not commit what it received before the iterator ends.
        """
        self.entry_header(e)
        if e.raw_length <= block and (not e.codec or len(e.chunks) == 1):  # one piece: no helper threads
            part = self._pread(e.data_offset, e.raw_length) if not e.codec else self.read_chunk(e, 0)
            if check_digest:
                _check_digest(e, hashlib.sha256(part).digest())
            yield part
            return
        h = hashlib.sha256() if check_digest else None
        if not e.codec:
            # Hash each block on a helper thread while the consumer writes it (both release the GIL).
            with cf.ThreadPoolExecutor(1) as hasher:
                for pos in range(0, e.raw_length, block):
                    part = self._pread(e.data_offset + pos, min(block, e.raw_length - pos))
                    pending = hasher.submit(h.update, part) if h is not None else None
                    yield part
                    if pending is not None:
                        pending.result()
        else:
            with cf.ThreadPoolExecutor(self.workers) as pool:
                window: deque[cf.Future[bytes]] = deque()
                n = len(e.chunks)
                nxt = 0
                while nxt < n or window:
                    while nxt < n and len(window) < 2 * self.workers:
                        window.append(pool.submit(self.read_chunk, e, nxt))
                        nxt += 1
                    part = window.popleft().result()
                    if h is not None:
                        h.update(part)
                    yield part
        if h is not None:
            _check_digest(e, h.digest())


PARALLEL_HASH_MIN = 1024 * 1024
"""Raw entries at least this large are hashed on the worker threads; smaller ones inline."""


def _check_digest(e: EntryRecord, digest: bytes) -> None:
    if digest != e.sha256:
        raise IntegrityError(f"{e.path}: sha256 mismatch: the entry is corrupt or was altered")


def _settle(e: EntryRecord, fut: cf.Future[bytes], progress: Callable[[int], None]) -> None:
    _check_digest(e, fut.result())
    progress(e.raw_length)


def is_package_file(path: Path) -> bool:
    """True when ``path`` is a regular file starting with the ptmpack magic."""
    try:
        with open(path, "rb") as f:
            return f.read(len(spec.MAGIC)) == spec.MAGIC
    except OSError:
        return False


