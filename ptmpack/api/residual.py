"""Verbs for residual updates (§8.2.6): ``diff`` writes Q(B - A) bound to A, ``apply`` rebuilds B'."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ptmpack.config import PackConfig
from ptmpack.crypto.keyslots import Opener
from ptmpack.residual.report import ApplyReport, DiffReport

__all__ = ["ApplyReport", "DiffReport", "apply", "diff"]


def diff(base: Path, target: Path, out: Path, *, bits: int | str = 8, group_size: int = 128,
         max_error: float | None = None, opener: Opener | None = None, force: bool = False,
         config: PackConfig | None = None, progress: Callable[[int], None] | None = None) -> DiffReport:
    """Write the residual package that turns the ``.ptm`` ``base`` into ``target`` (see ``diff_residual``)."""
    from ptmpack.residual.diff import diff_residual

    return diff_residual(Path(base), Path(target), Path(out), bits=bits, group_size=group_size, max_error=max_error,
                         opener=opener, force=force, config=config, progress=progress)


def apply(base: Path, delta: Path, out: Path, *, opener: Opener | None = None, force: bool = False,
          config: PackConfig | None = None, progress: Callable[[int], None] | None = None) -> ApplyReport:
    """Rebuild the target of ``delta`` on ``base`` as a normal package (see ``apply_residual``)."""
    from ptmpack.residual.apply import apply_residual

    return apply_residual(Path(base), Path(delta), Path(out), opener=opener, force=force, config=config,
                          progress=progress)
