"""A repository on an OCI distribution registry, spoken to with httpx.

httpx gives a pooled, thread-safe client with streaming bodies, so blobs move in
parallel over kept-alive connections without ever being held whole in memory.
Every verb of the distribution API that push and pull need is here: manifests
(GET/HEAD/PUT), blob existence (HEAD), uploads (POST then PUT for small blobs,
POST/PATCH.../PUT for large ones, cross-repository mounts), resumable blob
downloads (GET with ``Range``) and the tag list.

The registry is trusted for availability only (docs/SECURITY.md §8), so this
module bounds what it can make the client do: every body is streamed and read to
at most its limit + 1 (gzip decoded here, under the same bound; other encodings
refused), error bodies to 64 KiB; redirects are
followed here, at most five, never from HTTPS down to HTTP, and a hop to another
origin is sent without credentials; transfers slower than the speed limit, or
past the overall deadline, stop with a message naming the object; the tag list
is read for at most ``MAX_TAG_PAGES`` pages; :meth:`RegistryStore.cancel` makes
every in-flight transfer fail at once (Ctrl-C). Failures become PtmErrors:
401/403 → :class:`KeyAccessError` (exit 4); unreachable, TLS, timeouts, too slow
→ :class:`NetworkError` (exit 9); a registry answering an error or breaking the
protocol → :class:`RegistryError` (exit 9). Nothing of httpx escapes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ptmpack.distribution.auth import (
    ENV_PASSWORD,
    ENV_USER,
    MAX_TOKEN_BODY,
    Credentials,
    RegistryAuth,
    find_credentials,
    origin_of,
)
from ptmpack.distribution.http import read_bounded
from ptmpack.distribution.oci import (
    ACCEPT_MANIFESTS,
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MAX_MANIFEST_BYTES,
    sha256_digest,
)
from ptmpack.distribution.receive import HashBehind, receive_body, socket_of
from ptmpack.distribution.reference import Reference
from ptmpack.distribution.storetypes import BlobTarget, ClientOptions
from ptmpack.errors import (
    IntegrityError,
    KeyAccessError,
    NetworkError,
    PtmError,
    RegistryError,
    UsageError,
)
from ptmpack.jsonio import loads_strict

MAX_REDIRECTS = 5
MAX_ERROR_BODY = 64 * 1024
"""Bytes of an error answer read (for its message); the rest is never received."""
MAX_TAGS_BODY = 4 * 1024 * 1024
TAGS_PAGE = 1000
MAX_TAG_PAGES = 100
"""Tag-list pages followed (100,000 tags); a registry that keeps sending ``Link: next`` is refused."""
_NO_AUTH: Any = None


@dataclass(frozen=True)
class Reply:
    """A registry's answer, its body read to a bound: what every non-streaming verb looks at."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    url: httpx.URL

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def links(self) -> dict[str | None, dict[str, str]]:
        return httpx.Response(self.status_code, headers=self.headers).links


