"""``push``: publish a ``.ptm`` to a registry repository or an OCI layout, moving only new blobs.

The package is cut into blobs (:mod:`ptmpack.distribution.mapping`), every blob is
digested, and each one the store already holds (HEAD) is skipped; the others are
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

from ptmpack.distribution.cache import BlobCache
from ptmpack.distribution.describe import PackageConfig, annotations, read_facts
from ptmpack.distribution.mapping import Cut, cut_spans, encode_recipe, hash_cut
from ptmpack.distribution.oci import (
    ANN_RESIDUAL_TARGET,
    ARTIFACT_TYPE,
    CHUNK_MEDIA_TYPE,
    CONFIG_MEDIA_TYPE,
    RECIPE_MEDIA_TYPE,
    Descriptor,
    PackageManifest,
    sha256_digest,
)
from ptmpack.distribution.reference import DEFAULT_TAG, Reference, parse_reference
from ptmpack.distribution.stores import ClientOptions, NoProgress, Store, TransferProgress, open_store, residual_tag
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
    if not path.is_file() or not is_package_file(path):
        raise UsageError(f"{path} is not a .ptm package", hint="pack a tree first: ptmpack pack DIR -o OUT.ptm")
    with PackageReader(path, sealed_ok=True) as reader:
        spans = cut_spans(reader)
        progress.start("hashing", reader.size)
        cut = hash_cut(path, spans, workers=options.workers, progress=progress.advance)
        config = read_facts(reader, cut.sha256)
    ann = annotations(path, config)
    store = open_store(ref, options.client, create=True)
    try:
        tag = _tag(ref, config, options, store, ann)
        recipe = encode_recipe(path, cut)
        config_bytes = config.to_bytes()
        manifest = _manifest(cut, recipe, config_bytes, ann)
        if ref.digest and sha256_digest(manifest.to_bytes()) != ref.digest:
            raise UsageError(f"the package's manifest digest is {sha256_digest(manifest.to_bytes())}, not {ref.digest}",
                             hint="push by tag; a digest reference must name exactly this package")
        tally = _Tally()
        small = {sha256_digest(config_bytes): config_bytes, sha256_digest(recipe): recipe}
        cache = BlobCache(options.cache_dir)
        mounts = _mount_sources(ref, options, cache)
        _upload(store, path, cut, small, mounts, options, progress, tally)
        digest, changed = store.put_manifest(manifest.to_bytes(), tag, ARTIFACT_TYPE)
        if not ref.is_layout:
            cache.remember(ref.location, ref.repository, [*small, *(p.digest for p in cut.pieces())])
    finally:
        store.close()
    blobs = len(manifest.layers) + 1
    return PushReport(str(ref.with_tag(tag) if tag else ref), digest, tag, cut.size, blobs, tally.uploaded,
                      tally.reused, tally.mounted, tally.bytes, changed, round(time.perf_counter() - started, 3), ann)


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
                         hint="make one with 'ptmpack diff BASE TARGET -o DELTA --residual'")
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


def _mount_sources(ref: Reference, options: PushOptions, cache: BlobCache) -> Callable[[str], list[str]]:
    """For a digest: the repositories of the same registry to try mounting it from (named ones first)."""
    if ref.is_layout:
        return lambda digest: []
    known = cache.origins(ref.location) if options.auto_mount else {}

    def sources(digest: str) -> list[str]:
        found = [*options.mount_from, *([known[digest]] if digest in known else [])]
        return [r for r in dict.fromkeys(found) if r != ref.repository]

    return sources


def _upload(store: Store, path: Path, cut: Cut, small: dict[str, bytes], mounts: Callable[[str], list[str]],
            options: PushOptions, progress: TransferProgress, tally: _Tally) -> None:
    pieces = cut.pieces()
    progress.start("uploading", sum(p.length for p in pieces) + sum(len(b) for b in small.values()))
    with open(path, "rb") as f, cf.ThreadPoolExecutor(max(1, options.workers)) as pool:
        fd = f.fileno()
        jobs = [pool.submit(_one, store, d, len(b), lambda pos, n, b=b: b[pos: pos + n], mounts(d), progress, tally)
                for d, b in small.items()]
        jobs += [pool.submit(_one, store, p.digest, p.length, lambda pos, n, o=p.offset: os.pread(fd, n, o + pos),
                             mounts(p.digest), progress, tally) for p in pieces]
        try:
            for j in jobs:
                j.result()
        except BaseException:  # Ctrl-C, SIGTERM or a failed upload: stop the others now, not after every upload
            store.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _one(store: Store, digest: str, size: int, read: Any, mount_from: list[str], progress: TransferProgress,
         tally: _Tally) -> None:
    if store.has_blob(digest, size):
        with tally.lock:
            tally.reused += 1
        progress.advance(size)
        return
    mount = getattr(store, "mount_blob", None)  # registries only
    if mount is not None:
        for repo in mount_from:
            if mount(digest, repo):
                with tally.lock:
                    tally.mounted += 1
                progress.advance(size)
                return
    sent = store.put_blob(digest, size, read, progress.advance)
    with tally.lock:
        tally.uploaded += 1
        tally.bytes += sent
