"""Reading an HTTP body from an untrusted server without letting it choose how much memory that takes.

Shared by the registry client (:mod:`.registry`) and the token flow (:mod:`.auth`).
"""

from __future__ import annotations

import zlib

import httpx

from ptmpack.errors import RegistryError


def read_bounded(response: httpx.Response, limit: int) -> bytes:
    """At most ``limit`` + 1 bytes of a streaming body, decoded here, never more than that many at once.

    httpx would decode a whole network read in one call (a 64 KiB zstd read can
    expand to gigabytes), so the raw bytes are decoded with zlib's ``max_length``:
    ``gzip`` and ``deflate`` (what ptmpack asks for), identity; any other
    Content-Encoding is refused.

    Raises:
        RegistryError: an unsupported Content-Encoding, or a body that does not decode.
    """
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        inflate = None
    elif encoding in ("gzip", "x-gzip", "deflate"):
        inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    else:
        raise RegistryError(f"{response.url.netloc.decode()}: answered with Content-Encoding {encoding[:40]!r}, "
                            f"which ptmpack did not ask for", hint="the registry or a proxy rewrites bodies")
    parts, got = [], 0
    for raw in response.iter_raw():
        pending = raw
        while pending and got <= limit:
            try:
                block = inflate.decompress(pending, limit + 1 - got) if inflate is not None else pending
            except zlib.error as exc:
                raise RegistryError(f"{response.url.netloc.decode()}: the body does not decode as its "
                                    f"Content-Encoding {encoding!r} says ({exc})") from None
            pending = inflate.unconsumed_tail if inflate is not None else b""
            parts.append(block)
            got += len(block)
        if got > limit:
            break
    return b"".join(parts)[: limit + 1]
