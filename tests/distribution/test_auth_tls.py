"""HTTPS with a private CA, htpasswd basic auth, a bearer-token realm, credential sources, uploads and mounts."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ptmpack.distribution import ClientOptions, NetworkError, PullOptions, PushOptions, ls_ref, pull, push
from ptmpack.distribution.auth import find_credentials, parse_challenge
from ptmpack.errors import KeyAccessError, UsageError
from tests._support.registry import Registry, TokenServer, make_tls, registry_available, write_htpasswd
from tests.distribution.packages import pack_kind, write_model_tree

USER, PASSWORD = "alice", "s3cret-pass"
pytestmark = pytest.mark.skipif(not registry_available(),
                                reason="docker-registry (Debian package docker-registry) is not installed")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pkg")
    return pack_kind(write_model_tree(folder / "tree", rows=6000), folder / "p.ptm", "zstd")


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTMPACK_REGISTRY_USER", USER)
    monkeypatch.setenv("PTMPACK_REGISTRY_PASSWORD", PASSWORD)


def test_https_with_private_ca(tmp_path: Path, package: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    with Registry(tmp_path / "reg", tls=tls) as reg:
        ref = f"{reg.host}/secure/model:v1"
        with pytest.raises(NetworkError):  # verification is on by default: an unknown CA is refused
            push(package, ref)
        client = ClientOptions(ca_file=tls.ca_file)
        push(package, ref, PushOptions(client=client))
        pull(ref, tmp_path / "out.ptm", PullOptions(client=client))
        assert (tmp_path / "out.ptm").read_bytes() == package.read_bytes()


@pytest.fixture
def basic_registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "reg", htpasswd=write_htpasswd(tmp_path / "htpasswd", USER, PASSWORD)) as reg:
        yield reg


def test_basic_auth(basic_registry: Registry, tmp_path: Path, package: Path, creds: None,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    ref = f"{basic_registry.host}/private/model:v1"
    plain = ClientOptions(plain_http=True)
    push(package, ref, PushOptions(client=plain))
    pull(ref, tmp_path / "out.ptm", PullOptions(client=plain))
    assert (tmp_path / "out.ptm").read_bytes() == package.read_bytes()
    monkeypatch.setenv("PTMPACK_REGISTRY_PASSWORD", "wrong")
    with pytest.raises(KeyAccessError) as err:
        pull(ref, tmp_path / "out2.ptm", PullOptions(client=plain))
    assert err.value.exit_code == 4 and "environment" in err.value.message
    monkeypatch.delenv("PTMPACK_REGISTRY_USER")
    monkeypatch.delenv("PTMPACK_REGISTRY_PASSWORD")
    with pytest.raises(KeyAccessError):  # anonymous
        ls_ref(ref, plain)


def test_token_realm(tmp_path: Path, package: Path, creds: None, monkeypatch: pytest.MonkeyPatch) -> None:
    token = TokenServer(tmp_path / "token", USER, PASSWORD)
    try:
        with Registry(tmp_path / "reg", token=token) as reg:
            ref = f"{reg.host}/tokened/model:v1"
            plain = ClientOptions(plain_http=True)
            report = push(package, ref, PushOptions(client=plain))
            assert report.blobs_uploaded == report.blobs
            pull(ref, tmp_path / "out.ptm", PullOptions(client=plain))
            assert (tmp_path / "out.ptm").read_bytes() == package.read_bytes()
            # tokens are kept per scope and shared by the parallel transfers: a handful for ~60 requests
            assert 1 <= token.requests <= 5
            monkeypatch.setenv("PTMPACK_REGISTRY_PASSWORD", "wrong")
            with pytest.raises(KeyAccessError) as err:
                ls_ref(ref, plain)
            assert err.value.exit_code == 4
    finally:
        token.close()


def test_docker_config_and_credential_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir = tmp_path / "docker-config"
    config_dir.mkdir(exist_ok=True)
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config_dir / "config.json").write_text(json.dumps({"auths": {"https://reg.example:5000": {"auth": auth}},
                                                        "credsStore": "ptmtest"}))
    found = find_credentials("reg.example:5000")
    assert found is not None and (found.username, found.password) == (USER, PASSWORD)
    assert PASSWORD not in repr(found)
    # the credsStore helper speaks the docker-credential protocol: host on stdin, JSON on stdout
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-ptmtest"
    helper.write_text('#!/bin/sh\nread host\n[ "$1" = get ] || exit 1\n'
                      'if [ "$host" = "other.example" ]; then\n'
                      '  printf \'{"ServerURL":"%s","Username":"bob","Secret":"pw"}\' "$host"\n'
                      'else echo "credentials not found in native keychain"; exit 1; fi\n')
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    helped = find_credentials("other.example")
    assert helped is not None and (helped.username, helped.password, helped.source) == ("bob", "pw", "helper ptmtest")
    assert find_credentials("nobody.example") is None
    monkeypatch.setenv("PTMPACK_REGISTRY_USER", "env-user")
    with pytest.raises(UsageError):  # one of the pair is not enough
        find_credentials("reg.example:5000")


def test_challenge_parsing() -> None:
    scheme, params = parse_challenge('Bearer realm="https://auth.example/token",service="reg",'
                                     'scope="repository:a/b:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:a/b:pull,push"}


def test_plain_http_for_any_host_given_explicitly_with_a_warning() -> None:
    from ptmpack.distribution.reference import parse_reference, plain_http_warning
    from ptmpack.distribution.registry import RegistryStore

    store = RegistryStore(parse_reference("registry:5000/a/b:v1"), ClientOptions(plain_http=True))
    try:
        assert store.base == "http://registry:5000/v2/a/b"  # a CI sidecar: no refusal, nothing contacted yet
    finally:
        store.close()
    assert "registry:5000" in (plain_http_warning("registry:5000/a/b:v1") or "")
    assert plain_http_warning("127.0.0.1:5000/a/b") is None and plain_http_warning("localhost:5000/a") is None


def test_chunked_upload_and_cross_repository_mount(registry: Registry, package: Path, tmp_path: Path) -> None:
    plain = ClientOptions(plain_http=True, upload_chunk=256 * 1024)
    first = push(package, f"{registry.host}/team/source:v1", PushOptions(client=plain))
    assert first.blobs_uploaded == first.blobs  # blobs over 256 KiB went up in PATCH chunks
    mounted = push(package, f"{registry.host}/team/copy:v1",
                   PushOptions(client=plain, mount_from=("team/source",)))
    assert mounted.bytes_uploaded == 0 and mounted.blobs_mounted == mounted.blobs
    pull(f"{registry.host}/team/copy:v1", tmp_path / "out.ptm", PullOptions(client=plain))
    assert (tmp_path / "out.ptm").read_bytes() == package.read_bytes()
    # without --mount-from: the cache remembers which repository of this registry holds each blob
    auto = push(package, f"{registry.host}/team/third:v1", PushOptions(client=plain))
    assert auto.bytes_uploaded == 0 and auto.blobs_mounted == auto.blobs
    manual = push(package, f"{registry.host}/team/fourth:v1", PushOptions(client=plain, auto_mount=False))
    assert manual.blobs_mounted == 0 and manual.blobs_uploaded == manual.blobs
