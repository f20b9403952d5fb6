"""The path rules of SPEC §1, shared by the writer (on the source tree) and the reader (on manifests).

A valid entry path is relative, ``/``-separated, UTF-8 in NFC, at most 4096 bytes
(each component at most 255),
starts with ``Model/``, ``Program/`` or ``Meta-info/``, and has no empty, ``.`` or
``..`` component, no backslash, NUL or other control character, and no drive
letter. Paths are unique case-insensitively and no path is a directory of another.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from ptmpack.errors import InvalidTreeError
from ptmpack.format import spec

MAX_COMPONENT_BYTES = 255


def check_entry_path(path: str) -> str:
    """Return ``path`` if it obeys the rules, else raise.

    Raises:
        InvalidTreeError: naming the path and the rule it breaks.
    """
    def bad(why: str) -> InvalidTreeError:
        return InvalidTreeError(f"invalid entry path {path!r}: {why}")

    if not path:
        raise bad("empty")
    if len(path.encode("utf-8", "surrogatepass")) > spec.MAX_PATH_BYTES:
        raise bad(f"longer than {spec.MAX_PATH_BYTES} bytes")
    if any(unicodedata.category(c) == "Cc" for c in path):
        raise bad("contains a control character")
    if "\\" in path:
        raise bad("contains a backslash")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in path):
        raise bad("not valid UTF-8")
    if unicodedata.normalize("NFC", path) != path:
        raise bad("not in Unicode NFC form")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise bad("absolute")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise bad("has an empty, '.' or '..' component")
    if any(len(p.encode("utf-8")) > MAX_COMPONENT_BYTES for p in parts):
        raise bad(f"has a component longer than {MAX_COMPONENT_BYTES} bytes (the common file-system limit)")
    if len(parts) < 2 or parts[0] not in spec.KIND_ROOTS:
        raise bad("must lie under Model/, Program/ or Meta-info/")
    return path


def check_unique_paths(paths: Iterable[str]) -> None:
    """Refuse duplicate paths (case-insensitively) and a file that is also a directory.

    Raises:
        InvalidTreeError: naming the clashing paths.
    """
    seen: dict[str, str] = {}
    for p in paths:
        key = p.casefold()
        if key in seen:
            raise InvalidTreeError(f"paths {seen[key]!r} and {p!r} clash (paths must be unique ignoring case)")
        seen[key] = p
    for key, p in seen.items():
        parts = key.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in seen:
                raise InvalidTreeError(f"{seen[parent]!r} is a file but {p!r} needs it to be a directory")
