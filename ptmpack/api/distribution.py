"""Distribution verbs (SPEC §8): ``push``, ``pull`` and ``ls_ref`` over OCI registries and layouts.

Thin: each verb hands its arguments to :mod:`ptmpack.distribution` and returns its
typed report (``to_json()`` gives the ``--json`` document). Raises what the engine
raises: UsageError (2: bad reference, unknown tag, existing output), IntegrityError
(3: a blob or the assembled package fails a digest or check; nothing is written),
KeyAccessError (4: the registry refuses the credentials), UnsupportedError (6: not
a ptmpack package), NetworkError and its RegistryError (9: unreachable, failing or misbehaving registry).
"""

from __future__ import annotations

from pathlib import Path

from ptmpack.distribution import (
    ClientOptions,
    LsReport,
    NetworkError,
    PackageListing,
    PullOptions,
    PullReport,
    PushOptions,
    PushReport,
    Reference,
    RegistryError,
    TransferProgress,
    parse_reference,
    plain_http_warning,
    residual_tag,
)
from ptmpack.distribution import account as _account
from ptmpack.distribution import cache as _cache
from ptmpack.distribution import ls_ref as _ls_ref
from ptmpack.distribution import pull as _pull
from ptmpack.distribution import push as _push

__all__ = [
    "DEFAULT_CACHE_LIMIT",
    "CacheListing",
    "ClientOptions",
    "LoginReport",
    "LogoutReport",
    "LsReport",
    "NetworkError",
    "PackageListing",
    "PruneReport",
    "PullOptions",
    "PullReport",
    "PushOptions",
    "PushReport",
    "Reference",
    "RegistryError",
    "TransferProgress",
    "cache_list",
    "cache_prune",
    "login",
    "logout",
    "ls",
    "ls_ref",
    "parse_reference",
    "plain_http_warning",
    "pull",
    "push",
    "residual_tag",
]


def push(package: Path | str, reference: str | Reference, options: PushOptions | None = None,
         progress: TransferProgress | None = None) -> PushReport:
    """Publish the ``.ptm`` at ``package`` to ``oci:DIR[:TAG]`` or ``HOST[:PORT]/REPO[:TAG]``; only new blobs move."""
    return _push(package, reference, options or PushOptions(), progress)


def pull(reference: str | Reference, output: Path | str, options: PullOptions | None = None,
         progress: TransferProgress | None = None) -> PullReport:
    """Fetch ``reference`` into the ``.ptm`` ``output``, verified before it is renamed into place."""
    return _pull(reference, output, options or PullOptions(), progress)


def ls_ref(reference: str | Reference, client: ClientOptions | None = None, *, all_tags: bool = False) -> LsReport:
    """The tags at ``reference`` (the ``sha256-<hex>`` referrer tags only with ``all_tags``) and, when it names a
    tag or digest, that package's annotations (no download)."""
    return _ls_ref(reference, client, all_tags=all_tags)


ls = ls_ref
"""``ptmpack.api.ls``: the same verb as :func:`ls_ref`."""


LoginReport = _account.LoginReport
LogoutReport = _account.LogoutReport
CacheListing = _cache.CacheListing
DEFAULT_CACHE_LIMIT = _cache.DEFAULT_LIMIT
PruneReport = _cache.PruneReport


def login(host: str, username: str, password: str, client: ClientOptions | None = None) -> LoginReport:
    """Check the credentials against the registry at ``host``, then store them in the Docker config."""
    return _account.login(host, username, password, client)


def logout(host: str) -> LogoutReport:
    """Remove ``host``'s credentials from the Docker config."""
    return _account.logout(host)


def cache_list(cache_dir: Path | None = None, limit: int = _cache.DEFAULT_LIMIT) -> CacheListing:
    """What the pull cache holds, least recently used first."""
    return _cache.list_cache(cache_dir, limit)


def cache_prune(cache_dir: Path | None = None, limit: int = _cache.DEFAULT_LIMIT) -> PruneReport:
    """Shrink the pull cache to ``limit`` bytes (0 empties it), least recently used first."""
    return _cache.prune_cache(cache_dir, limit)
