"""Every magic number, struct layout, code and limit of the container format (SPEC §3).

This module is the one source of truth; docs/FORMAT.md describes the same bytes
in prose. Values written to disk here are frozen once released.
"""

from __future__ import annotations

import enum
import struct

MAGIC = b"PTMPACK\0"
ENTRY_MAGIC = b"PTME"
END_MAGIC = b"PTMEND\0\0"

VERSION_MAJOR = 1
VERSION_MINOR = 0

ALIGNMENT = 4096
"""Entry data starts on a multiple of this, so raw entries can be mmap-ed in place."""

FILE_HEADER = struct.Struct("<8sHHIIII16sII")
"""magic, major, minor, flags, model_count, entry_count, reserved, package_id, keyslots_length, header_size."""

MODEL_HEADER = struct.Struct("<4sIIIIQQI32s")
"""magic, entry_index, kind, codec, path_length, stored_length, raw_length, chunk_size, sha256."""

TRAILER = struct.Struct("<QQ32sQ8s")
"""manifest_offset, manifest_length, manifest_sha256, signature_offset, magic."""

CHUNK_PREFIX = struct.Struct("<I")
"""Each stored chunk is prefixed by its stored length."""

MANIFEST_ENTRY_INDEX = 0xFFFFFFFF
"""The entry index under which the manifest is sealed in encrypted packages."""


class Flags(enum.IntFlag):
    """File-header flags (u32)."""

    ENCRYPTED = 1
    SIGNED = 2
    RESIDUAL = 4
    COMPRESSED = 8


KNOWN_FLAGS = Flags.ENCRYPTED | Flags.SIGNED | Flags.RESIDUAL | Flags.COMPRESSED


class Kind(enum.IntEnum):
    """What part of the package tree an entry belongs to (its top-level directory)."""

    MODEL = 1
    PROGRAM = 2
    META = 3


KIND_ROOTS: dict[str, Kind] = {"Model": Kind.MODEL, "Program": Kind.PROGRAM, "Meta-info": Kind.META}

SKELETON_DIRS = ("Model", "Program/Library/environment", "Program/Library/core", "Program/Library/converter",
                 "Program/Scripts", "Meta-info")
"""The directories of the package tree (SPEC §1, Table 57): ``init`` makes them and ``unpack``
recreates them, since empty directories are not stored as entries."""


class Compression(enum.IntEnum):
    """Compression id, bits 0-7 of the codec field."""

    NONE = 0
    ZSTD = 1


CODEC_RESERVED_MASK = 0xFF000000


def make_codec(compression: int, encryption: int, transform: int) -> int:
    """Pack the three codec ids into the u32 codec field."""
    return (compression & 0xFF) | ((encryption & 0xFF) << 8) | ((transform & 0xFF) << 16)


def split_codec(codec: int) -> tuple[int, int, int]:
    """The (compression, encryption, transform) ids of a codec field."""
    return codec & 0xFF, (codec >> 8) & 0xFF, (codec >> 16) & 0xFF


DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
MAX_PATH_BYTES = 4096
MAX_ENTRIES = 1_000_000
MAX_KEYSLOTS_BYTES = 1024 * 1024
AEAD_TAG_SIZE = 16
"""Bytes an AEAD cipher adds to each sealed chunk (GCM tag)."""


def align_up(offset: int, alignment: int = ALIGNMENT) -> int:
    """The first multiple of ``alignment`` at or after ``offset``."""
    return -(-offset // alignment) * alignment
