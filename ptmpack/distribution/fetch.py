"""The machinery of ``pull``: resolve a package, fetch and verify its blobs, assemble, check, rename.

Shared by a plain pull (:mod:`ptmpack.distribution.pull`) and a residual update
(:mod:`ptmpack.distribution.delta`), so neither imports the other.

Order of trust: the manifest is checked against the digest the registry announces
(or the one asked for); the config and recipe against the manifest; every blob
against its digest as it streams into its place in the staging file (a download
counts only when it matches); the assembled file against the recipe's size and the
checks of ``ptmpack verify`` (keyless structural checks and the whole-file digest
for encrypted packages). Only then is the staging file renamed to the output.
Blobs this machine holds (cached, or recorded in a pulled file) are re-hashed, not
fetched; interrupted downloads resume with ``Range``, within a pull and, through
the staging file's journal, in the next one.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptmpack.distribution.cache import DEFAULT_LIMIT, BlobCache, damaged
from ptmpack.distribution.chunks import LocalChunks, Region, fetch_by_ranges
from ptmpack.distribution.describe import PackageConfig
from ptmpack.distribution.mapping import MAX_RECIPE_BYTES, Recipe, decode_recipe, layer_sizes
from ptmpack.distribution.modelpack import ANN_FILEPATH, ANN_PART_OFFSET
from ptmpack.distribution.oci import MAX_CONFIG_BYTES, PackageManifest, load_document, read_blob_file
from ptmpack.distribution.reference import Reference
from ptmpack.distribution.staging import Staging, copy_range
from ptmpack.distribution.storetypes import ClientOptions, LocalBlobs, Store, TransferProgress, fetch_blob
from ptmpack.errors import IntegrityError, NetworkError, PtmError, UsageError, raise_environment_fault
from ptmpack.format import spec
from ptmpack.format.atomic import check_free_space
from ptmpack.format.digest import range_digest
from ptmpack.format.paths import check_entry_path
from ptmpack.format.reader import PackageReader, is_package_file


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
    """A local package to take unchanged chunks from (and the base of ``delta``); default: the output, if it exists."""
    opener: Any = None
    """Keys for encrypted packages (needed only to apply an encrypted residual)."""
    pubkey: Any = None
    """An Ed25519 public key: refuse (exit 3, nothing written) a package without a signature by it."""


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
class Tally:
    """Blobs and bytes a pull moved (updated from worker threads under ``lock``)."""

    downloaded: int = 0
    cached: int = 0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def report(fetched: Fetched, out: Path, method: str, tally: Tally, checks: tuple[str, ...], started: float,
           note: str = "") -> PullReport:
    return PullReport(str(fetched.ref), fetched.digest, str(out), method, fetched.config.size,
                      len(fetched.manifest.layers) + 1, tally.downloaded, tally.cached, tally.bytes + fetched.small_bytes,
                      round(time.perf_counter() - started, 3), checks, note)


def resolve(store: Store, ref: Reference, cache: BlobCache) -> Fetched:
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
    if manifest.is_modelpack:  # the config is the spec's; ptmpack's facts are annotations
        config = PackageConfig.from_annotations(dict(manifest.annotations), str(ref))
        if config.encrypted:
            raise IntegrityError(f"{ref}: a ModelPack manifest claims an encrypted package (ModelPack is never "
                                 "encrypted)", hint="the registry's description of the package was altered")
        _check_filepaths(manifest, str(ref))
    else:
        config = PackageConfig.from_bytes(_small(store, cache, manifest.config.digest, manifest.config.size,
                                                 MAX_CONFIG_BYTES, moved), f"{ref} config")
    if manifest.is_modelpack:  # what ModelPack clients read must agree with the layers ptmpack assembles
        _check_model_config(_small(store, cache, manifest.config.digest, manifest.config.size, MAX_CONFIG_BYTES,
                                   moved), manifest, str(ref))
    layers = layer_sizes((d.digest, d.size) for d in manifest.blobs)
    recipe = decode_recipe(_small(store, cache, manifest.recipe.digest, manifest.recipe.size, MAX_RECIPE_BYTES,
                                  moved), layers, str(ref))
    if (recipe.size != config.size or recipe.sha256 != config.sha256
            or recipe.manifest_sha256 not in (None, config.manifest_sha256)
            or (recipe.index is not None) != manifest.is_modelpack):
        raise IntegrityError(f"{ref}: the recipe and the manifest describe different files")
    if manifest.is_modelpack:
        order = [d for d, _ in recipe.spans if d is not None]
        if order != [d.digest for d in manifest.blobs]:
            raise IntegrityError(f"{ref}: the recipe does not use the file layers in the manifest's order")
    return Fetched(ref, digest, manifest, config, recipe, moved[0])


def _check_model_config(data: bytes, manifest: PackageManifest, where: str) -> None:
    """The ModelPack config is a JSON object whose ``modelfs.diffIds`` are the manifest's layer digests, in order."""
    doc = load_document(data, f"{where} config")
    fs = doc.get("modelfs")
    if not isinstance(fs, dict) or fs.get("diffIds") != [d.digest for d in manifest.layers]:
        raise IntegrityError(f"{where}: the ModelPack config's modelfs.diffIds are not the manifest's layers",
                             hint="the registry's description of the package was altered; nothing was written")


