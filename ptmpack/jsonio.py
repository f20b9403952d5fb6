"""One strict JSON loader and one typed field accessor for every document read from a package.

The manifest, the metadata files, ``Model/residual.json`` and ``Model/graph.json`` are all
parsed by :func:`loads_strict`: strict UTF-8, no duplicate keys (two readers keeping
different copies would see different documents), no NaN/Infinity, integers of at most 20
digits (u64 fits), and at most :data:`MAX_DEPTH` levels of nesting, so a hostile document
fails with the caller's error class (and so its exit code) instead of a RecursionError.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptmpack.errors import IntegrityError, InvalidTreeError, PtmError

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects a package document may have."""
MAX_INT_DIGITS = 20

ErrorFactory = Callable[[str], PtmError]
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(text)} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:32]} overflows a double")
    return value


def _reject_constant(token: str) -> None:
    raise ValueError(f"{token} is not valid JSON")


def _depth_ok(raw: str, limit: int) -> bool:
    """Whether no array/object nests deeper than ``limit`` (brackets inside strings are ignored)."""
    depth = 0
    for token in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', raw):
        ch = token.group()
        if ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def loads_strict(raw: bytes, where: str, *, error: ErrorFactory = IntegrityError, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``raw`` as strict JSON; any problem raises ``error(message)`` naming ``where``.

    Raises:
        the ``error`` class (IntegrityError by default): not UTF-8, not JSON, duplicate keys,
        NaN/Infinity, an integer over 20 digits, or nesting over ``max_depth``.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not UTF-8 JSON (invalid byte at {exc.start})") from None
    if not _depth_ok(text, max_depth):
        raise error(f"{where}: nested deeper than {max_depth} levels")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_int=_parse_int,
                          parse_float=_parse_float, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise error(f"{where}: not valid JSON: {exc}") from None


def is_int(value: object) -> bool:
    """A JSON integer (``True`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


class Fields:
    """Typed access to one JSON object; every failure is ``error(message)`` naming the JSON path."""

    def __init__(self, doc: object, where: str, error: ErrorFactory = IntegrityError) -> None:
        if not isinstance(doc, dict):
            raise error(f"{where}: expected a JSON object")
        self.doc: dict[str, Any] = doc
        self.where, self.error = where, error

    def bad(self, key: str, why: str) -> PtmError:
        """The error for field ``key``."""
        return self.error(f"{self.where}.{key}: {why}")

    def get(self, key: str, types: type | tuple[type, ...]) -> Any:
        """The value of a required field, which must be of ``types`` (booleans are never ints)."""
        if key not in self.doc:
            raise self.error(f"{self.where}: missing field {key!r}")
        value = self.doc[key]
        wanted = types if isinstance(types, tuple) else (types,)
        if isinstance(value, bool) and bool not in wanted:
            raise self.bad(key, f"expected {'/'.join(t.__name__ for t in wanted)}, got a boolean")
        if not isinstance(value, wanted):
            raise self.bad(key, f"expected {'/'.join(t.__name__ for t in wanted)}, got {type(value).__name__}")
        return value

    def optional(self, key: str, types: type | tuple[type, ...]) -> Any:
        """The value of an optional field (absent or null → None)."""
        return None if self.doc.get(key) is None else self.get(key, types)

    def uint(self, key: str, limit: int) -> int:
        """A required integer in ``[0, limit)``."""
        value = self.get(key, int)
        if not 0 <= value < limit:
            raise self.bad(key, f"{value} out of range")
        return value

    def sha256_hex(self, key: str, *, optional: bool = False) -> str | None:
        """A lowercase hex SHA-256 (64 characters)."""
        value = self.optional(key, str) if optional else self.get(key, str)
        if value is not None and not _HEX64.fullmatch(value):
            raise self.bad(key, "is not a lowercase hex sha256")
        return value

    def uints(self, key: str) -> list[int]:
        """A list of non-negative integers."""
        values = self.get(key, list)
        if not all(is_int(v) and v >= 0 for v in values):
            raise self.bad(key, "is not a list of non-negative integers")
        return values

    def strs(self, key: str) -> list[str]:
        """A list of strings."""
        values = self.get(key, list)
        if not all(isinstance(v, str) for v in values):
            raise self.bad(key, "is not a list of strings")
        return values

    def enum(self, key: str, cls: type[enum.Enum]) -> Any:
        """A string naming a member of ``cls``."""
        value = self.get(key, str)
        try:
            return cls(value)
        except ValueError:
            raise self.bad(key, f"has unknown value {value!r}") from None

    def obj(self, key: str) -> Fields:
        """A nested object, with the same error class."""
        return Fields(self.get(key, dict), f"{self.where}.{key}", self.error)

    def objs(self, key: str) -> list[Fields]:
        """A list of objects."""
        return [Fields(v, f"{self.where}.{key}[{i}]", self.error) for i, v in enumerate(self.get(key, list))]


MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest JSON file read from a checkpoint or a working tree (configs, tokenizer settings)."""


def read_object_file(path: Path, where: str | None = None, *, error: ErrorFactory = InvalidTreeError,
                     max_bytes: int = MAX_FILE_BYTES) -> dict[str, Any]:
    """A JSON object from a file on disk (a checkpoint's config.json, a tree's metadata), strictly parsed.

    Raises:
        the ``error`` class (InvalidTreeError by default): missing, unreadable, too large, not
        strict JSON, or not an object.
    """
    where = where or str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise error(f"{where}: missing") from None
    except OSError as exc:
        raise error(f"{where}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > max_bytes:
        raise error(f"{where}: larger than {max_bytes} bytes")
    doc = loads_strict(raw, where, error=error)
    if not isinstance(doc, dict):
        raise error(f"{where}: not a JSON object")
    return doc
