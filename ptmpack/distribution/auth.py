"""Registry credentials and the HTTP authentication flows of the distribution API.

Where credentials come from, first match wins:

1. ``PTMPACK_REGISTRY_USER`` / ``PTMPACK_REGISTRY_PASSWORD`` (both set);
2. the containers ``auth.json`` that ``podman login`` and ``skopeo login`` write:
   ``$REGISTRY_AUTH_FILE``, else ``$XDG_RUNTIME_DIR/containers/auth.json``;
3. the Docker ``config.json`` (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``),
   which ``ptmpack login`` writes.

In both files: a ``credHelpers`` entry for the host, then an ``auths`` entry
(``auth`` = base64 ``user:password``), then the ``credsStore`` helper; helpers are
run as ``docker-credential-<name> get`` with the host on standard input (the
Docker credential-helper protocol). None found: anonymous. Every
:class:`Credentials` says where it came from, so a refusal can name the file.

:class:`RegistryAuth` answers a ``401`` challenge (``WWW-Authenticate``) that comes
from the registry's own origin (scheme, host, port) and from nowhere else: a
redirect target that asks for credentials gets none, so registry credentials
never reach another origin except the token service the registry itself names.
``Basic`` resends with the credentials; ``Bearer`` asks the challenge's token
``realm`` for a token with the challenge's ``service`` and ``scope`` (with the
credentials when there are any, anonymously otherwise) and resends with it. Tokens
are kept per scope and sent up front on later requests, so a pull costs one token
request.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import httpx

from ptmpack.distribution.reference import is_loopback
from ptmpack.errors import KeyAccessError, RegistryError, UsageError
from ptmpack.format.atomic import replace_file

ENV_USER = "PTMPACK_REGISTRY_USER"
ENV_PASSWORD = "PTMPACK_REGISTRY_PASSWORD"
HELPER_TIMEOUT_S = 30
MAX_TOKEN_BODY = 64 * 1024
"""Bytes of a token service's answer read (a token is a few KiB)."""
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


@dataclass(frozen=True)
class Credentials:
    """A user name and a password (or an access token used as one)."""

    username: str
    password: str
    source: str
    """Where they came from, for messages: 'environment', 'docker config PATH', 'containers auth.json PATH',
    'helper NAME'."""

    def __repr__(self) -> str:  # never print the secret
        return f"Credentials(username={self.username!r}, source={self.source!r})"


def find_credentials(host: str, env: dict[str, str] | None = None) -> Credentials | None:
    """The credentials for registry ``host`` (``host[:port]``), or None for anonymous access.

    Raises:
        UsageError: only one of the two environment variables is set, or config.json is unreadable.
        KeyAccessError: a credential helper named in config.json fails.
    """
    env = dict(os.environ) if env is None else env
    user, password = env.get(ENV_USER), env.get(ENV_PASSWORD)
    if user is not None or password is not None:
        if not user or password is None:
            raise UsageError(f"set both {ENV_USER} and {ENV_PASSWORD}, or neither")
        return Credentials(user, password, "environment")
    for path, label in credential_files(env):
        found = _from_file(path, label, host)
        if found is not None:
            return found
    return None


