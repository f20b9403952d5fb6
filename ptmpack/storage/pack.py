"""Pack a package tree into a ``.ptm``: plan each entry's codec, wire protection, write.

This is the one pack engine: ``ptmpack.api.pack`` calls it for users, and the other
engines (residual updates, compression, pulls) call it to publish what they built.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from ptmpack.config import PackConfig
from ptmpack.errors import UsageError
from ptmpack.format import spec
from ptmpack.format.manifest import Manifest
from ptmpack.format.tree import SourceFile, scan_tree
from ptmpack.format.writer import EntryPlan, PackageOptions, write_package
from ptmpack.metadata.clock import now_rfc3339
from ptmpack.storage.package import is_safetensors, tensor_records
from ptmpack.storage.pipeline import ChunkPipeline
from ptmpack.storage.protect import protect, signer

Progress = Callable[[int], None]
FLOAT_WIDTHS = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
SAMPLE_BYTES = 4 * 1024 * 1024


def __getattr__(name: str) -> object:
    """``METADATA_FILES``, the (schema, path) of both Meta-info documents, is built on first use:
    importing this module must not import the schema checker (jsonschema), see ``check_metadata_files``."""
    if name == "METADATA_FILES":
        from ptmpack.metadata import documents as meta

        return ((meta.MANAGEMENT_SCHEMA, meta.MANAGEMENT_FILE), (meta.TECHNICAL_SCHEMA, meta.TECHNICAL_FILE))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_metadata_files(source: Path) -> None:
    """Both Meta-info documents of the tree at ``source`` parse strictly and pass their schemas.

    Raises:
        InvalidTreeError / MetadataError: a document is missing or invalid (every schema problem of both at once).
    """
    from ptmpack.metadata import documents as meta

    meta.check_documents([lambda name=name, rel=rel: meta.load_metadata(source / rel, name)
                          for name, rel in ((meta.MANAGEMENT_SCHEMA, meta.MANAGEMENT_FILE),
                                            (meta.TECHNICAL_SCHEMA, meta.TECHNICAL_FILE))])


def in_background(fn: Callable[[], object]) -> cf.Future[object]:
    """Run ``fn`` on a daemon thread. Used for the metadata check, whose import of jsonschema is a
    large share of a short pack or verify: done beside the copying and hashing (which release
    the GIL) it costs little wall time."""
    import threading

    fut: cf.Future[object] = cf.Future()

    def run() -> None:
        try:
            fut.set_result(fn())
        except BaseException as exc:  # handed to whoever waits on the future
            fut.set_exception(exc)

    threading.Thread(target=run, name="ptmpack-metadata", daemon=True).start()
    return fut


def pack_tree(source: Path, target: Path, config: PackConfig | None = None, *, force: bool = False,
              progress: Progress | None = None, package_id: bytes | None = None) -> Manifest:
    """Pack the package tree at ``source`` into the ``.ptm`` file ``target``.

    Checks the tree rules first, and both metadata files against their schemas on a helper
    thread while the package is written: the output is published only once that check has
    passed (a failure is raised at the next entry, or before the rename at the latest).

    Raises:
        UsageError: ``source`` does not exist, or the target exists without ``force``.
        InvalidTreeError / MetadataError: the tree or its metadata is invalid (nothing written).
    """
    config = config or PackConfig()
    source = Path(source)
    if not source.exists():
        raise UsageError(f"{source} does not exist", hint="pack takes a package tree made by init or unpack")
    metadata = in_background(lambda: check_metadata_files(source))
    try:
        files = scan_tree(source)
    except BaseException:
        metadata.exception()  # let the check finish (a daemon thread must not be left importing)
        raise
    try:
        return _write(files, target, config, force, progress, package_id, metadata)
    except Exception:
        failed = metadata.exception()  # waits: the thread is never left importing
        if failed is not None:
            raise failed from None  # an invalid metadata file is reported first, as when it was checked first
        raise


def _new_package_id(files: list[SourceFile], config: PackConfig) -> bytes:
    """16 random bytes; with ``SOURCE_DATE_EPOCH`` set, derived from the content instead, so two packs of
    the same tree with the same options are byte-identical (reproducible builds).

    The derived id is SHA-256 over a domain tag, the packing options and, per file, its path,
    kind, mode, size and SHA-256 (one extra read of the tree). An encrypted package always
    gets a random id: one derived from the plaintext would link packages of equal content,
    and its data key and key-slot nonces are random anyway.
    """
    if not os.environ.get("SOURCE_DATE_EPOCH") or config.encryption is not None:
        return os.urandom(16)
    h = hashlib.sha256(b"ptmpack-package-id-v1\0")
    h.update(f"{int(config.compression)}:{config.level}:{config.chunk_size}:{config.residual_base}:"
             f"{config.sign_key is not None}\0".encode())
    for f in files:
        h.update(f"{f.path}\0{int(f.kind)}:{int(f.executable)}:{f.size}\0".encode())
        digest = hashlib.sha256()
        with open(f.source, "rb") as src:
            while block := src.read(1 << 20):
                digest.update(block)
        h.update(digest.digest())
    return h.digest()[:16]


def _write(files: list[SourceFile], target: Path, config: PackConfig, force: bool, progress: Progress | None,
           package_id: bytes | None, metadata: cf.Future[object]) -> Manifest:
    package_id = package_id or _new_package_id(files, config)
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
    report = progress or (lambda n: None)

    def step(n: int) -> None:
        if metadata.done():
            metadata.result()
        report(n)

    return write_package(Path(target), plans, options, pipeline.encode, force=force, progress=step,
                         before_commit=metadata.result)


def _plan(f: SourceFile, config: PackConfig, cipher: int) -> EntryPlan:
    tensors = tensor_records(f.source) if is_safetensors(f.path) else None
    compression = config.compression if f.size else spec.Compression.NONE
    transform = 0  # Transform.NONE; the codec module (numpy, zstandard) is imported only to compress
    if compression == spec.Compression.ZSTD and tensors:
        transform = _choose_transform(f, tensors, config.level)
    codec = spec.make_codec(compression, cipher, transform)
    return EntryPlan(f, codec, config.chunk_size if codec else 0, tensors)


def _choose_transform(f: SourceFile, tensors: tuple, level: int) -> int:
    """Pick the float byte-plane transform when the entry is mostly one float width and it wins on a sample."""
    from ptmpack.codecs.chunk import Transform, choose_transform

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
    return int(choose_transform(sample[: len(sample) - len(sample) % width], width, level))
