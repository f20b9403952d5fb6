"""Metadata documents of a package: load, validate against the shipped JSON Schemas, template.

``Meta-info/managementinfo.json`` and ``Meta-info/technicalinfo.json`` (SPEC §2) are
checked against ``schemas/<name>.schema.json`` (draft 2020-12), shipped inside the
package as ``ptmpack/schemas``. A failure is one :class:`MetadataError` naming the
file and the JSON path of the most relevant problem (``$.task.type``), so a user can
go straight to the field to fix.

The ``date-time`` and ``uri`` formats are checked here rather than by jsonschema's
optional format libraries, so the result does not depend on what else is installed.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Iterable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptmpack.errors import InvalidTreeError, MetadataError, UsageError
from ptmpack.jsonio import loads_strict
from ptmpack.metadata.clock import now_rfc3339

if TYPE_CHECKING:  # jsonschema loads only when a document is validated (it costs ~0.1 s at start-up)
    from jsonschema import Draft202012Validator, FormatChecker
    from jsonschema.exceptions import ValidationError

META_DIR = "Meta-info"
MANAGEMENT_FILE = f"{META_DIR}/managementinfo.json"
TECHNICAL_FILE = f"{META_DIR}/technicalinfo.json"
MANAGEMENT_SCHEMA = "managementinfo"
TECHNICAL_SCHEMA = "technicalinfo"

MAX_METADATA_BYTES = 16 * 1024 * 1024
"""Largest metadata file read; real ones are a few kilobytes."""

_SCHEMA_NAME = re.compile(r"[a-z0-9_-]+")
_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))",
    re.ASCII,
)
# RFC 3986 absolute URI: a scheme, then only unreserved, reserved or percent-encoded characters.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_JSONPATH_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _is_rfc3339_date_time(value: object) -> bool:
    """RFC 3339 §5.6 ``date-time``: full date, ``T``, full time with fraction, and an offset."""
    if not isinstance(value, str):
        return True  # formats only constrain strings
    m = _DATE_TIME.fullmatch(value)
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        dt.date(year, month, day)
    except ValueError:
        return False
    offset_ok = m.group(7) is None or (int(m.group(7)) <= 23 and int(m.group(8)) <= 59)
    return hour <= 23 and minute <= 59 and second <= 60 and offset_ok  # 60: a leap second


def _is_uri(value: object) -> bool:
    """An absolute URI per RFC 3986 (scheme required, no spaces or raw non-ASCII)."""
    return not isinstance(value, str) or _URI.fullmatch(value) is not None


def _format_checker() -> FormatChecker:
    from jsonschema import FormatChecker

    checker = FormatChecker()
    checker.checks("date-time")(_is_rfc3339_date_time)
    checker.checks("uri")(_is_uri)
    return checker


@cache
def _schema(name: str) -> dict[str, Any]:
    if not _SCHEMA_NAME.fullmatch(name):
        raise UsageError(f"invalid metadata schema name {name!r}")
    resource = resources.files("ptmpack").joinpath("schemas", f"{name}.schema.json")
    try:
        text = resource.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"unknown metadata schema {name!r}", hint=f"known: {MANAGEMENT_SCHEMA}, {TECHNICAL_SCHEMA}"
        ) from None
    return json.loads(text)


def load_schema(name: str) -> dict[str, Any]:
    """A copy of the JSON Schema ``ptmpack/schemas/<name>.schema.json`` (read once, then cached).

    Raises:
        UsageError: no schema of that name ships with ptmpack.
    """
    return copy.deepcopy(_schema(name))


@cache
def _validator(name: str) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_schema(name), format_checker=_format_checker())


def json_path(parts: Iterable[str | int]) -> str:
    """Render a path into a document as JSONPath: ``$.inputs[0].shape``, ``$['x-y']``."""
    out = ["$"]
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _JSONPATH_NAME.fullmatch(part):
            out.append(f".{part}")
        else:
            escaped = part.replace("\\", "\\\\").replace("'", "\\'")
            out.append(f"['{escaped}']")
    return "".join(out)


def _locate(error: ValidationError) -> tuple[list[str | int], str]:
    """Where the error is and why; a missing or unexpected field is pointed at by name."""
    parts = list(error.absolute_path)
    instance = error.instance
    if error.validator == "required" and isinstance(instance, dict):
        missing = [k for k in error.validator_value if k not in instance]
        if missing:
            # jsonschema yields one error per missing field, each naming it: report that one, not always the first
            named = next((k for k in missing if error.message.startswith(f"{k!r} ")), missing[0])
            return [*parts, named], "required field is missing"
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        schema = error.schema
        known = set(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        extra = sorted(k for k in instance if k not in known and not any(re.search(p, k) for p in patterns))
        if extra:
            return [*parts, extra[0]], "unknown field (extra fields need an 'x-' prefix)"
    if error.validator == "pattern" and "description" in error.schema:
        return parts, f"{_shorten(repr(instance))} is not of the expected form: {error.schema['description']}"
    return parts, _shorten(error.message)


def _shorten(text: str, limit: int = 300) -> str:
    """Cap a message that quotes a (possibly huge) instance."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_document(name: str, doc: object, file: str) -> None:
    """Check ``doc`` against schema ``name``; return ``None`` or raise.

    Every problem is reported at once: jsonschema's ``best_match`` (the shallowest, most
    specific problem) leads, the others follow in document order.

    Raises:
        MetadataError: naming ``file``, the JSON path of each problem and the reason.
        UsageError: ``name`` is not a shipped schema.
    """
    from jsonschema.exceptions import best_match

    errors = list(_validator(name).iter_errors(doc))
    best = best_match(errors)
    if best is not None:
        parts, reason = _locate(best)
        located = [_locate(e) for e in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]) if e is not best]
        raise MetadataError(file, json_path(parts), reason,
                            also=tuple(f"{file}: {json_path(p)}: {r}" for p, r in located))


