"""The two kinds of package store behind one interface, the progress hook, and the residual tag rule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ptmpack.distribution.layout import LayoutStore
from ptmpack.distribution.reference import Reference, check_tag
from ptmpack.errors import RegistryError as RegistryError  # re-exported: it lived here before errors.py
from ptmpack.errors import UnsupportedError, UsageError

if TYPE_CHECKING:
    from ptmpack.distribution.registry import RegistryStore

RESIDUAL_TAG_INFIX = ".residual-"
RESIDUAL_TAG_HEX = 16


@dataclass(frozen=True)
class ClientOptions:
    """How to reach a registry."""

    plain_http: bool = False
    ca_file: Path | None = None
    workers: int = 4
    timeout_s: float = 60.0
    """Connect and per-request timeout."""
    speed_limit: int = 1024
    speed_time_s: float = 30.0
    """A transfer that moves fewer than ``speed_limit`` bytes/s over ``speed_time_s`` seconds stops (exit 9),
    like curl's ``--speed-limit``/``--speed-time``; a peer silent that long times out the same way."""
    deadline_s: float | None = None
    """Overall time limit for the whole operation (``pull --timeout``); None: none."""
    retries: int = 6
    """Attempts per blob download after a connection failure (each resumes with Range)."""
    upload_chunk: int = 16 * 1024 * 1024
    """Blobs larger than this are uploaded in PATCH chunks of this size."""


class Store(Protocol):
    """What push, pull and ls need from a layout directory or a registry repository."""

    def has_blob(self, digest: str, size: int) -> bool: ...
    def put_blob(self, digest: str, size: int, read: Callable[[int, int], bytes],
                 progress: Callable[[int], None]) -> int: ...
    def get_manifest(self, target: str) -> tuple[bytes, str] | None: ...
    def put_manifest(self, data: bytes, tag: str | None, artifact_type: str) -> tuple[str, bool]: ...
    def tags(self, limit: int | None = None) -> list[str]: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...


class TransferProgress(Protocol):
    """Progress hook the CLI implements with rich; ``advance`` may be called from worker threads."""

    def start(self, label: str, total: int) -> None: ...
    def advance(self, n: int) -> None: ...


class NoProgress:
    """The progress hook that shows nothing."""

    def start(self, label: str, total: int) -> None:
        """Nothing to show."""

    def advance(self, n: int) -> None:
        """Nothing to show."""


def open_store(ref: Reference, client: ClientOptions, *, create: bool) -> LayoutStore | RegistryStore:
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
