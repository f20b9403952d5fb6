"""Opening the store a reference names, and the residual tag rule.

The shared types (``Store`` and its capabilities, ``ClientOptions``, the progress
hook) live in :mod:`ptmpack.distribution.storetypes` and are re-exported here.
"""

from __future__ import annotations

from ptmpack.distribution.layout import LayoutStore
from ptmpack.distribution.reference import Reference, check_tag
from ptmpack.distribution.storetypes import (
    BlobMounter,
    ClientOptions,
    LocalBlobs,
    NoProgress,
    Store,
    TransferProgress,
)
from ptmpack.errors import RegistryError as RegistryError  # re-exported: it lived here before errors.py
from ptmpack.errors import UnsupportedError, UsageError

__all__ = ["BlobMounter", "ClientOptions", "LocalBlobs", "NoProgress", "RegistryError", "Store", "TransferProgress",
           "open_store", "residual_tag"]

RESIDUAL_TAG_INFIX = ".residual-"
RESIDUAL_TAG_HEX = 16


def open_store(ref: Reference, client: ClientOptions, *, create: bool) -> Store:
    """The store a reference names; ``create`` makes a missing layout directory (push only)."""
    if ref.is_layout:
        if client.plain_http or client.ca_file is not None:
            raise UsageError("--plain-http and --ca-file apply to registries, not to oci: layout directories")
        return LayoutStore(ref, create=create)
    try:
        from ptmpack.distribution.registry import RegistryStore
    except ImportError as exc:  # httpx is what speaks to registries; oci: layouts do not need it
        raise UnsupportedError(f"talking to registries needs httpx ({exc.name} is not installed)",
                               hint="pip install 'ptmpack[distribution]', or use an oci:DIR layout") from None
    return RegistryStore(ref, client)


def residual_tag(tag: str, base_manifest_sha256: str) -> str:
    """The tag under which the residual from a base to ``tag`` is published: ``TAG.residual-<16 hex>``.

    The hex digits are the first 16 of the base package's manifest sha256 (what
    ``ptmpack inspect`` shows and what a residual records as its base).

    Raises:
        UsageError: the resulting tag would be longer than the 128 characters OCI allows.
    """
    if len(base_manifest_sha256) != 64:
        raise UsageError("a residual tag needs the base's 64-digit manifest sha256")
    name = f"{tag}{RESIDUAL_TAG_INFIX}{base_manifest_sha256[:RESIDUAL_TAG_HEX]}"
    if len(name) > 128:
        raise UsageError(f"tag {tag!r} is too long to carry a residual suffix", hint="use a tag of at most 102 characters")
    return check_tag(name)
