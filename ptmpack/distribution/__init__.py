"""Distribution (GB/T 42382.2 §8.3, SPEC §8): push and pull packages through OCI registries and layouts.

``push`` cuts a ``.ptm`` into content-addressed blobs aligned with its chunks and
publishes them with an OCI image manifest; ``pull`` fetches only the blobs the
local cache lacks, verifies each and the assembled package, and renames it into
place; ``ls_ref`` describes a repository without downloading packages. Format and
operations: docs/DISTRIBUTION.md.
"""

from ptmpack.distribution.listing import LsReport, PackageListing, ls_ref
from ptmpack.distribution.pull import PullOptions, PullReport, pull
from ptmpack.distribution.push import PushOptions, PushReport, push
from ptmpack.distribution.reference import Reference, parse_reference, plain_http_warning
from ptmpack.distribution.stores import residual_tag
from ptmpack.distribution.storetypes import ClientOptions, TransferProgress
from ptmpack.errors import NetworkError, RegistryError

__all__ = [
    "ClientOptions",
    "LsReport",
    "NetworkError",
    "PackageListing",
    "PullOptions",
    "PullReport",
    "PushOptions",
    "PushReport",
    "Reference",
    "RegistryError",
    "TransferProgress",
    "ls_ref",
    "parse_reference",
    "plain_http_warning",
    "pull",
    "push",
    "residual_tag",
]
