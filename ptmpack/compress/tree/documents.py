"""The JSON documents of a package tree (config.json, technicalinfo.json, weight maps): one read, one write.

Reads are strict (an object, or :class:`~ptmpack.errors.InvalidTreeError`); writes go to a
temporary file in the same folder and are renamed over the target, so a crash never leaves
half a document.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ptmpack.errors import InvalidTreeError
from ptmpack.jsonio import read_object_file


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        InvalidTreeError: missing, unreadable or not an object.
    """
    return read_object_file(Path(path))


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` (indented UTF-8 JSON) to ``path`` through a temp file and a rename.

    Raises:
        InvalidTreeError: the file cannot be written.
    """
    write_bytes(Path(path), (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (temp file in the same folder, then rename).

    Raises:
        InvalidTreeError: the file cannot be written.
    """
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InvalidTreeError(f"{path}: cannot write ({exc})") from None
