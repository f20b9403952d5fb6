"""Fixtures for the distribution tests: a real registry on loopback, real packages, an isolated cache.

The registry is Debian's ``docker-registry`` (CNCF distribution v2). Tests that need
it skip, saying why, only when the binary is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._support.registry import Registry, registry_available


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own content cache and no credentials from the user's environment."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg-runtime"))  # no containers auth.json of the user's
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("PTMPACK_REGISTRY_USER", raising=False)
    monkeypatch.delenv("PTMPACK_REGISTRY_PASSWORD", raising=False)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain-HTTP registry on 127.0.0.1 shared by the tests of one module."""
    if not registry_available():
        pytest.skip("docker-registry (Debian package docker-registry) is not installed")
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry of the test's own, for tests that kill it or damage its storage."""
    if not registry_available():
        pytest.skip("docker-registry (Debian package docker-registry) is not installed")
    with Registry(tmp_path / "own-registry") as reg:
        yield reg

