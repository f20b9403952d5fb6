"""Lazy package attributes (PEP 562): a package names what it exports and loads a submodule on first use.

``ptmpack.api``, ``ptmpack.residual`` and ``ptmpack.codecs`` use it, so importing them costs
nothing until a name is used (the CLI's start-up depends on it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose name ``n`` lives in ``package.exports[n]``.

    A loaded name is cached in the package's namespace, so the lookup runs once per name.
    """

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def dir_() -> list[str]:
        return sorted(exports)

    return getattr_, dir_