def _check_filepaths(manifest: PackageManifest, where: str) -> None:
    """Every file layer names a safe relative path (what a ModelPack client will write)."""
    for i, d in enumerate(manifest.blobs):
        path = dict(d.annotations).get(ANN_FILEPATH)
        if path is None:
            raise IntegrityError(f"{where}: layer {i} has no {ANN_FILEPATH}")
        try:
            check_entry_path(path)
        except PtmError as exc:
            raise IntegrityError(f"{where}: layer {i} names the unsafe path {path[:200]!r} ({exc.message})") from None


def check_layer_paths(path: Path, fetched: Fetched) -> frozenset[int]:
    """Each file layer sits where the package's own manifest puts the file its ``org.cncf.model.filepath`` names.

    So a ModelPack client that restores the tree by those annotations gets exactly
    the files ``ptmpack unpack`` would write. Returns the indexes of the entries that
    are one whole layer whose digest is the entry's SHA-256: their bytes were hashed
    as they arrived (or re-hashed from the cache or layout), so verify need not hash
    them again.

    Raises:
        IntegrityError: a layer's path or offset disagrees with the assembled package.
    """
    offsets, pos = [], 0
    for d, n in fetched.recipe.spans:
        if d is not None:
            offsets.append(pos)
        pos += n
    hashed = set()
    with PackageReader(path) as reader:
        by_offset = {e.data_offset: e for e in reader.entries}
        for i, (desc, at) in enumerate(zip(fetched.manifest.blobs, offsets, strict=True)):
            ann = dict(desc.annotations)
            part = int(ann.get(ANN_PART_OFFSET, "0")) if ann.get(ANN_PART_OFFSET, "0").isdigit() else -1
            e = by_offset.get(at - part)
            if e is None or e.path != ann.get(ANN_FILEPATH) or e.codec:
                raise IntegrityError(f"{fetched.ref}: layer {i} ({ann.get(ANN_FILEPATH, '?')[:200]}) is not that file of "
                                     "the package", hint="nothing was written")
            if part == 0 and desc.size == e.raw_length and desc.digest == "sha256:" + e.sha256.hex():
                hashed.add(e.index)
    return frozenset(hashed)


def _small(store: Store, cache: BlobCache, digest: str, size: int, limit: int,
           moved: list[int]) -> bytes:
    if size > limit:
        raise IntegrityError(f"blob {digest}: {size} bytes is larger than such a blob may be")
    if isinstance(store, LocalBlobs):  # read in place: a local store is no cheaper to copy into the cache
        moved[0] += size
        return read_blob_file(store.blob_path(digest), digest, limit, "the store")
    data = cache.read_small(digest, limit)
    if data is not None:
        return data
    moved[0] += fetch_blob(store, digest, size, cache.partial_path(digest), lambda n: None)
    return cache.commit(digest).read_bytes()


