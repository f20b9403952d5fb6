"""``pull``: fetch a package, verify every blob and the assembled file, then rename it into place.

Order of trust: the manifest is checked against the digest the registry announces
(or the one asked for); the config and recipe against the manifest; every chunk
blob against its digest as it streams in, before it enters the content cache; the
assembled file against the recipe's size and the checks of ``ptmpack verify``
(keyless structural checks and the whole-file digest for encrypted packages).
Only then is the temporary file renamed to the output. Blobs already in the cache
are re-hashed, not fetched; interrupted downloads resume with ``Range``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptmpack.distribution.cache import DEFAULT_LIMIT, BlobCache, damaged
from ptmpack.distribution.describe import PackageConfig
from ptmpack.distribution.layout import LayoutStore
from ptmpack.distribution.mapping import MAX_RECIPE_BYTES, Recipe, assemble, decode_recipe, layer_sizes
from ptmpack.distribution.oci import MAX_CONFIG_BYTES, PackageManifest
from ptmpack.distribution.reference import Reference, parse_reference
from ptmpack.distribution.stores import ClientOptions, NoProgress, TransferProgress, open_store
from ptmpack.errors import IntegrityError, UsageError, raise_environment_fault

if TYPE_CHECKING:
    from ptmpack.distribution.registry import RegistryStore
from ptmpack.format import spec
from ptmpack.format.atomic import check_free_space, check_target, create_temp_file, temp_name_beside
from ptmpack.format.reader import PackageReader


@dataclass(frozen=True)
class PullOptions:
    """How to pull: registry connection, parallelism, cache, delta updates."""

    client: ClientOptions = field(default_factory=ClientOptions)
    workers: int = 4
    cache_dir: Path | None = None
    """Content cache root; default ``$XDG_CACHE_HOME/ptmpack``."""
    cache_limit: int = DEFAULT_LIMIT
    """Bytes the content cache keeps after the pull (least recently used blobs go first)."""
    force: bool = False
    delta: bool = False
    """Use a published residual when the local base (``base``, else the output file) matches (§5)."""
    base: Path | None = None
    opener: Any = None
    """Keys for encrypted packages (needed only to apply an encrypted residual)."""


@dataclass(frozen=True)
class PullReport:
    """What a pull moved and checked."""

    reference: str
    digest: str
    output: str
    method: str
    """'full', 'delta' (a residual was applied) or 'up-to-date' (the base already is this package)."""
    package_bytes: int
    blobs: int
    blobs_downloaded: int
    blobs_cached: int
    bytes_downloaded: int
    seconds: float
    checks: tuple[str, ...]
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "command": "pull", **{k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in self.__dict__.items()}}


@dataclass
class Fetched:
    """A package resolved in a store, its blobs not yet fetched."""

    ref: Reference
    digest: str
    manifest: PackageManifest
    config: PackageConfig
    recipe: Recipe
    small_bytes: int = 0
    """Bytes of the config and recipe blobs that had to be fetched (not in the cache)."""


@dataclass
class _Tally:
    downloaded: int = 0
    cached: int = 0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def pull(reference: Reference | str, output: Path | str, options: PullOptions = PullOptions(),
         progress: TransferProgress | None = None) -> PullReport:
    """Pull ``reference`` into the ``.ptm`` file ``output``.

    Raises:
        UsageError: no such tag or digest (exit 2), or the output exists without ``force``.
        IntegrityError: a blob, the recipe or the assembled package fails its digest or checks (exit 3;
            nothing is written).
        KeyAccessError: the registry refuses the credentials (exit 4).
        UnsupportedError: the reference holds something other than a ptmpack package.
        RegistryError: the registry cannot be reached or fails.
    """
    started = time.perf_counter()
    progress = progress or NoProgress()
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    out = Path(output)
    if options.delta:
        from ptmpack.distribution.delta import pull_delta

        return pull_delta(ref, out, options, progress, started)
    check_target(out, force=options.force, want_dir=False)
    store = open_store(ref, options.client, create=False)
    try:
        cache = BlobCache(options.cache_dir)
        fetched = resolve(store, ref, cache)
        tally, checks = fetch_into(store, fetched, out, options, progress)
        if not ref.is_layout:
            used = [fetched.manifest.config.digest, *(d.digest for d in fetched.manifest.layers)]
            cache.remember(ref.location, ref.repository, used)
            cache.touch(used)
            cache.prune(options.cache_limit, keep=used, partials=False)
    finally:
        store.close()
    return report(fetched, out, "full", tally, checks, started)


def report(fetched: Fetched, out: Path, method: str, tally: _Tally, checks: tuple[str, ...], started: float,
           note: str = "") -> PullReport:
    return PullReport(str(fetched.ref), fetched.digest, str(out), method, fetched.config.size,
                      len(fetched.manifest.layers) + 1, tally.downloaded, tally.cached, tally.bytes + fetched.small_bytes,
                      round(time.perf_counter() - started, 3), checks, note)


def resolve(store: LayoutStore | RegistryStore, ref: Reference, cache: BlobCache) -> Fetched:
    """Fetch and check the manifest, config and recipe of ``ref``.

    Raises:
        UsageError: the store has no such tag or digest.
    """
    got = store.get_manifest(ref.target)
    if got is None:
        known = ", ".join(store.tags(limit=10)) or "none"  # one page: a hint must not walk a hostile tag list
        raise UsageError(f"{ref}: no package tagged {ref.target!r} there (tags: {known})",
                         hint=f"list the tags with 'ptmpack ls {ref.untagged()}'")
    data, digest = got
    manifest = PackageManifest.from_bytes(data, str(ref))
    moved = [0]
    config = PackageConfig.from_bytes(_small(store, cache, manifest.config.digest, manifest.config.size,
                                             MAX_CONFIG_BYTES, moved), f"{ref} config")
    layers = layer_sizes((d.digest, d.size) for d in manifest.layers[1:])
    recipe = decode_recipe(_small(store, cache, manifest.recipe.digest, manifest.recipe.size, MAX_RECIPE_BYTES,
                                  moved), layers, str(ref))
    if recipe.size != config.size or recipe.sha256 != config.sha256:
        raise IntegrityError(f"{ref}: the recipe and the config describe different files")
    return Fetched(ref, digest, manifest, config, recipe, moved[0])


def _small(store: LayoutStore | RegistryStore, cache: BlobCache, digest: str, size: int, limit: int,
           moved: list[int]) -> bytes:
    if size > limit:
        raise IntegrityError(f"blob {digest}: {size} bytes is larger than such a blob may be")
    if isinstance(store, LayoutStore):
        moved[0] += size
        return store.read_small(digest, limit)
    data = cache.read_small(digest, limit)
    if data is not None:
        return data
    moved[0] += store.fetch_blob(digest, size, cache.partial_path(digest), lambda n: None)
    return cache.commit(digest).read_bytes()


def fetch_into(store: LayoutStore | RegistryStore, fetched: Fetched, out: Path, options: PullOptions,
               progress: TransferProgress) -> tuple[_Tally, tuple[str, ...]]:
    """Fetch every blob, assemble, verify and rename to ``out``; returns the tally and the checks run.

    Assembly runs alongside the downloads: blobs are fetched in file order and each is
    copied into place as soon as it and everything before it are there.
    """
    tally = _Tally()
    cache = BlobCache(options.cache_dir)
    fresh = 0 if isinstance(store, LayoutStore) else sum(n for d, n in fetched.recipe.blobs().items()
                                                         if not cache.has(d, n))
    check_free_space({out: fetched.recipe.size, cache.root: fresh})
    tmp = temp_name_beside(out, ".ptm")
    try:
        with os.fdopen(create_temp_file(tmp, out), "wb", buffering=0) as f, _Blobs(store, fetched.recipe, cache,
                                                           options, progress, tally) as blobs:
            assemble(fetched.recipe, blobs.path, f)  # type: ignore[arg-type]
            if f.tell() != fetched.recipe.size:
                raise IntegrityError(f"assembled {f.tell()} bytes, the recipe says {fetched.recipe.size}")
        progress.start("verifying", fetched.recipe.size)
        checks = check_package(tmp, fetched.config, progress, str(fetched.ref))
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except OSError as exc:  # ENOSPC while assembling names the output, not a file descriptor
        raise_environment_fault(exc, out)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return tally, checks


class _Blobs:
    """A verified local file for every blob of a recipe: from the layout, the cache, or downloaded into the cache.

    Downloads start on entering, in file order, on ``options.workers`` threads;
    :meth:`path` waits for one blob. Leaving cancels what has not started.
    """

    def __init__(self, store: LayoutStore | RegistryStore, recipe: Recipe, cache: BlobCache, options: PullOptions,
                 progress: TransferProgress, tally: _Tally) -> None:
        self.store, self.cache, self.options, self.progress, self.tally = store, cache, options, progress, tally
        self.needed = recipe.blobs()
        self.order = list(dict.fromkeys(d for d, _ in recipe.spans if d is not None))
        self.paths: dict[str, Path] = {}
        self.jobs: dict[str, cf.Future[Path]] = {}
        self.pool: cf.ThreadPoolExecutor | None = None

    def __enter__(self) -> _Blobs:
        if isinstance(self.store, LayoutStore):
            self._layout(self.store)
            return self
        cached = {d: self.cache.blob_path(d) for d, n in self.needed.items() if self.cache.has(d, n)}
        for d in damaged(cached, self.options.workers):
            self.cache.drop(d)
            del cached[d]
        self.paths.update(cached)
        self.tally.cached = len(cached)
        todo = [d for d in self.order if d not in cached]
        self.progress.start("downloading", sum(self.needed[d] for d in todo))
        self.pool = cf.ThreadPoolExecutor(max(1, self.options.workers))
        self.jobs = {d: self.pool.submit(self._download, self.store, d) for d in todo}
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            if exc[0] is not None:  # Ctrl-C, SIGTERM or a failure: stop the transfers in flight now, not after retries
                self.store.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)

    def path(self, digest: str) -> Path:
        job = self.jobs.get(digest)
        return job.result() if job is not None else self.paths[digest]

    def _download(self, store: RegistryStore, digest: str) -> Path:
        got = store.fetch_blob(digest, self.needed[digest], self.cache.partial_path(digest), self.progress.advance)
        path = self.cache.commit(digest)
        with self.tally.lock:
            self.tally.downloaded += 1
            self.tally.bytes += got
        return path

    def _layout(self, store: LayoutStore) -> None:
        paths = {d: store.blob_path(d) for d in self.needed}
        missing = [d for d in paths if not store.has_blob(d, self.needed[d])]
        if missing:
            raise IntegrityError(f"{store.root} lacks blob {missing[0]} (or holds it at the wrong size)")
        bad = damaged(paths, self.options.workers)
        if bad:
            raise IntegrityError(f"{paths[bad[0]]} does not match its digest: the layout is corrupt",
                                 hint="nothing was written")
        self.paths = paths
        self.tally.downloaded, self.tally.bytes = len(paths), sum(self.needed.values())


def check_package(path: Path, config: PackageConfig | None, progress: TransferProgress,
                  where: str = "") -> tuple[str, ...]:
    """Verify an assembled package like ``ptmpack verify``; encrypted ones keylessly plus the file digest.

    Which checks run is decided by the file's own header, never by the registry's
    config blob: a config that claims ENCRYPTED for a plain file would otherwise
    switch the entry digests off. ``config`` (what the registry said) must agree with
    the header's flags and the trailer's manifest digest; its ``sha256`` is the digest
    the whole file must have (checked for encrypted packages, whose entries cannot be
    checked without the key). None skips both (a package rebuilt by apply, which
    checked every plaintext digest itself).

    Raises:
        IntegrityError (or another PtmError of verify): the package fails a check, or config and header disagree.
    """
    with PackageReader(path, sealed_ok=True) as reader:
        flags, manifest_sha256 = reader.header.flags, reader.trailer.manifest_sha256.hex()
    if config is not None and (config.flags != flags or config.manifest_sha256 != manifest_sha256):
        said = ", ".join(config.flag_names()) or "no flags"
        has = ", ".join(f.name for f in spec.Flags if flags & f and f.name) or "no flags"
        raise IntegrityError(f"{where or path}: the registry's config says {said} (manifest {config.manifest_sha256[:16]}), "
                             f"the assembled file's header says {has} (manifest {manifest_sha256[:16]})",
                             hint="the registry's description of the package was altered; nothing was written")
    sha256 = config.sha256 if config is not None else None
    if flags & spec.Flags.ENCRYPTED:
        with PackageReader(path, sealed_ok=True) as reader:
            reader.check_padding()
            for _ in reader.walk_headers():
                pass
        if sha256 is None:
            return ("blob digests", "trailer", "manifest digest", "sequential walk", "padding")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(8 * 1024 * 1024):
                h.update(block)
                progress.advance(len(block))
        if h.hexdigest() != sha256:
            raise IntegrityError("the assembled package does not match the pushed file's sha256")
        return ("blob digests", "trailer", "manifest digest", "sequential walk", "padding", "file sha256")
    report = _verify(path, progress)
    return ("blob digests", *report.checks)


def _verify(path: Path, progress: TransferProgress) -> Any:
    from ptmpack.storage.verify import verify_package

    return verify_package(path, progress=progress.advance)
