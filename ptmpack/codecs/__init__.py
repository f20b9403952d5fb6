"""Per-chunk codecs of the container: zstd, optionally after the exponent-plane transform.

:func:`encode_chunk` and :func:`decode_chunk` turn one raw chunk into its stored bytes and
back; :func:`choose_transform` picks the transform for an entry from a sample of it. The
stored layout is specified byte for byte in docs/CODECS.md.
"""


from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"MAX_RAW_LENGTH": "chunk", "choose_transform": "chunk", "decode_chunk": "chunk", "encode_chunk": "chunk",
            "Transform": "transform"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load the codec (numpy, zstandard) only when it is used."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ptmpack.codecs' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ptmpack.codecs.{module}"), name)
