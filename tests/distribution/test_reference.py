"""Reference parsing: both forms, canonical round trip, and every way a reference can be wrong."""

from __future__ import annotations

import pytest

from ptmpack.distribution.reference import is_loopback, parse_reference
from ptmpack.distribution.stores import residual_tag
from ptmpack.errors import UsageError

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "kind", "location", "repo", "tag", "digest"), [
    ("oci:./models", "layout", "./models", "", None, None),
    ("oci:/srv/models:v1.2", "layout", "/srv/models", "", "v1.2", None),
    (f"oci:models@{DIGEST}", "layout", "models", "", None, DIGEST),
    ("localhost:5000/bert", "registry", "localhost:5000", "bert", None, None),
    ("127.0.0.1:5000/team/bert-base:v2", "registry", "127.0.0.1:5000", "team/bert-base", "v2", None),
    (f"registry.example.com/a/b/c@{DIGEST}", "registry", "registry.example.com", "a/b/c", None, DIGEST),
    ("[::1]:5000/m:latest", "registry", "[::1]:5000", "m", "latest", None),
])
def test_parse_and_round_trip(text: str, kind: str, location: str, repo: str, tag: str | None,
                              digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.kind, ref.location, ref.repository, ref.tag, ref.digest) == (kind, location, repo, tag, digest)
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize("text", [
    "bert",                              # no host
    "bert/base:v1",                      # "bert" is no registry host
    "localhost:5000/",                   # no repository
    "localhost:5000/Bert",               # uppercase repository
    "localhost:5000/a//b",               # empty path component
    "localhost:5000/a:-v1",              # tag starting with -
    "localhost:5000/a:" + "x" * 129,     # tag too long
    "localhost:5000/a@sha256:abc",       # short digest
    "localhost:5000/a@md5:" + "0" * 32,  # not sha256
    "oci:",                              # no directory
])
def test_bad_references_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_reference(text)


def test_loopback() -> None:
    assert is_loopback("localhost:5000") and is_loopback("127.0.0.1:80") and is_loopback("[::1]:5000")
    assert is_loopback("127.8.9.10") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1:5000") and not is_loopback("registry.example.com")


def test_residual_tag() -> None:
    base = "0123456789abcdef" * 4
    assert residual_tag("v2", base) == "v2.residual-0123456789abcdef"
    with pytest.raises(UsageError):
        residual_tag("x" * 103, base)
