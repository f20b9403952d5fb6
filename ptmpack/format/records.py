"""The fixed-size on-disk records: file header, model (entry) header, trailer.

Each record is a frozen dataclass with ``pack()`` and ``unpack()``;
``R.unpack(r.pack()) == r`` for every valid record. ``unpack`` checks magic,
version and reserved bits and raises a :class:`PtmError` for anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptmpack.errors import IntegrityError, UnsupportedError
from ptmpack.format import spec


@dataclass(frozen=True)
class FileHeader:
    """The first record of a package; ``header_size`` is where the first entry header starts."""

    flags: int
    model_count: int
    entry_count: int
    package_id: bytes
    keyslots_length: int
    header_size: int
    version_major: int = spec.VERSION_MAJOR
    version_minor: int = spec.VERSION_MINOR

    SIZE = spec.FILE_HEADER.size

    def pack(self) -> bytes:
        return spec.FILE_HEADER.pack(
            spec.MAGIC, self.version_major, self.version_minor, self.flags, self.model_count,
            self.entry_count, 0, self.package_id, self.keyslots_length, self.header_size,
        )

    @classmethod
    def unpack(cls, buf: bytes) -> FileHeader:
        """Parse the header.

        Raises:
            IntegrityError: not a ptmpack file, or a field out of range.
            UnsupportedError: a newer major version or unknown flags.
        """
        if len(buf) < cls.SIZE:
            raise IntegrityError(f"file header truncated: {len(buf)} of {cls.SIZE} bytes")
        magic, major, minor, flags, models, entries, reserved, pid, slots_len, hsize = spec.FILE_HEADER.unpack_from(buf)
        if magic != spec.MAGIC:
            raise IntegrityError("not a ptmpack package: bad magic at offset 0")
        if major != spec.VERSION_MAJOR:
            raise UnsupportedError(
                f"package format version {major}.{minor} is not supported (this ptmpack reads {spec.VERSION_MAJOR}.x)",
                hint="upgrade ptmpack",
            )
        if flags & ~int(spec.KNOWN_FLAGS):
            raise UnsupportedError(f"package uses unknown flags 0x{flags & ~int(spec.KNOWN_FLAGS):x}", hint="upgrade ptmpack")
        if reserved != 0:
            raise IntegrityError("file header: reserved field is not zero")
        if entries > spec.MAX_ENTRIES or models > entries:
            raise IntegrityError(f"file header: implausible entry count {entries} (models {models})")
        if slots_len > spec.MAX_KEYSLOTS_BYTES:
            raise IntegrityError(f"file header: key-slot block of {slots_len} bytes exceeds {spec.MAX_KEYSLOTS_BYTES}")
        if bool(slots_len) != bool(flags & spec.Flags.ENCRYPTED):
            raise IntegrityError("file header: key slots present without the ENCRYPTED flag, or missing with it")
        if hsize != spec.align_up(cls.SIZE + slots_len):
            raise IntegrityError(f"file header: header_size {hsize} does not match the key-slot block")
        return cls(flags, models, entries, pid, slots_len, hsize, major, minor)


@dataclass(frozen=True)
class ModelHeader:
    """The header in front of each entry's data; followed by the path and padding."""

    entry_index: int
    kind: int
    codec: int
    path_length: int
    stored_length: int
    raw_length: int
    chunk_size: int
    sha256: bytes

    SIZE = spec.MODEL_HEADER.size

    def pack(self) -> bytes:
        return spec.MODEL_HEADER.pack(
            spec.ENTRY_MAGIC, self.entry_index, self.kind, self.codec, self.path_length,
            self.stored_length, self.raw_length, self.chunk_size, self.sha256,
        )

    @classmethod
    def unpack(cls, buf: bytes, offset: int = 0) -> ModelHeader:
        """Parse an entry header found at file offset ``offset`` (used in messages).

        Raises:
            IntegrityError: bad magic, unknown kind, or lengths beyond the format's limits.
        """
        if len(buf) < cls.SIZE:
            raise IntegrityError(f"entry header at offset {offset} truncated")
        magic, index, kind, codec, plen, stored, raw, chunk, digest = spec.MODEL_HEADER.unpack_from(buf)
        if magic != spec.ENTRY_MAGIC:
            raise IntegrityError(f"no entry header at offset {offset} (bad magic)")
        if kind not in spec.Kind.__members__.values():
            raise IntegrityError(f"entry header at offset {offset}: unknown kind {kind}")
        if codec & spec.CODEC_RESERVED_MASK:
            raise UnsupportedError(f"entry header at offset {offset}: unknown codec bits 0x{codec:08x}")
        if plen > spec.MAX_PATH_BYTES:
            raise IntegrityError(f"entry header at offset {offset}: path length {plen} exceeds {spec.MAX_PATH_BYTES}")
        if chunk > spec.MAX_CHUNK_SIZE or (codec and chunk < spec.MIN_CHUNK_SIZE):
            raise IntegrityError(f"entry header at offset {offset}: chunk size {chunk} out of range")
        return cls(index, kind, codec, plen, stored, raw, chunk, digest)

    def data_offset(self, header_offset: int) -> int:
        """Where this entry's data starts when its header sits at ``header_offset``."""
        return spec.align_up(header_offset + self.SIZE + self.path_length)


@dataclass(frozen=True)
class Trailer:
    """The last 64 bytes: where the manifest and the optional signature block are."""

    manifest_offset: int
    manifest_length: int
    manifest_sha256: bytes
    signature_offset: int

    SIZE = spec.TRAILER.size

    def pack(self) -> bytes:
        return spec.TRAILER.pack(
            self.manifest_offset, self.manifest_length, self.manifest_sha256, self.signature_offset, spec.END_MAGIC
        )

    @classmethod
    def unpack(cls, buf: bytes, file_size: int) -> Trailer:
        """Parse the trailer of a file of ``file_size`` bytes and bound its offsets.

        Raises:
            IntegrityError: the file is truncated or the offsets point outside it.
        """
        if len(buf) != cls.SIZE:
            raise IntegrityError("file too short to be a ptmpack package (no trailer)")
        m_off, m_len, m_sha, s_off, magic = spec.TRAILER.unpack(buf)
        if magic != spec.END_MAGIC:
            raise IntegrityError("no ptmpack trailer at the end of the file: truncated or not a package")
        end = file_size - cls.SIZE
        if m_len > spec.MAX_MANIFEST_BYTES:
            raise IntegrityError(f"trailer: manifest length {m_len} exceeds {spec.MAX_MANIFEST_BYTES}")
        if m_off < FileHeader.SIZE or m_off + m_len > end:
            raise IntegrityError("trailer: manifest lies outside the file (truncated or corrupt)")
        if s_off and (s_off != m_off + m_len or s_off >= end):
            raise IntegrityError("trailer: signature block is not where it must be")
        if not s_off and m_off + m_len != end:
            raise IntegrityError("trailer: bytes between the manifest and the trailer")
        return cls(m_off, m_len, m_sha, s_off)
