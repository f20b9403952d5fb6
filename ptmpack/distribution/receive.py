"""Receiving a blob's body: large reads straight from the socket, large writes, the digest on a second thread.

Receiving through httpx's body iterator costs per call (httpcore reads 64 KiB, h11 copies
each read twice, one ``write`` per piece), and on a virtual machine those calls, not the
bytes, dominate; 1 MiB ``recv_into`` reads into a reused buffer, one ``pwrite`` each, cost
a fraction of that (the timings: docs/DISTRIBUTION.md §11).

So after httpx has parsed the answer's headers and handed over the first body
piece (which empties h11's buffer: a Content-Length body event takes everything
buffered), the rest of the body is read from the connection's socket directly,
exactly the announced number of bytes and no more; the connection is then closed
by httpcore (h11 never saw the end of the body), never reused. This path is taken
only for HTTP/1.1 answers with a ``Content-Length`` equal to the bytes still
expected, no ``Transfer-Encoding`` or ``Content-Encoding``, on a plain socket
(``http``) or a TLS socket (``https``); ptmpack's client has no proxies (httpx
ignores the environment's proxies when a transport is given), so the socket
carries the registry's answer itself. Anything else goes through httpx's
iterator. Either way every byte is written before the next read (a kill loses
only what the kernel still held and at most one buffer) and hashed on a second
thread in the order written.
"""

from __future__ import annotations

import os
import queue
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import httpx

from ptmpack.distribution.storetypes import BlobTarget
from ptmpack.errors import IntegrityError, NetworkError

READ_BUFFER = 1024 * 1024
"""Bytes read from the socket before one write and one hash update."""
BUFFERS = 6
"""Buffers in flight between the receiving and the hashing thread (the receiver waits when all are unhashed)."""
PIECES = 64
"""Pieces waiting to be hashed at most (httpx's pieces are up to 64 KiB): the receiver waits rather than fill memory."""


class HashBehind:
    """Feed a hash on a second thread, so hashing a blob overlaps receiving it (sha256 releases the GIL).

    The receiver takes a buffer with :meth:`buffer`, fills it, writes it and hands it
    over with :meth:`submit`; the hashing thread gives it back once hashed, so at
    most ``BUFFERS`` are in flight and nothing is copied. Pieces that arrive as
    ``bytes`` (httpx's iterator) are handed over with :meth:`update`. Leaving waits
    until everything handed over is hashed, in order.
    """

    def __init__(self, h: Any) -> None:
        self.h = h
        self.work: queue.Queue[tuple[Any, int] | None] = queue.Queue(PIECES)
        self.free: queue.Queue[bytearray] = queue.Queue()
        self.made = 0
        self.thread = threading.Thread(target=self._run, name="ptmpack-hash", daemon=True)

    def _run(self) -> None:
        while (item := self.work.get()) is not None:
            data, n = item
            if isinstance(data, bytearray):
                self.h.update(memoryview(data)[:n])
                self.free.put(data)
            else:
                self.h.update(data)

    def buffer(self) -> bytearray:
        """A buffer to fill: a new one while fewer than ``BUFFERS`` exist, else the next one hashed."""
        try:
            return self.free.get_nowait()
        except queue.Empty:
            if self.made < BUFFERS:
                self.made += 1
                return bytearray(READ_BUFFER)
            return self.free.get()

    def submit(self, buf: bytearray, n: int) -> None:
        """Hash the first ``n`` bytes of ``buf`` (a buffer from :meth:`buffer`; 0 hashes nothing), then return it
        to the pool."""
        self.work.put((buf, n))

    def update(self, block: bytes) -> None:
        self.work.put((block, len(block)))

    def __enter__(self) -> HashBehind:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.work.put(None)
        self.thread.join()


def write_at(target: BlobTarget, pos: int, data: bytes | memoryview) -> None:
    """Write ``data`` as the blob's bytes from ``pos`` (``os.pwrite`` may write less), then record them."""
    view, at = memoryview(data), target.offset + pos
    while view:
        n = os.pwrite(target.fd, view, at)
        view, at = view[n:], at + n
    target.record(pos + len(data))


def receive_body(response: httpx.Response, pos: int, size: int, target: BlobTarget, hasher: HashBehind,
                 tick: Callable[[int], None], what: str) -> int:
    """Write the body of ``response`` (the blob's bytes from ``pos`` to at most ``size``) into ``target``; the new
    position.

    Every write is recorded in ``target`` before the next one; ``tick(n)`` is called for every
    read (progress, the speed limit, cancellation).

    Raises:
        IntegrityError: the answer holds more bytes than the blob has left.
        NetworkError: the connection failed or closed early (what arrived is written; the caller resumes).
    """
    sock = _body_socket(response, size - pos)
    blocks = response.iter_raw()  # kept referenced: a dropped iterator would close the connection under us
    for block in blocks:  # the transport's own reads: no re-chunking copies
        if pos + len(block) > size:
            raise IntegrityError(f"{what}: {response.url.netloc.decode()} sent more bytes than the manifest says")
        write_at(target, pos, block)  # unbuffered: a kill loses nothing already read
        hasher.update(block)
        pos += len(block)
        tick(len(block))
        if sock is not None:
            break  # h11's buffer is empty now: the rest is read from the socket
    while sock is not None and pos < size:
        buf = hasher.buffer()
        view = memoryview(buf)
        want, fill = min(len(buf), size - pos), 0
        try:
            while fill < want:
                try:
                    n = sock.recv_into(view[fill:want])
                except OSError as exc:  # a timeout too: the registry was silent for the read timeout
                    raise NetworkError(f"{what}: {type(exc).__name__}: {exc}") from None
                if not n:
                    raise NetworkError(f"{what}: the connection closed after {pos + fill} of {size} bytes")
                fill += n
                tick(n)  # per read, not per buffer: a trickle must meet the speed limit, a cancel act at once
        finally:  # what arrived is kept, even when the read or the tick failed
            if fill:
                write_at(target, pos, view[:fill])
                pos += fill
            hasher.submit(buf, fill)
    del blocks  # now the connection may close (httpcore never reuses it: h11 did not see the body's end)
    return pos


def _body_socket(response: httpx.Response, expected: int) -> socket.socket | None:
    """The socket to read the rest of the body from, or None when httpx must read it (see the module docstring)."""
    headers = response.headers
    if (response.http_version != "HTTP/1.1" or headers.get("content-length") != str(expected)
            or "transfer-encoding" in headers or headers.get("content-encoding", "identity") != "identity"):
        return None
    sock = socket_of(response)
    if response.url.scheme == "https":
        return sock if isinstance(sock, ssl.SSLSocket) else None
    return sock if type(sock) is socket.socket else None


def socket_of(response: httpx.Response) -> socket.socket | None:
    """The socket under a streaming response (httpcore's ``network_stream`` extension), or None for a transport
    without that hook: receiving reads the body from it, a cancel shuts it down."""
    stream = response.extensions.get("network_stream")
    try:
        sock = stream.get_extra_info("socket") if stream is not None else None
    except Exception:  # a transport without that hook
        return None
    return sock if isinstance(sock, socket.socket) else None