class RegistryStore:
    """One repository of one registry. Thread-safe: blobs may be moved from several threads."""

    def __init__(self, ref: Reference, options: ClientOptions | None = None,
                 credentials: Credentials | bool | None = True) -> None:
        """``credentials``: True finds them (see :mod:`.auth`); None is anonymous; else these."""
        options = options or ClientOptions()
        self.ref = ref
        self.options = options
        scheme = "http" if options.plain_http else "https"
        self.base = f"{scheme}://{ref.location}/v2/{ref.repository}"
        self.origin = origin_of(httpx.URL(self.base))
        if options.ca_file is not None and not Path(options.ca_file).is_file():
            raise UsageError(f"CA file {options.ca_file} does not exist")
        verify = _tls_context(*_ca_key(options.ca_file))
        found = find_credentials(ref.location) if credentials is True else credentials
        self.auth = RegistryAuth(found if isinstance(found, Credentials) else None, self.origin, self._fetch_token)
        limits = httpx.Limits(max_connections=options.workers + 2, max_keepalive_connections=options.workers + 2)
        transport = httpx.HTTPTransport(verify=verify, limits=limits, socket_options=[
            (socket.SOL_SOCKET, socket.SO_RCVBUF, options.receive_buffer)] if options.receive_buffer else None)
        self.client = httpx.Client(auth=self.auth, transport=transport, timeout=options.timeout_s,
                                   follow_redirects=False,
                                   headers={"User-Agent": "ptmpack", "Accept-Encoding": "gzip, deflate"})
        self.deadline = time.monotonic() + options.deadline_s if options.deadline_s else None
        self.cancelled = threading.Event()
        self._live: set[socket.socket] = set()
        self._live_lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def cancel(self) -> None:
        """Make every transfer in flight fail now and every later one refuse to start (Ctrl-C, SIGTERM)."""
        self.cancelled.set()
        with self._live_lock:
            live = list(self._live)
        for sock in live:  # shutdown, unlike close, wakes a thread blocked reading the socket
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # plumbing
    def _timeout(self, method: str, what: str) -> httpx.Timeout:
        """Per request, ending by the deadline: for reads the read timeout is the speed window (a silent peer is
        too slow); an upload's answer may take the registry longer (it digests the blob), so it gets timeout_s."""
        if self.cancelled.is_set():
            raise _Final(f"{what}: cancelled")
        read = min(self.options.timeout_s, self.options.speed_time_s) if method in ("GET", "HEAD") \
            else self.options.timeout_s
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise _Final(f"{what} did not finish within the {self.options.deadline_s:g} s time limit "
                             f"({self.ref.location})", hint="raise --timeout, or try again later")
            read = min(read, left)
        return httpx.Timeout(self.options.timeout_s, read=max(read, 0.001))

    def _fetch_token(self, realm: str, query: dict[str, str], headers: dict[str, str]) -> tuple[int, bytes]:
        """Ask the token service the registry named (for :class:`RegistryAuth`): status and bounded body."""
        url = str(httpx.URL(realm).copy_merge_params(query))
        with self._open("GET", url, f"token request to {httpx.URL(realm).netloc.decode()}", headers=headers,
                        authenticate=False) as r:
            return r.status_code, read_bounded(r, MAX_TOKEN_BODY)

    @contextlib.contextmanager
    def _open(self, method: str, url: str, what: str, *, headers: dict[str, str] | None = None,
              content: bytes | list[bytes] | _Body | None = None, authenticate: bool = True) -> Iterator[httpx.Response]:
        """A streaming response, redirects followed here (see the module docstring); closed on leaving.

        The registry's authentication is applied only to its own origin (and never when ``authenticate``
        is False: the token request carries its own header)."""
        hops = 0
        while True:
            same = authenticate and origin_of(httpx.URL(url)) == self.origin
            try:
                request = self.client.build_request(method, url, headers=headers, content=content,
                                                    timeout=self._timeout(method, what))
                response = self.client.send(request, stream=True, **({} if same else {"auth": _NO_AUTH}))
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise self._network_error(exc, what) from None
            location = response.headers.get("location")
            if response.status_code not in (301, 302, 303, 307, 308) or not location:
                break
            response.close()  # a redirect's body is never read
            hops += 1
            if hops > MAX_REDIRECTS:
                raise RegistryError(f"{self.ref.location}: {what}: more than {MAX_REDIRECTS} redirects",
                                    hint="the registry redirects in a loop")
            try:
                target = response.url.join(location)
            except httpx.InvalidURL:
                raise RegistryError(f"{self.ref.location}: {what}: redirect to a malformed URL") from None
            if target.scheme not in ("http", "https") or (response.url.scheme == "https" and target.scheme != "https"):
                raise RegistryError(f"{self.ref.location}: {what}: refused a redirect from {response.url.scheme} to "
                                    f"{target.scheme}://{target.netloc.decode()} (the bytes would travel in clear)",
                                    hint="a registry on HTTPS must keep its redirects on HTTPS")
            if response.status_code == 303:
                method, content = "GET", None
            if headers and origin_of(target) != origin_of(response.url):  # e.g. a token request's Basic header
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = str(target)
        sock = socket_of(response)
        if sock is not None:
            with self._live_lock:
                self._live.add(sock)
        try:
            yield response
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._network_error(exc, what) from None
        finally:
            if sock is not None:
                with self._live_lock:
                    self._live.discard(sock)
            response.close()

    def _request(self, method: str, url: str, what: str, *, limit: int = MAX_ERROR_BODY,
                 headers: dict[str, str] | None = None, content: bytes | list[bytes] | _Body | None = None) -> Reply:
        """Send, read the body to at most ``limit`` + 1 bytes (error bodies to 64 KiB), check authorization.

        GET and HEAD answered 429 or 5xx are retried (``retries`` times, growing pauses).
        """
        attempt = 0
        while True:
            with self._open(method, url, what, headers=headers, content=content) as response:
                bound = limit if response.status_code < 300 else min(limit, MAX_ERROR_BODY)
                body = read_bounded(response, bound)
                reply = Reply(response.status_code, response.headers, body, response.url)
            busy = reply.status_code == 429 or reply.status_code >= 500
            if busy and method in ("GET", "HEAD") and attempt < self.options.retries:
                attempt += 1
                self._pause(attempt, what)
                continue
            self._check_auth(reply, what)
            return reply

    def _pause(self, attempt: int, what: str) -> None:
        """Back off before retry ``attempt``; a cancel ends the wait at once."""
        if self.cancelled.wait(min(4.0, 0.25 * 2 ** (attempt - 1))):
            raise _Final(f"{what}: cancelled")

    def _network_error(self, exc: Exception, what: str) -> NetworkError:
        """The PtmError for an httpx failure: names the host that failed (the registry, a redirect target or the
        token service) and what was being moved, with a hint."""
        try:
            host = exc.request.url.netloc.decode() if isinstance(exc, httpx.RequestError) else self.ref.location
        except RuntimeError:
            host = self.ref.location
        who = self.ref.location if host == self.ref.location else f"{host} (reached through {self.ref.location})"
        if self.auth.realm_host(host):
            who = f"the token service {host} named by {self.ref.location}"
        text = str(exc) or type(exc).__name__
        if self.cancelled.is_set():
            return _Final(f"{what}: cancelled")
        if isinstance(exc, httpx.InvalidURL):
            return RegistryError(f"{self.ref.location}: {what}: the registry sent a malformed URL ({text})")
        if isinstance(exc, httpx.DecodingError):
            return RegistryError(f"{who}: {what}: the body does not decode as its Content-Encoding says ({text})")
        if isinstance(exc, httpx.ConnectError) and ("WRONG_VERSION_NUMBER" in text or "record layer" in text):
            return NetworkError(f"{who}: TLS handshake failed for {what} ({text})",
                                hint="the registry speaks plain HTTP? add --plain-http")
        if isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in text:
            return NetworkError(f"{who}: its TLS certificate is not trusted ({text})",
                                hint="for a private CA give --ca-file; verification is never switched off")
        if isinstance(exc, httpx.ConnectError):
            return NetworkError(f"cannot reach {who} for {what}: {text}",
                                hint="check the host and port, and that the registry runs")
        if isinstance(exc, httpx.TimeoutException):
            return NetworkError(f"{who}: no answer for {what} within {self.options.speed_time_s:g} s",
                                hint="the network or the registry is too slow; raise --speed-time or try again")
        return NetworkError(f"{who}: {what} failed: {type(exc).__name__}: {text}", hint="try again")

    def _check_auth(self, reply: Reply | httpx.Response, what: str) -> None:
        if reply.status_code not in (401, 403):
            return
        where = reply.url.netloc.decode()
        if origin_of(reply.url) != self.origin:
            raise KeyAccessError(f"{where}, where {self.ref.location} redirected {what}, asks for credentials "
                                 f"(HTTP {reply.status_code})",
                                 hint="ptmpack sends registry credentials only to the registry itself")
        who = f" (credentials from {self.auth.credentials.source})" if self.auth.credentials else " (anonymous)"
        raise KeyAccessError(f"{self.ref.location} refused {what}{who}: HTTP {reply.status_code}",
                             hint=f"check those credentials, or run 'ptmpack login {self.ref.location}'"
                                  if self.auth.credentials else
                                  f"run 'ptmpack login {self.ref.location}' or set {ENV_USER}/{ENV_PASSWORD}")

    def _fail(self, reply: Reply, what: str) -> RegistryError:
        detail = ""
        with contextlib.suppress(Exception):
            errs = reply.json().get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs)[:300]
        return RegistryError(f"{self.ref.location}: {what}: HTTP {reply.status_code}" + (f" ({detail})" if detail else ""))

    def ping(self) -> None:
        """GET the API root ``/v2/`` (with the credentials, answering its challenge): what ``login`` checks.

        Raises:
            KeyAccessError: the registry refuses the credentials.
            NetworkError / RegistryError: unreachable, or not a distribution registry.
        """
        root = self.base[: self.base.index("/v2/") + 4]
        r = self._request("GET", root, "the API root /v2/")
        if r.status_code != 200:
            raise self._fail(r, "the API root /v2/ (is this an OCI registry?)")

    # manifests and tags
    def get_manifest(self, target: str) -> tuple[bytes, str] | None:
        """The manifest a tag or digest names and its digest, or None when the repository has none.

        Raises:
            IntegrityError: the bytes do not match the digest asked for or announced.
        """
        what = f"manifest {self.ref.repository}:{target}"
        r = self._request("GET", f"{self.base}/manifests/{target}", what, headers={"Accept": ACCEPT_MANIFESTS},
                          limit=MAX_MANIFEST_BYTES)
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise self._fail(r, what)
        data = r.content
        if len(data) > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"{self.ref.location}: {what} is larger than any manifest may be "
                                 f"({MAX_MANIFEST_BYTES} bytes); stopped reading it")
        digest = sha256_digest(data)
        announced = r.headers.get("docker-content-digest")
        if (target.startswith("sha256:") and digest != target) or (announced and announced != digest):
            raise IntegrityError(f"{what}: the bytes received do not match their digest")
        return data, digest

    def head_manifest(self, target: str) -> str | None:
        what = f"manifest {self.ref.repository}:{target}"
        r = self._request("HEAD", f"{self.base}/manifests/{target}", what, headers={"Accept": ACCEPT_MANIFESTS})
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise self._fail(r, what)
        return r.headers.get("docker-content-digest")

    def put_manifest(self, data: bytes, tag: str | None, artifact_type: str) -> tuple[str, bool]:
        """Upload a manifest under ``tag`` (or by digest); returns (digest, whether anything changed)."""
        digest = sha256_digest(data)
        target = tag or digest
        if self.head_manifest(target) == digest:
            return digest, False
        what = f"manifest upload {self.ref.repository}:{target}"
        r = self._request("PUT", f"{self.base}/manifests/{target}", what, content=data,
                          headers={"Content-Type": MANIFEST_MEDIA_TYPE})
        if r.status_code not in (200, 201):
            raise self._fail(r, what)
        return digest, True

    def tags(self, limit: int | None = None) -> list[str]:
        """The tags of the repository, following the ``Link`` pagination for at most ``MAX_TAG_PAGES`` pages;
        with ``limit``, only the first page of at most that many tags (for a hint).

        Raises:
            UsageError: the repository does not exist (exit 2).
            RegistryError: more pages than ``MAX_TAG_PAGES``, or an error answer.
        """
        out: list[str] = []
        url: str | None = f"{self.base}/tags/list?n={min(limit or TAGS_PAGE, TAGS_PAGE)}"
        what = f"tag list of {self.ref.repository}"
        for _ in range(MAX_TAG_PAGES):
            r = self._request("GET", url, what, limit=MAX_TAGS_BODY)  # type: ignore[arg-type]
            if r.status_code == 404:
                raise UsageError(f"{self.ref.location}/{self.ref.repository}: no such repository",
                                 hint="check the name; 'ptmpack push' creates a repository")
            if r.status_code != 200:
                raise self._fail(r, what)
            try:
                page = r.json().get("tags") or []
            except (ValueError, AttributeError):
                raise RegistryError(f"{self.ref.location}: {what} is not the JSON the distribution API says") from None
            out += [t for t in page if isinstance(t, str)]
            link = r.links.get("next", {}).get("url")
            if not link or limit is not None:
                return sorted(set(out))[:limit]
            try:
                url = str(r.url.join(link))
            except httpx.InvalidURL:
                raise RegistryError(f"{self.ref.location}: {what}: the next-page link is malformed") from None
        raise RegistryError(f"{self.ref.location}: {what} goes on past {MAX_TAG_PAGES} pages; stopped",
                            hint="the registry keeps announcing a next page")

    # blobs
    def has_blob(self, digest: str, size: int) -> bool:
        r = self._request("HEAD", f"{self.base}/blobs/{digest}", f"blob {digest}")
        if r.status_code == 404:
            return False
        if r.status_code != 200:
            raise self._fail(r, f"blob {digest}")
        length = r.headers.get("content-length", "")
        return not length.isdigit() or int(length) == size

    def mount_blob(self, digest: str, source_repo: str) -> bool:
        """Ask the registry to link a blob from another repository; True when it did."""
        r = self._request("POST", f"{self.base}/blobs/uploads/?mount={digest}&from={source_repo}", f"mount of {digest}")
        if r.status_code == 201:
            return True
        if r.status_code == 202 and r.headers.get("location"):  # not mounted: an upload session was opened; drop it
            with contextlib.suppress(PtmError):
                self._request("DELETE", self._location(r), "cancel upload")
        return False

    def _location(self, r: Reply) -> str:
        loc = r.headers.get("location")
        if not loc:
            raise RegistryError(f"{self.ref.location} answered an upload without a Location header")
        return str(r.url.join(loc))

    def put_blob(self, digest: str, size: int, read: Callable[[int, int], bytes],
                 progress: Callable[[int], None]) -> int:
        """Upload one blob: one PUT when small, PATCH chunks then PUT when large. Returns bytes sent."""
        what = f"upload of {digest}"
        r = self._request("POST", f"{self.base}/blobs/uploads/", what)
        if r.status_code != 202:
            raise self._fail(r, what)
        location = self._location(r)
        chunk = max(1, self.options.upload_chunk)
        if size <= chunk:
            r = self._request("PUT", _with_digest(location, digest), what, content=_Body(read, 0, size, progress),
                              headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
            self._check_committed(r, what)
            return size
        sent = 0
        while sent < size:
            n = min(chunk, size - sent)
            r = self._request("PATCH", location, what, content=_Body(read, sent, n, progress), headers={
                "Content-Type": "application/octet-stream", "Content-Range": f"{sent}-{sent + n - 1}",
                "Content-Length": str(n)})
            if r.status_code != 202:
                raise self._fail(r, what)
            location = self._location(r)
            sent += n
        self._check_committed(self._request("PUT", _with_digest(location, digest), what), what)
        return size

    def _check_committed(self, r: Reply, what: str) -> None:
        if r.status_code == 201:
            return
        if r.status_code == 400 and "DIGEST_INVALID" in r.text:
            raise IntegrityError(f"{what}: the registry computed another digest (the file changed while read?)")
        raise self._fail(r, what)

    def fetch_blob_into(self, digest: str, size: int, target: BlobTarget, progress: Callable[[int], None]) -> int:
        """Download a blob into ``target`` after the bytes it already holds; returns bytes received.

        The digest is checked over the whole blob before returning (what was already
        there is re-read and hashed first). After a dropped connection the download is
        retried with ``Range: bytes=N-`` (``retries`` attempts, exponential back-off),
        so no byte already received is fetched again. Every write is recorded in
        ``target`` before the next read, so a killed process loses only what the
        kernel held.

        Raises:
            IntegrityError: the bytes do not match the digest (``target`` is recorded empty).
            RegistryError: the registry stayed unreachable through every retry.
        """
        count = [0]
        attempt, fresh_retry = 0, True
        while True:
            have = target.kept
            h = hashlib.sha256()
            try:
                if 0 < have <= size:
                    _hash_range(h, target, have)
                self._stream(digest, size, have, h, target, count, progress)
            except (_Restart, _Dropped) as exc:
                attempt += 1
                if self.cancelled.is_set():
                    raise NetworkError(f"download of blob {digest}: cancelled") from None
                if attempt > self.options.retries:
                    raise NetworkError(f"download of blob {digest} from {self.ref.location} failed after {attempt} "
                                       f"attempts: {exc}", hint="try again; the next pull resumes it") from None
                self._pause(attempt, f"download of blob {digest}")
                continue
            except IntegrityError:
                target.record(0)
                raise
            if "sha256:" + h.hexdigest() == digest and target.kept == size:
                return count[0]
            target.record(0)
            if have and fresh_retry:  # a stale partial from an earlier run: start over once
                fresh_retry = False
                continue
            raise IntegrityError(f"blob {digest} from {self.ref.location}/{self.ref.repository} does not match its "
                                 f"digest: the registry's copy is corrupt or was altered", hint="nothing was written")

    def _stream(self, digest: str, size: int, have: int, h: Any, target: BlobTarget, count: list[int],
                progress: Callable[[int], None]) -> None:
        if have > size:
            target.record(0)
            raise _Restart("partial download longer than the blob")
        if have == size:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        what = f"blob {digest}"
        try:
            with self._open("GET", f"{self.base}/blobs/{digest}", what, headers=headers) as r:
                self._check_auth(r, what)
                if r.status_code == 404:
                    raise IntegrityError(f"the manifest names blob {digest}, but {self.ref.location} does not have it")
                if have and r.status_code == 200:  # the server ignored Range: start again from zero
                    target.record(0)
                    raise _Restart("server ignored the Range request")
                if r.status_code == 429 or r.status_code >= 500:  # busy or failing: back off and resume
                    raise _Restart(f"HTTP {r.status_code}")
                if r.status_code not in (200, 206):
                    raise self._fail(Reply(r.status_code, r.headers, read_bounded(r, MAX_ERROR_BODY), r.url), what)
                pace = _Pace(self, what)

                def tick(n: int) -> None:
                    count[0] += n
                    progress(n)
                    pace.tick(n)

                with HashBehind(h) as behind:
                    receive_body(r, have, size, target, behind, tick, what)
        except NetworkError as exc:
            if isinstance(exc, (RegistryError, _Final)):
                raise
            raise _Dropped(exc.message) from None

    # ranges (chunk-index deltas, docs/DISTRIBUTION.md §2.3)
    def fetch_range(self, digest: str, start: int, length: int) -> bytes | None:
        """Exactly ``length`` bytes of a blob from ``start`` with one ``Range`` GET; None when the registry
        ignores ``Range`` (HTTP 200), so the caller downloads the blob whole instead.

        Raises:
            IntegrityError: the registry answered another range, or more or fewer bytes than asked.
        """
        what = f"blob {digest} bytes {start}-{start + length - 1}"
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        with self._open("GET", f"{self.base}/blobs/{digest}", what, headers=headers) as r:
            self._check_auth(r, what)
            if r.status_code == 200:
                return None
            if r.status_code == 404:
                raise IntegrityError(f"the manifest names blob {digest}, but {self.ref.location} does not have it")
            if r.status_code != 206:
                raise self._fail(Reply(r.status_code, r.headers, read_bounded(r, MAX_ERROR_BODY), r.url), what)
            served = r.headers.get("content-range", "")
            if not served.startswith(f"bytes {start}-{start + length - 1}/"):
                raise IntegrityError(f"{what}: the registry served {served[:80] or 'no Content-Range'} instead")
            data = bytearray()
            pace = _Pace(self, what)
            for block in r.iter_raw():
                data += block
                if len(data) > length:
                    raise IntegrityError(f"{what}: the registry sent more bytes than asked")
                pace.tick(len(block))
        if len(data) != length:
            raise IntegrityError(f"{what}: the registry sent {len(data)} bytes, {length} were asked")
        return bytes(data)

    # referrers (signatures, docs/DISTRIBUTION.md §2.4)
    def referrers(self, digest: str) -> list[dict[str, object]] | None:
        """The referrers API's list for a manifest digest; None when the registry has no referrers API (404)."""
        what = f"referrers of {digest}"
        r = self._request("GET", f"{self.base}/referrers/{digest}", what, headers={"Accept": INDEX_MEDIA_TYPE},
                          limit=MAX_MANIFEST_BYTES)
        if r.status_code in (404, 405):
            return None
        if r.status_code != 200:
            raise self._fail(r, what)
        if len(r.content) > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"{what}: larger than any index may be ({MAX_MANIFEST_BYTES} bytes); stopped reading it")
        doc = loads_strict(r.content, what)
        manifests = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(manifests, list):
            raise IntegrityError(f"{what}: the registry's answer is not an image index")
        return [m for m in manifests if isinstance(m, dict)]

    def put_index(self, data: bytes, tag: str) -> str:
        """Upload an OCI image index under ``tag`` (the referrers tag schema); returns its digest."""
        what = f"index upload {self.ref.repository}:{tag}"
        r = self._request("PUT", f"{self.base}/manifests/{tag}", what, content=data,
                          headers={"Content-Type": INDEX_MEDIA_TYPE})
        if r.status_code not in (200, 201):
            raise self._fail(r, what)
        return sha256_digest(data)


