"""Compose the chunk pipeline: transform + zstd, then AEAD sealing, and its inverse.

The container hands each chunk to an encoder or decoder built here; this is the
one place where codec ids, nonces and associated data meet, so the framing of
SPEC §4 (STREAM nonces, AAD binding package, entry, kind, codec and path) is
applied identically on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptmpack.codecs.chunk import Transform, decode_chunk, encode_chunk
from ptmpack.crypto.aead import Sealer, chunk_aad, chunk_nonce
from ptmpack.errors import IntegrityError, UnsupportedError
from ptmpack.format import spec


@dataclass(frozen=True)
class ChunkPipeline:
    """Encoder and decoder for one package: compression level and, when encrypted, the sealer."""

    package_id: bytes
    level: int = 3
    sealer: Sealer | None = None

    def _codec(self, index: int, codec: int) -> int:
        """The manifest (entry index 0xFFFFFFFF) is sealed, uncompressed, with the package cipher."""
        if index == spec.MANIFEST_ENTRY_INDEX and self.sealer is not None:
            return spec.make_codec(spec.Compression.NONE, self.sealer.cipher, 0)
        return codec

    def encode(self, index: int, codec: int, path: str, kind: int, counter: int, last: bool, raw: bytes) -> bytes:
        codec = self._codec(index, codec)
        compression, encryption, transform = spec.split_codec(codec)
        body = encode_chunk(raw, Transform(transform), self.level) if compression == spec.Compression.ZSTD else raw
        if encryption:
            assert self.sealer is not None, "an encrypted codec needs a sealer"
            aad = chunk_aad(self.package_id, index, kind, codec, path)
            body = self.sealer.seal(chunk_nonce(index, counter, last), body, aad)
        return body

    def decode(self, index: int, codec: int, path: str, kind: int, counter: int, last: bool,
               body: bytes, raw_length: int) -> bytes:
        codec = self._codec(index, codec)
        compression, encryption, transform = spec.split_codec(codec)
        if encryption:
            if self.sealer is None:
                raise IntegrityError(f"entry {index} is sealed but the package is not marked encrypted")
            aad = chunk_aad(self.package_id, index, kind, codec, path)
            body = self.sealer.open(chunk_nonce(index, counter, last), body, aad)
        if compression == spec.Compression.ZSTD:
            try:
                t = Transform(transform)
            except ValueError:
                raise UnsupportedError(f"entry {index} uses unknown transform {transform}") from None
            return decode_chunk(body, raw_length, t)
        if compression != spec.Compression.NONE:
            raise UnsupportedError(f"entry {index} uses unknown compression {compression}")
        if transform:
            raise IntegrityError(f"entry {index}: a transform without compression is not a valid codec")
        return body
