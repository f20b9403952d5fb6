"""The safetensors files of a tree's ``Model/``, read and rewritten one tensor at a time (bounded memory).

A checkpoint may be one ``model.safetensors`` or the shards of a Hugging Face sharded save
(``model-00001-of-00004.safetensors`` … with ``model.safetensors.index.json``). Only the
headers are read when the files are opened (:mod:`ptmpack.tensors.safetensors_index`);
:meth:`WeightFiles.read` then reads one tensor's bytes with ``pread`` into an array of its
own, in the dtype it is stored in (bfloat16 through ml_dtypes). Nothing is memory-mapped:
pages of a mapped file count in the process's resident set, read copies are freed with the
array.

:meth:`WeightFiles.rewrite` replaces some tensors by others shard by shard (reads during a
rewrite see the files as they were when it began, also those already replaced): each new shard's
header is computed first from the planned layout (so the data can follow in one pass), the
tensors that stay are copied file to file by the kernel (``copy_file_range``, never through
this process's memory), each replaced one is produced by the caller just before it is
written and dropped after, and the new shard is renamed over the old one. The resident
memory of a rewrite is therefore the largest single replacement, not the checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptmpack.compress.tree.documents import read_json, write_json
from ptmpack.errors import InvalidTreeError, PtmError
from ptmpack.tensors.dtypes import numpy_dtype
from ptmpack.tensors.safetensors_index import DTYPE_SIZES, TensorInfo, index_safetensors_file
from ptmpack.tensors.stwriter import encode_header

INDEX_SUFFIX = ".safetensors.index.json"
"""A sharded checkpoint's weight map (``model.safetensors.index.json``): rewritten with the shards."""
COPY_BLOCK = 64 * 1024 * 1024
"""Bytes per ``copy_file_range`` call (and per read/write of the fallback copy)."""
WORKERS = 2
"""Replacements produced at once, ahead of the one being written."""

_ST_NAME = {numpy_dtype(name): name for name in DTYPE_SIZES}
"""numpy dtype → safetensors dtype name (the inverse of :func:`ptmpack.tensors.dtypes.numpy_dtype`)."""


def safetensors_dtype(dtype: np.dtype | type) -> str:
    """The safetensors name (``F32``, ``BF16``, …) of a numpy dtype.

    Raises:
        PtmError: a dtype safetensors cannot hold.
    """
    try:
        return _ST_NAME[np.dtype(dtype)]
    except KeyError:
        raise PtmError(f"numpy dtype {np.dtype(dtype)} has no safetensors name") from None


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of a tensor to be written (its layout, before its data exists)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @classmethod
    def of(cls, name: str, array: np.ndarray) -> TensorSpec:
        return cls(name, np.dtype(array.dtype), tuple(int(d) for d in array.shape))


Produce = Callable[[str], Mapping[str, np.ndarray]]
"""Given a replaced tensor's name, the arrays replacing it (exactly as planned)."""