def _ca_key(ca_file: Path | str | None) -> tuple[str | None, int, int]:
    if ca_file is None:
        return None, 0, 0
    st = os.stat(ca_file)
    return str(ca_file), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=8)
def _tls_context(ca_file: str | None, mtime_ns: int, size: int) -> ssl.SSLContext:
    """The TLS trust store of a store: ``ca_file`` alone, else httpx's default (certifi). Built once per process
    and CA file version: loading a trust store takes about 50 ms, which every store paid again (contexts are safe
    to share between clients)."""
    if ca_file is None:
        return httpx.create_ssl_context()
    return ssl.create_default_context(cafile=ca_file)


class _Pace:
    """The low-speed limit (like curl's ``--speed-limit``/``--speed-time``) and the overall deadline of one transfer."""

    def __init__(self, store: RegistryStore, what: str) -> None:
        self.store, self.what = store, what
        self.limit, self.window = store.options.speed_limit, store.options.speed_time_s
        self.start, self.got = time.monotonic(), 0

    def tick(self, n: int) -> None:
        """Count ``n`` bytes; raise when the window closed below the limit or the deadline passed."""
        now = time.monotonic()
        self.got += n
        store = self.store
        if store.cancelled.is_set():
            raise _Final(f"{self.what}: cancelled")
        if store.deadline is not None and now > store.deadline:
            raise _Final(f"{self.what} from {store.ref.location} did not finish within the "
                               f"{store.options.deadline_s:g} s time limit", hint="raise --timeout, or try again later")
        if now - self.start >= self.window:
            if self.got < self.limit * (now - self.start):
                raise _Final(f"{self.what} from {store.ref.location} is too slow: {self.got} bytes in "
                                   f"{now - self.start:.0f} s, under the limit of {self.limit} bytes/s for "
                                   f"{self.window:g} s", hint="try again later, or lower --speed-limit / raise --speed-time")
            self.start, self.got = now, 0


