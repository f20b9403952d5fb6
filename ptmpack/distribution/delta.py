"""``pull --delta``: update a local package to a tag by fetching only the published residual.

The residual from base ``B`` to the package tagged ``T`` is published as
``T.residual-<first 16 hex digits of B's manifest sha256>`` (``push --residual``).
When the local base's manifest digest matches, only the residual's blobs move;
:func:`ptmpack.residual.apply.apply_residual` then rebuilds the target from the base
and it is verified before it replaces the output. The residual must carry the
RESIDUAL flag, name the same base and have been published against the manifest
``T`` points at now (annotation ``org.ptmpack.residual.target``); otherwise the
pull falls back to a full pull and says why in the report.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ptmpack.container.atomic import TEMP_PREFIX
from ptmpack.container.reader import PackageReader, is_package_file
from ptmpack.distribution.cache import BlobCache
from ptmpack.distribution.oci import ANN_RESIDUAL_TARGET
from ptmpack.distribution.reference import Reference
from ptmpack.distribution.stores import TransferProgress, open_store, residual_tag
from ptmpack.errors import UsageError

if TYPE_CHECKING:
    from ptmpack.distribution.pull import PullOptions, PullReport


def pull_delta(ref: Reference, out: Path, options: PullOptions, progress: TransferProgress,
               started: float) -> PullReport:
    """Bring the base (``options.base``, else ``out``) up to ``ref``; see the module docstring."""
    from ptmpack.distribution.pull import _Tally, check_package, fetch_into, report, resolve

    base = Path(options.base) if options.base is not None else out
    if not base.is_file() or not is_package_file(base):
        raise UsageError(f"--delta needs the local base package, and {base} is not a .ptm",
                         hint="pull without --delta first, or name the base with --base")
    if options.base is not None and out.exists() and out.resolve() != base.resolve() and not options.force:
        raise UsageError(f"{out} already exists", hint="pass --force to replace it")
    with PackageReader(base, sealed_ok=True) as reader:
        base_digest = reader.trailer.manifest_sha256.hex()
    if ref.digest:
        raise UsageError("--delta needs a tag: residuals are published per tag")
    cache = BlobCache(options.cache_dir)
    store = open_store(ref, options.client, create=False)
    try:
        target = resolve(store, ref, cache)
        if target.config.manifest_sha256 == base_digest:
            if base != out:
                raise UsageError(f"{base} already is {ref}; copy it to {out} if you need a second copy")
            return report(target, out, "up-to-date", _Tally(), ("manifest digest",), started,
                          "the local package already is this version")
        note = ""
        rref = ref.with_tag(residual_tag(ref.tag or "latest", base_digest))
        residual = None
        if store.get_manifest(rref.target) is None:
            note = f"no residual {rref.tag} published for this base: pulled in full"
        else:
            residual = resolve(store, rref, cache)
            ann = dict(residual.manifest.annotations)
            if not residual.config.residual:
                note = f"{rref.tag} is not a residual package: pulled in full"
                residual = None
            elif residual.config.residual_base not in (None, base_digest):
                note = f"{rref.tag} was made from another base: pulled in full"
                residual = None
            elif ann.get(ANN_RESIDUAL_TARGET, target.digest) != target.digest:
                note = f"{rref.tag} leads to an older version of {ref.tag}: pulled in full"
                residual = None
        if residual is None:
            tally, checks = fetch_into(store, target, out, options, progress)
            return report(target, out, "full", tally, checks, started, note)
        work = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=out.parent))
        try:
            delta_file = work / "residual.ptm"
            tally, _ = fetch_into(store, residual, delta_file, options, progress)
            built = work / "target.ptm"
            from ptmpack.residual.apply import apply_residual

            apply_residual(base, delta_file, built, opener=options.opener)
            with PackageReader(built, sealed_ok=True) as reader:
                encrypted = reader.encrypted
            progress.start("verifying", built.stat().st_size)
            checks = check_package(built, encrypted, None, progress)
            os.replace(built, out)
        finally:
            with contextlib.suppress(OSError):
                for p in work.iterdir():
                    p.unlink()
                work.rmdir()
    finally:
        store.close()
    return report(target, out, "delta", tally, ("residual blob digests", "residual base digest", "apply digests",
                                                *checks[1:]), started, f"applied {rref.tag}")