class WeightFiles:
    """The top-level ``*.safetensors`` files of a ``Model/`` folder, indexed by their headers."""

    def __init__(self, model_dir: Path) -> None:
        """Index every top-level safetensors file of ``model_dir`` (headers only).

        Raises:
            InvalidTreeError: no safetensors file, an invalid header, or a tensor name in two files.
        """
        self.model_dir = Path(model_dir)
        self._held: dict[str, int] = {}
        """Open descriptors of the files as they were when a rewrite began (reads see them, not the new ones)."""
        self._index()

    def _index(self) -> None:
        self.files: dict[str, tuple[TensorInfo, ...]] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self._where: dict[str, tuple[str, TensorInfo]] = {}
        paths = sorted(p for p in self.model_dir.glob("*.safetensors") if p.is_file())
        if not paths:
            raise InvalidTreeError(f"{self.model_dir}: no *.safetensors weights")
        for path in paths:
            index = index_safetensors_file(str(path))
            self.files[path.name] = index.tensors
            self.metadata[path.name] = index.metadata
            for info in index.tensors:
                if info.name in self._where:
                    raise InvalidTreeError(f"{path}: tensor {info.name!r} is also in {self._where[info.name][0]}")
                self._where[info.name] = (path.name, info)

    def names(self) -> list[str]:
        """Every tensor name, file by file in file order."""
        return [t.name for infos in self.files.values() for t in infos]

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def file_of(self, name: str) -> str:
        """The file (name within ``Model/``) holding tensor ``name``."""
        return self._info(name)[0]

    def spec(self, name: str) -> TensorSpec:
        """Tensor ``name``'s dtype and shape, from the header."""
        info = self._info(name)[1]
        return TensorSpec(name, numpy_dtype(info.dtype), info.shape)

    def nbytes(self) -> int:
        """Bytes of tensor data in all files."""
        return sum(t.nbytes for infos in self.files.values() for t in infos)

    def numel(self) -> int:
        """Elements of all tensors (technicalinfo ``parameters``)."""
        return sum(t.numel for infos in self.files.values() for t in infos)

    def file_bytes(self) -> int:
        """Size on disk of the weight files."""
        return sum((self.model_dir / f).stat().st_size for f in self.files)

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` read from disk into an array of its own, in its stored dtype.

        Raises:
            InvalidTreeError: no such tensor, or the file is shorter than its header says.
        """
        file, info = self._info(name)
        dtype = numpy_dtype(info.dtype)
        buffer = bytearray(info.nbytes)
        fd = self._held.get(file)
        own = fd is None
        if own:
            fd = os.open(self.model_dir / file, os.O_RDONLY)
        try:
            done = 0
            while done < info.nbytes:
                n = os.preadv(fd, [memoryview(buffer)[done:]], info.begin + done)
                if n <= 0:
                    raise InvalidTreeError(f"{self.model_dir / file}: tensor {name!r} is cut short")
                done += n
        finally:
            if own:
                os.close(fd)
        return np.frombuffer(buffer, dtype=dtype).reshape(info.shape)

    __getitem__ = read

    def prefetch(self, name: str) -> None:
        """Ask the kernel to start reading tensor ``name`` now (it is read soon; a hint, never an error)."""
        file, info = self._info(name)
        try:
            fd = os.open(self.model_dir / file, os.O_RDONLY)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, info.begin, info.nbytes, os.POSIX_FADV_WILLNEED)
        except (OSError, AttributeError):
            pass
        finally:
            os.close(fd)

    def rewrite(self, replace: Mapping[str, Sequence[TensorSpec]], produce: Produce,
                progress: Callable[[int, int], None] | None = None) -> None:
        """Replace each tensor named in ``replace`` by the planned tensors ``produce(name)`` returns.

        The new tensors take the replaced tensor's place in its file; files holding no replaced
        tensor are left alone. ``progress(done, total)`` is called after each replaced tensor.

        Raises:
            InvalidTreeError: a name not in the checkpoint, or a file cannot be written.
            PtmError: ``produce`` returned other tensors than planned (a programming error).
        """
        missing = sorted(set(replace) - set(self._where))
        if missing:
            raise InvalidTreeError(f"{self.model_dir}: checkpoint has no tensor {missing[0]!r}")
        order = [t.name for infos in self.files.values() for t in infos if t.name in replace]
        self._held = {file: os.open(self.model_dir / file, os.O_RDONLY) for file in self.files}
        try:
            with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ptmpack-produce") as pool:
                ahead = _Ahead(pool, produce, order, self.prefetch)
                try:
                    for file, infos in self.files.items():
                        if any(t.name in replace for t in infos):
                            self._rewrite_file(file, infos, replace, ahead, progress)
                finally:
                    ahead.cancel()
        finally:
            for fd in self._held.values():
                os.close(fd)
            self._held = {}
        self._reindex(replace)

    def _rewrite_file(self, file: str, infos: tuple[TensorInfo, ...], replace: Mapping[str, Sequence[TensorSpec]],
                      ahead: _Ahead, progress: Callable[[int, int], None] | None) -> None:
        layout: list[TensorSpec] = []
        for t in infos:
            layout.extend(replace.get(t.name, [self.spec(t.name)]))
        header = encode_header(((s.name, safetensors_dtype(s.dtype), s.shape) for s in layout),
                               self.metadata[file] or {"format": "pt"})
        path = self.model_dir / file
        fd, tmp = tempfile.mkstemp(prefix=".st-", dir=self.model_dir)
        try:
            with os.fdopen(fd, "wb", buffering=0) as out, open(path, "rb", buffering=0) as src:
                out.write(header)
                for t in infos:
                    if t.name not in replace:
                        _copy_range(src.fileno(), out.fileno(), t.begin, t.nbytes)
                        continue
                    arrays = ahead.next(t.name)
                    for plan in replace[t.name]:
                        arr = arrays.get(plan.name)
                        if arr is None or TensorSpec.of(plan.name, arr) != plan:
                            got = None if arr is None else TensorSpec.of(plan.name, arr)
                            raise PtmError(f"{t.name}: produced {got} where {plan} was planned")
                        _write_all(out.fileno(), np.ascontiguousarray(arr))
                    del arrays
                    if progress is not None:
                        progress(ahead.done, len(ahead.order))
            os.replace(tmp, path)
        except OSError as exc:
            raise InvalidTreeError(f"{path}: cannot rewrite ({exc})") from None
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _reindex(self, replace: Mapping[str, Sequence[TensorSpec]]) -> None:
        """Re-read the headers after a rewrite and bring a sharded checkpoint's weight map up to date."""
        self._index()
        for index in self.model_dir.glob(f"*{INDEX_SUFFIX}"):
            doc = read_json(index)
            weight_map = doc.get("weight_map")
            if not isinstance(weight_map, dict):
                continue
            for old, new in replace.items():
                file = weight_map.pop(old, None)
                if file is not None:
                    weight_map.update({s.name: file for s in new})
            meta = doc.get("metadata")
            if isinstance(meta, dict) and "total_size" in meta:
                meta["total_size"] = self.nbytes()
            write_json(index, doc)

    def _info(self, name: str) -> tuple[str, TensorInfo]:
        try:
            return self._where[name]
        except KeyError:
            raise InvalidTreeError(f"{self.model_dir}: checkpoint has no tensor {name!r}") from None


class _Ahead:
    """The replacements in file order, produced on :data:`WORKERS` threads ahead of the one being written.

    numpy releases the interpreter lock in its loops, so quantizing the next layers overlaps
    writing this one and copying the tensors that stay (and uses both cores of a small machine);
    memory holds ``WORKERS + 1`` replacements at most. ``produce`` must be safe to call from
    several threads at once for different names.
    """

    def __init__(self, pool: ThreadPoolExecutor, produce: Produce, order: list[str],
                 prefetch: Callable[[str], None]) -> None:
        self.pool, self.produce, self.order, self.prefetch = pool, produce, order, prefetch
        self.done = 0
        self._futures: deque[Future[Mapping[str, np.ndarray]]] = deque()
        self._submitted = 0
        self._fill()

    def _fill(self) -> None:
        while len(self._futures) < WORKERS and self._submitted < len(self.order):
            self._futures.append(self.pool.submit(self.produce, self.order[self._submitted]))
            self._submitted += 1
            if self._submitted < len(self.order):
                self.prefetch(self.order[self._submitted])  # read from disk while the others are produced

    def next(self, name: str) -> Mapping[str, np.ndarray]:
        """The replacement of ``name`` (the next in order); starts producing the ones after it."""
        if not self._futures or self.order[self.done] != name:
            raise PtmError(f"replacement of {name!r} asked out of order")
        result = self._futures.popleft().result()
        self.done += 1
        self._fill()
        return result

    def cancel(self) -> None:
        """Drop the replacements being produced (after a failure); waits for them to stop."""
        while self._futures:
            future = self._futures.popleft()
            future.cancel()
            with contextlib.suppress(Exception):
                future.result()


def _copy_range(src: int, dst: int, offset: int, count: int) -> None:
    """Append ``count`` bytes of ``src`` from ``offset`` to ``dst`` (in the kernel where it can)."""
    end = offset + count
    while offset < end:
        n = min(COPY_BLOCK, end - offset)
        try:
            copied = os.copy_file_range(src, dst, n, offset)
        except OSError:  # another file system, or no copy_file_range: through a buffer
            copied = os.write(dst, os.pread(src, n, offset))
        if copied <= 0:
            raise OSError(f"short copy at byte {offset}")
        offset += copied


def _write_all(fd: int, array: np.ndarray) -> None:
    view = memoryview(array.reshape(-1).view(np.uint8))
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (any dtype safetensors holds, bfloat16 included) as the safetensors file ``path``,
    through a temporary file in the same folder renamed over it.

    Raises:
        InvalidTreeError: the file cannot be written.
    """
    path = Path(path)
    arrays = {name: np.ascontiguousarray(a) for name, a in tensors.items()}
    header = encode_header(((n, safetensors_dtype(a.dtype), tuple(a.shape)) for n, a in arrays.items()),
                           dict(metadata or {"format": "pt"}))
    fd, tmp = tempfile.mkstemp(prefix=".st-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            _write_all(out.fileno(), np.frombuffer(header, np.uint8))
            for a in arrays.values():
                _write_all(out.fileno(), a)
        os.replace(tmp, path)
    except OSError as exc:
        raise InvalidTreeError(f"{path}: cannot write ({exc})") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
