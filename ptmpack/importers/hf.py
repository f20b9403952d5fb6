"""Start a package tree, empty or from a Hugging Face checkpoint directory (``ptmpack init``).

A checkpoint directory holds ``config.json``, ``*.safetensors`` weights and tokenizer
files. ``init --from-hf`` copies those into ``Model/`` (keeping their relative layout)
and fills the two metadata documents from ``config.json`` and the safetensors headers;
weights are never loaded. Pickled weights (``*.bin``, ``*.pt``, ...) are never copied
(unpickling runs arbitrary code, and a package must be safe to open): they are left
behind when safetensors weights exist, and a pickles-only checkpoint is refused.

The tree is built in a hidden directory beside (or, for an existing empty directory,
inside) the destination and moved into place at the end, so a failure leaves nothing.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ptmpack.errors import InvalidTreeError, UsageError
from ptmpack.importers.hf_meta import Checkpoint, Source, management_doc, read_json, technical_doc
from ptmpack.importers.publish import check_destination, listing, new_tree, write_json
from ptmpack.ir.validate import GRAPH_FILE
from ptmpack.metadata.documents import (
    MANAGEMENT_FILE,
    MANAGEMENT_SCHEMA,
    TECHNICAL_FILE,
    TECHNICAL_SCHEMA,
    management_template,
    technical_template,
    validate_document,
)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
COPY_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".tiktoken", ".md", ".jinja", ".yaml", ".yml")
"""Weights, configs, tokenizers (vocab.txt, merges.txt, *.model, *.tiktoken), chat templates, model cards."""
COPY_NAMES = frozenset({"LICENSE", "NOTICE", "COPYING"})

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


def _plan(hf_dir: Path) -> list[Source]:
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
    sources: list[Source] = []
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
                sources.append(Source(rel, _regular_file(here / fname, roots, f"{hf_dir}/{rel}")))
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


def _open(hf_dir: Path) -> Checkpoint:
    sources = tuple(_plan(hf_dir))
    config = read_json(next(s.path for s in sources if s.rel == "config.json"), f"{hf_dir}/config.json")
    archs = tuple(a for a in config.get("architectures") or [] if isinstance(a, str))
    model_type = config.get("model_type")
    if not (isinstance(model_type, str) and model_type):  # old configs: BertModel -> bert, GPT2LMHeadModel -> gpt2
        heads = (re.fullmatch(r"([A-Za-z0-9]+?)(For[A-Z]\w*|LMHeadModel|Model)", a) for a in archs)
        model_type = next((m.group(1).lower() for m in heads if m), "unknown")
    return Checkpoint(hf_dir, sources, config, archs, model_type)


def technical_from_hf(hf_dir: Path) -> dict[str, Any]:
    """``technicalinfo.json`` for a checkpoint: ptm_info and task from ``config.json``,
    ``parameters``/``model_size_bytes`` from the safetensors headers (weights are not read).

    Raises:
        UsageError: ``hf_dir`` is not a directory.
        InvalidTreeError: no config.json or safetensors weights, pickled weights,
            a link leaving the checkpoint, or an unreadable config or safetensors header.
    """
    return technical_doc(_open(hf_dir))


def management_from_hf(hf_dir: Path, name: str | None = None) -> dict[str, Any]:
    """``managementinfo.json`` for a checkpoint, ``model_id`` derived from the name.

    The name is ``name``, else ``org/name`` of a Hugging Face cache snapshot, else the
    directory's name; the provider is that ``org`` when known. The license comes from
    the model card's front matter.

    Raises:
        UsageError, InvalidTreeError: as :func:`technical_from_hf`.
    """
    return management_doc(_open(hf_dir), name)


def init_tree(dest: Path, *, from_hf: Path | None = None, name: str | None = None,
              management_fields: Mapping[str, str] | None = None) -> list[str]:
    """Create a package tree at ``dest`` (SPEC §1) and return what was created.

    Without ``from_hf`` the metadata are templates to edit (name defaults to the
    directory's name). With it, the checkpoint's files are copied into ``Model/`` and
    the metadata filled from it; ``management_fields`` (``provider``, ``license``,
    ``version``…) are set over either. ``dest`` must not exist or be an empty directory.
    Nothing is left behind on failure.

    Returns:
        The relative POSIX paths of every directory (ending in ``/``) and file created, sorted.

    Raises:
        UsageError: ``dest`` exists and is not an empty directory; ``from_hf`` is not a directory.
        InvalidTreeError: the checkpoint is unusable (see :func:`technical_from_hf`).
    """
    check_destination(dest)
    if from_hf is None:
        sources: list[Source] = []
        management, technical = management_template(name or dest.absolute().name), technical_template()
    else:
        ck = _open(from_hf)
        sources = list(ck.sources)
        management, technical = management_doc(ck, name), technical_doc(ck)
    management = {**management, **(management_fields or {})}
    validate_document(MANAGEMENT_SCHEMA, management, MANAGEMENT_FILE)
    validate_document(TECHNICAL_SCHEMA, technical, TECHNICAL_FILE)
    created = [MANAGEMENT_FILE, TECHNICAL_FILE, *(f"Model/{s.rel}" for s in sources)]
    with new_tree(dest) as scratch:
        for s in sources:
            (scratch / "Model" / s.rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(s.path, scratch / "Model" / s.rel)
        write_json(scratch / MANAGEMENT_FILE, management)
        write_json(scratch / TECHNICAL_FILE, technical)
        if from_hf is not None and _describe_graph(scratch, management["name"]):
            created.append(GRAPH_FILE)
    return listing(created)


def _describe_graph(tree: Path, name: str) -> bool:
    """Add ``Model/graph.json`` (the chapter-6 IR) when the architecture is one ptmpack can describe."""
    from ptmpack.ir.convert_hf import write_graph_if_supported

    if (tree / GRAPH_FILE).exists():
        return False
    return write_graph_if_supported(tree, name=name) is not None


