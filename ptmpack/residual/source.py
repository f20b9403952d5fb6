"""Read tensors out of an open package one at a time, decoding each stored chunk about once.

``Package.read_range`` decodes every chunk a request overlaps, so reading the many
small tensors of a 4 MiB chunk one by one would decode that chunk once per tensor.
:class:`TensorSource` keeps the last few decoded chunks of a ``.ptm`` entry (a
bounded cache), so walking tensors in file order decodes each chunk once. Trees and
uncompressed entries are served zero-copy by the package itself.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import IntegrityError, UsageError
from ptmpack.format.manifest import TensorRecord
from ptmpack.storage.package import FileInfo, FilePackage, Package, is_safetensors, open_package
from ptmpack.tensors.dtypes import numpy_dtype

CACHE_CHUNKS = 3
"""Decoded chunks kept per source (3 x 4 MiB at the default chunk size): enough for a tensor that straddles chunks."""


class TensorSource:
    """A package opened for tensor-by-tensor reading; use as a context manager."""

    def __init__(self, path: Path, opener: Opener | None = None) -> None:
        self.pkg: Package = open_package(path, opener)
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._checked: set[str] = set()
        self.by_path = {f.path: f for f in self.pkg.files}

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._cache.clear()
        self.pkg.close()

    @property
    def is_file(self) -> bool:
        return isinstance(self.pkg, FilePackage)

    def safetensors_files(self) -> list[FileInfo]:
        return [f for f in self.pkg.files if is_safetensors(f.path) and f.tensors is not None]

    def read(self, f: FileInfo, begin: int, end: int) -> bytes | memoryview:
        """Raw bytes [begin, end) of file ``f``."""
        pkg = self.pkg
        if not isinstance(pkg, FilePackage):
            return pkg.read_range(f, begin, end)
        e = pkg.entry(f.path)
        if f.path not in self._checked:
            pkg.reader.entry_header(e)  # the entry's own header must agree with the manifest
            self._checked.add(f.path)
        if not e.codec or begin == end:
            return pkg.read_range(f, begin, end)
        if not 0 <= begin <= end <= e.raw_length:
            raise UsageError(f"byte range [{begin}, {end}) outside {f.path} ({e.raw_length} bytes)")
        first, last = begin // e.chunk_size, (end - 1) // e.chunk_size
        if first == last:
            off = first * e.chunk_size
            return memoryview(self._chunk(f.path, first))[begin - off: end - off]
        out = bytearray(end - begin)
        pos = 0
        for i in range(first, last + 1):
            chunk = self._chunk(f.path, i)
            lo = max(begin, i * e.chunk_size) - i * e.chunk_size
            hi = min(end, (i + 1) * e.chunk_size) - i * e.chunk_size
            out[pos: pos + hi - lo] = chunk[lo:hi]
            pos += hi - lo
        return memoryview(out)

    def _chunk(self, path: str, i: int) -> bytes:
        key = (path, i)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        assert isinstance(self.pkg, FilePackage)
        data = self.pkg.reader.read_chunk(self.pkg.entry(path), i)
        self._cache[key] = data
        if len(self._cache) > CACHE_CHUNKS:
            self._cache.popitem(last=False)
        return data

    def tensor_bytes(self, f: FileInfo, t: TensorRecord) -> bytes | memoryview:
        return self.read(f, t.begin, t.end)

    def tensor(self, f: FileInfo, t: TensorRecord) -> np.ndarray:
        """A read-only flat array of the tensor's elements."""
        return np.frombuffer(self.tensor_bytes(f, t), dtype=numpy_dtype(t.dtype))

    def header_bytes(self, f: FileInfo) -> bytes:
        """The safetensors header of ``f``: the 8-byte length and the JSON, exactly as stored."""
        head = bytes(self.read(f, 0, min(8, f.size)))
        if len(head) != 8:
            raise IntegrityError(f"{f.path}: shorter than a safetensors header")
        n = int.from_bytes(head, "little")
        if 8 + n > f.size:
            raise IntegrityError(f"{f.path}: safetensors header runs past the end of the file")
        return bytes(self.read(f, 0, 8 + n))

    def iter_file(self, path: str) -> Iterator[bytes | memoryview]:
        """Stream a whole file; raises IntegrityError at the end when its digest is wrong."""
        return self.pkg.iter_file(path)

    def file_sha256(self, f: FileInfo) -> str:
        """The file's sha256: from the manifest for a ``.ptm``, else by reading it."""
        if f.sha256 is not None:
            return f.sha256.hex()
        h = hashlib.sha256()
        for block in self.pkg.iter_file(f.path):
            h.update(block)
        return h.hexdigest()


def sha256_hex(data: bytes | memoryview | np.ndarray) -> str:
    """Hex sha256 of a contiguous buffer."""
    return hashlib.sha256(data).hexdigest()
