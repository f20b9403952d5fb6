"""``pull --delta``: update a local package to a tag, moving only the published residual.

The residual from base ``B`` to the package tagged ``T`` is published as
``T.residual-<first 16 hex digits of B's manifest sha256>`` (``push --residual``).
When the local base's manifest digest matches, only the residual's blobs move, and
:func:`ptmpack.residual.apply.apply_residual` rebuilds the target's files. The
rebuilt package and the local base are then cut like a push would cut them: every
blob of ``T`` found among their pieces is put in the content cache, and ``T`` is
assembled from its own recipe, so the output is the published package byte for
byte whenever the residual was lossless and the entries use the same codec. When
blobs are still missing (a quantized residual, an encrypted target: its ciphertext
never repeats) the rebuilt package is kept instead: it holds the same files and
tensors as ``T`` (exactly, for lossless residuals) but is not the same bytes, and
the report says so.

The residual must carry the RESIDUAL flag, name the same base and have been
published against the manifest ``T`` points at now (annotation
``org.ptmpack.residual.target``); otherwise the pull falls back to a full pull
(which still reuses every unchanged blob of the base) and the report says why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import replace
from pathlib import Path

from ptmpack.distribution.cache import BlobCache
from ptmpack.distribution.fetch import (
    Fetched,
    PullOptions,
    PullReport,
    Tally,
    check_package,
    fetch_into,
    report,
    resolve,
)
from ptmpack.distribution.mapping import cut_spans, hash_cut
from ptmpack.distribution.oci import ANN_RESIDUAL_TARGET
from ptmpack.distribution.reference import DEFAULT_TAG, Reference
from ptmpack.distribution.referrers import require_signer
from ptmpack.distribution.stores import open_store, residual_tag
from ptmpack.distribution.storetypes import Store, TransferProgress
from ptmpack.errors import UsageError
from ptmpack.format.atomic import create_temp_dir, temp_name_beside
from ptmpack.format.reader import PackageReader, is_package_file


def pull_delta(ref: Reference, out: Path, options: PullOptions, progress: TransferProgress,
               started: float) -> PullReport:
    """Bring the base (``options.base``, else ``out``) up to ``ref``; see the module docstring."""
    base = Path(options.base) if options.base is not None else out
    if not base.is_file() or not is_package_file(base):
        raise UsageError(f"--delta needs the local base package, and {base} is not a .ptm",
                         hint="pull without --delta first, or name the base with --base")
    if out.exists() and out.resolve() != base.resolve() and not options.force:
        raise UsageError(f"{out} already exists", hint="pass --force to replace it")
    if ref.digest:
        raise UsageError("--delta needs a tag: residuals are published per tag")
    with PackageReader(base, sealed_ok=True) as reader:
        base_digest = reader.trailer.manifest_sha256.hex()
    cache = BlobCache(options.cache_dir)
    store = open_store(ref, options.client, create=False)
    work = temp_name_beside(out)
    try:
        create_temp_dir(work, out)
        target = resolve(store, ref, cache)
        if options.pubkey is not None:
            require_signer(store, target.digest, options.pubkey)
        if target.config.manifest_sha256 == base_digest:
            if base.resolve() != out.resolve():
                shutil.copyfile(base, work / "copy.ptm")
                os.replace(work / "copy.ptm", out)
            return report(target, out, "up-to-date", Tally(), ("manifest digest",), started,
                          "the local package already is this version")
        rref = ref.with_tag(residual_tag(ref.tag or DEFAULT_TAG, base_digest))
        residual, note = _residual(store, rref, target, base_digest, cache)
        seeds = [base]
        moved = 0
        if residual is not None:
            delta_file, built = work / "residual.ptm", work / "rebuilt.ptm"
            # the residual need not be signed: the package rebuilt from it is checked against the key
            fetched_tally, _ = fetch_into(store, residual, delta_file, replace(options, pubkey=None), progress)
            moved = fetched_tally.bytes + residual.small_bytes
            from ptmpack.residual.apply import apply_residual

            apply_residual(base, delta_file, built, opener=options.opener)
            seeds.insert(0, built)
        _seed(cache, target.recipe.blobs(), seeds, options.workers)
        missing = {d for d, n in target.recipe.blobs().items() if not cache.has(d, n)}
        if residual is not None and missing:
            built = work / "rebuilt.ptm"
            checks = check_package(built, None, progress, pubkey=options.pubkey)
            os.replace(built, out)
            tally = Tally(bytes=moved)
            return report(target, out, "delta", tally, ("residual digests", "apply digests", *checks[1:]), started,
                          f"applied {rref.tag}; the rebuilt package has the same files and tensors as {ref} but "
                          f"not its bytes ({len(missing)} blobs differ)")
        tally, checks = fetch_into(store, target, out, options, progress)
        tally.bytes += moved
        method = "delta" if residual is not None else "full"
        return report(target, out, method, tally, checks, started,
                      f"applied {rref.tag}, then assembled {ref} byte for byte" if residual is not None else note)
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)


def _residual(store: Store, rref: Reference, target: Fetched, base_digest: str,
              cache: BlobCache) -> tuple[Fetched | None, str]:
    """The published residual for this base and target, or None and the reason it cannot be used."""
    if store.get_manifest(rref.target) is None:
        return None, f"no residual {rref.tag} published for this base: pulled in full, reusing unchanged blobs"
    residual = resolve(store, rref, cache)
    ann = dict(residual.manifest.annotations)
    if not residual.config.residual:
        return None, f"{rref.tag} is not a residual package (no RESIDUAL flag): pulled in full"
    if residual.config.residual_base not in (None, base_digest):
        return None, f"{rref.tag} was made from another base: pulled in full"
    if ann.get(ANN_RESIDUAL_TARGET, target.digest) != target.digest:
        return None, f"{rref.tag} leads to an older version of {rref.untagged()}: pulled in full"
    return residual, ""


def _seed(cache: BlobCache, needed: dict[str, int], sources: list[Path], workers: int) -> None:
    """Copy into the cache every needed blob that a local package holds."""
    for src in sources:
        want = {d for d, n in needed.items() if not cache.has(d, n)}
        if not want:
            break
        with PackageReader(src, sealed_ok=True) as reader:
            spans = cut_spans(reader)
            files = [] if reader.sealed else [e for e in reader.entries if not e.codec]
            for e in files:  # ModelPack blobs are whole files: their digest is the entry's
                digest = "sha256:" + e.sha256.hex()
                if digest in want:
                    with contextlib.suppress(ValueError):
                        cache.put_checked(digest, os.pread(reader.fileno(), e.raw_length, e.data_offset))
                    want.discard(digest)
        if not want:
            break
        cut = hash_cut(src, spans, workers=workers, whole=False)  # only the blob digests are compared
        with open(src, "rb") as f:
            for piece in cut.pieces():
                if piece.digest in want:
                    data = os.pread(f.fileno(), piece.length, piece.offset)
                    with contextlib.suppress(ValueError):
                        cache.put_checked(piece.digest, data)
                    want.discard(piece.digest)
