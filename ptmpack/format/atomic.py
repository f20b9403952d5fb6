"""Write outputs next to their target under a temporary name and rename on success.

A failed or killed run leaves nothing at the target path; temporary names start
with ``.ptmpack-tmp-`` so they are easy to recognise and clean up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ptmpack.errors import UsageError

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


@contextlib.contextmanager
def atomic_file(target: Path, *, force: bool) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``target`` only if the block completes."""
    check_target(target, force=force, want_dir=False)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(target: Path, *, force: bool) -> Iterator[Path]:
    """Yield an empty directory that becomes ``target`` only if the block completes.

    With ``force`` an existing target directory is moved aside, replaced, then removed.
    """
    check_target(target, force=force, want_dir=True)
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=target.parent))
            os.replace(target, old / "old")
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
