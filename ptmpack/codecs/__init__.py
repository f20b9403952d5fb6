"""Per-chunk codecs of the container: zstd, optionally after the exponent-plane transform.

:func:`encode_chunk` and :func:`decode_chunk` turn one raw chunk into its stored bytes and
back; :func:`choose_transform` picks the transform for an entry from a sample of it. The
stored layout is specified byte for byte in docs/CODECS.md.
"""


from __future__ import annotations

from ptmpack.lazy import lazy_exports

_EXPORTS = {"MAX_RAW_LENGTH": "chunk", "choose_transform": "chunk", "decode_chunk": "chunk", "encode_chunk": "chunk",
            "Transform": "transform"}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports("ptmpack.codecs", _EXPORTS)  # the codec (numpy, zstandard) loads only when used
