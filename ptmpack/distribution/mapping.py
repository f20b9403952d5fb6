"""Split a ``.ptm`` into content-addressed blobs and put it back together byte for byte.

The file is cut into *spans* in file order. Entry data of at least ``SMALL_ENTRY``
bytes becomes chunk blobs; everything else (file header, key slots, entry headers
and their padding, small entries, the manifest, the signature and the trailer) is
*literal* and travels inside one small recipe blob that lists the spans.

Blob boundaries follow the container's own chunking, relative to each entry's data
start, never to file offsets: a raw entry is cut every ``piece`` bytes; a
chunked entry (compressed and/or encrypted) is cut on its frame boundaries, ``k``
frames to a blob with ``k = max(1, piece // chunk_size)``. ``piece`` is 4 MiB (the
container's default chunk size), doubled until the package has at most
``MAX_BLOBS`` blobs (past 40 GB of entry data), so the manifest stays under the
4 MiB registries accept. Two versions of a
package therefore share every blob whose bytes did not change, wherever the entry
moved in the file. Only the clear headers are read to cut (the sequential walk and
the frame length prefixes), so encrypted packages are cut without their key.

Recipe blob (zstd-compressed): ``b"PTMRCP\\0\\1"``, u32 length of a canonical JSON
document ``{"size", "sha256", "spans": [[0, len] | [1, digest, len], ...]}``, then
the literal bytes in file order. ``0`` spans take the next ``len`` literal bytes;
``1`` spans copy the blob ``digest``.

ModelPack artifacts (:mod:`ptmpack.distribution.modelpack`) are cut differently:
one blob span per file of the tree (:func:`cut_files`), so the blob *is* the file.
Their recipe is version 2 (``b"PTMRCP\\0\\2"``): the JSON document drops the
whole-file ``sha256`` (nobody hashed the file as a whole; every byte is bound by
the layer digests and the container's own manifest digest) for
``manifest_sha256`` and adds ``chunk``; between the JSON and the literals sits the
chunk-digest index: for every distinct blob in order of first use, the raw SHA-256
(32 bytes) of each ``chunk``-byte range of the blob. A pull holding an older
version compares these with its own bytes and fetches only the ranges that differ
(:mod:`ptmpack.distribution.chunks`).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from ptmpack.distribution.modelpack import FileLayer
from ptmpack.distribution.oci import canonical_json, load_document
from ptmpack.errors import IntegrityError, UnsupportedError, UsageError
from ptmpack.format import spec
from ptmpack.format.digest import range_digest
from ptmpack.format.reader import PackageReader
from ptmpack.format.records import ModelHeader

PIECE_SIZE = spec.DEFAULT_CHUNK_SIZE
"""Smallest blob of a raw entry; the container's default chunk size, so both cut alike."""
MAX_BLOBS = 10_000
"""Blobs per package before the piece size doubles (a layer descriptor is ~150 bytes of manifest)."""
SMALL_ENTRY = 64 * 1024
"""Entries whose stored data is smaller than this travel inside the recipe."""
RECIPE_MAGIC = b"PTMRCP\x00\x01"
RECIPE_MAGIC_V2 = b"PTMRCP\x00\x02"
INDEX_CHUNK = 1024 * 1024
"""Bytes per chunk-digest index entry: what a pull that holds an older version fetches at least."""
MIN_INDEX_CHUNK, MAX_INDEX_CHUNK = 64 * 1024, 64 * 1024 * 1024
RECIPE_HEAD = struct.Struct("<8sI")
RECIPE_LEVEL = 10
MAX_RECIPE_BYTES = 256 * 1024 * 1024 + 64 * 1024 * 1024
"""Decompressed recipe limit: literals are headers, small entries and the manifest (≤ 256 MiB)."""
MAX_SPANS = 4_000_000
MAX_REFERENCES = 1024
"""Times one blob may appear in a recipe. Identical chunks repeat (zero-filled tensors), but a few
blobs referenced many thousand times would turn a small download into a huge file."""
HASH_BLOCK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Span:
    """``length`` bytes of the file at ``offset``; ``blob`` when they travel as their own blob."""

    offset: int
    length: int
    blob: bool


@dataclass(frozen=True)
class Piece:
    """A blob of the package: its span and digest."""

    offset: int
    length: int
    digest: str


@dataclass(frozen=True)
class Cut:
    """A package cut into spans, with the digest of every blob span and of the whole file."""

    size: int
    sha256: str | None
    """The whole file's digest (native cuts); None for file cuts, whose blobs are the files."""
    spans: tuple[Span, ...]
    digests: tuple[str | None, ...]
    """One per span: the blob digest, or None for a literal span."""

    def pieces(self) -> list[Piece]:
        """Each distinct blob once, in file order."""
        seen: set[str] = set()
        out = []
        for s, d in zip(self.spans, self.digests, strict=True):
            if d is not None and d not in seen:
                seen.add(d)
                out.append(Piece(s.offset, s.length, d))
        return out