def fetch_into(store: Store, fetched: Fetched, out: Path, options: PullOptions,
               progress: TransferProgress) -> tuple[Tally, tuple[str, ...]]:
    """Fetch every blob, assemble, verify and rename to ``out``; returns the tally and the checks run.

    A registry pull assembles in the cache's staging file for this package
    (:class:`~ptmpack.distribution.staging.Staging`): each blob this machine lacks is
    downloaded straight into its place, hashed once as it arrives; blobs held
    locally are copied in. An interrupted pull (network failure, Ctrl-C, a kill)
    keeps the staging file and its journal, and the next pull of the same package
    resumes every download where it stopped; any other failure removes them. A
    layout's blobs are files already: they are copied into a temporary file beside
    the output. Afterwards the cache keeps each downloaded blob as a reflink of the
    output where the file system can, else a record of where it lives.
    """
    tally = Tally()
    cache = BlobCache(options.cache_dir)
    local = isinstance(store, LocalBlobs)
    size = fetched.recipe.size
    slots = len(fetched.recipe.blobs())
    if not local:  # the staging file; renamed to the output on the same file system, so each is checked alone
        check_free_space({cache.root: size})
    check_free_space({out: size})
    staging = Staging.beside(out, size) if local else cache.staging(fetched.digest, size, slots)
    writing = staging.path if staging.resumable else out  # what a disk error is named by: the file being written
    try:
        staging.open()
        with _Assembly(store, fetched, cache, options, progress, tally, out, staging) as assembly:
            assembly.run()
        hashed = check_layer_paths(staging.path, fetched) if fetched.manifest.is_modelpack else frozenset()
        checks = check_package(staging.path, fetched.config, progress, str(fetched.ref), options.pubkey, hashed)
        if fetched.manifest.is_modelpack:
            checks = (*checks, "layer paths")
        os.fchmod(staging.fd, 0o644)
        writing = out
        staging.publish(out)
        if not local:
            assembly.keep_in_cache(out)
        staging.close()
    except BaseException as exc:
        # an interrupted transfer is resumed by the next pull; anything else leaves nothing behind
        if staging.resumable and (isinstance(exc, NetworkError) or not isinstance(exc, Exception)):
            staging.close()
        else:
            staging.discard()
        if isinstance(exc, OSError):  # ENOSPC names the file, not a file descriptor
            raise_environment_fault(exc, writing)
        raise
    return tally, checks


