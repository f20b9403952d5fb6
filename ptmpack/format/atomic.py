"""Write outputs next to their target under a temporary name and rename on success.

A failed or killed run leaves nothing at the target path; temporary names start
with ``.ptmpack-tmp-`` so they are easy to recognise and clean up. Replacing an
existing directory (``--force``) swaps the old and new trees in one step with
``renameat2(RENAME_EXCHANGE)`` on Linux, so a kill at any moment leaves one whole
tree at the target; elsewhere it falls back to two renames, between which the
target is briefly absent (the old tree then waits under a ``.ptmpack-tmp-`` name).
Errors the environment causes (a full disk, a read-only or forbidden target) come
out as :class:`ptmpack.errors.EnvironmentFault` naming the target.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ptmpack.errors import EnvironmentFault, UsageError, raise_environment_fault

TEMP_PREFIX = ".ptmpack-tmp-"


def check_target(target: Path, *, force: bool, want_dir: bool) -> None:
    """Refuse an existing target unless ``force``, and a target of the wrong type always.

    Raises:
        UsageError: the target exists (without force), or is a file where a directory
            is wanted or the other way round, or its parent directory does not exist.
    """
    if not target.parent.is_dir():
        raise UsageError(f"{target.parent} does not exist", hint="create the output directory first")
    if target.is_symlink() or target.exists():
        if not force:
            raise UsageError(f"{target} already exists", hint="pass --force to replace it")
        if target.is_symlink() or target.is_dir() != want_dir:
            kind = "a directory" if want_dir else "a file"
            raise UsageError(f"{target} exists and is not {kind}; refusing to replace it")


def check_free_space(needs: dict[Path, int]) -> None:
    """Refuse, before writing, when the file systems of ``needs`` (path -> bytes to write there) lack the room.

    Paths on the same file system are added up; a path that does not exist yet
    is measured at its nearest existing parent. Declared sizes come from outside
    (a registry's manifest), so this is what stops a layer declared at 2^62 bytes
    from filling the disk.

    Raises:
        EnvironmentFault: some file system has fewer free bytes than asked for (names the folders).
    """
    by_device: dict[int, tuple[int, int, list[str]]] = {}
    for folder, size in needs.items():
        probe = Path(folder)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        st = os.statvfs(probe)
        total, _, names = by_device.get(probe.stat().st_dev, (0, 0, []))
        by_device[probe.stat().st_dev] = (total + size, st.f_bavail * st.f_frsize, [*names, f"{size} bytes in {folder}"])
    for total, free, names in by_device.values():
        if total > free:
            raise EnvironmentFault(f"not enough free space: {' and '.join(names)}, but only {free} bytes are free there",
                                   hint="free some space, or point the cache (XDG_CACHE_HOME) or the output elsewhere")


def temp_name_beside(target: Path, suffix: str = "") -> Path:
    """A fresh temporary name in ``target``'s folder; nothing is created.

    Callers create it (:func:`create_temp_file`, :func:`create_temp_dir`) *inside* the
    ``try`` that removes it: a Ctrl-C that lands just after the creation then still
    finds the name to remove (``mkstemp`` returns it only after the file exists, so an
    interrupt in between leaked it).
    """
    return target.parent / f"{TEMP_PREFIX}{secrets.token_hex(6)}{suffix}"


def create_temp_file(path: Path, target: Path) -> int:
    """Create the private (0600) temporary file ``path`` for writing ``target``; its descriptor.

    Raises:
        EnvironmentFault: the folder refuses new files for any reason (full, read-only, forbidden, or a file
            system such as /proc that creates none); the message names ``target``, never the temporary name.
    """
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        raise EnvironmentFault(f"{target}: cannot write it: {exc.strerror or exc}",
                               hint=f"the file system refuses new files in {target.parent}") from None


def replace_file(target: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``target`` by a file holding ``data`` with permissions ``mode``, atomically (a temporary beside it,
    then a rename); the temporary never outlives a failure or an interrupt.

    Raises:
        EnvironmentFault: the folder refuses the temporary file. OSError: writing or renaming failed.
    """
    tmp = temp_name_beside(target)
    try:
        with os.fdopen(create_temp_file(tmp, target), "wb") as f:
            f.write(data)
        if mode != 0o600:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def create_temp_dir(path: Path, target: Path) -> None:
    """Create the private (0700) temporary folder ``path`` for writing ``target``; like :func:`create_temp_file`."""
    try:
        os.mkdir(path, 0o700)
    except OSError as exc:
        raise EnvironmentFault(f"{target}: cannot write it: {exc.strerror or exc}",
                               hint=f"the file system refuses new folders in {target.parent}") from None


@contextlib.contextmanager
def atomic_file(target: Path, *, force: bool) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``target`` only if the block completes."""
    check_target(target, force=force, want_dir=False)
    tmp = temp_name_beside(target)
    try:
        with os.fdopen(create_temp_file(tmp, target), "w+b") as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise_environment_fault(exc, target)
        raise


@contextlib.contextmanager
def atomic_dir(target: Path, *, force: bool) -> Iterator[Path]:
    """Yield an empty directory that becomes ``target`` only if the block completes.

    With ``force`` an existing target directory is moved aside, replaced, then removed.
    """
    check_target(target, force=force, want_dir=True)
    tmp = temp_name_beside(target)
    try:
        create_temp_dir(tmp, target)
        yield tmp
        os.chmod(tmp, 0o755)
        if target.exists():
            if exchange(tmp, target):
                shutil.rmtree(tmp)  # now the old tree
                return
            old = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=target.parent))
            os.replace(target, old / "old")
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise_environment_fault(exc, target)
        raise


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28 or another libc
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the system cannot (another OS, an old libc, a file system
    without support); the caller then falls back to two renames.
    """
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))