def cut_spans(reader: PackageReader) -> list[Span]:
    """The spans of an open package, from its clear headers only (no key needed).

    Raises:
        IntegrityError: a header or chunk frame runs past where the layout allows.
    """
    spans: list[Span] = []
    cursor = 0
    minor = reader.header.version_minor
    headers = [(hdr.data_offset(pos, bytes(path), minor), hdr) for pos, hdr, path in reader.walk_headers()]
    piece = piece_size(sum(h.stored_length for _, h in headers if h.stored_length >= SMALL_ENTRY))
    with open(reader.path, "rb") as f:
        for start, hdr in headers:
            cursor = _cut_entry(f.fileno(), spans, cursor, start, hdr, piece)
    spans.append(Span(cursor, reader.size - cursor, False))
    return spans


def piece_size(large_bytes: int) -> int:
    """4 MiB, doubled until ``large_bytes`` of entry data make at most ``MAX_BLOBS`` blobs."""
    piece = PIECE_SIZE
    while large_bytes > piece * MAX_BLOBS and piece < spec.MAX_CHUNK_SIZE * 16:
        piece *= 2
    return piece


def cut_files(reader: PackageReader, split_size: int) -> tuple[list[Span], list[FileLayer]]:
    """Spans of a raw, unencrypted package with one blob per file (parts of ``split_size`` for larger files).

    Returns the spans and, for every blob span in order, the file layer it is. A
    whole file's digest is its entry's SHA-256 (nothing is hashed here); a part's
    digest is left empty for :func:`ptmpack.distribution.chunks.index_blobs` to fill.

    Raises:
        UsageError: the package is encrypted or holds an entry that is not stored raw.
    """
    if reader.sealed or any(e.codec for e in reader.entries):
        raise UsageError("only raw, unencrypted packages map to one layer per file")
    if split_size < MIN_INDEX_CHUNK:
        raise UsageError(f"a split size of {split_size} bytes is too small", hint="use at least 64 KiB")
    spans: list[Span] = []
    layers: list[FileLayer] = []
    cursor = 0
    for e in reader.entries:
        if e.data_offset > cursor:
            spans.append(Span(cursor, e.data_offset - cursor, False))
        n = max(1, -(-e.raw_length // split_size))
        for k in range(n):
            start = k * split_size
            length = min(split_size, e.raw_length - start) if e.raw_length else 0
            spans.append(Span(e.data_offset + start, length, True))
            digest = "sha256:" + e.sha256.hex() if n == 1 else ""
            layers.append(FileLayer(e.path, digest, length, e.executable, k + 1, n, start))
        cursor = e.data_offset + e.raw_length
    spans.append(Span(cursor, reader.size - cursor, False))
    return spans, layers


def _cut_entry(fd: int, spans: list[Span], cursor: int, start: int, hdr: ModelHeader, piece: int) -> int:
    """Append the spans of one entry's data (and the literal before it); return the new cursor."""
    if hdr.stored_length < SMALL_ENTRY:
        return cursor
    if start > cursor:
        spans.append(Span(cursor, start - cursor, False))
    end = start + hdr.stored_length
    bounds = _raw_bounds(start, end, piece) if not hdr.codec else _frame_bounds(fd, start, end, hdr.chunk_size, piece)
    spans += [Span(a, b - a, True) for a, b in bounds]
    return end


def _raw_bounds(start: int, end: int, piece: int) -> list[tuple[int, int]]:
    return [(a, min(a + piece, end)) for a in range(start, end, piece)]


def _frame_bounds(fd: int, start: int, end: int, chunk_size: int, piece: int) -> list[tuple[int, int]]:
    per_blob = max(1, piece // max(chunk_size, 1))
    out: list[tuple[int, int]] = []
    pos, first, n = start, start, 0
    while pos < end:
        if pos + 4 > end:
            raise IntegrityError(f"chunk frame prefix at {pos} runs past its entry's data (ends at {end})")
        (length,) = spec.CHUNK_PREFIX.unpack(os.pread(fd, 4, pos))
        pos += 4 + length
        n += 1
        if pos > end:
            raise IntegrityError(f"chunk frame at {pos - 4 - length} runs past its entry's data (ends at {end})")
        if n == per_blob or pos == end:
            out.append((first, pos))
            first, n = pos, 0
    return out


def hash_cut(path: Path, spans: list[Span], *, workers: int = 4,
             progress: Callable[[int], None] | None = None, whole: bool = True) -> Cut:
    """Digest every blob span (in parallel) and, with ``whole``, the whole file (alongside; else ``sha256`` is None)."""
    progress = progress or (lambda n: None)
    size = os.path.getsize(path)
    with open(path, "rb") as f, cf.ThreadPoolExecutor(max(1, workers)) as pool:
        fd = f.fileno()
        file_job = pool.submit(_hash_range, fd, 0, size, None) if whole else None
        jobs = [pool.submit(_hash_range, fd, s.offset, s.length, progress) if s.blob else None for s in spans]
        digests = tuple(None if j is None else "sha256:" + j.result() for j in jobs)
        return Cut(size, None if file_job is None else file_job.result(), tuple(spans), digests)


def _hash_range(fd: int, offset: int, length: int, progress: Callable[[int], None] | None) -> str:
    return range_digest(fd, offset, length, progress=progress, block=HASH_BLOCK).hex()


def encode_recipe(path: Path, cut: Cut, index: ChunkIndex | None = None, manifest_sha256: str = "") -> bytes:
    """The recipe blob of a cut package: the span list, the chunk index (version 2) and the literals, zstd-compressed."""
    spans = [[1, d, s.length] if d is not None else [0, s.length] for s, d in zip(cut.spans, cut.digests, strict=True)]
    doc: dict[str, Any] = {"size": cut.size, "spans": spans}
    if index is None:
        doc["sha256"] = cut.sha256
        magic, table = RECIPE_MAGIC, b""
    else:
        doc.update(chunk=index.chunk, manifest_sha256=manifest_sha256)
        magic = RECIPE_MAGIC_V2
        table = b"".join(index.digests[d] for d in dict.fromkeys(d for d in cut.digests if d is not None))
    head = canonical_json(doc)
    cctx = zstandard.ZstdCompressor(level=RECIPE_LEVEL, write_content_size=True)
    with open(path, "rb") as f:
        parts = [RECIPE_HEAD.pack(magic, len(head)), head, table]
        parts += [os.pread(f.fileno(), s.length, s.offset) for s in cut.spans if not s.blob]
    return cctx.compress(b"".join(parts))


@dataclass(frozen=True)
class ChunkIndex:
    """Per blob: the SHA-256 of each ``chunk``-byte range, concatenated (32 bytes each)."""

    chunk: int
    digests: dict[str, bytes]

    def of(self, digest: str) -> list[bytes]:
        table = self.digests.get(digest, b"")
        return [table[i: i + 32] for i in range(0, len(table), 32)]


def chunk_count(size: int, chunk: int) -> int:
    """Index entries of a blob of ``size`` bytes (an empty blob has none)."""
    return -(-size // chunk)


@dataclass(frozen=True)
class Recipe:
    """How to rebuild the file: spans in order, literals held here, blobs by digest."""

    size: int
    sha256: str | None
    """The whole file's digest (version 1); None in version 2, where ``manifest_sha256`` binds the file."""
    spans: tuple[tuple[str | None, int], ...]
    """(digest or None for literal, length) in file order."""
    literals: bytes
    index: ChunkIndex | None = None
    manifest_sha256: str | None = None

    def blobs(self) -> dict[str, int]:
        """Every distinct blob digest the file needs, with its size."""
        return {d: n for d, n in self.spans if d is not None}


def decode_recipe(data: bytes, layers: dict[str, int], where: str) -> Recipe:
    """Parse a recipe blob and check it against the manifest's layer list.

    Raises:
        IntegrityError: malformed, lengths that do not add up, or a blob the manifest does not list.
        UnsupportedError: a newer recipe version.
    """
    raw = _inflate(data, MAX_RECIPE_BYTES, f"{where}: recipe")
    if len(raw) < RECIPE_HEAD.size:
        raise IntegrityError(f"{where}: recipe too short")
    magic, n = RECIPE_HEAD.unpack_from(raw)
    if magic[:6] != RECIPE_MAGIC[:6]:
        raise IntegrityError(f"{where}: not a ptmpack recipe")
    if magic not in (RECIPE_MAGIC, RECIPE_MAGIC_V2):
        raise UnsupportedError(f"{where}: recipe version {magic[6:].hex()} is newer than this ptmpack",
                               hint="upgrade ptmpack")
    if RECIPE_HEAD.size + n > len(raw):
        raise IntegrityError(f"{where}: recipe header runs past its end")
    doc = load_document(raw[RECIPE_HEAD.size: RECIPE_HEAD.size + n], f"{where} recipe")
    rest = raw[RECIPE_HEAD.size + n:]
    size, spans = doc.get("size"), doc.get("spans")
    if type(size) is not int or size < 0 or not isinstance(spans, list):
        raise IntegrityError(f"{where}: recipe needs size and spans")
    sha, msha, chunk = doc.get("sha256"), doc.get("manifest_sha256"), doc.get("chunk")
    if magic == RECIPE_MAGIC and not _hex64(sha):
        raise IntegrityError(f"{where}: a version 1 recipe needs the file's sha256")
    if magic == RECIPE_MAGIC_V2 and (not _hex64(msha) or type(chunk) is not int
                                     or not MIN_INDEX_CHUNK <= chunk <= MAX_INDEX_CHUNK):
        raise IntegrityError(f"{where}: a version 2 recipe needs manifest_sha256 and a chunk size of 64 KiB-64 MiB")
    if len(spans) > MAX_SPANS:
        raise IntegrityError(f"{where}: {len(spans)} spans is more than any package has")
    out: list[tuple[str | None, int]] = []
    lit = 0
    uses: dict[str, int] = {}
    for i, s in enumerate(spans):
        out.append(_span(s, layers, f"{where} span {i}"))
        digest = out[-1][0]
        if digest is None:
            lit += out[-1][1]
            continue
        uses[digest] = uses.get(digest, 0) + 1
        if uses[digest] > MAX_REFERENCES:
            times = sum(1 for x in spans if isinstance(x, list) and len(x) == 3 and x[1] == digest)
            raise IntegrityError(f"{where}: blob {digest} is used {times} times; at most {MAX_REFERENCES} are allowed")
    if sum(n for _, n in out) != size:
        raise IntegrityError(f"{where}: spans add up to {sum(n for _, n in out)} bytes, the recipe says {size}")
    index = None
    if magic == RECIPE_MAGIC_V2:
        index, rest = _index(rest, out, chunk, where)
    if lit != len(rest):
        raise IntegrityError(f"{where}: spans take {lit} literal bytes, the recipe holds {len(rest)}")
    return Recipe(size, sha if magic == RECIPE_MAGIC else None, tuple(out), rest, index,
                  msha if magic == RECIPE_MAGIC_V2 else None)


def _hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _index(rest: bytes, spans: list[tuple[str | None, int]], chunk: int, where: str) -> tuple[ChunkIndex, bytes]:
    """Split the chunk-digest table off the literals: one 32-byte digest per chunk of each distinct blob."""
    blobs = dict.fromkeys((d, n) for d, n in spans if d is not None)
    need = 32 * sum(chunk_count(n, chunk) for _, n in blobs)
    if need > len(rest):
        raise IntegrityError(f"{where}: the chunk index needs {need} bytes, the recipe holds {len(rest)}")
    table, pos = {}, 0
    for d, n in blobs:
        k = 32 * chunk_count(n, chunk)
        table[d] = rest[pos: pos + k]
        pos += k
    return ChunkIndex(chunk, table), rest[need:]


def _inflate(data: bytes, limit: int, what: str) -> bytes:
    """Decompress one zstd frame of at most ``limit`` bytes, never holding more than ``limit + 1``.

    The size a frame declares is checked before anything is allocated (zstandard
    allocates a declared size whole, whatever ``max_output_size`` says); then the
    frame is read as a stream that stops one byte past the limit.

    Raises:
        IntegrityError: not zstd, or larger than ``limit`` (declared or actual).
    """
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{what} is not valid zstd ({exc})") from None
    if declared > limit:
        raise IntegrityError(f"{what} declares {declared} bytes; at most {limit} are allowed")
    try:
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            parts, got = [], 0
            while got <= limit and (block := reader.read(min(1 << 20, limit + 1 - got))):
                parts.append(block)
                got += len(block)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{what} is not valid zstd ({exc})") from None
    if got > limit:
        raise IntegrityError(f"{what} expands past {limit} bytes")
    return b"".join(parts)


def _span(s: Any, layers: dict[str, int], where: str) -> tuple[str | None, int]:
    if isinstance(s, list) and len(s) == 2 and s[0] == 0 and type(s[1]) is int and s[1] >= 0:
        return None, s[1]
    if isinstance(s, list) and len(s) == 3 and s[0] == 1 and isinstance(s[1], str) and type(s[2]) is int:
        if layers.get(s[1]) != s[2]:
            raise IntegrityError(f"{where}: blob {s[1][:80]} of {s[2]} bytes is not a layer of the manifest")
        return s[1], s[2]
    raise IntegrityError(f"{where}: malformed span")


def layer_sizes(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    """digest -> size of the chunk layers, refusing one digest listed with two sizes."""
    out: dict[str, int] = {}
    for d, n in pairs:
        if out.setdefault(d, n) != n:
            raise IntegrityError(f"manifest lists blob {d} with two sizes")
    return out