class _Assembly:
    """Writes every span of a recipe into the staging file: literal bytes, the blobs this machine holds
    (copied, sharing blocks where the file system can), and the rest downloaded into their places.

    Downloads run on ``options.workers`` threads in file order. A blob used by several
    spans is downloaded into the first and copied to the others. Leaving cancels
    what has not started.
    """

    def __init__(self, store: Store, fetched: Fetched, cache: BlobCache, options: PullOptions,
                 progress: TransferProgress, tally: Tally, out: Path, staging: Staging) -> None:
        self.store, self.cache, self.options, self.progress, self.tally = store, cache, options, progress, tally
        self.recipe, self.staging = fetched.recipe, staging
        manifest = fetched.manifest
        self.filepaths: dict[str, set[str]] = {}
        """digest -> the package paths its layer is (ModelPack), so only those local files are hashed."""
        for d in manifest.blobs if manifest.is_modelpack else ():
            self.filepaths.setdefault(d.digest, set()).add(dict(d.annotations).get(ANN_FILEPATH, ""))
        self.needed = self.recipe.blobs()
        self.at: dict[str, list[int]] = {}
        """digest -> the offsets of its spans in the file, in file order (the first is where it is downloaded)."""
        self.literals: list[tuple[int, int, int]] = []
        """(file offset, literal offset, length) of every literal span."""
        pos = lit = 0
        for digest, length in self.recipe.spans:
            if digest is None:
                self.literals.append((pos, lit, length))
                lit += length
            else:
                self.at.setdefault(digest, []).append(pos)
            pos += length
        self.slot = {d: i for i, d in enumerate(self.at)}
        self.sources = [p for p in (options.base, out) if p is not None and p.is_file() and is_package_file(p)]
        self.local: LocalChunks | None = None
        self.pool: cf.ThreadPoolExecutor | None = None

    def __enter__(self) -> _Assembly:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            if exc[0] is not None:  # Ctrl-C, SIGTERM or a failure: stop the transfers in flight now, not after retries
                self.store.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)

    def run(self) -> None:
        fd = self.staging.fd
        for at, lit, length in self.literals:
            os.pwrite(fd, self.recipe.literals[lit: lit + length], at)
        held = self._held()
        todo = [d for d in self.at if d not in held]
        self.local = self._local_chunks(todo)
        self.progress.start("downloading", sum(self.needed[d] for d in todo))
        self.pool = cf.ThreadPoolExecutor(max(1, self.options.workers))
        jobs = {d: self.pool.submit(self._download, d) for d in todo}
        for digest, (path, offset) in held.items():  # while the downloads run
            with open(path, "rb") as f:
                for at in self.at[digest]:
                    copy_range(f.fileno(), offset, fd, at, self.needed[digest])
        for digest, job in jobs.items():
            job.result()
            first, *others = self.at[digest]
            for at in others:
                copy_range(fd, first, fd, at, self.needed[digest])

    def _held(self) -> dict[str, tuple[Path, int]]:
        """The blobs this machine holds, re-hashed: the layout's files, else cached blobs and ranges of pulled files."""
        if isinstance(self.store, LocalBlobs):
            paths = {d: self.store.blob_path(d) for d in self.needed}
            missing = [d for d, p in paths.items() if not p.is_file() or p.stat().st_size != self.needed[d]]
            if missing:
                raise IntegrityError(f"the store lacks blob {missing[0]} (or holds it at the wrong size)")
            bad = damaged({d: (p, 0, self.needed[d]) for d, p in paths.items()}, self.options.workers)
            if bad:
                raise IntegrityError(f"{paths[bad[0]]} does not match its digest: the layout is corrupt",
                                     hint="nothing was written")
            self.tally.downloaded, self.tally.bytes = len(paths), sum(self.needed.values())
            return {d: (p, 0) for d, p in paths.items()}
        held: dict[str, tuple[Path, int]] = {}
        for d, n in self.needed.items():
            if self.cache.has(d, n):
                held[d] = (self.cache.blob_path(d), 0)
            elif (where := self.cache.locate(d, n)) is not None:
                held[d] = where
        for d in damaged({d: (p, off, self.needed[d]) for d, (p, off) in held.items()}, self.options.workers):
            self.cache.drop(d)
            self.cache.forget(d)
            del held[d]
        self.tally.cached = len(held)
        return held

    def _local_chunks(self, todo: list[str]) -> LocalChunks | None:
        """The chunks of the local package (``base``, else the output being replaced) for blobs still to fetch.

        Only the local files at the paths of those blobs are hashed (a file renamed
        between versions is fetched whole).
        """
        index = self.recipe.index
        if index is None or not todo:
            return None
        wanted = set().union(*(self.filepaths.get(d, set()) for d in todo))
        regions = []
        for src in self.sources:
            try:
                with PackageReader(src) as reader:
                    regions += [Region(src, e.data_offset, e.raw_length) for e in reader.entries
                                if not e.codec and e.path in wanted]
            except PtmError:
                continue  # not a readable clear package: nothing to reuse from it
        return LocalChunks(index.chunk, regions, self.options.workers) if regions else None

    def _download(self, digest: str) -> None:
        target = self.staging.target(self.slot[digest], self.at[digest][0])
        got = None
        if self.local is not None and self.recipe.index is not None and not target.kept:
            got = fetch_by_ranges(self.store, digest, self.needed[digest], self.recipe.index.of(digest),
                                  self.recipe.index.chunk, self.local, target, self.progress.advance)
        if got is None:
            got = self.store.fetch_blob_into(digest, self.needed[digest], target, self.progress.advance)
        with self.tally.lock:
            self.tally.downloaded += 1
            self.tally.bytes += got

    def keep_in_cache(self, out: Path) -> None:
        """After publishing: the cache keeps every blob of ``out`` it does not hold (a copy, a reflink or a
        record). Best effort: the pull has succeeded, and a cache that cannot keep a blob only costs a later
        download."""
        try:
            with open(out, "rb") as f:
                for digest, places in self.at.items():
                    if not self.cache.has(digest, self.needed[digest]):
                        self.cache.keep(digest, f.fileno(), out, places[0], self.needed[digest])
        except OSError:
            return