def docker_config_path(env: dict[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``: where ``ptmpack login`` stores credentials."""
    env = dict(os.environ) if env is None else env
    return Path(env["DOCKER_CONFIG"]) / "config.json" if env.get("DOCKER_CONFIG") else \
        Path.home() / ".docker" / "config.json"


def credential_files(env: dict[str, str] | None = None) -> list[tuple[Path, str]]:
    """The credential files read, in order, each with the label messages use."""
    env = dict(os.environ) if env is None else env
    out = []
    if env.get("REGISTRY_AUTH_FILE"):
        out.append((Path(env["REGISTRY_AUTH_FILE"]), "containers auth.json"))
    elif env.get("XDG_RUNTIME_DIR"):
        out.append((Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json", "containers auth.json"))
    out.append((docker_config_path(env), "docker config"))
    return out


def _from_file(path: Path, label: str, host: str) -> Credentials | None:
    if not path.is_file():
        return None
    config = read_config(path, label)
    source = f"{label} {path}"
    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict) and isinstance(helpers.get(host), str):
        return _from_helper(helpers[host], host)
    entry = _auth_entry(config.get("auths") or {}, host, source)
    if entry is not None:
        return entry
    if isinstance(config.get("credsStore"), str) and config["credsStore"]:
        return _from_helper(config["credsStore"], host)
    return None


def read_config(path: Path, label: str = "docker config") -> dict[str, object]:
    """A credential file as a JSON object ({} when it does not exist).

    Raises:
        UsageError: unreadable, or not a JSON object.
    """
    try:
        config = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {label} {path}: {exc}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{label} {path} is not a JSON object")
    return config


def store_credentials(host: str, username: str, password: str, env: dict[str, str] | None = None) -> Path:
    """Write ``host``'s credentials into the Docker config (``auths``, base64 ``user:password``); returns its path.

    Every other key of the file is kept; the file is replaced by rename and is readable by its owner only.
    """
    path = docker_config_path(env)
    config = read_config(path)
    auths = config.get("auths") if isinstance(config.get("auths"), dict) else {}
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    config["auths"] = {**auths, host: {"auth": token}}  # type: ignore[dict-item]
    _write_private(path, config)
    return path


def forget_credentials(host: str, env: dict[str, str] | None = None) -> Path | None:
    """Remove ``host`` from the Docker config's ``auths``; its path, or None when it held nothing for ``host``."""
    path = docker_config_path(env)
    config = read_config(path)
    auths = config.get("auths")
    if not isinstance(auths, dict):
        return None
    kept = {k: v for k, v in auths.items() if _host_of(str(k)) != host}
    if len(kept) == len(auths):
        return None
    config["auths"] = kept
    _write_private(path, config)
    return path


def _write_private(path: Path, config: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    replace_file(path, (json.dumps(config, indent=2) + "\n").encode("utf-8"))  # 0600 from the start


def _host_of(key: str) -> str:
    return re.sub(r"^https?://", "", key).split("/", 1)[0]


def _auth_entry(auths: object, host: str, source: str) -> Credentials | None:
    if not isinstance(auths, dict):
        return None
    for key, value in auths.items():
        if _host_of(str(key)) != host or not isinstance(value, dict):
            continue
        if isinstance(value.get("auth"), str) and value["auth"]:
            try:
                user, sep, password = base64.b64decode(value["auth"]).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                raise UsageError(f"{source}: the auth entry for {host} is not base64 of user:password") from None
            if sep:
                return Credentials(user, password, source)
        if isinstance(value.get("username"), str) and isinstance(value.get("password"), str):
            return Credentials(value["username"], value["password"], source)
    return None


def _from_helper(name: str, host: str) -> Credentials | None:
    exe = shutil.which(f"docker-credential-{name}")
    if exe is None:
        raise KeyAccessError(f"Docker config names credential helper {name!r}, but docker-credential-{name} is not on PATH")
    try:
        done = subprocess.run([exe, "get"], input=host.encode(), capture_output=True, timeout=HELPER_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KeyAccessError(f"credential helper docker-credential-{name} failed: {exc}") from None
    if done.returncode != 0:
        if b"credentials not found" in done.stdout.lower() + done.stderr.lower():
            return None
        raise KeyAccessError(f"credential helper docker-credential-{name} failed for {host}: "
                             f"{done.stderr.decode(errors='replace').strip()[:200]}")
    try:
        doc = json.loads(done.stdout)
        user, secret = doc["Username"], doc["Secret"]
    except (ValueError, KeyError, TypeError):
        raise KeyAccessError(f"credential helper docker-credential-{name} printed no Username/Secret") from None
    if user == "<token>":
        raise KeyAccessError(f"credential helper {name} holds an identity token for {host}; ptmpack needs a user and "
                             f"password or access token", hint=f"set {ENV_USER} and {ENV_PASSWORD}")
    return Credentials(str(user), str(secret), f"helper {name}")


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """The scheme (lowercase) and parameters of a ``WWW-Authenticate`` header."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3) for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


def origin_of(url: httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and port of a URL (the port made explicit): what "the same origin" compares."""
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, port


class RegistryAuth(httpx.Auth):
    """httpx authentication for one registry: Basic and Bearer-token challenges, tokens cached by scope."""

    def __init__(self, credentials: Credentials | None, origin: tuple[str, str, int | None],
                 fetch: Callable[[str, dict[str, str], dict[str, str]], tuple[int, bytes]]) -> None:
        self.credentials = credentials
        self.origin = origin
        """Only challenges from this origin are answered."""
        self.fetch = fetch
        """GET (url, query, headers) -> (status, body read to a bound): how the token service is asked. The
        registry client sends it with its own redirect rules, time limits and cancellation, without this auth."""
        self._realms: set[str] = set()
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}
        self._scope_locks: dict[str, threading.Lock] = {}
        self._current: str | None = None
        self.token_requests = 0

    def _basic(self) -> str:
        assert self.credentials is not None
        raw = f"{self.credentials.username}:{self.credentials.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        with self._lock:
            current = self._current
        if current is not None and "Authorization" not in request.headers:
            request.headers["Authorization"] = current
        response = yield request
        if response.status_code != 401 or "www-authenticate" not in response.headers:
            return
        if origin_of(response.url) != self.origin:
            return  # someone else asks: they get nothing of the registry's
        scheme, params = parse_challenge(response.headers["www-authenticate"])
        if scheme == "basic":
            if self.credentials is None:
                return
            header = self._basic()
        elif scheme == "bearer" and "realm" in params:
            scope = params.get("scope", "")
            with self._lock:
                scope_lock = self._scope_locks.setdefault(scope, threading.Lock())
            with scope_lock:  # parallel transfers meeting the same challenge share one token request
                with self._lock:
                    header = self._tokens.get(scope)
                if header is None or header == request.headers.get("Authorization"):
                    header = self._token(params)
                    if header is None:
                        return
                    with self._lock:
                        self._tokens[scope] = header
        else:
            return
        with self._lock:
            self._current = header
        request.headers["Authorization"] = header
        yield request

    def realm_host(self, host: str) -> bool:
        """True when ``host`` (``host[:port]``) is a token service this registry named."""
        with self._lock:
            return host in self._realms

    def _token(self, params: dict[str, str]) -> str | None:
        try:
            realm = httpx.URL(params["realm"])
        except httpx.InvalidURL:
            realm = None
        if realm is None or realm.scheme not in ("http", "https") or not realm.host:
            raise RegistryError(f"{self.origin[1]}:{self.origin[2]} names a token service that is not a URL: {params['realm'][:200]!r}")
        with self._lock:
            self._realms.add(realm.netloc.decode())
        if realm.scheme != "https" and not is_loopback(realm.host):
            raise KeyAccessError(f"the registry sends credentials to the token service {params['realm']} over "
                                 f"plain HTTP; refused", hint="the token realm must use HTTPS")
        query = {k: params[k] for k in ("service", "scope") if params.get(k)}
        headers = {"Authorization": self._basic()} if self.credentials is not None else {}
        self.token_requests += 1
        status, body = self.fetch(params["realm"], query, headers)
        if status in (401, 403):
            raise KeyAccessError(f"the token service {params['realm']} refused the credentials"
                                 + (f" from {self.credentials.source}" if self.credentials else " (none given)"),
                                 hint=f"check {ENV_USER}/{ENV_PASSWORD} or run 'ptmpack login'")
        if status != 200:
            return None
        try:
            doc = json.loads(body) if len(body) <= MAX_TOKEN_BODY else None
            token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        except ValueError:
            token = None
        if not isinstance(token, str) or not token:
            raise KeyAccessError(f"the token service {params['realm']} answered without a token")
        return f"Bearer {token}"
