"""Metadata schemas and their validator: templates, every kind of violation, JSON paths, file loading."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from ptmpack.errors import InvalidTreeError, MetadataError, UsageError
from ptmpack.metadata import documents as meta

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = (meta.MANAGEMENT_SCHEMA, meta.TECHNICAL_SCHEMA)
MANAGEMENT_FIELDS = {"model_id", "name", "version", "provider", "created", "description", "license",
                     "computation", "metrics", "tags", "homepage"}


def full_management() -> dict[str, Any]:
    """A managementinfo document with every field of SPEC §2 set."""
    return {
        "model_id": "acme-encoder", "name": "ACME encoder", "version": "1.2.3-rc.1+build.7",
        "provider": "ACME", "created": "2024-05-01T12:30:00+08:00", "description": "An encoder.",
        "license": "Apache-2.0", "computation": "1GFLOPs", "metrics": {"F1-score": 0.91, "perplexity": 12},
        "tags": ["bert", "embedding"], "homepage": "https://example.org/models/acme?x=1#top",
    }


def full_technical() -> dict[str, Any]:
    """A technicalinfo document with every field of SPEC §2 set."""
    return {
        "framework": "PyTorch 2.3", "hardware": "GPU:typeA,GPUmem:8G,CPU:typeC,Mem:8G",
        "environment": "Ubuntu22.04-PYTHON3.11-PyTorch2.3", "config": {"threshold": 0.5, "format": "nchw"},
        "parameters": 22713728, "model_size_bytes": 90856960,
        "task": {"type": "image-classification", "description": "ImageNet classes"},
        "inputs": [{"name": "pixel_values", "modality": "image", "dtype": "float32", "shape": [-1, 3, 224, 224],
                    "preprocess": {"resize": 256}}],
        "outputs": [{"name": "logits", "modality": "image", "dtype": "float32", "shape": [-1, 1000],
                     "preprocess": "softmax"}],
        "converter_config": {"target": "tensorrt", "batch": "dynamic-batch", "max_batch": 32,
                             "preprocess": {"resize_height": 224, "resize_width": 224, "mean": [0.5], "std": [0.5]},
                             "weight_compress": "fp16"},
        "ptm_info": {"architecture": ["vit", "MQA"], "structure": "encoder-only", "num_layers": 12,
                     "num_heads": 12, "num_kv_heads": 1, "hidden_size": 768, "intermediate_size": 3072,
                     "vocab_size": 0, "max_position": 197, "num_blocks": 12, "num_experts": 0},
        "compression": {"quantization": {"method": "rtn", "bits": 8}},
    }


def error_of(name: str, doc: object) -> MetadataError:
    with pytest.raises(MetadataError) as info:
        meta.validate_document(name, doc, "Meta-info/x.json")
    assert info.value.file == "Meta-info/x.json"
    assert info.value.exit_code == 5
    return info.value


def with_change(doc: dict[str, Any], path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    """A deep copy of ``doc`` with the item at ``path`` set to ``value`` (or deleted when ``...``)."""
    out = copy.deepcopy(doc)
    node: Any = out
    for part in path[:-1]:
        node = node[part]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


# --- the schema files ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", SCHEMAS)
def test_schema_files_are_draft_2020_12_with_ids(name: str) -> None:
    schema = meta.load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:ptmpack:schema:v1:{name}"


def test_schemas_ship_inside_the_package_through_a_relative_link() -> None:
    link = REPO / "ptmpack" / "schemas"
    assert link.is_symlink() and os.readlink(link) == "../schemas"
    shipped = resources.files("ptmpack").joinpath("schemas", "technicalinfo.schema.json").read_text("utf-8")
    assert json.loads(shipped) == json.loads((REPO / "schemas" / "technicalinfo.schema.json").read_text("utf-8"))


def test_management_schema_knows_exactly_the_spec_fields() -> None:
    schema = meta.load_schema(meta.MANAGEMENT_SCHEMA)
    assert set(schema["properties"]) == MANAGEMENT_FIELDS
    assert schema["required"] == ["model_id", "name", "version", "provider", "created"]
    assert meta.load_schema(meta.TECHNICAL_SCHEMA)["required"] == ["framework", "task", "inputs", "ptm_info"]


@pytest.mark.parametrize("name", ["nope", "../schemas/managementinfo", "Managementinfo", ""])
def test_unknown_schema_name_is_a_usage_error(name: str) -> None:
    with pytest.raises(UsageError):
        meta.validate_document(name, {}, "x.json")


def test_load_schema_returns_a_copy_callers_cannot_corrupt() -> None:
    meta.load_schema(meta.MANAGEMENT_SCHEMA)["required"].clear()
    error = error_of(meta.MANAGEMENT_SCHEMA, {})
    assert error.json_path == "$.model_id"


# --- valid documents -----------------------------------------------------------------------------

def test_full_documents_and_templates_validate() -> None:
    meta.validate_document(meta.MANAGEMENT_SCHEMA, full_management(), "m.json")
    meta.validate_document(meta.TECHNICAL_SCHEMA, full_technical(), "t.json")
    meta.validate_document(meta.MANAGEMENT_SCHEMA, meta.management_template("My Model"), "m.json")
    meta.validate_document(meta.TECHNICAL_SCHEMA, meta.technical_template(), "t.json")


def test_management_template_fields() -> None:
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    doc = meta.management_template("Qwen2.5 7B Instruct")
    after = dt.datetime.now(dt.timezone.utc)
    assert doc["model_id"] == "qwen2.5-7b-instruct"
    assert (doc["name"], doc["version"], doc["provider"]) == ("Qwen2.5 7B Instruct", "0.1.0", "unknown")
    assert doc["created"].endswith("Z")
    assert before <= dt.datetime.fromisoformat(doc["created"].replace("Z", "+00:00")) <= after
    assert meta.management_template("x", model_id="org/x@1")["model_id"] == "org/x@1"


@pytest.mark.parametrize(("name", "model_id"), [("", None), ("   ", None), ("ok", "bad id"), ("n" * 257, None)])
def test_management_template_refuses_what_cannot_be_valid(name: str, model_id: str | None) -> None:
    with pytest.raises(UsageError):
        meta.management_template(name, model_id)


@given(st.text(min_size=1, max_size=300).filter(lambda s: s.strip() and len(s) <= 256))
def test_any_name_gives_a_valid_template_with_a_stable_id(name: str) -> None:
    doc = meta.management_template(name)
    meta.validate_document(meta.MANAGEMENT_SCHEMA, doc, "m.json")
    assert doc["model_id"] == meta.model_id_for(name) == meta.model_id_for(name)


def test_model_id_examples() -> None:
    assert meta.model_id_for("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers-all-minilm-l6-v2"
    assert meta.model_id_for("  Café  Modèle ") == "cafe-modele"
    assert meta.model_id_for("模型").startswith("model-")
    assert meta.model_id_for("模型") != meta.model_id_for("模型2")


OFFSETS = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))


@given(st.datetimes(timezones=OFFSETS), st.sampled_from(["seconds", "milliseconds", "microseconds"]))
def test_every_aware_datetime_is_an_rfc3339_date_time(moment: dt.datetime, timespec: str) -> None:
    """RFC 3339 offsets are whole minutes; Python writes any such datetime in that form."""
    doc = dict(meta.management_template("m"), created=moment.isoformat(timespec=timespec))
    meta.validate_document(meta.MANAGEMENT_SCHEMA, doc, "m.json")


@pytest.mark.parametrize("created", [
    "2024-01-01T00:00:00Z", "2024-01-01t00:00:00z", "2024-02-29T23:59:59.123456-05:30", "1990-12-31T23:59:60Z",
])
def test_rfc3339_date_times_accepted(created: str) -> None:
    meta.validate_document(meta.MANAGEMENT_SCHEMA, dict(full_management(), created=created), "m.json")


@pytest.mark.parametrize("version", ["0.0.0", "1.2.3", "10.20.30-alpha", "1.0.0-0.3.7", "1.0.0-x.7.z.92+exp.sha.5114f85"])
def test_semver_accepted(version: str) -> None:
    meta.validate_document(meta.MANAGEMENT_SCHEMA, dict(full_management(), version=version), "m.json")


@pytest.mark.parametrize("license_id", ["MIT", "Apache-2.0", "GPL-2.0", "GPL-2.0-or-later", "LicenseRef-llama3",
                                        "MIT OR Apache-2.0", "GPL-2.0-only WITH Classpath-exception-2.0"])
def test_spdx_licenses_accepted(license_id: str) -> None:
    meta.validate_document(meta.MANAGEMENT_SCHEMA, dict(full_management(), license=license_id), "m.json")


# --- violations and their JSON paths -------------------------------------------------------------

@pytest.mark.parametrize("field", ["model_id", "name", "version", "provider", "created"])
def test_missing_required_management_field(field: str) -> None:
    error = error_of(meta.MANAGEMENT_SCHEMA, with_change(full_management(), (field,), ...))
    assert error.json_path == f"$.{field}"
    assert "required" in error.reason


@pytest.mark.parametrize("path", [
    ("framework",), ("task",), ("inputs",), ("ptm_info",), ("task", "type"), ("ptm_info", "architecture"),
    ("inputs", 0, "name"), ("inputs", 0, "modality"), ("inputs", 0, "dtype"), ("inputs", 0, "shape"),
])
def test_missing_required_technical_field(path: tuple[str | int, ...]) -> None:
    error = error_of(meta.TECHNICAL_SCHEMA, with_change(full_technical(), path, ...))
    assert error.json_path == meta.json_path(path)


@pytest.mark.parametrize(("schema", "path", "value"), [
    ("managementinfo", ("name",), 3),
    ("managementinfo", ("name",), ""),
    ("managementinfo", ("tags",), "bert"),
    ("managementinfo", ("tags", 1), 7),
    ("managementinfo", ("tags",), ["a", "a"]),
    ("managementinfo", ("metrics", "F1-score"), "high"),
    ("managementinfo", ("metrics",), [0.9]),
    ("technicalinfo", ("parameters",), "22M"),
    ("technicalinfo", ("parameters",), -1),
    ("technicalinfo", ("parameters",), True),
    ("technicalinfo", ("model_size_bytes",), 1.5),
    ("technicalinfo", ("config",), "fast"),
    ("technicalinfo", ("inputs",), []),
    ("technicalinfo", ("inputs", 0, "shape", 1), 1.5),
    ("technicalinfo", ("inputs", 0, "shape", 0), -2),
    ("technicalinfo", ("inputs", 0, "preprocess"), 3),
    ("technicalinfo", ("outputs", 0), "logits"),
    ("technicalinfo", ("ptm_info", "num_layers"), -1),
    ("technicalinfo", ("ptm_info", "num_heads"), "12"),
    ("technicalinfo", ("ptm_info", "architecture"), []),
    ("technicalinfo", ("ptm_info", "architecture", 0), ""),
    ("technicalinfo", ("converter_config", "max_batch"), 0),
    ("technicalinfo", ("converter_config", "weight_compress"), 8),
])
def test_wrong_type_or_range(schema: str, path: tuple[str | int, ...], value: object) -> None:
    doc = full_management() if schema == "managementinfo" else full_technical()
    assert error_of(schema, with_change(doc, path, value)).json_path == meta.json_path(path)


@pytest.mark.parametrize(("path", "value"), [
    (("task", "type"), "text-generator"),
    (("inputs", 0, "modality"), "picture"),
    (("inputs", 0, "dtype"), "float"),
    (("converter_config", "batch"), "batched"),
    (("ptm_info", "structure"), "decoder"),
])
def test_bad_enum(path: tuple[str | int, ...], value: str) -> None:
    error = error_of(meta.TECHNICAL_SCHEMA, with_change(full_technical(), path, value))
    assert error.json_path == meta.json_path(path)
    assert repr(value) in error.reason


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "1.0.0-01", "1.0.0+", "1.0.0\n", " 1.0.0", "1.0.0.0"])
def test_bad_semver(version: str) -> None:
    error = error_of(meta.MANAGEMENT_SCHEMA, dict(full_management(), version=version))
    assert error.json_path == "$.version"
    assert "Semantic Versioning" in error.reason


@pytest.mark.parametrize("created", [
    "2024-01-01", "2024-01-01T00:00:00", "2024-01-01 00:00:00Z", "2024-02-30T00:00:00Z", "2024-13-01T00:00:00Z",
    "2024-01-01T24:00:00Z", "2024-01-01T00:60:00Z", "2024-01-01T00:00:61Z", "2024-01-01T00:00:00+24:00",
    "2024-01-01T00:00:00Z\n", "٢٠٢٤-01-01T00:00:00Z", "yesterday",
])
def test_bad_date_time(created: str) -> None:
    error = error_of(meta.MANAGEMENT_SCHEMA, dict(full_management(), created=created))
    assert (error.json_path, "date-time" in error.reason) == ("$.created", True)


@pytest.mark.parametrize("homepage", ["example.org", "https://exa mple.org", "https://example.org/é", "//x", ""])
def test_bad_uri(homepage: str) -> None:
    assert error_of(meta.MANAGEMENT_SCHEMA, dict(full_management(), homepage=homepage)).json_path == "$.homepage"


@pytest.mark.parametrize("license_id", ["Apache 2.0", "MIT or Apache-2.0", "-MIT", "MIT\n", ""])
def test_bad_license(license_id: str) -> None:
    assert error_of(meta.MANAGEMENT_SCHEMA, dict(full_management(), license=license_id)).json_path == "$.license"


@pytest.mark.parametrize(("schema", "where"), [
    ("managementinfo", ()),
    ("technicalinfo", ()),
    ("technicalinfo", ("task",)),
    ("technicalinfo", ("inputs", 0)),
    ("technicalinfo", ("outputs", 0)),
    ("technicalinfo", ("converter_config",)),
    ("technicalinfo", ("ptm_info",)),
])
def test_unknown_fields_need_an_x_prefix_at_every_level(schema: str, where: tuple[str | int, ...]) -> None:
    doc = full_management() if schema == "managementinfo" else full_technical()
    error = error_of(schema, with_change(doc, (*where, "extra"), 1))
    assert error.json_path == meta.json_path((*where, "extra"))
    assert "x-" in error.reason
    meta.validate_document(schema, with_change(doc, (*where, "x-extra"), {"any": ["thing"]}), "ok.json")


@pytest.mark.parametrize("where", [("config",), ("compression",), ("converter_config", "preprocess"), ("inputs", 0, "preprocess")])
def test_free_form_maps_take_any_field(where: tuple[str | int, ...]) -> None:
    meta.validate_document(meta.TECHNICAL_SCHEMA, with_change(full_technical(), (*where, "anything"), [1]), "ok.json")


@given(st.text(min_size=1, max_size=20))
def test_unknown_top_level_keys_are_reported_by_name(key: str) -> None:
    doc = dict(full_management(), **{key: 1})
    if key.startswith("x-") or key in MANAGEMENT_FIELDS:
        return
    assert error_of(meta.MANAGEMENT_SCHEMA, doc).json_path == meta.json_path([key])


def test_json_path_rendering() -> None:
    assert meta.json_path([]) == "$"
    assert meta.json_path(["inputs", 0, "shape", 2]) == "$.inputs[0].shape[2]"
    assert meta.json_path(["x-vendor", "it's", "a\\b", "_ok1"]) == "$['x-vendor']['it\\'s']['a\\\\b']._ok1"


def test_non_object_document() -> None:
    assert error_of(meta.MANAGEMENT_SCHEMA, ["not", "an", "object"]).json_path == "$"


def test_the_reported_error_is_deterministic_and_shallowest() -> None:
    doc = with_change(full_technical(), ("task", "type"), "nope")
    doc = with_change(doc, ("inputs", 0, "shape", 0), "x")
    doc["framework"] = 3
    paths = {error_of(meta.TECHNICAL_SCHEMA, doc).json_path for _ in range(5)}
    assert paths == {"$.framework"}


def test_huge_values_are_not_quoted_whole() -> None:
    error = error_of(meta.MANAGEMENT_SCHEMA, dict(full_management(), name=["n" * 10_000]))
    assert error.json_path == "$.name" and len(error.reason) <= 300


# --- load_metadata -------------------------------------------------------------------------------

def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "managementinfo.json"
    path.write_bytes(data)
    return path


def test_load_metadata_returns_the_document(tmp_path: Path) -> None:
    doc = full_management()
    assert meta.load_metadata(write(tmp_path, json.dumps(doc).encode()), meta.MANAGEMENT_SCHEMA) == doc


def test_load_metadata_reports_schema_errors_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(dict(full_management(), version="1")).encode())
    with pytest.raises(MetadataError) as info:
        meta.load_metadata(path, meta.MANAGEMENT_SCHEMA)
    assert (info.value.file, info.value.json_path) == (str(path), "$.version")
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("data", "reason"), [
    (b"\xff\xfe{}", "UTF-8"),
    (b'{"name": ', "JSON"),
    (b'{"a": 1, "a": 2}', "duplicate key"),
    (b'{"metrics": {"f1": NaN}}', "NaN"),
    (b'{"metrics": {"f1": Infinity}}', "Infinity"),
    (b"", "JSON"),
])
def test_load_metadata_refuses_malformed_files(tmp_path: Path, data: bytes, reason: str) -> None:
    with pytest.raises(MetadataError) as info:
        meta.load_metadata(write(tmp_path, data), meta.MANAGEMENT_SCHEMA)
    assert info.value.json_path == "$"
    assert reason in info.value.reason


def test_load_metadata_bounds_the_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(meta, "MAX_METADATA_BYTES", 64)
    with pytest.raises(MetadataError, match="larger than 64 bytes"):
        meta.load_metadata(write(tmp_path, json.dumps(full_management()).encode()), meta.MANAGEMENT_SCHEMA)


def test_load_metadata_missing_file_is_a_tree_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidTreeError) as info:
        meta.load_metadata(tmp_path / "absent.json", meta.MANAGEMENT_SCHEMA)
    assert not isinstance(info.value, MetadataError)
    assert "absent.json" in str(info.value)


def test_file_name_constants() -> None:
    assert (meta.META_DIR, meta.MANAGEMENT_FILE, meta.TECHNICAL_FILE) == (
        "Meta-info", "Meta-info/managementinfo.json", "Meta-info/technicalinfo.json")
