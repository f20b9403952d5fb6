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
    PackageListing,
    PullOptions,
    PullReport,
    PushOptions,
    PushReport,
    Reference,
    RegistryError,
    TransferProgress,
    parse_reference,
    residual_tag,
)
from ptmpack.distribution import ls_ref as _ls_ref
from ptmpack.distribution import pull as _pull
from ptmpack.distribution import push as _push

__all__ = [
    "ClientOptions",
    "LsReport",
    "PackageListing",
    "PullOptions",
    "PullReport",
    "PushOptions",
    "PushReport",
    "Reference",
    "RegistryError",
    "TransferProgress",
    "ls",
    "ls_ref",
    "parse_reference",
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


def ls_ref(reference: str | Reference, client: ClientOptions | None = None) -> LsReport:
    """The tags at ``reference`` and, when it names a tag or digest, that package's annotations (no download)."""
    return _ls_ref(reference, client)


ls = ls_ref
"""``ptmpack.api.ls``: the same verb as :func:`ls_ref`."""
