"""The private working tree of one ``compress`` run, locked while it lives, and the clean-up of dead runs' trees.

A run works in ``.ptmpack-compress-XXXXXXXX/`` beside its target (so the final rename stays on
one file system) and removes it however it ends — except when the process is killed outright
(SIGKILL, the OOM killer, a power cut): then the plaintext working tree stays behind, which
matters for an encrypted input (docs/SECURITY.md). So every run holds an exclusive ``flock`` on
``.ptmpack-compress-*/lock`` for its whole life (the kernel drops it when the process dies,
however it dies), and the next ``compress`` writing to the same folder removes the working
trees of ptmpack's own that are stale: named ``.ptmpack-compress-*``, older than
:data:`STALE_SECONDS`, and with a lock no live process holds (or, for a run killed between
creating the folder and taking the lock, no lock file at all).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PREFIX = ".ptmpack-compress-"
LOCK = "lock"
STALE_SECONDS = 60.0
"""A working tree younger than this is never touched (its run may be taking its lock right now)."""


@contextlib.contextmanager
def working_tree(parent: Path) -> Iterator[Path]:
    """A fresh locked working folder in ``parent`` (stale ones removed first); removed on exit.

    Yields the folder; the run's tree goes inside it.
    """
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent)
    scratch = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    fd = os.open(scratch / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        os.close(fd)


def remove_stale(parent: Path, *, now: float | None = None) -> list[Path]:
    """Remove the working trees in ``parent`` that no live ``compress`` owns; returns those removed."""
    now = time.time() if now is None else now
    removed = []
    for path in sorted(parent.glob(f"{PREFIX}*")):
        try:
            if not path.is_dir() or path.is_symlink() or now - path.lstat().st_mtime < STALE_SECONDS:
                continue
        except OSError:
            continue
        if _owned_by_a_live_run(path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _owned_by_a_live_run(path: Path) -> bool:
    """Whether a process holds the lock of working tree ``path`` (a missing lock file: no owner)."""
    try:
        fd = os.open(path / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # not ours to judge (a link, no permission): leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the lock taken just now
    return False
