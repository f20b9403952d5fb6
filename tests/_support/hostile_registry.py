"""A hostile OCI registry for tests: honest content served by a server that misbehaves on purpose.

``HostileRegistry`` serves what an OCI layout directory holds (pushed there by
``ptmpack push``) over HTTP on 127.0.0.1, with a second origin on 127.0.0.2 for
redirect targets and foreign token realms. One ``mode`` picks the misbehaviour
(one per finding of the adversarial review, issue 18); ``"honest"`` behaves like
a registry. Tests may also rewrite what is served (``edit_config``,
``edit_recipe``, ``put_blob``) to make a registry lie about a package.

Everything is bounded: the servers stop by themselves after ``max_seconds``,
answer 503 after ``max_requests``, and stalling modes give up when stopped, so a
client that never hangs up cannot keep a test alive. Every request both origins
see is recorded (``seen``), with its headers, so tests can assert what was sent
where.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import socket
import ssl
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from tests._support.registry import Tls

MODES = (
    "honest",            # a registry that follows the distribution spec
    "redirect-auth",     # (1) Basic auth on the registry; blob GETs 307 to the other origin, which challenges with its own realm
    "downgrade",         # (11) HTTPS registry whose blob GETs 307 to plain HTTP on the other origin
    "gzip-bomb",         # (4) manifest GET answered gzip-encoded, expanding to bomb_bytes
    "zstd-bomb",         # (4) manifest GET answered zstd-encoded (not asked for), expanding to bomb_bytes
    "huge-error",        # (4) manifest GET answered 400 with an error body of error_bytes
    "bad-gzip",          # (10) manifest GET claims gzip, sends garbage
    "redirect-loop",     # (10) manifest GET redirects to itself forever
    "bad-realm",         # (10) 401 with a Bearer realm that is not a URL
    "dead-realm",        # (16) 401 with a Bearer realm on a port where nothing listens
    "realm-bomb",        # (4) 401 naming a token realm on the other origin, which answers with a zstd bomb
    "realm-redirect",    # (1) 401 naming its own token realm, which redirects (307) to the other origin
    "stall",             # (5, 6) GETs of blobs over slow_over bytes send half the body, then nothing until stopped
    "trickle",           # (6) GETs of blobs over slow_over bytes send one byte every trickle_s seconds
    "tag-pages",         # (7) the tag list has a next page, always
    "busy",              # (9) every request answered 503
)


@dataclass(frozen=True)
class Seen:
    """One request as a server saw it."""

    origin: str
    """'main' (127.0.0.1) or 'other' (127.0.0.2)."""
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Content:
    """Manifests by tag and blobs by digest, as a registry holds them."""

    repository: str
    tags: dict[str, str] = field(default_factory=dict)
    """tag -> manifest digest"""
    manifests: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class HostileRegistry:
    """Two loopback origins serving ``Content`` in one ``mode``; use as a context manager."""

    def __init__(self, mode: str = "honest", *, repository: str = "hostile/model", tls: Tls | None = None,
                 user: str = "alice", password: str = "s3cret-pw", max_requests: int = 3000,
                 max_seconds: float = 90.0, bomb_bytes: int = 512 * 1024 * 1024,
                 error_bytes: int = 200 * 1024 * 1024, trickle_s: float = 20.0, slow_over: int = 64 * 1024) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.content = Content(repository)
        self.tls = tls
        self.user, self.password = user, password
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.bomb_bytes, self.error_bytes, self.trickle_s = bomb_bytes, error_bytes, trickle_s
        self.slow_over = slow_over
        self.seen: list[Seen] = []
        self.body_bytes_sent = 0
        """Bytes of response bodies written (counted as they leave, for the huge-error mode)."""
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._servers: list[_Server] = []
        self._main = self._server("127.0.0.1", "main", tls)
        self._other = self._server("127.0.0.2", "other", None)
        self.host = f"127.0.0.1:{self._main.server_address[1]}"
        self.other = f"127.0.0.2:{self._other.server_address[1]}"
        self.scheme = "https" if tls is not None else "http"

    # content
    def load_layout(self, layout: Path) -> HostileRegistry:
        """Serve every tag, manifest and blob of an OCI layout directory."""
        index = json.loads((layout / "index.json").read_text())
        for blob in (layout / "blobs" / "sha256").iterdir():
            self.content.blobs["sha256:" + blob.name] = blob.read_bytes()
        for desc in index["manifests"]:
            tag = desc.get("annotations", {}).get("org.opencontainers.image.ref.name")
            self.content.manifests[desc["digest"]] = self.content.blobs[desc["digest"]]
            if tag:
                self.content.tags[tag] = desc["digest"]
        return self

    def put_blob(self, data: bytes) -> str:
        digest = digest_of(data)
        self.content.blobs[digest] = data
        return digest

    def manifest(self, tag: str) -> dict[str, Any]:
        return json.loads(self.content.manifests[self.content.tags[tag]])

    def set_manifest(self, tag: str, doc: dict[str, Any]) -> str:
        data = _canonical(doc)
        digest = digest_of(data)
        self.content.manifests[digest] = data
        self.content.tags[tag] = digest
        return digest

    def edit_config(self, tag: str, edit: Callable[[dict[str, Any]], None]) -> None:
        """Rewrite the package config blob of ``tag`` (and its manifest) with ``edit``."""
        doc = self.manifest(tag)
        config = json.loads(self.content.blobs[doc["config"]["digest"]])
        edit(config)
        data = _canonical(config)
        doc["config"] = {**doc["config"], "digest": self.put_blob(data), "size": len(data)}
        self.set_manifest(tag, doc)

    def recipe(self, tag: str) -> tuple[dict[str, Any], bytes]:
        """The recipe of ``tag``: its JSON document and its literal bytes."""
        raw = zstandard.ZstdDecompressor().decompress(self.content.blobs[self.manifest(tag)["layers"][0]["digest"]])
        (n,) = struct.unpack_from("<I", raw, 8)
        return json.loads(raw[12:12 + n]), raw[12 + n:]

    def set_recipe(self, tag: str, recipe_blob: bytes, extra_layers: tuple[dict[str, Any], ...] = ()) -> None:
        """Replace the recipe blob of ``tag`` (already encoded) and append ``extra_layers`` to its manifest."""
        doc = self.manifest(tag)
        doc["layers"][0] = {**doc["layers"][0], "digest": self.put_blob(recipe_blob), "size": len(recipe_blob)}
        doc["layers"] += list(extra_layers)
        self.set_manifest(tag, doc)

    def edit_recipe(self, tag: str, edit: Callable[[dict[str, Any]], None]) -> None:
        """Rewrite the recipe document of ``tag`` with ``edit`` and re-encode it."""
        doc, literals = self.recipe(tag)
        edit(doc)
        head = _canonical(doc)
        blob = zstandard.ZstdCompressor().compress(b"PTMRCP\x00\x01" + len(head).to_bytes(4, "little") + head + literals)
        self.set_recipe(tag, blob)

    def requests_to(self, origin: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.origin == origin]

    # servers
    def _server(self, address: str, origin: str, tls: Tls | None) -> _Server:
        owner = self

        class Handler(_Handler):
            registry = owner
            role = origin

        server = _Server((address, 0), Handler)
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._servers.append(server)
        return server

    def __enter__(self) -> HostileRegistry:
        for server in self._servers:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._watchdog = threading.Timer(self.max_seconds, self.stop)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def stop(self) -> None:
        """Stop both origins (idempotent); stalled responses give up."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __exit__(self, *exc: object) -> None:
        self._watchdog.cancel()
        self.stop()


