"""Scan a package tree on disk into the list of files to pack, enforcing SPEC §1.

Links and special files are refused rather than followed: a package must not
carry, or be tricked into reading, anything outside its own tree.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ptmpack.errors import InvalidTreeError
from ptmpack.format import spec
from ptmpack.format.paths import check_entry_path, check_unique_paths

REQUIRED_FILES = ("Meta-info/managementinfo.json", "Meta-info/technicalinfo.json")


@dataclass(frozen=True)
class SourceFile:
    """A regular file of the tree: its entry path, location on disk, size and kind."""

    path: str
    source: Path
    size: int
    kind: spec.Kind
    executable: bool


def scan_tree(root: Path) -> list[SourceFile]:
    """List the files of the package tree at ``root`` in a stable order (Meta-info, Model, Program; then by path).

    Raises:
        InvalidTreeError: ``root`` is not a directory, a required part is missing, a
            path breaks the rules, or the tree holds a link or a special file.
    """
    if not root.is_dir():
        raise InvalidTreeError(f"{root} is not a directory", hint="pass the package tree made by 'ptmpack init'")
    top = {p.name for p in root.iterdir()}
    for name in top - set(spec.KIND_ROOTS):
        raise InvalidTreeError(f"{root / name}: only Model/, Program/ and Meta-info/ may stand at the top of a package")
    if "Model" not in top:
        raise InvalidTreeError(f"{root}: the Model/ directory is missing", hint="run 'ptmpack init'")
    files: list[SourceFile] = []
    for name in sorted(top):
        _walk(root / name, name, files)
    present = {f.path for f in files}
    for required in REQUIRED_FILES:
        if required not in present:
            raise InvalidTreeError(f"{root}: {required} is missing", hint="run 'ptmpack init' to write a template")
    check_unique_paths(f.path for f in files)
    order = {spec.Kind.META: 0, spec.Kind.MODEL: 1, spec.Kind.PROGRAM: 2}
    files.sort(key=lambda f: (order[f.kind], f.path))
    if len(files) > spec.MAX_ENTRIES:
        raise InvalidTreeError(f"{root}: more than {spec.MAX_ENTRIES} files")
    return files


def _walk(directory: Path, rel: str, out: list[SourceFile]) -> None:
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidTreeError(f"{directory}: expected a directory, found {_describe(st.st_mode)}")
    with os.scandir(directory) as it:
        children = sorted(it, key=lambda e: e.name)
    for child in children:
        child_rel = f"{rel}/{child.name}"
        st = child.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            _walk(Path(child.path), child_rel, out)
        elif stat.S_ISREG(st.st_mode):
            out.append(
                SourceFile(
                    path=check_entry_path(child_rel),
                    source=Path(child.path),
                    size=st.st_size,
                    kind=spec.KIND_ROOTS[rel.split("/", 1)[0]],
                    executable=bool(st.st_mode & stat.S_IXUSR),
                )
            )
        else:
            raise InvalidTreeError(f"{child.path}: {_describe(st.st_mode)} not allowed in a package (regular files only)")


def _describe(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link is"
    if stat.S_ISFIFO(mode):
        return "a FIFO is"
    if stat.S_ISSOCK(mode):
        return "a socket is"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file is"
    return "a special file is"
