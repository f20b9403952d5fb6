"""Digests the format defines: plain SHA-256 of an entry's bytes, and of a file's prefix.

Entry digests are plain SHA-256 of the file bytes, so they match ``sha256sum`` and
Hugging Face's LFS object ids; the signature covers the SHA-256 of every byte before
the signature block.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
from collections.abc import Callable

from ptmpack.errors import IntegrityError

COPY_BLOCK = 8 * 1024 * 1024


def range_digest(fd: int, offset: int, length: int, *, progress: Callable[[int], None] | None = None,
                 block: int = COPY_BLOCK) -> bytes:
    """SHA-256 of bytes [offset, offset + length) of an open file, read with pread in ``block``-sized steps.

    Raises:
        IntegrityError: the file ends before the range does (truncated, or shrank while read).
    """
    h = hashlib.sha256()
    pos, end = offset, offset + length
    while pos < end:
        data = os.pread(fd, min(block, end - pos), pos)
        if not data:
            raise IntegrityError(f"file ends at {pos}, before byte {end} it should reach (truncated)")
        h.update(data)
        pos += len(data)
        if progress is not None:
            progress(len(data))
    return h.digest()


def prefix_digest(fd: int, end: int, block: int = COPY_BLOCK) -> bytes:
    """SHA-256 of bytes [0, end) of an open file (what a signature covers)."""
    return range_digest(fd, 0, end, block=block)


HASH_WINDOW = 16 * 1024 * 1024
"""Bytes of a map hashed per call; each window is dropped from the process's pages after use."""


def hash_map(mapped: mmap.mmap, start: int = 0, end: int | None = None, *, close: bool = True) -> bytes:
    """SHA-256 of bytes [start, end) of a read-only map; then close the map unless ``close`` is False.

    Runs on a pool thread: ``hashlib`` releases the GIL for large updates, so the caller
    can copy or write meanwhile. Each window is released with ``MADV_DONTNEED`` once
    hashed, so hashing a file of any size adds at most one window to the resident set
    (the pages stay in the page cache).
    """
    end = len(mapped) if end is None else end
    h = hashlib.sha256()
    try:
        view = memoryview(mapped)
        try:
            pos = start
            while pos < end:
                stop = min(end, pos + HASH_WINDOW)
                with view[pos:stop] as part:
                    h.update(part)
                _drop(mapped, pos, stop)
                pos = stop
        finally:
            view.release()
    finally:
        if close:
            mapped.close()
    return h.digest()


def _drop(mapped: mmap.mmap, start: int, stop: int) -> None:
    begin = start - start % mmap.PAGESIZE
    with contextlib.suppress(OSError, AttributeError, ValueError):
        mapped.madvise(mmap.MADV_DONTNEED, begin, stop - begin)


class KernelCopier:
    """Copy file ranges between descriptors at explicit offsets without passing the bytes through Python.

    Tries ``os.copy_file_range`` (no copy to user space; a reflink where the file system
    shares blocks), then ``os.sendfile``, then a read/``pwrite`` loop over one reused
    buffer; a method that fails once with "not supported here" is not tried again.
    """

    def __init__(self) -> None:
        self.method = "copy_file_range" if hasattr(os, "copy_file_range") else "sendfile"
        self._buf: bytearray | None = None

    def copy(self, in_fd: int, out_fd: int, length: int, in_offset: int, out_offset: int) -> int:
        """Copy up to ``length`` bytes from ``in_fd`` at ``in_offset`` to ``out_fd`` at ``out_offset``;
        return the bytes copied (fewer only when the input ends early)."""
        done = 0
        while done < length:
            n = self._step(in_fd, out_fd, length - done, in_offset + done, out_offset + done)
            if not n:
                break
            done += n
        return done

    def _step(self, in_fd: int, out_fd: int, count: int, in_off: int, out_off: int) -> int:
        count = min(count, 1 << 30)
        if self.method == "copy_file_range":
            try:
                return os.copy_file_range(in_fd, out_fd, count, in_off, out_off)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                self.method = "sendfile"
        if self.method == "sendfile":
            try:
                os.lseek(out_fd, out_off, os.SEEK_SET)
                return os.sendfile(out_fd, in_fd, in_off, count)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                self.method = "pread"
        if self._buf is None:
            self._buf = bytearray(COPY_BLOCK)
        view = memoryview(self._buf)
        n = os.preadv(in_fd, [view[:min(count, COPY_BLOCK)]], in_off)
        written = 0
        while written < n:
            written += os.pwrite(out_fd, view[written:n], out_off + written)
        return n


# Errors meaning "this method cannot copy between these two files" (cross-device on older kernels,
# a file system or file type without support, sendfile wanting a socket): try the next method.
# Anything else (ENOSPC, EIO, ...) is a real failure and is raised.
_UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF, errno.ENOTSOCK,
                errno.ETXTBSY, errno.EPERM}
