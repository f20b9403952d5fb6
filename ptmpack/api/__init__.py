"""The library verbs of ptmpack, one thin function each; the CLI and users call them the same way.

Attributes load lazily (PEP 562), so ``import ptmpack.api`` costs nothing until a verb is
used. Every verb raises a :class:`ptmpack.errors.PtmError` subclass on failure and never
leaves a partial output behind.
"""

from __future__ import annotations

from ptmpack.lazy import lazy_exports

_EXPORTS: dict[str, str] = {  # verb -> module under ptmpack.api (never named like a verb: it would shadow it)
    # package container (storage engine)
    "init": "container", "pack": "container", "unpack": "container", "verify": "container",
    "inspect": "container", "keygen": "container", "open_package": "container",
    "load_opener": "container", "load_encryption": "container", "load_signing_key": "container",
    "load_public_key": "container", "PackConfig": "container", "EncryptionSpec": "container",
    "KeyFiles": "container", "RecipientFiles": "container", "parse_compression": "container",
    "tree_bytes": "container", "Opener": "container", "output_config": "container", "package_bytes": "container",
    # residual updates
    "diff": "residual", "apply": "residual", "DiffReport": "residual", "ApplyReport": "residual",
    # chapter-6 IR
    "graph_check": "ir", "load_graph": "ir", "run": "ir", "evaluate": "ir",
    # chapter-7 compression
    "compress": "compression", "CompressSpec": "compression", "dequantize": "compression",
    "StepRecord": "compression", "compress_choices": "compression",
    # distribution (§8.3)
    "push": "distribution", "pull": "distribution", "ls": "distribution", "login": "distribution",
    "logout": "distribution", "cache_list": "distribution", "cache_prune": "distribution",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports("ptmpack.api", _EXPORTS)  # each verb family loads when first used