SEND_PIECE = 1024 * 1024


class _Body:
    """A request body streamed from ``read(pos, n)`` in 1 MiB pieces, sent with an explicit Content-Length.

    Nothing is held beyond one piece, and each byte is read once per send (the
    reads are what a push hashes its chunk index from). Pieces, not one large
    ``bytes``, because httpcore sends a body with ``send`` then ``buffer =
    buffer[n:]``, which copies the rest of a large buffer after every partial send:
    quadratic in the body size. Re-iterable (a redirect sends it again from the
    start), unlike a generator; it has no ``read`` attribute, which httpx would
    take for a file object's. Progress counts each piece as it is handed over.
    """

    def __init__(self, read: Callable[[int, int], bytes], start: int, length: int,
                 progress: Callable[[int], None]) -> None:
        self.reader, self.start, self.length, self.progress = read, start, length, progress

    def __iter__(self) -> Iterator[bytes]:
        if not self.length:
            yield b""
            return
        for pos in range(self.start, self.start + self.length, SEND_PIECE):
            n = min(SEND_PIECE, self.start + self.length - pos)
            data = self.reader(pos, n)
            if len(data) != n:
                raise IntegrityError(f"the file being uploaded ended early (read {len(data)} of {n} bytes at {pos})",
                                     hint="was it changed while pushing?")
            yield data
            self.progress(n)


def _with_digest(location: str, digest: str) -> str:
    """The upload URL with ``digest=`` added to the query the registry gave (httpx ``params`` would replace it)."""
    return str(httpx.URL(location).copy_add_param("digest", digest))


class _Restart(Exception):
    """Internal: the download must be retried (after a truncate or a server that ignored Range)."""


class _Final(NetworkError):
    """A network failure that retrying cannot help: cancelled, past the deadline, below the speed limit."""


class _Dropped(Exception):
    """Internal: the connection failed mid-transfer; the download resumes with Range."""


def _hash_range(h: Any, target: BlobTarget, length: int) -> None:
    """Feed the first ``length`` bytes of ``target`` to ``h`` (what a resumed download already holds)."""
    pos, end = target.offset, target.offset + length
    while pos < end:
        block = os.pread(target.fd, min(8 * 1024 * 1024, end - pos), pos)
        if not block:
            target.record(0)
            raise _Restart("the partial download is shorter than its record")
        h.update(block)
        pos += len(block)
