"""``push``: publish a ``.ptm`` to a registry repository or an OCI layout, moving only new blobs.

A raw, unencrypted package (what a default ``pack`` writes) becomes a CNCF
ModelPack artifact: one layer per file, whose digest is the entry's SHA-256 from
the container, so the files are not hashed as wholes again; each file is hashed
once in 1 MiB ranges for the chunk-digest index that lets later pulls fetch only
changed ranges. A compressed or encrypted package stays a ptmpack-native artifact:
it is cut into chunk blobs (:mod:`ptmpack.distribution.mapping`) and every blob is
digested. Each blob the store already holds (HEAD) is skipped; the others are
mounted from a sibling repository when the caller names one and the registry
allows it, else uploaded (several at once). The manifest goes last, so a tag never
points at a package whose blobs are missing; pushing the same package twice
uploads nothing the second time.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptmpack.distribution import modelpack
from ptmpack.distribution.cache import BlobCache
from ptmpack.distribution.chunks import ChunkHasher, hash_chunks, index_blobs
from ptmpack.distribution.describe import PackageConfig, annotations, modelpack_config, read_facts
from ptmpack.distribution.mapping import (
    INDEX_CHUNK,
    ChunkIndex,
    Cut,
    Piece,
    cut_files,
    cut_spans,
    encode_recipe,
    hash_cut,
)
from ptmpack.distribution.oci import (
    ANN_RESIDUAL_TARGET,
    CHUNK_MEDIA_TYPE,
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MAX_MANIFEST_BYTES,
    MODEL_ARTIFACT_TYPE,
    RECIPE_MEDIA_TYPE,
    Descriptor,
    PackageManifest,
    sha256_digest,
)
from ptmpack.distribution.reference import DEFAULT_TAG, Reference, parse_reference
from ptmpack.distribution.referrers import attach_signature, signature_block
from ptmpack.distribution.stores import open_store, residual_tag
from ptmpack.distribution.storetypes import BlobMounter, ClientOptions, NoProgress, Store, TransferProgress
from ptmpack.errors import UsageError
from ptmpack.format import spec
from ptmpack.format.reader import PackageReader, is_package_file


@dataclass(frozen=True)
class PushOptions:
    """How to push: registry connection, parallelism, mounts, residual publication."""

    client: ClientOptions = field(default_factory=ClientOptions)
    workers: int = 4
    mount_from: tuple[str, ...] = ()
    """Repositories of the same registry to mount blobs from before uploading them."""
    auto_mount: bool = True
    """Also try the repository of that registry the local cache last saw holding each blob."""
    cache_dir: Path | None = None
    """Content cache root (it remembers which repositories hold which blobs); default ``$XDG_CACHE_HOME/ptmpack``."""
    residual: bool = False
    """Publish a residual package under the residual tag of the reference's tag (docs/DISTRIBUTION.md §5)."""
    split_size: int = modelpack.DEFAULT_SPLIT_SIZE
    """ModelPack artifacts: files larger than this travel as ordered parts (``org.ptmpack.file.part``)."""


@dataclass(frozen=True)
class PushReport:
    """What a push moved."""

    reference: str
    digest: str
    tag: str | None
    package_bytes: int
    blobs: int
    blobs_uploaded: int
    blobs_reused: int
    blobs_mounted: int
    bytes_uploaded: int
    manifest_uploaded: bool
    seconds: float
    annotations: dict[str, str]
    signature_referrer: str | None = None
    """The digest of the signature referrer attached to the package manifest (signed packages)."""

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "command": "push", **self.__dict__}


