"""The CNCF ModelPack view of a package (modelpack/model-spec ``docs/spec.md``): media types, roles, config.

An unencrypted package whose entries are all stored raw is pushed as a ModelPack
artifact: one layer per file of the tree (the file's own bytes, so the layer
digest is the entry's SHA-256 from the container), a media type chosen by the
file's role, the spec's ``org.cncf.model.filepath`` annotation, and a config blob
that validates against the spec's ``config-schema.json``. What that config cannot
hold (its objects allow no extra properties) travels in ``org.ptmpack.*``
manifest annotations. docs/DISTRIBUTION.md §2 shows a real manifest.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ptmpack.distribution.oci import canonical_json

ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
DOC = "application/vnd.cncf.model.doc.v1.raw"
CODE = "application/vnd.cncf.model.code.v1.raw"
FILE_MEDIA_TYPES = frozenset({WEIGHT, WEIGHT_CONFIG, DOC, CODE})

ANN_FILEPATH = "org.cncf.model.filepath"
ANN_FILE_METADATA = "org.cncf.model.file.metadata+json"
ANN_TITLE = "org.opencontainers.image.title"
ANN_PART = "org.ptmpack.file.part"
"""On each part of a file split for registries' layer limits: ``K/N`` (1-based) in file order."""
ANN_PART_OFFSET = "org.ptmpack.file.offset"
"""On each part: the byte offset of the part in the file (decimal)."""

DEFAULT_SPLIT_SIZE = 8 * 1024**3
"""Files larger than this become ordered parts (Harbor fails single layers over 10 GB)."""

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5", ".msgpack", ".npz",
                   ".npy", ".pdparams", ".tflite", ".mlmodel")
MODALITIES = {"text": "text", "image": "image", "video": "video", "audio": "audio", "speech": "audio",
              "multimodal": "other", "tabular": "other"}
EPOCH = "1970-01-01T00:00:00Z"


def media_type_for(path: str) -> str:
    """The ModelPack media type of a package file by its role in the tree (SPEC §1).

    ``Model/`` weight files are weights, the rest of ``Model/`` (config.json,
    graph.json, tokenizers) is weight configuration, ``Program/`` is code, and
    ``Meta-info/`` and anything else is documentation.
    """
    top, _, rest = path.partition("/")
    if top == "Model":
        return WEIGHT if rest.lower().endswith(WEIGHT_SUFFIXES) else WEIGHT_CONFIG
    if top == "Program":
        return CODE
    return DOC


def file_metadata(path: str, size: int, executable: bool, mtime: str) -> str:
    """The spec's ``org.cncf.model.file.metadata+json`` value: fixed owner, mode from the entry, package time."""
    return canonical_json({"name": path.rsplit("/", 1)[-1], "mode": 0o755 if executable else 0o644, "uid": 0,
                           "gid": 0, "size": size, "mtime": mtime, "typeflag": 48}).decode("utf-8")


@dataclass(frozen=True)
class FileLayer:
    """One layer of a ModelPack manifest: a file of the tree, or one part of a split file."""

    path: str
    digest: str
    size: int
    executable: bool = False
    part: int = 1
    parts: int = 1
    offset: int = 0
    """Where the part starts in the file."""

    def annotations(self, mtime: str) -> dict[str, str]:
        out = {ANN_FILEPATH: self.path, ANN_TITLE: self.path,
               ANN_FILE_METADATA: file_metadata(self.path, self.size, self.executable, mtime)}
        if self.parts > 1:
            out[ANN_PART] = f"{self.part}/{self.parts}"
            out[ANN_PART_OFFSET] = str(self.offset)
        return out


def rfc3339(value: object) -> str | None:
    """``value`` when it is an RFC 3339 date-time the spec's ``date-time`` format accepts, else None."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
        return None
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value


def _strings(values: Iterable[object]) -> list[str]:
    return [v for v in values if isinstance(v, str) and v]


def _param_size(n: object) -> str | None:
    if type(n) is not int or n <= 0:
        return None
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def model_config(management: Mapping[str, Any], technical: Mapping[str, Any], diff_ids: list[str],
                 weight_format: str | None, precision: str | None) -> dict[str, Any]:
    """The ModelPack config document (valid against the spec's ``config-schema.json``).

    ``descriptor`` comes from ``managementinfo.json``, ``config`` from
    ``technicalinfo.json`` and the weights, ``modelfs.diffIds`` are the layer digests
    (raw layers: the digest of the uncompressed content is the layer digest).
    """
    descriptor: dict[str, Any] = {}
    name = management.get("name") or management.get("model_id") or "ptmpack package"
    descriptor["name"] = str(name)
    descriptor["title"] = str(name)
    for src, dst in (("version", "version"), ("provider", "vendor"), ("description", "description"),
                     ("homepage", "docURL")):
        if isinstance(management.get(src), str) and management[src]:
            descriptor[dst] = management[src]
    if created := rfc3339(management.get("created")):
        descriptor["createdAt"] = created
    if isinstance(management.get("license"), str) and management["license"]:
        descriptor["licenses"] = [management["license"]]
    info = technical.get("ptm_info") if isinstance(technical.get("ptm_info"), dict) else {}
    arch = _strings(info.get("architecture") or []) if isinstance(info.get("architecture"), list) else []
    if arch:
        descriptor["family"] = arch[0]
    config: dict[str, Any] = {}
    if arch:
        config["architecture"] = arch[0]
    if weight_format:
        config["format"] = weight_format
    if size := _param_size(technical.get("parameters")):
        config["paramSize"] = size
    if precision:
        config["precision"] = precision
    compression = technical.get("compression")
    if isinstance(compression, dict) and isinstance(compression.get("quantization"), dict):
        method = compression["quantization"].get("method")
        bits = compression["quantization"].get("bits")
        if isinstance(method, str):
            config["quantization"] = f"{method}-w{bits}" if type(bits) is int else method
    inputs = technical.get("inputs") if isinstance(technical.get("inputs"), list) else []
    outputs = technical.get("outputs") if isinstance(technical.get("outputs"), list) else []
    caps = {k: sorted({MODALITIES[i["modality"]] for i in items if isinstance(i, dict) and i.get("modality") in MODALITIES})
            for k, items in (("inputTypes", inputs), ("outputTypes", outputs))}
    caps = {k: v for k, v in caps.items() if v}
    if caps:
        config["capabilities"] = caps
    return {"descriptor": descriptor, "config": config, "modelfs": {"type": "layers", "diffIds": diff_ids}}
