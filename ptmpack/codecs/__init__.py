"""Per-chunk codecs of the container: zstd, optionally after the exponent-plane transform.

:func:`encode_chunk` and :func:`decode_chunk` turn one raw chunk into its stored bytes and
back; :func:`choose_transform` picks the transform for an entry from a sample of it. The
stored layout is specified byte for byte in docs/CODECS.md.
"""

from ptmpack.codecs.chunk import MAX_RAW_LENGTH, Transform, choose_transform, decode_chunk, encode_chunk

__all__ = ["MAX_RAW_LENGTH", "Transform", "choose_transform", "decode_chunk", "encode_chunk"]