@dataclass
class _Tally:
    uploaded: int = 0
    reused: int = 0
    mounted: int = 0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def push(package: Path | str, reference: Reference | str, options: PushOptions = PushOptions(),
         progress: TransferProgress | None = None) -> PushReport:
    """Push the ``.ptm`` at ``package`` to ``reference`` (``oci:DIR[:TAG]`` or ``HOST/REPO[:TAG]``).

    Raises:
        UsageError: not a ``.ptm`` file, a bad reference, --residual on a package that is not one.
        IntegrityError: the package's headers are damaged.
        KeyAccessError: the registry refuses the credentials (exit 4).
        RegistryError: the registry cannot be reached or fails.
    """
    started = time.perf_counter()
    progress = progress or NoProgress()
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    path = Path(package)
    if not path.exists():
        raise UsageError(f"{path} does not exist", hint="push takes a .ptm file made by ptmpack pack")
    if not path.is_file() or not is_package_file(path):
        raise UsageError(f"{path} is not a .ptm package", hint="pack a tree first: ptmpack pack DIR -o OUT.ptm")
    with PackageReader(path, sealed_ok=True) as reader:
        block = signature_block(reader)
        if not as_modelpack(reader):
            spans = cut_spans(reader)
            progress.start("hashing", sum(s.length for s in spans if s.blob))  # what hash_cut counts
            cut = hash_cut(path, spans, workers=options.workers, progress=progress.advance)
            config, layers = read_facts(reader, cut.sha256), None
        else:
            spans, layers = cut_files(reader, options.split_size)
            index = None
            if ref.digest or any(not layer.digest for layer in layers):  # digests needed before the upload
                progress.start("hashing", sum(layer.size for layer in layers))
                layers, index = index_blobs(path, spans, layers, INDEX_CHUNK, options.workers, progress.advance)
            digests = iter(layer.digest for layer in layers)
            cut = Cut(reader.size, None, tuple(spans), tuple(next(digests) if s.blob else None for s in spans))
            config = read_facts(reader, None)
    ann = annotations(path, config)
    store = open_store(ref, options.client, create=True)
    try:
        tag = _tag(ref, config, options, store, ann)
        tally = _Tally()
        cache = BlobCache(options.cache_dir)
        mounts = _mount_sources(ref, options, cache)
        uploaded_pieces = layers is not None and index is None
        if uploaded_pieces:  # ModelPack: the index is hashed from the upload's own reads, each byte read once
            index = _upload(store, path, cut, {}, mounts, options, progress, tally, INDEX_CHUNK)
        if layers is None:
            recipe = encode_recipe(path, cut)
            config_bytes = config.to_bytes()
            manifest = _manifest(cut, recipe, config_bytes, ann)
        else:
            recipe = encode_recipe(path, cut, index, config.manifest_sha256)
            config_bytes = modelpack_config(path, layers, sha256_digest(recipe))
            manifest = _modelpack_manifest(layers, recipe, config_bytes, {**ann, **config.to_annotations()})
        if ref.digest and sha256_digest(manifest.to_bytes()) != ref.digest:
            raise UsageError(f"the package's manifest digest is {sha256_digest(manifest.to_bytes())}, not {ref.digest}",
                             hint="push by tag; a digest reference must name exactly this package")
        small = {sha256_digest(config_bytes): config_bytes, sha256_digest(recipe): recipe}
        _upload(store, path, None if uploaded_pieces else cut, small, mounts, options, progress, tally)
        data = manifest.to_bytes()
        digest, changed = store.put_manifest(data, tag, manifest.artifact_type)
        referrer = attach_signature(store, Descriptor(MANIFEST_MEDIA_TYPE, digest, len(data)), block) if block else None
        if not ref.is_layout:
            cache.remember(ref.location, ref.repository, [*small, *(p.digest for p in cut.pieces())])
    finally:
        store.close()
    blobs = len(manifest.layers) + 1
    return PushReport(str(ref.with_tag(tag) if tag else ref), digest, tag, cut.size, blobs, tally.uploaded,
                      tally.reused, tally.mounted, tally.bytes, changed, round(time.perf_counter() - started, 3), ann,
                      referrer)


def _tag(ref: Reference, config: PackageConfig, options: PushOptions, store: Store, ann: dict[str, str]) -> str | None:
    if ref.digest:
        if options.residual:
            raise UsageError("--residual needs a tag (the tag of the package the residual leads to), not a digest")
        return None
    tag = ref.tag or DEFAULT_TAG
    if not options.residual:
        return tag
    if not config.flags & spec.Flags.RESIDUAL:
        raise UsageError("--residual: this package is not a residual package (no RESIDUAL flag)",
                         hint="make one with 'ptmpack diff BASE TARGET -o DELTA'")
    if config.residual_base is None:
        raise UsageError("--residual: the package is encrypted, so its base is sealed inside it",
                         hint=f"push it under the tag TAG.residual-<first 16 hex digits of the base's manifest "
                              f"sha256> yourself, e.g. {tag}.residual-0123456789abcdef")
    target = store.get_manifest(tag)
    if target is None:
        raise UsageError(f"--residual: {ref.with_tag(tag)} does not exist yet",
                         hint="push the full package under that tag first, then its residual")
    ann[ANN_RESIDUAL_TARGET] = target[1]
    return residual_tag(tag, config.residual_base)


def _manifest(cut: Cut, recipe: bytes, config: bytes, ann: dict[str, str]) -> PackageManifest:
    layers = [Descriptor(RECIPE_MEDIA_TYPE, sha256_digest(recipe), len(recipe))]
    layers += [Descriptor(CHUNK_MEDIA_TYPE, p.digest, p.length) for p in cut.pieces()]
    return PackageManifest(Descriptor(CONFIG_MEDIA_TYPE, sha256_digest(config), len(config)), tuple(layers),
                           tuple(sorted(ann.items())))


MODELPACK_MANIFEST_BUDGET = MAX_MANIFEST_BYTES - 256 * 1024
"""Largest ModelPack manifest push writes (registries refuse manifests over 4 MiB)."""
LAYER_DESCRIPTOR_BYTES = 420
"""Bytes of a file layer's descriptor besides its path, which appears three times (filepath, title, metadata)."""


