"""How every importer publishes a new package tree: built privately, then put in place whole.

An importer writes into a scratch directory beside the destination that already holds the
package skeleton (SPEC §1); only when everything is written and validated does the tree
appear at the destination, by one rename, or, into an existing empty directory, by one
rename per top-level entry (the directory is kept, so a shell whose working directory it is
keeps working). On any failure, including an interrupt, nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ptmpack.errors import UsageError
from ptmpack.format.spec import SKELETON_DIRS


def check_destination(dest: Path) -> bool:
    """Whether ``dest`` exists (as an empty directory); anything else that exists is refused.

    Raises:
        UsageError: ``dest`` is a file, a link, or a directory that is not empty.
    """
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise UsageError(f"{dest}: exists and is not a plain directory", hint="choose a new path for the package tree")
    if dest.is_dir():
        if any(dest.iterdir()):
            raise UsageError(f"{dest}: directory is not empty", hint="choose a new or empty directory")
        return True
    return False


def _scratch_dir(parent: Path, stem: str) -> Path:
    """A new hidden directory in ``parent`` (created with the umask's permissions, unlike mkdtemp)."""
    while True:
        path = parent / f".{stem}.ptmpack-init-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


@contextlib.contextmanager
def new_tree(dest: Path) -> Iterator[Path]:
    """Yield a private directory holding the package skeleton; it becomes ``dest`` when the block completes.

    Raises:
        UsageError: as :func:`check_destination` (checked before and again at publication).
    """
    existed = check_destination(dest)
    target = dest.absolute()
    if not existed:
        target.parent.mkdir(parents=True, exist_ok=True)
    scratch = _scratch_dir(target if existed else target.parent, target.name)
    try:
        for d in SKELETON_DIRS:
            (scratch / d).mkdir(parents=True, exist_ok=True)
        yield scratch
        _publish(scratch, target, existed)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _publish(scratch: Path, target: Path, existed: bool) -> None:
    if not existed:
        check_destination(target)
        scratch.rename(target)
        return
    moved: list[Path] = []
    try:
        for child in sorted(scratch.iterdir()):
            child.rename(target / child.name)
            moved.append(target / child.name)
        scratch.rmdir()
    except BaseException:
        for path in moved:
            shutil.rmtree(path, ignore_errors=True)
        raise


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write a new JSON document (UTF-8, indented, never over an existing file)."""
    with open(path, "x", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def listing(files: Iterable[str]) -> list[str]:
    """What an import created: every directory (ending in ``/``) and file, as sorted relative POSIX paths."""
    files = set(files)
    dirs = {p.as_posix() + "/" for f in (*files, *(d + "/x" for d in SKELETON_DIRS))
            for p in Path(f).parents if p != Path(".")}
    return sorted(dirs | files)
