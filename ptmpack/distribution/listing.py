"""``ls``: the tags of a repository or layout, or one package's description, without downloading it.

Only the manifest, the small config and recipe blobs and the signature referrers are
read: the annotations (from ``managementinfo.json``, absent for encrypted packages),
size, flags, blob count, and which keys signed the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptmpack.distribution.cache import BlobCache
from ptmpack.distribution.reference import Reference, parse_reference
from ptmpack.distribution.stores import ClientOptions, open_store


@dataclass(frozen=True)
class PackageListing:
    """One package as a store describes it."""

    digest: str
    size: int
    flags: tuple[str, ...]
    blobs: int
    blob_bytes: int
    annotations: dict[str, str]
    signers: tuple[str, ...] = ()
    """Key fingerprints of the package's signature referrers (empty: unsigned)."""


@dataclass(frozen=True)
class LsReport:
    """Tags of a repository, and the package a tag or digest names when the reference names one."""

    reference: str
    tags: tuple[str, ...]
    package: PackageListing | None
    hidden: int = 0
    """Referrer fallback tags (``sha256-<hex>``) left out of ``tags`` (listed with ``all_tags``)."""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"ok": True, "command": "ls", "reference": self.reference, "tags": list(self.tags),
                               "hidden_tags": self.hidden}
        if self.package is not None:
            doc["package"] = {**self.package.__dict__, "flags": list(self.package.flags)}
        return doc


def ls_ref(reference: Reference | str, client: ClientOptions | None = None, cache_dir: Any = None, *,
           all_tags: bool = False) -> LsReport:
    """List ``reference``: its tags, plus the named package's description when it names a tag or digest.

    The referrers tag schema's ``sha256-<64 hex>`` tags (signatures attached where the
    registry has no referrers API, docs/DISTRIBUTION.md §2.4) are not versions: they are
    counted in ``hidden`` and listed only with ``all_tags``.

    Raises:
        UsageError: the named tag does not exist, or the layout directory does not.
        KeyAccessError / RegistryError: as for pull.
    """
    from ptmpack.distribution.fetch import resolve
    from ptmpack.distribution.referrers import find_signers, is_fallback_tag

    ref = parse_reference(reference) if isinstance(reference, str) else reference
    store = open_store(ref, client or ClientOptions(), create=False)
    try:
        every = tuple(store.tags())
        tags = every if all_tags else tuple(t for t in every if not is_fallback_tag(t))
        package = None
        if ref.tag or ref.digest:
            got = resolve(store, ref, BlobCache(cache_dir))
            package = PackageListing(got.digest, got.config.size, tuple(got.config.flag_names()),
                                     len(got.manifest.layers) + 1,
                                     sum(d.size for d in got.manifest.layers) + got.manifest.config.size,
                                     dict(got.manifest.annotations),
                                     tuple(s.fingerprint for s in find_signers(store, got.digest)))
    finally:
        store.close()
    return LsReport(str(ref), tags, package, len(every) - len(tags))
