"""Pack a package tree into a ``.ptm``: plan each entry's codec, wire protection, write.

This is the one pack engine: ``ptmpack.api.pack`` calls it for users, and the other
engines (residual updates, compression, pulls) call it to publish what they built.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ptmpack.codecs.chunk import Transform, choose_transform
from ptmpack.config import PackConfig
from ptmpack.errors import UsageError
from ptmpack.format import spec
from ptmpack.format.manifest import Manifest
from ptmpack.format.tree import SourceFile, scan_tree
from ptmpack.format.writer import EntryPlan, PackageOptions, write_package
from ptmpack.metadata import documents as meta
from ptmpack.metadata.clock import now_rfc3339
from ptmpack.storage.package import is_safetensors, tensor_records
from ptmpack.storage.pipeline import ChunkPipeline
from ptmpack.storage.protect import protect, signer

Progress = Callable[[int], None]
FLOAT_WIDTHS = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
SAMPLE_BYTES = 4 * 1024 * 1024
METADATA_FILES = ((meta.MANAGEMENT_SCHEMA, meta.MANAGEMENT_FILE), (meta.TECHNICAL_SCHEMA, meta.TECHNICAL_FILE))


def pack_tree(source: Path, target: Path, config: PackConfig | None = None, *, force: bool = False,
              progress: Progress | None = None, package_id: bytes | None = None) -> Manifest:
    """Pack the package tree at ``source`` into the ``.ptm`` file ``target``.

    Checks the tree rules and both metadata files against their schemas first.

    Raises:
        UsageError: ``source`` does not exist, or the target exists without ``force``.
        InvalidTreeError / MetadataError: the tree or its metadata is invalid (nothing written).
    """
    config = config or PackConfig()
    source = Path(source)
    if not source.exists():
        raise UsageError(f"{source} does not exist", hint="pack takes a package tree made by init or unpack")
    files = scan_tree(source)
    for name, rel in METADATA_FILES:
        meta.load_metadata(source / rel, name)
    package_id = package_id or os.urandom(16)
    flags = spec.Flags(0)
    pipeline = ChunkPipeline(package_id, config.level)
    keyslots = b""
    cipher = 0
    if config.encryption is not None:
        pipeline, keyslots = protect(config.encryption, package_id, config.level)
        flags |= spec.Flags.ENCRYPTED
        cipher = int(config.encryption.cipher)
    if config.compression == spec.Compression.ZSTD:
        flags |= spec.Flags.COMPRESSED
    if config.sign_key is not None:
        flags |= spec.Flags.SIGNED
    if config.residual_base is not None:
        flags |= spec.Flags.RESIDUAL
    plans = [_plan(f, config, cipher) for f in files]
    options = PackageOptions(
        package_id=package_id, flags=int(flags), created=now_rfc3339(), keyslots=keyslots,
        residual_base=config.residual_base, workers=config.workers,
        sign=None if config.sign_key is None else signer(config.sign_key, package_id),
    )
    return write_package(Path(target), plans, options, pipeline.encode, force=force, progress=progress)


def _plan(f: SourceFile, config: PackConfig, cipher: int) -> EntryPlan:
    tensors = tensor_records(f.source) if is_safetensors(f.path) else None
    compression = config.compression if f.size else spec.Compression.NONE
    transform = Transform.NONE
    if compression == spec.Compression.ZSTD and tensors:
        transform = _choose_transform(f, tensors, config.level)
    codec = spec.make_codec(compression, cipher, transform)
    return EntryPlan(f, codec, config.chunk_size if codec else 0, tensors)


def _choose_transform(f: SourceFile, tensors: tuple, level: int) -> Transform:
    """Pick the float byte-plane transform when the entry is mostly one float width and it wins on a sample."""
    by_width: dict[int, int] = {}
    for t in tensors:
        width = FLOAT_WIDTHS.get(t.dtype)
        if width:
            by_width[width] = by_width.get(width, 0) + (t.end - t.begin)
    if not by_width:
        return Transform.NONE
    width, nbytes = max(by_width.items(), key=lambda kv: kv[1])
    if nbytes * 2 < f.size:
        return Transform.NONE
    start = min(t.begin for t in tensors)
    with open(f.source, "rb") as fh:
        fh.seek(start)
        sample = fh.read(SAMPLE_BYTES)
    return choose_transform(sample[: len(sample) - len(sample) % width], width, level)
