"""A repository on an OCI distribution registry, spoken to with httpx.

httpx gives a pooled, thread-safe client with streaming bodies, so blobs move in
parallel over kept-alive connections without ever being held whole in memory.
Every verb of the distribution API that push and pull need is here: manifests
(GET/HEAD/PUT), blob existence (HEAD), uploads (POST then PUT for small blobs,
POST/PATCH.../PUT for large ones, cross-repository mounts), resumable blob
downloads (GET with ``Range``) and the tag list. Registry errors become PtmErrors:
401/403 → :class:`KeyAccessError` (exit 4), unreachable or failing registries →
:class:`RegistryError` (exit 1).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from ptmpack.distribution.auth import RegistryAuth, find_credentials
from ptmpack.distribution.oci import ACCEPT_MANIFESTS, MANIFEST_MEDIA_TYPE, MAX_MANIFEST_BYTES, sha256_digest
from ptmpack.distribution.reference import Reference, is_loopback
from ptmpack.distribution.stores import ClientOptions, RegistryError
from ptmpack.errors import ENVIRONMENT_ERRNOS, EnvironmentFault, IntegrityError, KeyAccessError, PtmError, UsageError


class RegistryStore:
    """One repository of one registry. Thread-safe: blobs may be moved from several threads."""

    def __init__(self, ref: Reference, options: ClientOptions | None = None) -> None:
        options = options or ClientOptions()
        if options.plain_http and not is_loopback(ref.location):
            raise UsageError(f"--plain-http is allowed only for loopback registries, not {ref.location}",
                             hint="use HTTPS (add --ca-file for a private CA)")
        self.ref = ref
        self.options = options
        scheme = "http" if options.plain_http else "https"
        self.base = f"{scheme}://{ref.location}/v2/{ref.repository}"
        verify: ssl.SSLContext | bool = True
        if options.ca_file is not None:
            if not Path(options.ca_file).is_file():
                raise UsageError(f"CA file {options.ca_file} does not exist")
            verify = ssl.create_default_context(cafile=str(options.ca_file))
        self.auth = RegistryAuth(find_credentials(ref.location))
        limits = httpx.Limits(max_connections=options.workers + 2, max_keepalive_connections=options.workers + 2)
        self.client = httpx.Client(auth=self.auth, verify=verify, timeout=options.timeout_s, limits=limits,
                                   follow_redirects=True, headers={"User-Agent": "ptmpack"})

    def close(self) -> None:
        self.client.close()

    # plumbing
    def _request(self, method: str, url: str, what: str, **kw: object) -> httpx.Response:
        try:
            response = self.client.request(method, url, **kw)  # type: ignore[arg-type]
        except httpx.ConnectError as exc:
            raise RegistryError(f"cannot reach {self.ref.location}: {exc}",
                                hint="check the host and port; HTTPS needs --ca-file for a private CA") from None
        except httpx.TransportError as exc:
            raise RegistryError(f"{what}: {type(exc).__name__}: {exc}") from None
        self._check_auth(response, what)
        return response

    def _check_auth(self, response: httpx.Response, what: str) -> None:
        if response.status_code in (401, 403):
            who = f" (credentials from {self.auth.credentials.source})" if self.auth.credentials else " (anonymous)"
            raise KeyAccessError(f"{self.ref.location} refused {what}{who}: HTTP {response.status_code}",
                                 hint="set PTMPACK_REGISTRY_USER/PTMPACK_REGISTRY_PASSWORD or docker login")

    def _fail(self, response: httpx.Response, what: str) -> RegistryError:
        detail = ""
        with contextlib.suppress(Exception):
            errs = response.json().get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs)[:300]
        return RegistryError(f"{what}: HTTP {response.status_code}" + (f" ({detail})" if detail else ""))

    # manifests and tags
    def get_manifest(self, target: str) -> tuple[bytes, str] | None:
        """The manifest a tag or digest names and its digest, or None when the repository has none.

        Raises:
            IntegrityError: the bytes do not match the digest asked for or announced.
        """
        what = f"manifest {self.ref.repository}:{target}"
        r = self._request("GET", f"{self.base}/manifests/{target}", what, headers={"Accept": ACCEPT_MANIFESTS})
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise self._fail(r, what)
        data = r.content
        if len(data) > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"{what}: {len(data)} bytes is larger than any manifest should be")
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

    def tags(self) -> list[str]:
        """Every tag of the repository (following the Link pagination)."""
        out: list[str] = []
        url: str | None = f"{self.base}/tags/list?n=1000"
        while url:
            r = self._request("GET", url, "tag list")
            if r.status_code == 404:
                return []
            if r.status_code != 200:
                raise self._fail(r, "tag list")
            out += [t for t in (r.json().get("tags") or []) if isinstance(t, str)]
            link = r.links.get("next", {}).get("url")
            url = str(r.url.join(link)) if link else None
        return sorted(set(out))

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

    def _location(self, r: httpx.Response) -> str:
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
            r = self._request("PUT", _with_digest(location, digest), what, content=read(0, size),
                              headers={"Content-Type": "application/octet-stream"})
            self._check_committed(r, what)
            progress(size)
            return size
        sent = 0
        while sent < size:
            data = read(sent, min(chunk, size - sent))
            r = self._request("PATCH", location, what, content=data, headers={
                "Content-Type": "application/octet-stream", "Content-Range": f"{sent}-{sent + len(data) - 1}"})
            if r.status_code != 202:
                raise self._fail(r, what)
            location = self._location(r)
            sent += len(data)
            progress(len(data))
        self._check_committed(self._request("PUT", _with_digest(location, digest), what), what)
        return size

    def _check_committed(self, r: httpx.Response, what: str) -> None:
        if r.status_code == 201:
            return
        if r.status_code == 400 and "DIGEST_INVALID" in r.text:
            raise IntegrityError(f"{what}: the registry computed another digest (the file changed while read?)")
        raise self._fail(r, what)

    def fetch_blob(self, digest: str, size: int, partial: Path, progress: Callable[[int], None]) -> int:
        """Download a blob into ``partial``, resuming from what it already holds; returns bytes received.

        The digest is checked over the whole file before returning. After a dropped
        connection the download is retried with ``Range: bytes=N-`` (``retries``
        attempts, exponential back-off), so no byte already received is fetched again.

        Raises:
            IntegrityError: the bytes do not match the digest (the partial file is removed).
            RegistryError: the registry stayed unreachable through every retry.
        """
        try:
            partial.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "ab") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # one process per blob; a second waits, then finds it done
                return self._fetch_locked(digest, size, partial, f, progress)
        except OSError as exc:
            if exc.errno not in ENVIRONMENT_ERRNOS:
                raise
            with contextlib.suppress(FileNotFoundError):  # it cannot finish: do not leave it to fill the disk again
                partial.unlink()
            raise EnvironmentFault(f"{partial}: {exc.strerror or exc} (downloading blob {digest})",
                                   hint="free some space or point XDG_CACHE_HOME elsewhere; the partial "
                                        "download was removed") from None

    def _fetch_locked(self, digest: str, size: int, partial: Path, f: BinaryIO, progress: Callable[[int], None]) -> int:
        count = [0]
        attempt, fresh_retry = 0, True
        while True:
            have = os.path.getsize(partial)
            h = _hash_file(partial, have)
            try:
                self._stream(digest, size, have, h, f, count, progress)
            except (httpx.TransportError, _Restart) as exc:
                attempt += 1
                if attempt > self.options.retries:
                    raise RegistryError(f"download of {digest} failed after {attempt} attempts: {exc}") from None
                time.sleep(min(4.0, 0.25 * 2 ** (attempt - 1)))
                continue
            except IntegrityError:
                partial.unlink()
                raise
            if "sha256:" + h.hexdigest() == digest and os.path.getsize(partial) == size:
                return count[0]
            os.truncate(partial, 0)
            if have and fresh_retry:  # a stale partial from an earlier run: start over once
                fresh_retry = False
                continue
            partial.unlink()
            raise IntegrityError(f"blob {digest} from {self.ref.location}/{self.ref.repository} does not match its "
                                 f"digest: the registry's copy is corrupt or was altered", hint="nothing was written")

    def _stream(self, digest: str, size: int, have: int, h: Any, f: BinaryIO, count: list[int],
                progress: Callable[[int], None]) -> None:
        if have > size:
            os.truncate(f.name, 0)
            raise _Restart("partial file longer than the blob")
        if have == size:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        what = f"blob {digest}"
        with self.client.stream("GET", f"{self.base}/blobs/{digest}", headers=headers) as r:
            self._check_auth(r, what)
            if r.status_code == 404:
                raise IntegrityError(f"the manifest names blob {digest}, but {self.ref.location} does not have it")
            if have and r.status_code == 200:  # the server ignored Range: start again from zero
                os.truncate(f.name, 0)
                raise _Restart("server ignored the Range request")
            if r.status_code == 429 or r.status_code >= 500:  # busy or failing: back off and resume
                raise _Restart(f"HTTP {r.status_code}")
            if r.status_code not in (200, 206):
                r.read()
                raise self._fail(r, what)
            pos = have
            for block in r.iter_raw():  # the transport's own reads: no re-chunking copies
                if pos + len(block) > size:
                    raise IntegrityError(f"{what}: the registry sent more bytes than the manifest says")
                h.update(block)
                f.write(block)
                f.flush()
                pos += len(block)
                count[0] += len(block)
                progress(len(block))


def _with_digest(location: str, digest: str) -> str:
    """The upload URL with ``digest=`` added to the query the registry gave (httpx ``params`` would replace it)."""
    return str(httpx.URL(location).copy_add_param("digest", digest))


class _Restart(Exception):
    """Internal: the download must be retried (after a truncate or a server that ignored Range)."""


def _hash_file(path: Path, length: int) -> Any:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = length
        while remaining:
            block = f.read(min(8 * 1024 * 1024, remaining))
            if not block:
                break
            h.update(block)
            remaining -= len(block)
    return h
