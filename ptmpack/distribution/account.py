"""``login`` and ``logout``: keep a registry's credentials in the Docker config, as ``docker login`` does.

``login`` first checks the credentials against the registry's API root (``GET /v2/``,
answering its Basic or Bearer challenge), so a wrong password is refused (exit 4)
and never stored; then it writes ``auths[HOST] = {"auth": base64(user:password)}``
into ``$DOCKER_CONFIG/config.json`` (else ``~/.docker/config.json``), keeping every
other key, replaced by rename with mode 0600. Docker, podman, skopeo, oras and
ptmpack itself read that entry. ``logout`` removes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptmpack.distribution.auth import Credentials, forget_credentials, store_credentials
from ptmpack.distribution.reference import parse_reference
from ptmpack.distribution.stores import ClientOptions
from ptmpack.errors import UsageError


@dataclass(frozen=True)
class LoginReport:
    """Where the credentials of a registry host were stored."""

    host: str
    username: str
    path: str
    """The Docker config file written."""

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "command": "login", **self.__dict__}


@dataclass(frozen=True)
class LogoutReport:
    """Whether credentials of a registry host were removed, and from which file."""

    host: str
    removed: bool
    path: str

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "command": "logout", **self.__dict__}


def _host(host: str) -> str:
    """Check that ``host`` names a registry (``HOST[:PORT]``), not a repository or a layout."""
    if "/" in host or host.startswith("oci:") or not host:
        raise UsageError(f"{host!r} is not a registry host", hint="give HOST or HOST:PORT, e.g. ghcr.io or 127.0.0.1:5000")
    parse_reference(f"{host}/ptmpack-login")  # the reference rules: a valid host name and port
    return host


def login(host: str, username: str, password: str, client: ClientOptions | None = None) -> LoginReport:
    """Check ``username``/``password`` against the registry at ``host``, then store them.

    Raises:
        UsageError: a bad host or an empty user name or password.
        KeyAccessError: the registry refuses them (nothing is stored).
        NetworkError / RegistryError: the registry cannot be reached.
    """
    from ptmpack.distribution.registry import RegistryStore

    host = _host(host)
    if not username or not password:
        raise UsageError("login needs a user name and a password", hint="give --username and the password on stdin")
    store = RegistryStore(parse_reference(f"{host}/ptmpack-login"), client,
                          Credentials(username, password, "the password given to login"))
    try:
        store.ping()
    finally:
        store.close()
    return LoginReport(host, username, str(store_credentials(host, username, password)))


def logout(host: str) -> LogoutReport:
    """Remove ``host``'s entry from the Docker config (``removed`` False when there was none)."""
    from ptmpack.distribution.auth import docker_config_path

    host = _host(host)
    path = forget_credentials(host)
    return LogoutReport(host, path is not None, str(path or docker_config_path()))
