"""One read interface over a ``.ptm`` file or a package tree on disk.

``open_package`` is what users and every reading command call: list the files,
list the tensors, read one tensor as a numpy array without reading the rest
(zero-copy over mmap for raw entries and tree files), read a small file.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import IntegrityError, UsageError
from ptmpack.format import spec
from ptmpack.format.manifest import EntryRecord, TensorRecord
from ptmpack.format.reader import PackageReader, is_package_file
from ptmpack.format.tree import SourceFile, scan_tree
from ptmpack.tensors.dtypes import numpy_dtype
from ptmpack.tensors.safetensors_index import index_safetensors_file

MAX_SMALL_FILE = 64 * 1024 * 1024
"""Largest file ``read_file`` returns whole (metadata, configs); stream anything bigger."""


@dataclass(frozen=True)
class FileInfo:
    """A file of the package as readers see it, whether packed or on disk."""

    path: str
    kind: spec.Kind
    size: int
    executable: bool
    sha256: bytes | None
    tensors: tuple[TensorRecord, ...] | None


def is_safetensors(path: str) -> bool:
    return path.lower().endswith(".safetensors")


def tensor_records(source: Path) -> tuple[TensorRecord, ...]:
    """The tensor table of a safetensors file on disk (header only)."""
    idx = index_safetensors_file(str(source))
    return tuple(TensorRecord(t.name, t.dtype, t.shape, t.begin, t.end) for t in idx.tensors)


class Package(abc.ABC):
    """A package opened for reading; use as a context manager."""

    def __init__(self, path: Path, files: tuple[FileInfo, ...]) -> None:
        self.path = path
        self.files = files
        self._by_path = {f.path: f for f in files}

    def __enter__(self) -> Package:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def close(self) -> None:
        """Release open files and maps."""

    @property
    def is_file(self) -> bool:
        """True for a ``.ptm`` container, False for a tree on disk."""
        return False

    @property
    def encrypted(self) -> bool:
        """True when the package's entries are sealed (only ``.ptm`` files can be)."""
        return False

    def has_file(self, path: str) -> bool:
        """Whether the package holds a file at ``path``."""
        return path in self._by_path

    def file(self, path: str) -> FileInfo:
        try:
            return self._by_path[path]
        except KeyError:
            raise UsageError(f"{self.path} has no file {path!r}") from None

    def tensors(self) -> list[tuple[str, TensorRecord]]:
        """Every tensor as (file path, record), in file order."""
        return [(f.path, t) for f in self.files if f.tensors for t in f.tensors]

    def find_tensor(self, name: str) -> tuple[FileInfo, TensorRecord]:
        """Look a tensor up by name, or by ``FILE:NAME`` when several files hold that name.

        Raises:
            UsageError: no such tensor, or the name is ambiguous.
        """
        file_part, sep, tensor_part = name.rpartition(":")
        hits = [
            (f, t) for f in self.files if f.tensors and (not sep or f.path == file_part)
            for t in f.tensors if t.name == (tensor_part if sep else name)
        ]
        if not hits and sep:
            hits = [(f, t) for f in self.files if f.tensors for t in f.tensors if t.name == name]
        if not hits:
            raise UsageError(f"no tensor {name!r} in {self.path}", hint="list them with 'ptmpack inspect --tensors'")
        if len(hits) > 1:
            raise UsageError(f"tensor {name!r} is in several files; name it as FILE:TENSOR")
        return hits[0]

    def read_tensor(self, name: str) -> np.ndarray:
        """Read one tensor as a read-only numpy array, touching only its own bytes."""
        f, t = self.find_tensor(name)
        data = self.read_range(f, t.begin, t.end)
        return np.frombuffer(data, dtype=numpy_dtype(t.dtype)).reshape(t.shape)

    def iter_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """Every tensor in file order, one at a time."""
        for f in self.files:
            for t in f.tensors or ():
                data = self.read_range(f, t.begin, t.end)
                yield t.name, np.frombuffer(data, dtype=numpy_dtype(t.dtype)).reshape(t.shape)

    def read_file(self, path: str) -> bytes:
        """The whole content of a small file (≤ 64 MiB), digest-checked."""
        f = self.file(path)
        if f.size > MAX_SMALL_FILE:
            raise UsageError(f"{path} is {f.size} bytes; stream it instead of reading it whole")
        return b"".join(bytes(b) for b in self.iter_file(path))

    @abc.abstractmethod
    def iter_file(self, path: str) -> Iterator[bytes | memoryview]:
        """Stream a file's bytes; raises IntegrityError at the end if its digest is wrong."""

    @abc.abstractmethod
    def read_range(self, f: FileInfo, begin: int, end: int) -> bytes | memoryview:
        """Raw bytes [begin, end) of one file, touching nothing else."""


class FilePackage(Package):
    """A ``.ptm`` container."""

    def __init__(self, reader: PackageReader) -> None:
        self.reader = reader
        self._entries = {e.path: e for e in reader.entries}
        super().__init__(reader.path, tuple(_info(e) for e in reader.entries))

    @property
    def is_file(self) -> bool:
        return True

    @property
    def encrypted(self) -> bool:
        return self.reader.encrypted

    def close(self) -> None:
        self.reader.close()

    def entry(self, path: str) -> EntryRecord:
        self.file(path)
        return self._entries[path]

    def iter_file(self, path: str) -> Iterator[bytes | memoryview]:
        yield from self.reader.iter_entry(self.entry(path))

    def read_range(self, f: FileInfo, begin: int, end: int) -> bytes | memoryview:
        return self.reader.read_range(self._entries[f.path], begin, end)


class TreePackage(Package):
    """A package tree on disk (the layout ``ptmpack init`` makes)."""

    def __init__(self, root: Path) -> None:
        self.sources = {s.path: s for s in scan_tree(root)}
        files = tuple(
            FileInfo(s.path, s.kind, s.size, s.executable, None,
                     tensor_records(s.source) if is_safetensors(s.path) else None)
            for s in self.sources.values()
        )
        super().__init__(root, files)

    def close(self) -> None:
        """Nothing to release: tree files are opened per read."""

    def source(self, path: str) -> SourceFile:
        self.file(path)
        return self.sources[path]

    def iter_file(self, path: str) -> Iterator[bytes | memoryview]:
        with open(self.source(path).source, "rb") as fh:
            while block := fh.read(8 * 1024 * 1024):
                yield block

    def read_range(self, f: FileInfo, begin: int, end: int) -> bytes | memoryview:
        if begin == end:
            return b""
        src = self.sources[f.path].source
        if os.path.getsize(src) < end:
            raise IntegrityError(f"{src} is shorter than its safetensors header says")
        return np.memmap(src, dtype=np.uint8, mode="r", offset=begin, shape=(end - begin,)).data


def _info(e: EntryRecord) -> FileInfo:
    return FileInfo(e.path, e.kind, e.raw_length, e.executable, e.sha256, e.tensors)


def open_package(path: Path | str, opener: Opener | None = None, *, workers: int = 2) -> Package:
    """Open a ``.ptm`` file or a package tree for reading.

    Raises:
        UsageError: the path does not exist or is neither.
        KeyAccessError: encrypted and ``opener`` holds no key that opens it.
        IntegrityError, UnsupportedError, InvalidTreeError: a bad package.
    """
    from ptmpack.storage.protect import unlocker

    path = Path(path)
    if path.is_dir():
        return TreePackage(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if not is_package_file(path):
        raise IntegrityError(f"{path} is not a ptmpack package (no PTMPACK magic)")
    reader = PackageReader(path, unlock=unlocker(opener), workers=workers)
    return FilePackage(reader)
