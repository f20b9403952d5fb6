"""ptmpack: the GB/T 42382.2 chapter-8 model container, as a library and a CLI.

The library verbs are re-exported here lazily (PEP 562), so ``import ptmpack`` stays
free and ``from ptmpack import open_package`` (or ``pack``, ``verify``…) loads only
what that name needs. The full list is :data:`ptmpack.api.__all__`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    import ptmpack.api as api  # binds the submodule once imported; never asks this function for "api"

    if name in api.__all__:
        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ptmpack' has no attribute {name!r}")
