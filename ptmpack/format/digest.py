"""Digests the format defines: plain SHA-256 of an entry's bytes, and of a file's prefix.

Entry digests are plain SHA-256 of the file bytes, so they match ``sha256sum`` and
Hugging Face's LFS object ids; the signature covers the SHA-256 of every byte before
the signature block.
"""

from __future__ import annotations

import hashlib
import os

from ptmpack.errors import IntegrityError

COPY_BLOCK = 8 * 1024 * 1024


def prefix_digest(fd: int, end: int, block: int = COPY_BLOCK) -> bytes:
    """SHA-256 of bytes [0, end) of an open file, read with pread (what a signature covers)."""
    h = hashlib.sha256()
    pos = 0
    while pos < end:
        data = os.pread(fd, min(block, end - pos), pos)
        if not data:
            raise IntegrityError(f"file ends at {pos} before the signature block at {end} (truncated)")
        h.update(data)
        pos += len(data)
    return h.digest()