def as_modelpack(reader: PackageReader) -> bool:
    """Whether a package is pushed as a ModelPack artifact: clear, every entry raw, and few enough files for one
    manifest (each file is a layer); else it stays ptmpack-native (docs/DISTRIBUTION.md §2)."""
    if reader.sealed or any(e.codec for e in reader.entries):
        return False
    size = sum(LAYER_DESCRIPTOR_BYTES + 3 * len(e.path.encode("utf-8")) for e in reader.entries)
    return size <= MODELPACK_MANIFEST_BUDGET


def _modelpack_manifest(layers: list[modelpack.FileLayer], recipe: bytes, config: bytes,
                        ann: dict[str, str]) -> PackageManifest:
    """One layer per file (or part) in file order, then the recipe; the spec's config media type."""
    mtime = modelpack.rfc3339(ann.get("org.opencontainers.image.created")) or modelpack.EPOCH
    descs = [Descriptor(modelpack.media_type_for(layer.path), layer.digest, layer.size,
                        tuple(sorted(layer.annotations(mtime).items()))) for layer in layers]
    descs.append(Descriptor(RECIPE_MEDIA_TYPE, sha256_digest(recipe), len(recipe)))
    return PackageManifest(Descriptor(modelpack.CONFIG_MEDIA_TYPE, sha256_digest(config), len(config)), tuple(descs),
                           tuple(sorted(ann.items())), artifact_type=MODEL_ARTIFACT_TYPE)


def _mount_sources(ref: Reference, options: PushOptions, cache: BlobCache) -> Callable[[str], list[str]]:
    """For a digest: the repositories of the same registry to try mounting it from (named ones first)."""
    if ref.is_layout:
        return lambda digest: []
    known = cache.origins(ref.location) if options.auto_mount else {}

    def sources(digest: str) -> list[str]:
        found = [*options.mount_from, *([known[digest]] if digest in known else [])]
        return [r for r in dict.fromkeys(found) if r != ref.repository]

    return sources


def _upload(store: Store, path: Path, cut: Cut | None, small: dict[str, bytes], mounts: Callable[[str], list[str]],
            options: PushOptions, progress: TransferProgress, tally: _Tally, chunk: int = 0) -> ChunkIndex | None:
    """Put the small blobs and the cut's pieces (``cut`` None: the small ones only) that the store lacks.

    With ``chunk``, also return the chunk-digest index of the pieces, hashed from the
    reads that upload them (blobs already there, or mounted, are hashed from the file).
    """
    pieces = cut.pieces() if cut is not None else []
    progress.start("uploading", sum(p.length for p in pieces) + sum(len(b) for b in small.values()))
    hashers = {p.digest: ChunkHasher(p.length, chunk) for p in pieces} if chunk else {}
    with open(path, "rb") as f, cf.ThreadPoolExecutor(max(1, options.workers)) as pool:
        fd = f.fileno()

        def reader(p: Piece) -> Callable[[int, int], bytes]:
            hasher = hashers.get(p.digest)

            def read(pos: int, n: int) -> bytes:
                data = os.pread(fd, n, p.offset + pos)
                if hasher is not None:
                    hasher.feed(pos, data)
                return data

            return read

        jobs = [pool.submit(_one, store, d, len(b), lambda pos, n, b=b: b[pos: pos + n], mounts(d), progress, tally)
                for d, b in small.items()]
        jobs += [pool.submit(_one, store, p.digest, p.length, reader(p), mounts(p.digest), progress, tally)
                 for p in pieces]
        try:
            for j in jobs:
                j.result()
        except BaseException:  # Ctrl-C, SIGTERM or a failed upload: stop the others now, not after every upload
            store.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        if not chunk:
            return None
        tables = {p.digest: hashers[p.digest].table() for p in pieces}
        missing = [p for p in pieces if tables[p.digest] is None]
        for p, table in zip(missing, pool.map(lambda p: hash_chunks(fd, p.offset, p.length, chunk, lambda n: None),
                                             missing), strict=True):
            tables[p.digest] = table
    return ChunkIndex(chunk, {d: t for d, t in tables.items() if t is not None})


def _one(store: Store, digest: str, size: int, read: Any, mount_from: list[str], progress: TransferProgress,
         tally: _Tally) -> None:
    if store.has_blob(digest, size):
        with tally.lock:
            tally.reused += 1
        progress.advance(size)
        return
    if isinstance(store, BlobMounter):
        for repo in mount_from:
            if store.mount_blob(digest, repo):
                with tally.lock:
                    tally.mounted += 1
                progress.advance(size)
                return
    sent = store.put_blob(digest, size, read, progress.advance)
    with tally.lock:
        tally.uploaded += 1
        tally.bytes += sent