def check_package(path: Path, config: PackageConfig | None, progress: TransferProgress, where: str = "",
                  pubkey: Any = None, hashed: frozenset[int] = frozenset()) -> tuple[str, ...]:
    """Verify an assembled package like ``ptmpack verify``; encrypted ones keylessly plus the file digest.

    Which checks run is decided by the file's own header, never by the registry's
    config blob: a config that claims ENCRYPTED for a plain file would otherwise
    switch the entry digests off. ``config`` (what the registry said) must agree with
    the header's flags and the trailer's manifest digest; its ``sha256`` is the digest
    the whole file must have (checked for encrypted packages, whose entries cannot be
    checked without the key). None skips both (a package rebuilt by apply, which
    checked every plaintext digest itself). With ``pubkey`` (an Ed25519 public key)
    the file's own signature must verify with it. ``hashed`` names raw entries whose
    bytes were already checked against their digest as they arrived. Starts ``progress``'s
    ``verifying`` phase with a total in the unit the checks advance (raw entry bytes, or the
    file's bytes for an encrypted package), so it ends at 100 %.

    Raises:
        IntegrityError (or another PtmError of verify): the package fails a check, config and header disagree,
            or the package is not signed by ``pubkey``.
    """
    with PackageReader(path, sealed_ok=True) as reader:
        flags, manifest_sha256 = reader.header.flags, reader.trailer.manifest_sha256.hex()
        # The unit the checks below count: the file's bytes when encrypted (hashed whole), else the entries' raw bytes.
        progress.start("verifying", reader.size if flags & spec.Flags.ENCRYPTED
                       else sum(hdr.raw_length for _, hdr, _ in reader.walk_headers()))
    if config is not None and (config.flags != flags or config.manifest_sha256 != manifest_sha256):
        said = ", ".join(config.flag_names()) or "no flags"
        has = ", ".join(f.name for f in spec.Flags if flags & f and f.name) or "no flags"
        raise IntegrityError(f"{where or path}: the registry's config says {said} (manifest {config.manifest_sha256[:16]}), "
                             f"the assembled file's header says {has} (manifest {manifest_sha256[:16]})",
                             hint="the registry's description of the package was altered; nothing was written")
    sha256 = config.sha256 if config is not None else None
    signed: tuple[str, ...] = ()
    if pubkey is not None:
        from ptmpack.storage.verify import verify_package

        if not flags & spec.Flags.ENCRYPTED:
            return ("blob digests", *verify_package(path, pubkey=pubkey, progress=progress.advance, hashed=hashed).checks)
        verify_package(path, pubkey=pubkey)  # keyless: the signature covers every byte before it
        signed = ("signature",)
    if flags & spec.Flags.ENCRYPTED:
        with PackageReader(path, sealed_ok=True) as reader:
            reader.check_padding()
            for _ in reader.walk_headers():
                pass
        if sha256 is None:
            return ("blob digests", "trailer", "manifest digest", "sequential walk", "padding", *signed)
        with open(path, "rb") as f:
            got = range_digest(f.fileno(), 0, os.fstat(f.fileno()).st_size, progress=progress.advance).hex()
        if got != sha256:
            raise IntegrityError("the assembled package does not match the pushed file's sha256")
        return ("blob digests", "trailer", "manifest digest", "sequential walk", "padding", "file sha256", *signed)
    report = _verify(path, progress, hashed)
    return ("blob digests", *report.checks)


def _verify(path: Path, progress: TransferProgress, hashed: frozenset[int]) -> Any:
    from ptmpack.storage.verify import verify_package

    return verify_package(path, progress=progress.advance, hashed=hashed)
