"""Fast, exact checks for reading manifests and scanning trees with many entries.

Each function here accepts exactly what the careful code in :mod:`ptmpack.jsonio` and
:mod:`ptmpack.format.paths` accepts, at a fraction of the cost, and hands anything it cannot
decide quickly to that code: a manifest with 20,000 entries is read in a few C calls rather
than a Python callback per number and token, and a tree of 20,000 ASCII file names is checked
with one pattern match each (tests/format/test_fastpaths.py holds both sides to the same answers).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ptmpack.errors import IntegrityError
from ptmpack.format import spec
from ptmpack.jsonio import MAX_DEPTH, MAX_INT_DIGITS, loads_strict

_PLAIN_COMPONENT = r"(?!\.\.?(?:/|\Z))[ -.0-\[\]-~]{1,255}"
PLAIN_PATH = re.compile(rf"(?:Model|Program|Meta-info)(?:/{_PLAIN_COMPONENT})+\Z")
"""Paths of printable ASCII that obey every rule of ``check_entry_path`` (which the others go through).

ASCII is always NFC, has no control character here, and a root of Model, Program or Meta-info
rules out a drive letter; the rest (no backslash, no empty, ``.`` or ``..`` component, components
of at most 255 bytes) is in the pattern. The length limit is checked beside it."""
MAX_INT = 10**MAX_INT_DIGITS


def plain_entry_path(path: str) -> bool:
    """True when ``path`` is printable ASCII and obeys the path rules (a fast, exact subset of them)."""
    return len(path) <= spec.MAX_PATH_BYTES and PLAIN_PATH.match(path) is not None


def load_manifest_json(raw: bytes) -> Any:
    """Parse the manifest at C speed, refusing what :func:`ptmpack.jsonio.loads_strict` refuses.

    Invalid UTF-8 or JSON, duplicate keys, NaN/Infinity, numbers that overflow a double and
    nesting beyond the interpreter's
    recursion limit send the bytes to ``loads_strict`` for its message. The two limits that
    ``loads_strict`` checks token by token (numbers of at most 20 digits, nesting of at most
    ``MAX_DEPTH``) are kept without that cost: every field the format defines is type- and
    range-checked where it is read (an integer field out of range, or a list or object where
    a number belongs, is refused there), and :func:`check_unknown` applies both limits to the
    values of fields it does not define.
    """
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_refuse,
                          parse_float=_finite)
    except (ValueError, RecursionError):  # UnicodeError and JSONDecodeError are ValueErrors
        return loads_strict(raw, "manifest")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise ValueError("duplicate key")
    return doc


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} overflows a double")
    return value


def _refuse(token: str) -> None:
    raise ValueError(f"{token} is not valid JSON")


def check_unknown(doc: dict[str, Any], known: frozenset[str], depth: int, where: str) -> None:
    """Apply the strict loader's limits to the fields of ``doc`` (itself at nesting ``depth``)
    that are not in ``known``: at most ``MAX_DEPTH`` levels, integers of at most 20 digits,
    finite numbers.

    Raises:
        IntegrityError: a value breaks a limit.
    """
    if len(doc) > len(known) or not known.issuperset(doc):
        for key in doc.keys() - known:
            _check_value(doc[key], depth, f"{where}.{key}")


def _check_value(value: Any, depth: int, where: str) -> None:
    if isinstance(value, (dict, list)):
        if depth + 1 > MAX_DEPTH:
            raise IntegrityError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        for v in value.values() if isinstance(value, dict) else value:
            _check_value(v, depth + 1, where)
    elif type(value) is int and not -MAX_INT < value < MAX_INT:
        raise IntegrityError(f"{where}: integer of more than {MAX_INT_DIGITS} digits")
    elif type(value) is float and not math.isfinite(value):
        raise IntegrityError(f"{where}: number overflows a double")
