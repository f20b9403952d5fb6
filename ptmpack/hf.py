"""Start a package tree, empty or from a Hugging Face checkpoint directory (``ptmpack init``).

A checkpoint directory holds ``config.json``, ``*.safetensors`` weights and tokenizer
files. ``init --from-hf`` copies those into ``Model/`` (keeping their relative layout)
and fills the two metadata documents from ``config.json`` and the safetensors headers;
weights are never loaded. Pickled weights (``*.bin``, ``*.pt``, ...) are refused:
unpickling runs arbitrary code, and a package must be safe to open.

The tree is built in a hidden directory beside (or, for an existing empty directory,
inside) the destination and moved into place at the end, so a failure leaves nothing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptmpack.container.spec import SKELETON_DIRS
from ptmpack.errors import InvalidTreeError, UsageError
from ptmpack.meta import (
    MANAGEMENT_FILE,
    MANAGEMENT_SCHEMA,
    MAX_METADATA_BYTES,
    TECHNICAL_FILE,
    TECHNICAL_SCHEMA,
    management_template,
    technical_template,
    validate_document,
)
from ptmpack.tensors.safetensors_index import index_safetensors

PACKAGE_DIRS = SKELETON_DIRS
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
COPY_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".tiktoken", ".md", ".jinja", ".yaml", ".yml")
"""Weights, configs, tokenizers (vocab.txt, merges.txt, *.model, *.tiktoken), chat templates, model cards."""
COPY_NAMES = frozenset({"LICENSE", "NOTICE", "COPYING"})

_ENCODER_ONLY = frozenset({
    "bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "mpnet", "deberta",
    "deberta-v2", "camembert", "modernbert", "vit",
})
_DECODER_ONLY = frozenset({
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "gpt_bigcode", "llama", "mistral", "mixtral", "qwen2",
    "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "phi", "phi3", "falcon", "opt", "bloom",
    "mpt", "internlm2", "deepseek_v2", "deepseek_v3", "olmo", "stablelm", "starcoder2",
})
_TASK_SUFFIXES = (  # head class suffix in "architectures" -> Table 64 task type, first match wins
    ("ForMaskedLM", "fill-mask"), ("ForCausalLM", "text-generation"), ("LMHeadModel", "text-generation"),
    ("ForSequenceClassification", "text-classification"), ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"), ("ForImageClassification", "image-classification"),
    ("ForObjectDetection", "object-detection"), ("ForSemanticSegmentation", "image-segmentation"),
    ("ForCTC", "speech-recognition"), ("ForSpeechSeq2Seq", "speech-recognition"),
)
# Table 67 field -> config.json keys, most common spelling first (BERT/LLaMA, GPT-2, others).
_ALIASES = {
    "num_layers": ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
    "num_heads": ("num_attention_heads", "n_head", "n_heads", "num_heads"),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "hidden_dim", "ffn_hidden_size"),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
    "max_position": ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"),
    "num_blocks": ("num_blocks",),
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
}
_PTM_ORDER = ("num_layers", "num_heads", "num_kv_heads", "hidden_size", "intermediate_size", "vocab_size",
              "max_position", "num_blocks", "num_experts")
_SPDX = {
    "apache-2.0": "Apache-2.0", "mit": "MIT", "bsd-2-clause": "BSD-2-Clause", "bsd-3-clause": "BSD-3-Clause",
    "cc0-1.0": "CC0-1.0", "cc-by-4.0": "CC-BY-4.0", "cc-by-sa-4.0": "CC-BY-SA-4.0", "cc-by-nc-4.0": "CC-BY-NC-4.0",
    "mpl-2.0": "MPL-2.0", "gpl-2.0": "GPL-2.0-only", "gpl-3.0": "GPL-3.0-only", "lgpl-3.0": "LGPL-3.0-only",
    "agpl-3.0": "AGPL-3.0-only",
}


@dataclass(frozen=True)
class _Source:
    """A file to copy: ``rel`` under the checkpoint (and under ``Model/``), ``path`` the regular file read."""

    rel: str
    path: Path


def _allowed_roots(root: Path) -> tuple[Path, ...]:
    """Where symlinks may point: the checkpoint, plus its repo folder inside a Hugging Face cache.

    A cache snapshot is ``models--org--name/snapshots/<rev>/`` whose files link to
    ``models--org--name/blobs/<sha256>``.
    """
    repo = root.parent.parent
    if root.parent.name == "snapshots" and (repo / "blobs").is_dir():
        return (root, repo)
    return (root,)


def _regular_file(path: Path, roots: tuple[Path, ...], where: str) -> Path:
    """The regular file ``path`` names, following a symlink only when it stays inside ``roots``."""
    target = path
    if path.is_symlink():
        try:
            target = path.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise InvalidTreeError(f"{where}: cannot resolve symbolic link ({exc})") from None
        if not any(target.is_relative_to(r) for r in roots):
            raise InvalidTreeError(
                f"{where}: symbolic link points outside the checkpoint, to {target}",
                hint="copy the file into the checkpoint directory instead of linking to it",
            )
    if not target.is_file():
        raise InvalidTreeError(f"{where}: not a regular file")
    return target


def _unreadable(exc: OSError) -> None:
    raise InvalidTreeError(f"{exc.filename}: cannot read directory ({exc.strerror})")


def _plan(hf_dir: Path) -> list[_Source]:
    """List the checkpoint files to copy, refusing what a package must not contain.

    Pickled weights (``*.bin``, ``*.pt``, …) are never copied: when safetensors
    weights sit beside them they are left behind, and a checkpoint with pickles only
    is refused.

    Hidden entries (``.git``, ``.gitattributes``, ``.cache``) are skipped, as is any
    file whose kind is not in :data:`COPY_SUFFIXES`/:data:`COPY_NAMES` (other weight
    formats such as ``.h5``, ``.msgpack``, ``.onnx``; code).
    """
    if not hf_dir.is_dir():
        raise UsageError(f"{hf_dir}: not a directory", hint="--from-hf takes a Hugging Face checkpoint directory")
    root = hf_dir.resolve()
    roots = _allowed_roots(root)
    sources: list[_Source] = []
    pickles: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_unreadable):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if (here / d).is_symlink():
                raise InvalidTreeError(
                    f"{hf_dir / (here / d).relative_to(root)}: symbolic links to directories are not followed",
                    hint="replace the link with a copy of the directory",
                )
        for fname in sorted(f for f in filenames if not f.startswith(".")):
            rel = (here / fname).relative_to(root).as_posix()
            if fname.lower().endswith(PICKLE_SUFFIXES):
                pickles.append(rel)
            elif fname.lower().endswith(COPY_SUFFIXES) or fname in COPY_NAMES:
                sources.append(_Source(rel, _regular_file(here / fname, roots, f"{hf_dir}/{rel}")))
    if not any(s.rel == "config.json" for s in sources):
        raise InvalidTreeError(f"{hf_dir}: no config.json", hint="--from-hf needs a Hugging Face checkpoint directory")
    if not any(s.rel.endswith(".safetensors") for s in sources):
        if pickles:
            shown = ", ".join(pickles[:5]) + (f" and {len(pickles) - 5} more" if len(pickles) > 5 else "")
            raise InvalidTreeError(
                f"{hf_dir}: only pickled weights found ({shown}); ptmpack does not carry pickles, "
                "since loading one can run arbitrary code",
                hint="convert the weights to safetensors (safetensors.torch.save_file)",
            )
        raise InvalidTreeError(f"{hf_dir}: no *.safetensors weights", hint="save the model with safe_serialization")
    return sources


def _read_json(path: Path, where: str) -> dict[str, Any]:
    """A JSON object from a checkpoint file, read up to :data:`MAX_METADATA_BYTES`."""
    with open(path, "rb") as f:
        raw = f.read(MAX_METADATA_BYTES + 1)
    if len(raw) > MAX_METADATA_BYTES:
        raise InvalidTreeError(f"{where}: larger than {MAX_METADATA_BYTES} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidTreeError(f"{where}: not valid UTF-8 JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidTreeError(f"{where}: not a JSON object")
    return doc


@dataclass(frozen=True)
class _Checkpoint:
    """A checked checkpoint: the files to copy and what ``config.json`` says."""

    hf_dir: Path
    sources: tuple[_Source, ...]
    config: dict[str, Any]
    archs: tuple[str, ...]
    model_type: str

    def json(self, rel: str) -> dict[str, Any]:
        """The JSON object in checkpoint file ``rel``, ``{}`` when there is none."""
        source = next((s for s in self.sources if s.rel == rel), None)
        return {} if source is None else _read_json(source.path, f"{self.hf_dir}/{rel}")

    def has(self, rel: str) -> bool:
        return any(s.rel == rel for s in self.sources)


def _open(hf_dir: Path) -> _Checkpoint:
    sources = tuple(_plan(hf_dir))
    config = _read_json(next(s.path for s in sources if s.rel == "config.json"), f"{hf_dir}/config.json")
    archs = tuple(a for a in config.get("architectures") or [] if isinstance(a, str))
    model_type = config.get("model_type")
    if not (isinstance(model_type, str) and model_type):  # old configs: BertModel -> bert, GPT2LMHeadModel -> gpt2
        heads = (re.fullmatch(r"([A-Za-z0-9]+?)(For[A-Z]\w*|LMHeadModel|Model)", a) for a in archs)
        model_type = next((m.group(1).lower() for m in heads if m), "unknown")
    return _Checkpoint(hf_dir, sources, config, archs, model_type)


def _count(cfg: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    """The first of ``keys`` whose value is a non-negative integer (null and junk are skipped)."""
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _ptm_info(ck: _Checkpoint) -> dict[str, Any]:
    """Table 67 from ``config.json``; a multimodal config contributes its ``text_config``."""
    text_cfg = ck.config.get("text_config")
    flat = {**text_cfg, **ck.config} if isinstance(text_cfg, dict) else ck.config
    info = {field: n for field, keys in _ALIASES.items() if (n := _count(flat, keys)) is not None}
    if "intermediate_size" not in info and "n_embd" in flat and "hidden_size" in info:
        info["intermediate_size"] = 4 * info["hidden_size"]  # GPT-2: n_inner null means 4 * n_embd
    tags = [ck.model_type]
    heads = info.get("num_heads")
    if heads is not None:
        kv = _count(flat, ("num_key_value_heads", "num_kv_heads", "n_head_kv"))
        if kv is None and flat.get("multi_query_attention") is True:
            kv = _count(flat, ("multi_query_group_num",))
        if kv is None and flat.get("multi_query") is True:
            kv = 1
        info["num_kv_heads"] = kv = heads if kv is None else kv
        if kv < heads:
            tags.append("MQA" if kv == 1 else "GQA")
    if info.get("num_experts"):
        tags.append("MoE")
    if _count(flat, ("sliding_window",)) and flat.get("use_sliding_window") is not False:
        tags.append("SlidingWindowAttention")
    head: dict[str, Any] = {"architecture": tags}
    if ck.config.get("is_encoder_decoder") is True:
        head["structure"] = "encoder-decoder"
    elif ck.model_type in _DECODER_ONLY or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in ck.archs):
        head["structure"] = "decoder-only"
    elif ck.model_type in _ENCODER_ONLY or any(a.endswith("ForMaskedLM") for a in ck.archs):
        head["structure"] = "encoder-only"
    return {**head, **{k: info[k] for k in _PTM_ORDER if k in info}}


def _task(ck: _Checkpoint) -> str:
    """Table 64 task type from the head classes in ``architectures``."""
    if ck.has("modules.json") or ck.has("config_sentence_transformers.json"):
        return "feature-extraction"  # sentence-transformers embeds with the bare encoder
    for arch in ck.archs:
        for suffix, task in _TASK_SUFFIXES:
            if arch.endswith(suffix):
                return task
        if arch.endswith("ForConditionalGeneration"):
            if "num_mel_bins" in ck.config:
                return "speech-recognition"
            if "vision_config" in ck.config:
                return "multimodal"
            return "text2text-generation" if ck.config.get("is_encoder_decoder") is True else "text-generation"
    return "feature-extraction" if any(a.endswith("Model") for a in ck.archs) else "other"


def _tensor(name: str, modality: str, dtype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "modality": modality, "dtype": dtype, "shape": shape}


def _inputs(cfg: dict[str, Any], info: dict[str, Any]) -> list[dict[str, Any]]:
    """Table 65 inputs: token ids (plus pixel values for vision-language), or pixel values alone."""
    vision = cfg.get("vision_config") if isinstance(cfg.get("vision_config"), dict) else cfg
    size = _count(vision, ("image_size",))
    pixels = _tensor("pixel_values", "image", "float32", [-1, _count(vision, ("num_channels",)) or 3, size or -1, size or -1])
    if "vocab_size" not in info and size is not None:
        return [pixels]
    inputs = [_tensor(n, "text", "int64", [-1, -1]) for n in ("input_ids", "attention_mask")]
    if (_count(cfg, ("type_vocab_size",)) or 0) >= 2:
        inputs.append(_tensor("token_type_ids", "text", "int64", [-1, -1]))
    return [*inputs, pixels] if vision is not cfg else inputs


def _outputs(cfg: dict[str, Any], task: str, info: dict[str, Any], modality: str) -> list[dict[str, Any]]:
    dtype = cfg.get("torch_dtype", cfg.get("dtype"))
    dtype = dtype if dtype in ("float16", "bfloat16", "float32") else "float32"
    if task == "feature-extraction":
        return [_tensor("last_hidden_state", modality, dtype, [-1, -1, info.get("hidden_size", -1)])]
    if task in ("fill-mask", "text-generation", "text2text-generation"):
        return [_tensor("logits", modality, dtype, [-1, -1, info.get("vocab_size", -1)])]
    if task in ("text-classification", "image-classification"):
        labels = cfg.get("id2label")
        return [_tensor("logits", modality, dtype, [-1, len(labels) if isinstance(labels, dict) else -1])]
    return []


def _technical(ck: _Checkpoint) -> dict[str, Any]:
    cfg = ck.config
    info, task = _ptm_info(ck), _task(ck)
    inputs = _inputs(cfg, info)
    parameters = size = 0
    for s in ck.sources:
        if s.rel.endswith(".safetensors"):
            with open(s.path, "rb") as f:
                index = index_safetensors(f, os.fstat(f.fileno()).st_size, where=f"{ck.hf_dir}/{s.rel}")
            parameters += sum(t.numel for t in index.tensors)
            size += sum(t.nbytes for t in index.tensors)
    versions = ck.json("config_sentence_transformers.json").get("__version__")
    versions = versions if isinstance(versions, dict) else {}
    torch_version = versions.get("pytorch")
    env = [f"{label}{v}" for label, v in (
        ("Transformers", cfg.get("transformers_version")), ("SentenceTransformers", versions.get("sentence_transformers")),
    ) if isinstance(v, str) and v]
    runtime = {k: v for k, v in (
        ("torch_dtype", cfg.get("torch_dtype", cfg.get("dtype"))),
        ("max_seq_length", ck.json("sentence_bert_config.json").get("max_seq_length")),
    ) if v is not None}
    doc: dict[str, Any] = {"framework": f"PyTorch {torch_version}" if isinstance(torch_version, str) else "PyTorch"}
    if env:
        doc["environment"] = "-".join(env)
    if runtime:
        doc["config"] = runtime
    return {
        **doc,
        "parameters": parameters,
        "model_size_bytes": size,
        "task": {"type": task, "description": f"{ck.model_type} ({', '.join(ck.archs) or 'no architectures listed'})"},
        "inputs": inputs,
        "outputs": _outputs(cfg, task, info, inputs[0]["modality"]),
        "ptm_info": info,
    }


def technical_from_hf(hf_dir: Path) -> dict[str, Any]:
    """``technicalinfo.json`` for a checkpoint: ptm_info and task from ``config.json``,
    ``parameters``/``model_size_bytes`` from the safetensors headers (weights are not read).

    Raises:
        UsageError: ``hf_dir`` is not a directory.
        InvalidTreeError: no config.json or safetensors weights, pickled weights,
            a link leaving the checkpoint, or an unreadable config or safetensors header.
    """
    return _technical(_open(hf_dir))


def _card_license(ck: _Checkpoint) -> str | None:
    """The model card's ``license:`` (YAML front matter of README.md) as an SPDX id.

    Hugging Face ids map to SPDX (``apache-2.0`` -> ``Apache-2.0``); unknown ones become
    ``LicenseRef-<id>``; ``other`` gives nothing.
    """
    source = next((s for s in ck.sources if s.rel == "README.md"), None)
    if source is None:
        return None
    with open(source.path, "rb") as f:
        lines = f.read(64 * 1024).decode("utf-8", errors="replace").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, _, value = line.partition(":")
        hf_id = value.strip().strip("'\"")
        if key == "license" and hf_id and hf_id.lower() not in ("other", "unknown"):
            safe = "".join(c if c.isascii() and (c.isalnum() or c in ".+-") else "-" for c in hf_id).strip("-.+")
            return _SPDX.get(hf_id.lower(), f"LicenseRef-{safe}" if safe else None)
    return None


def _management(ck: _Checkpoint, name: str | None) -> dict[str, Any]:
    root = ck.hf_dir.resolve()
    repo = root.parent.parent.name  # a Hugging Face cache snapshot: models--org--name/snapshots/<rev>
    repo_id = repo.removeprefix("models--").replace("--", "/") if root.parent.name == "snapshots" and repo.startswith("models--") else None
    doc = management_template(name or repo_id or root.name)
    if repo_id and "/" in repo_id:
        doc["provider"] = repo_id.split("/", 1)[0]
    doc["description"] = f"{ck.model_type} model imported from a Hugging Face checkpoint"
    if license_id := _card_license(ck):
        doc["license"] = license_id
    doc["tags"] = [ck.model_type]
    return doc


def management_from_hf(hf_dir: Path, name: str | None = None) -> dict[str, Any]:
    """``managementinfo.json`` for a checkpoint, ``model_id`` derived from the name.

    The name is ``name``, else ``org/name`` of a Hugging Face cache snapshot, else the
    directory's name; the provider is that ``org`` when known. The license comes from
    the model card's front matter.

    Raises:
        UsageError, InvalidTreeError: as :func:`technical_from_hf`.
    """
    return _management(_open(hf_dir), name)


def _check_dest(dest: Path) -> bool:
    """Whether ``dest`` exists (as an empty directory); anything else that exists is refused."""
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


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    with open(path, "x", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def init_tree(dest: Path, *, from_hf: Path | None = None, name: str | None = None) -> list[str]:
    """Create a package tree at ``dest`` (SPEC §1) and return what was created.

    Without ``from_hf`` the metadata are templates to edit (name defaults to the
    directory's name). With it, the checkpoint's files are copied into ``Model/`` and
    the metadata filled from it. ``dest`` must not exist or be an empty directory.
    Nothing is left behind on failure.

    Returns:
        The relative POSIX paths of every directory (ending in ``/``) and file created, sorted.

    Raises:
        UsageError: ``dest`` exists and is not an empty directory; ``from_hf`` is not a directory.
        InvalidTreeError: the checkpoint is unusable (see :func:`technical_from_hf`).
    """
    existed = _check_dest(dest)
    target = dest.absolute()
    if from_hf is None:
        sources: list[_Source] = []
        management, technical = management_template(name or target.name), technical_template()
    else:
        ck = _open(from_hf)
        sources = list(ck.sources)
        management, technical = _management(ck, name), _technical(ck)
    validate_document(MANAGEMENT_SCHEMA, management, MANAGEMENT_FILE)
    validate_document(TECHNICAL_SCHEMA, technical, TECHNICAL_FILE)
    if not existed:
        target.parent.mkdir(parents=True, exist_ok=True)
    scratch = _scratch_dir(target if existed else target.parent, target.name)
    created = [*PACKAGE_DIRS, MANAGEMENT_FILE, TECHNICAL_FILE, *(f"Model/{s.rel}" for s in sources)]
    try:
        for d in PACKAGE_DIRS:
            (scratch / d).mkdir(parents=True)
        for s in sources:
            (scratch / "Model" / s.rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(s.path, scratch / "Model" / s.rel)
        _write_json(scratch / MANAGEMENT_FILE, management)
        _write_json(scratch / TECHNICAL_FILE, technical)
        _publish(scratch, target, existed)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    dirs = {p.as_posix() + "/" for c in created for p in Path(c).parents if p != Path(".")}
    dirs.update(d + "/" for d in PACKAGE_DIRS)
    return sorted(dirs | {c for c in created if c not in PACKAGE_DIRS})


def _publish(scratch: Path, target: Path, existed: bool) -> None:
    """Move the finished tree into place: one rename, or one per top-level entry into an
    existing empty directory (kept, so a shell whose working directory it is keeps working)."""
    if not existed:
        _check_dest(target)
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
