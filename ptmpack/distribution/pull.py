"""``pull``: fetch a package, verify every blob and the assembled file, then rename it into place.

Order of trust: the manifest is checked against the digest the registry announces
(or the one asked for); the config (native artifacts) or the package annotations
(ModelPack ones) and the recipe against the manifest; every blob against its
digest as it streams into its place; the assembled file against the recipe's size
and the checks of ``ptmpack verify`` (keyless structural checks and the whole-file
digest for encrypted packages). Only then is the staging file renamed to the
output. Blobs this machine holds are re-hashed, not fetched; interrupted downloads
resume with ``Range`` (across processes too); with an older
version local, only the changed ranges of file blobs move
(:mod:`ptmpack.distribution.chunks`). The machinery is in
:mod:`ptmpack.distribution.fetch`.
"""

from __future__ import annotations

import time
from pathlib import Path

from ptmpack.distribution.cache import BlobCache
from ptmpack.distribution.delta import pull_delta
from ptmpack.distribution.fetch import PullOptions, PullReport, fetch_into, report, resolve
from ptmpack.distribution.reference import Reference, parse_reference
from ptmpack.distribution.referrers import require_signer
from ptmpack.distribution.stores import open_store
from ptmpack.distribution.storetypes import NoProgress, TransferProgress
from ptmpack.errors import UsageError
from ptmpack.format.atomic import check_target

__all__ = ["PullOptions", "PullReport", "pull"]


def pull(reference: Reference | str, output: Path | str, options: PullOptions | None = None,
         progress: TransferProgress | None = None) -> PullReport:
    """Pull ``reference`` into the ``.ptm`` file ``output``.

    Raises:
        UsageError: no such tag or digest (exit 2), the output exists without ``force``, or ``base`` is missing.
        IntegrityError: a blob, the recipe or the assembled package fails its digest or checks (exit 3;
            nothing is written).
        KeyAccessError: the registry refuses the credentials (exit 4).
        UnsupportedError: the reference holds something other than a ptmpack package.
        RegistryError: the registry cannot be reached or fails.
    """
    started = time.perf_counter()
    options = options or PullOptions()
    progress = progress or NoProgress()
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    out = Path(output)
    if options.base is not None and not options.base.is_file():
        # Silently fetching everything would hide a typo in the one option meant to save the download.
        raise UsageError(f"--base {options.base} does not exist", hint="name an older .ptm of this package, or leave "
                                                                       "--base out")
    if options.delta:
        return pull_delta(ref, out, options, progress, started)
    check_target(out, force=options.force, want_dir=False)
    store = open_store(ref, options.client, create=False)
    try:
        cache = BlobCache(options.cache_dir)
        fetched = resolve(store, ref, cache)
        if options.pubkey is not None:  # before any blob moves: refuse unsigned or wrongly signed packages early
            require_signer(store, fetched.digest, options.pubkey)
        tally, checks = fetch_into(store, fetched, out, options, progress)
        if not ref.is_layout:
            used = [fetched.manifest.config.digest, *(d.digest for d in fetched.manifest.layers)]
            cache.remember(ref.location, ref.repository, used)
            cache.touch(used)
            cache.prune(options.cache_limit, keep=used, partials=False)
    finally:
        store.close()
    return report(fetched, out, "full", tally, checks, started)
