"""Parse the references ``push``, ``pull`` and ``ls`` take (SPEC §8).

Two forms:

* ``oci:DIR[:TAG]`` — an OCI image layout directory on disk (the embedded default);
* ``HOST[:PORT]/REPO[:TAG|@sha256:HEX]`` — a repository on a registry speaking the
  OCI distribution API over HTTPS (plain HTTP only for loopback hosts).

``str(parse_reference(s))`` gives back a canonical spelling of ``s``; tag and
repository grammars are the OCI distribution specification's, so a reference this
module accepts is one every registry accepts.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ptmpack.errors import PtmError, UsageError

DEFAULT_TAG = "latest"
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
HOST_RE = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::[0-9]{1,5})?$")
MAX_REPO = 255


@dataclass(frozen=True)
class Reference:
    """Where a package lives: a layout directory or a registry repository, and which version.

    ``tag`` and ``digest`` are exclusive; a reference naming neither means ``latest``
    when pushing and pulling, and "every tag" for ``ls``.
    """

    kind: str
    """"layout" or "registry"."""
    location: str
    """The layout directory, or the registry host[:port]."""
    repository: str = ""
    tag: str | None = None
    digest: str | None = None

    @property
    def is_layout(self) -> bool:
        return self.kind == "layout"

    @property
    def target(self) -> str:
        """What a manifest request names: the digest when given, else the tag (default ``latest``)."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> Reference:
        """The same repository at another tag (checked against the tag grammar)."""
        check_tag(tag)
        return Reference(self.kind, self.location, self.repository, tag, None)

    def untagged(self) -> Reference:
        """The repository (or layout) itself, naming no version."""
        return Reference(self.kind, self.location, self.repository)

    def __str__(self) -> str:
        base = f"oci:{self.location}" if self.is_layout else f"{self.location}/{self.repository}"
        if self.digest:
            return f"{base}@{self.digest}"
        return f"{base}:{self.tag}" if self.tag else base


def check_tag(tag: str) -> str:
    """Return ``tag`` if it matches the OCI tag grammar.

    Raises:
        UsageError: it does not (at most 128 characters of ``[A-Za-z0-9_.-]``, not starting with . or -).
    """
    if not TAG_RE.match(tag):
        raise UsageError(f"bad tag {tag!r}", hint="tags are 1-128 characters of A-Z a-z 0-9 _ . - not starting with . or -")
    return tag


def parse_reference(text: str) -> Reference:
    """Parse ``oci:DIR[:TAG|@DIGEST]`` or ``HOST[:PORT]/REPO[:TAG|@DIGEST]``.

    Raises:
        UsageError: the text fits neither form; the message says which part is wrong.
    """
    if text.startswith("oci:"):
        return _parse_layout(text[4:])
    return _parse_registry(text)


def _split_version(text: str) -> tuple[str, str | None, str | None]:
    if "@" in text:
        base, _, digest = text.rpartition("@")
        if not DIGEST_RE.match(digest):
            raise UsageError(f"bad digest {digest!r}", hint="write @sha256: followed by 64 lowercase hex digits")
        return base, None, digest
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        return text[:colon], check_tag(text[colon + 1:]), None
    return text, None, None


def _parse_layout(rest: str) -> Reference:
    if not rest:
        raise UsageError("oci: needs a directory, e.g. oci:./models:v1")
    base, tag, digest = _split_version(rest)
    if not base:
        raise UsageError(f"oci:{rest}: no directory before the tag")
    return Reference("layout", base, "", tag, digest)


def _parse_registry(text: str) -> Reference:
    host, sep, rest = text.partition("/")
    if not sep or not rest:
        raise UsageError(f"cannot read reference {text!r}",
                         hint="use HOST[:PORT]/REPO[:TAG] for a registry or oci:DIR[:TAG] for a layout directory")
    if not HOST_RE.match(host) or ("." not in host and ":" not in host and host != "localhost"):
        raise UsageError(f"{text!r}: {host!r} is not a registry host",
                         hint="name the registry explicitly, e.g. registry.example.com/team/model:v1")
    repo, tag, digest = _split_version(rest)
    if not REPO_RE.match(repo) or len(repo) > MAX_REPO:
        raise UsageError(f"bad repository name {repo!r}",
                         hint="lowercase letters, digits and separators . _ __ - between path components /")
    return Reference("registry", host, repo, tag, digest)


def host_name(location: str) -> str:
    """The host part of ``host[:port]`` (brackets of an IPv6 literal removed)."""
    if location.startswith("["):
        return location[1:location.index("]")]
    if location.count(":") > 1:  # a bare IPv6 address (no port)
        return location
    return location.rpartition(":")[0] if ":" in location else location


def is_loopback(location: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1): the only hosts plain HTTP may reach."""
    host = host_name(location)
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_warning(reference: str) -> str | None:
    """What to warn about when ``--plain-http`` is given for ``reference``: None for loopback hosts and layouts.

    Plain HTTP works for any registry named explicitly (CI sidecars such as
    ``registry:5000``), but off the machine every byte, and any credentials, travel
    in clear.
    """
    try:
        ref = parse_reference(reference)
    except PtmError:
        return None
    if ref.is_layout or is_loopback(ref.location):
        return None
    return (f"--plain-http: speaking unencrypted HTTP to {ref.location}; blobs and any credentials travel in clear "
            f"(integrity still holds: every byte is checked against its digest)")