class _Server(http.server.ThreadingHTTPServer):
    """Threads that never block the test's exit, and a client hanging up is not an error worth a traceback."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, ssl.SSLError)):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    registry: HostileRegistry
    role: str
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        return

    # helpers
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            self.registry.body_bytes_sent += len(body)

    def _record(self) -> bool:
        reg = self.registry
        with reg._lock:
            reg.seen.append(Seen(self.role, self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
            over = len(reg.seen) > reg.max_requests
        if over or reg.stopped.is_set():
            self._send(503, b"request budget spent", {"Connection": "close"})
            self.close_connection = True
            return False
        return True

    def _origin(self, which: str, scheme: str | None = None) -> str:
        reg = self.registry
        if which == "main":
            return f"{scheme or reg.scheme}://{reg.host}"
        return f"{scheme or 'http'}://{reg.other}"

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._record():
            return
        try:
            (self._main if self.role == "main" else self._other)()
        except (TimeoutError, BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True

    # the registry
    def _main(self) -> None:
        reg, mode = self.registry, self.registry.mode
        if mode == "busy":
            return self._send(503, b'{"errors":[{"code":"UNAVAILABLE","message":"busy"}]}')
        if mode == "redirect-auth" and self.headers.get("Authorization") != _basic(reg.user, reg.password):
            return self._send(401, b"", {"WWW-Authenticate": 'Basic realm="hostile"'})
        if mode == "bad-realm":
            return self._send(401, b"", {"WWW-Authenticate": 'Bearer realm="http://[::1:bad",service="x"'})
        if mode == "dead-realm":
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            return self._send(401, b"", {"WWW-Authenticate": f'Bearer realm="http://127.0.0.1:{port}/token"'})
        if mode == "realm-redirect":
            if self.path.startswith("/token"):
                return self._send(307, b"", {"Location": f"{self._origin('other')}{self.path}"})
            realm = f"{self._origin('main')}/token"
            return self._send(401, b"", {"WWW-Authenticate": f'Bearer realm="{realm}",service="x"'})
        if mode == "realm-bomb":
            realm = f"{self._origin('other')}/token"
            return self._send(401, b"", {"WWW-Authenticate": f'Bearer realm="{realm}",service="x"'})
        path = self.path.split("?", 1)[0]
        if path == "/token":
            return self._send(200, b'{"token":"main-token"}', {"Content-Type": "application/json"})
        if path == "/v2/":
            return self._send(200, b"{}")
        m = re.fullmatch(r"/v2/(.+)/(manifests|blobs|tags)/(.+)", path)
        if m is None or m.group(1) != reg.content.repository:
            return self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no such repository"}]}')
        kind, target = m.group(2), m.group(3)
        if kind == "tags":
            return self._tags()
        if kind == "manifests":
            return self._manifest(target)
        return self._blob(target)

    def _tags(self) -> None:
        reg = self.registry
        if reg.mode == "tag-pages":
            page = int(re.search(r"last=p(\d+)", self.path).group(1)) if "last=p" in self.path else 0  # type: ignore[union-attr]
            body = json.dumps({"name": reg.content.repository, "tags": [f"p{page + 1}"]}).encode()
            link = f'</v2/{reg.content.repository}/tags/list?n=1&last=p{page + 1}>; rel="next"'
            return self._send(200, body, {"Content-Type": "application/json", "Link": link})
        body = json.dumps({"name": reg.content.repository, "tags": sorted(reg.content.tags)}).encode()
        self._send(200, body, {"Content-Type": "application/json"})

    def _manifest(self, target: str) -> None:
        reg, mode = self.registry, self.registry.mode
        if mode == "redirect-loop":
            return self._send(302, b"", {"Location": self.path})
        if mode == "bad-gzip":
            return self._send(200, b"this is not gzip at all" * 100, {"Content-Encoding": "gzip"})
        if mode == "gzip-bomb":
            return self._stream(200, _gzip_zeros(reg.bomb_bytes), {"Content-Encoding": "gzip",
                                                                  "Content-Type": "application/json"})
        if mode == "zstd-bomb":
            return self._stream(200, [_zstd_zeros(reg.bomb_bytes)], {"Content-Encoding": "zstd",
                                                                    "Content-Type": "application/json"})
        if mode == "huge-error":
            return self._huge_error()
        digest = reg.content.tags.get(target, target)
        data = reg.content.manifests.get(digest)
        if data is None:
            return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
        self._send(200, data, {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                               "Docker-Content-Digest": digest})

    def _huge_error(self) -> None:
        reg = self.registry
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(reg.error_bytes))
        self.end_headers()
        block = b" " * (1024 * 1024)
        left = reg.error_bytes
        while left and not reg.stopped.is_set():
            n = min(left, len(block))
            self.wfile.write(block[:n])
            reg.body_bytes_sent += n
            left -= n

    def _stream(self, status: int, chunks: list[bytes], headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(sum(len(c) for c in chunks)))
        self.end_headers()
        for c in chunks:
            if self.registry.stopped.is_set():
                return
            self.wfile.write(c)
            self.registry.body_bytes_sent += len(c)

    def _blob(self, digest: str) -> None:
        reg, mode = self.registry, self.registry.mode
        data = reg.content.blobs.get(digest)
        if data is None:
            return self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}')
        if self.command == "GET" and mode in ("redirect-auth", "downgrade"):
            return self._send(307, b"", {"Location": f"{self._origin('other', 'http')}{self.path}"})
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
        body = data[start:]
        status = 206 if m else 200
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
        if m:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if self.command == "HEAD" or mode not in ("stall", "trickle") or len(data) <= reg.slow_over:
            return self._send(status, body, headers)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "stall":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            reg.stopped.wait()
            return
        for i in range(len(body)):
            self.wfile.write(body[i:i + 1])
            self.wfile.flush()
            if reg.stopped.wait(reg.trickle_s):
                return

    # the second origin
    def _other(self) -> None:
        reg = self.registry
        path = self.path.split("?", 1)[0]
        if path == "/token" and reg.mode == "realm-bomb":
            return self._stream(200, [_zstd_zeros(reg.bomb_bytes)], {"Content-Encoding": "zstd"})
        if path == "/token":
            return self._send(200, b'{"token":"stolen"}', {"Content-Type": "application/json"})
        if reg.mode == "redirect-auth":
            realm = f"{self._origin('other')}/token"
            return self._send(401, b"", {"WWW-Authenticate": f'Bearer realm="{realm}",service="evil"'})
        m = re.fullmatch(r"/v2/(.+)/blobs/(.+)", path)
        data = reg.content.blobs.get(m.group(2)) if m else None
        if data is None:
            return self._send(404)
        self._send(200, data, {"Content-Type": "application/octet-stream"})


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


_GZIP_CACHE: dict[int, list[bytes]] = {}


def _gzip_zeros(size: int) -> list[bytes]:
    """A gzip stream of ``size`` zero bytes, in pieces (built once per size)."""
    if size not in _GZIP_CACHE:
        comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        block = bytes(1024 * 1024)
        out = [comp.compress(block) for _ in range(size // len(block))]
        out.append(comp.flush())
        _GZIP_CACHE[size] = [c for c in out if c]
    return _GZIP_CACHE[size]


def served(layout: Path, packages: dict[str, Path], mode: str = "honest", **kw: Any) -> HostileRegistry:
    """A hostile registry serving ``packages`` (tag -> .ptm), pushed first to the OCI layout ``layout``."""
    import pytest

    from ptmpack import api

    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
    except OSError:
        pytest.skip("the hostile registry's second origin needs 127.0.0.2 (all of 127/8 is loopback on Linux)")
    for tag, package in packages.items():
        api.push(package, f"oci:{layout}:{tag}")
    return HostileRegistry(mode, **kw).load_layout(layout)


def limited(cmd: list[str], *, address_space: int | None = None, file_size: int | None = None,
            env: dict[str, str] | None = None, timeout: float = 120.0) -> tuple[int, str, int]:
    """Run ``cmd`` under resource limits; its exit code (negative: killed by that signal), stderr and peak RSS (KiB).

    The limits are set in the child only (``RLIMIT_AS``, ``RLIMIT_FSIZE`` with SIGXFSZ
    ignored, so an over-long write fails with EFBIG instead of killing it).
    """
    import os
    import resource
    import signal
    import subprocess
    import sys

    def cap() -> None:
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        if file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    wrapper = ("import resource, subprocess, sys\n"
               "rc = subprocess.call(sys.argv[1:])\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
               "sys.exit(rc if rc >= 0 else 128 - rc)\n")
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, preexec_fn=cap, check=False)
    lines = proc.stderr.rstrip("\n").rsplit("\n", 1)
    rss = int(lines[-1]) if lines[-1].isdigit() else -1
    code = proc.returncode if proc.returncode < 128 else -(proc.returncode - 128)
    return code, lines[0] if len(lines) > 1 else "", rss


def _zstd_zeros(size: int) -> bytes:
    """One zstd frame of ``size`` zero bytes (a few KiB), written as a stream so it is never held whole."""
    import io

    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(out, size=size, closefd=False) as writer:
        block = bytes(1024 * 1024)
        for _ in range(size // len(block)):
            writer.write(block)
    return out.getvalue()