def check_documents(checks: list[Callable[[], object]]) -> None:
    """Run every check; when several documents fail their schemas, raise one error naming every problem.

    Raises:
        MetadataError: all problems of all documents. Other errors: the first, as raised.
    """
    failed: list[MetadataError] = []
    for check in checks:
        try:
            check()
        except MetadataError as exc:
            failed.append(exc)
    if failed:
        raise MetadataError.combine(failed)


def load_metadata(path: Path, name: str) -> dict[str, Any]:
    """Read a metadata file and validate it against schema ``name``.

    Raises:
        InvalidTreeError: the file is missing or unreadable.
        MetadataError: the file is too large, not strict UTF-8 JSON, or fails the schema.
    """
    file = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_METADATA_BYTES + 1)
    except OSError as exc:
        raise InvalidTreeError(f"{file}: cannot read metadata ({exc.strerror or exc})") from exc
    return parse_metadata(raw, name, file)


def parse_json(raw: bytes, file: str) -> Any:
    """Parse strict metadata JSON: at most :data:`MAX_METADATA_BYTES` of UTF-8, no duplicate keys, no NaN.

    Raises:
        MetadataError: at JSON path ``$``, saying what is wrong.
    """
    if len(raw) > MAX_METADATA_BYTES:
        raise MetadataError(file, "$", f"larger than {MAX_METADATA_BYTES} bytes")
    return loads_strict(raw, file, error=lambda message: MetadataError(file, "$", message.removeprefix(f"{file}: ")))


def parse_metadata(raw: bytes, name: str, file: str) -> dict[str, Any]:
    """Parse metadata bytes (from disk or from a package) and validate them against schema ``name``.

    Raises:
        MetadataError: not strict UTF-8 JSON, or fails the schema.
    """
    doc = parse_json(raw, file)
    validate_document(name, doc, file)
    return doc


def model_id_for(name: str) -> str:
    """Derive a stable ``model_id`` from a model name: a lowercase ASCII slug.

    The same name always gives the same id (``"Qwen2.5 7B"`` -> ``"qwen2.5-7b"``,
    ``"org/My_Model"`` -> ``"org-my_model"``); a name with no ASCII letters or digits
    gets ``model-`` plus 8 hex digits of its SHA-256, so distinct names stay distinct.
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9._]+", "-", ascii_name.lower()).strip("-._")[:128].rstrip("-._")
    return slug or "model-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]


def management_template(name: str, model_id: str | None = None) -> dict[str, Any]:
    """A valid ``managementinfo.json`` to edit: the required fields with placeholder values.

    ``model_id`` defaults to :func:`model_id_for` of ``name``; ``version`` starts at
    0.1.0 and ``provider`` at ``"unknown"``.

    Raises:
        UsageError: the name is empty or the resulting document is invalid
            (e.g. a ``model_id`` that breaks the schema's pattern).
    """
    if not name.strip():
        raise UsageError("the model name must not be empty", hint="pass --name NAME")
    doc = {
        "model_id": model_id if model_id is not None else model_id_for(name),
        "name": name,
        "version": "0.1.0",
        "provider": "unknown",
        "created": now_rfc3339(),
    }
    try:
        validate_document(MANAGEMENT_SCHEMA, doc, MANAGEMENT_FILE)
    except MetadataError as exc:
        raise UsageError(f"cannot make {MANAGEMENT_FILE}: {exc.json_path}: {exc.reason}") from exc
    return doc


def technical_template() -> dict[str, Any]:
    """A valid ``technicalinfo.json`` to edit: a text transformer with placeholder values.

    Nothing is known about the model yet, so the task is ``other`` and the input is
    the usual token-id tensor; ``init --from-hf`` fills real values instead.
    """
    return {
        "framework": "PyTorch",
        "task": {"type": "other", "description": ""},
        "inputs": [{"name": "input_ids", "modality": "text", "dtype": "int64", "shape": [-1, -1]}],
        "outputs": [],
        "ptm_info": {"architecture": ["transformer"]},
    }
