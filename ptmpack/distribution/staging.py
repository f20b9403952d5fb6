"""The file a pull assembles a package in, and the kernel copies that fill it or share its blocks.

A registry pull downloads each blob straight into its place in a staging file in the
content cache (``partial/packages/<manifest hex>.ptm``), journaled so a killed pull
resumes, then renames it to the output (docs/DISTRIBUTION.md §3-§4). ``copy_range``
copies between open files in the kernel (``copy_file_range``, which clones
block-aligned spans on XFS and btrfs); ``clone_range`` shares blocks or does nothing,
so the cache keeps a blob as a reflink only where that costs no space.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from pathlib import Path

from ptmpack.distribution.storetypes import BlobTarget
from ptmpack.format.atomic import atomic_file, create_temp_file, temp_name_beside
from ptmpack.format.digest import KernelCopier

FICLONERANGE = 0x4020940D
"""``_IOW(0x94, 13, struct file_clone_range)``: share a range of one file's blocks with another (Linux)."""
JOURNAL_SUFFIX = ".journal"


def clone_range(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> bool:
    """Make ``length`` bytes of ``dst`` at ``dst_offset`` share ``src``'s blocks at ``src_offset``; False (nothing
    changed) where the file system cannot (ext4, tmpfs, another file system, offsets not block-aligned).

    The block-aligned part is cloned; a tail shorter than a block is copied (it cannot
    be shared without also sharing the bytes after it).
    """
    block = os.fstatvfs(dst).f_bsize
    if src_offset % block or dst_offset % block:
        return False
    whole = length - length % block
    try:
        if whole:
            fcntl.ioctl(dst, FICLONERANGE, struct.pack("qQQQ", src, src_offset, whole, dst_offset))
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM,
                         errno.EBADF, errno.ETXTBSY):
            return False
        raise
    copy_range(src, src_offset + whole, dst, dst_offset + whole, length - whole)
    return True


def copy_range(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> None:
    """Copy ``length`` bytes between open files at the given offsets, in the kernel where it can
    (:class:`~ptmpack.format.digest.KernelCopier`: ``copy_file_range``, which shares blocks on XFS and btrfs when
    the offsets are block-aligned, then ``sendfile``, then a buffer)."""
    done = KernelCopier().copy(src, dst, length, src_offset, dst_offset)
    if done != length:
        raise OSError(errno.EIO, f"source ended {length - done} bytes early while copying")


class Staging:
    """The file a pull assembles a package in, resumable after a kill.

    ``partial/packages/<manifest hex>.ptm`` holds the package at its final size
    (sparse until written); ``<hex>.journal`` holds, per downloaded blob (a *slot*,
    in the recipe's order of first use), how many of its bytes are written. Each
    write of a download is journaled before the next, so after a kill a pull of
    the same package resumes every download where it stopped. The file is locked
    while a pull uses it: a second pull of the same package waits, then finds it
    gone (published) and starts its own. Published by renaming it to the output
    (a copy when the cache is on another file system).
    """

    MAGIC = b"PTMJRN\x00\x01"
    HEADER = struct.Struct("<8sQQ")

    def __init__(self, path: Path, size: int, slots: int, beside: Path | None = None) -> None:
        self.path, self.size, self.slots = path, size, slots
        self.journal_path = path.with_suffix(JOURNAL_SUFFIX)
        self.fd = self.jfd = -1
        self._out = beside
        """The output a plain temporary file stands beside (:meth:`beside`); None for the cache's staging file."""
        self.published = False

    @property
    def resumable(self) -> bool:
        """False for a plain temporary file beside the output (:meth:`beside`): nothing survives a failure."""
        return self._out is None

    @classmethod
    def beside(cls, out: Path, size: int) -> Staging:
        """A temporary file beside ``out``, not resumable: for a layout's blobs, which are local files already."""
        return cls(temp_name_beside(out, ".ptm"), size, 0, beside=out)

    def open(self) -> Staging:
        """Create or take over the staging file (waiting for a pull that holds it); keep what its journal says."""
        if self._out is not None:
            self.fd = create_temp_file(self.path, self._out)  # the caller's try removes it
            os.ftruncate(self.fd, self.size)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the pull that held it published it meanwhile: make a new one
        self.fd = fd
        self.jfd = os.open(self.journal_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        header = self.HEADER.pack(self.MAGIC, self.size, self.slots)
        length = self.HEADER.size + 8 * self.slots
        if os.pread(self.jfd, self.HEADER.size, 0) != header or os.fstat(self.jfd).st_size != length:
            # nothing journaled: every byte is written again (spans cover the file), so the old bytes stay
            # until then; truncating to 0 would make ext4 (auto_da_alloc) flush the whole file when closed
            os.pwrite(self.jfd, header + bytes(8 * self.slots), 0)
            os.ftruncate(self.jfd, length)
        os.ftruncate(self.fd, self.size)
        return self

    def target(self, slot: int, offset: int) -> BlobTarget:
        """Where download ``slot`` writes (at ``offset`` of the package), resuming from its journaled bytes."""
        if not self.resumable:
            return BlobTarget(self.fd, offset)
        at = self.HEADER.size + 8 * slot
        kept = struct.unpack("<Q", os.pread(self.jfd, 8, at))[0]
        return BlobTarget(self.fd, offset, kept, journal=lambda n: os.pwrite(self.jfd, struct.pack("<Q", n), at))

    @classmethod
    def journaled(cls, path: Path) -> int:
        """Bytes the journal beside staging file ``path`` records as downloaded."""
        data = path.with_suffix(JOURNAL_SUFFIX).read_bytes()[cls.HEADER.size:]
        return sum(struct.unpack(f"<{len(data) // 8}Q", data[: len(data) // 8 * 8]))

    def publish(self, out: Path) -> None:
        """Make the (verified) staging file ``out``; the journal goes first.

        First: once the staging file is renamed away, the next pull of the same package
        creates a new one at that path, and must not find this journal there. Once
        published, the paths are no longer this pull's (:meth:`discard` leaves them).
        """
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal_path)
        self.published = True
        try:
            os.replace(self.path, out)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with atomic_file(out, force=True) as f:  # the pull checked the target before it started
                copy_range(self.fd, 0, f.fileno(), 0, self.size)
            os.unlink(self.path)

    def discard(self) -> None:
        """Remove the staging file and its journal (a failed pull leaves nothing to resume)."""
        for p in () if self.published else (self.path, self.journal_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        self.close()

    def close(self) -> None:
        """Release the files (kept for the next pull to resume) and the lock."""
        for fd in (self.jfd, self.fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.jfd = -1
