"""Unpack a ``.ptm`` into a package tree: every digest and tag checked before the tree appears."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import IntegrityError
from ptmpack.format import spec
from ptmpack.format.atomic import atomic_dir
from ptmpack.format.digest import KernelCopier
from ptmpack.format.manifest import EntryRecord
from ptmpack.format.reader import PARALLEL_HASH_MIN, PackageReader
from ptmpack.reports import UnpackReport
from ptmpack.storage.protect import check_signature, unlocker

Progress = Callable[[int], None]


def unpack_file(package: Path, target: Path, *, opener: Opener | None = None,
                pubkey: Ed25519PublicKey | None = None, force: bool = False, progress: Progress | None = None,
                workers: int = 2, finish: Callable[[Path], object] | None = None) -> UnpackReport:
    """Unpack a ``.ptm`` into the directory ``target`` atomically.

    With ``pubkey`` the signature is checked before anything is written. Every
    entry's SHA-256 (and, when encrypted, every chunk's tag) is checked before the
    directory appears; on any failure nothing is left at ``target``. The digests are
    checked even under encryption: GCM is not key-committing, so any holder of the
    data key could forge chunks that keep their tags. ``finish``, when given, transforms the
    complete tree (still private) before it is published.

    Raises:
        IntegrityError, KeyAccessError, UnsupportedError: a bad package, key or signature.
        UsageError: the target exists without ``force``.
    """
    progress = progress or (lambda n: None)
    with PackageReader(Path(package), unlock=unlocker(opener), workers=workers) as reader:
        if pubkey is not None:
            sig = reader.signature()
            if sig is None:
                raise IntegrityError(f"{package} is not signed, but a signature by a given public key is required")
            check_signature(sig, reader.header.package_id, pubkey)
        with atomic_dir(Path(target), force=force) as tmp:
            total = _extract(reader, tmp, progress, workers)
            if finish is not None:
                finish(tmp)
        return UnpackReport(str(target), len(reader.entries), total)


def _extract(reader: PackageReader, root: Path, progress: Progress, workers: int) -> int:
    """Write every entry under ``root``; return the bytes written once every digest has been checked.

    Raw entries are copied by the kernel (``copy_file_range``) from the package while the
    worker threads hash the same bytes from the reader's map, several entries at once;
    small ones are written from the map and hashed inline. Chunked entries are decoded
    (and their tags checked) by :meth:`PackageReader.iter_entry`.
    """
    made = {str(root)}
    for d in spec.SKELETON_DIRS:
        _makedirs(os.path.join(root, *d.split("/")), made)
    umask = current_umask()
    copier = KernelCopier()
    pending: deque[tuple[EntryRecord, cf.Future[bytes]]] = deque()
    total = 0
    src = reader.fileno()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    with cf.ThreadPoolExecutor(max(1, workers)) as pool:
        view = reader.map_view()
        try:
            for e in reader.checked_entries():  # each header read once: layout, fields and padding checked
                dest = os.path.join(root, *e.path.split("/"))
                parent = os.path.dirname(dest)
                if parent not in made:
                    _makedirs(parent, made)
                mode = 0o755 if e.executable else 0o644
                fd = os.open(dest, flags, mode)
                try:
                    if e.codec:
                        for block in reader.iter_entry(e):
                            _write_all(fd, block)
                            progress(len(block))
                    elif e.raw_length < PARALLEL_HASH_MIN:
                        with view[e.data_offset: e.data_offset + e.raw_length] as part:
                            if hashlib.sha256(part).digest() != e.sha256:
                                raise IntegrityError(f"{e.path}: sha256 mismatch: the entry is corrupt or was altered")
                            _write_all(fd, part)
                        progress(e.raw_length)
                    else:
                        while len(pending) >= 2 * max(1, workers):
                            _settle(*pending.popleft(), progress)
                        pending.append((e, pool.submit(reader.raw_digest, e)))
                        if copier.copy(src, fd, e.raw_length, e.data_offset, 0) != e.raw_length:
                            raise IntegrityError(f"{e.path}: the package ends inside the entry (truncated)")
                    if mode & umask:
                        os.fchmod(fd, mode)
                finally:
                    os.close(fd)
                total += e.raw_length
            while pending:
                _settle(*pending.popleft(), progress)
        finally:
            view.release()
            for _, fut in pending:
                fut.cancel()
    return total


def _settle(e: EntryRecord, fut: cf.Future[bytes], progress: Progress) -> None:
    if fut.result() != e.sha256:
        raise IntegrityError(f"{e.path}: sha256 mismatch: the entry is corrupt or was altered")
    progress(e.raw_length)


def _makedirs(path: str, made: set[str]) -> None:
    os.makedirs(path, exist_ok=True)
    while path not in made:
        made.add(path)
        path = os.path.dirname(path)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (no window where it is 0)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old
