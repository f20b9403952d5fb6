"""Progress on stderr for every long command: bars on a terminal, periodic plain lines in logs.

``--progress auto|bar|plain|none`` (env ``PTMPACK_PROGRESS``): ``auto`` draws rich bars
when stderr is a terminal and otherwise prints a plain line every
:data:`PLAIN_INTERVAL_S` seconds or every 10 % of the work, whichever comes first, plus
one line when a phase ends, so a CI log shows a long GPTQ run or a pull advancing.
Sizes use binary (IEC) units everywhere, as every other message does.

Three shapes of progress, one per kind of engine callback:
:func:`byte_progress` (``progress(n_bytes)``: pack, unpack, verify, diff, apply),
:func:`step_progress` (``progress(label, done, total)``: compress, per layer) and
:class:`TransferProgress` (``start(label, total)`` / ``advance(n)``: push, pull).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from ptmpack.cli.output import human_size

MODES = ("auto", "bar", "plain", "none")
PLAIN_INTERVAL_S = 5.0
"""Longest quiet time between two plain progress lines of one phase."""

_mode = {"value": "auto"}


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    _mode["value"] = value or "auto"


def progress_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--progress`` option every long-running command takes (read through :func:`mode`)."""
    return click.option("--progress", type=click.Choice(MODES), default="auto", show_default=True,
                        envvar="PTMPACK_PROGRESS", expose_value=False, callback=_remember, is_eager=True,
                        help="Progress on stderr: bars (terminal), plain periodic lines (logs), or none.")(f)


def mode() -> str:
    """The progress mode in effect: ``bar``, ``plain`` or ``none`` (``auto`` resolved against stderr)."""
    chosen = _mode["value"]
    if chosen == "auto":
        return "bar" if sys.stderr.isatty() else "plain"
    return chosen


class _PlainPhase:
    """One phase reported as plain lines: at most one every PLAIN_INTERVAL_S, or when another 10 % is done."""

    def __init__(self, label: str, total: int | None, unit: str) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.started = self.last = time.monotonic()
        self.decile = 0
        self.lock = threading.Lock()

    def _amount(self, n: int) -> str:
        return human_size(n) if self.unit == "bytes" else str(n)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        text = f"ptmpack: {self.label}: {self._amount(self.done)}"
        if self.total:
            text += f" of {self._amount(self.total)} ({100 * self.done // self.total}%)"
        if self.unit == "bytes" and elapsed > 0:
            text += f", {human_size(self.done / elapsed)}/s"
        return text + f", {elapsed:.1f} s"

    def advance(self, n: int = 0, *, done: int | None = None, total: int | None = None) -> None:
        with self.lock:
            self.done = done if done is not None else self.done + n
            if total is not None:
                self.total = total
            if self.total and self.done > self.total:
                self.total = None  # a caller's estimate ran out: show the amount, never a percentage past 100
            now = time.monotonic()
            decile = 10 * self.done // self.total if self.total else 0
            if decile > self.decile or now - self.last >= PLAIN_INTERVAL_S:
                self.decile, self.last = max(decile, self.decile), now
                click.echo(self.line(), err=True)

    def finish(self) -> None:
        """Close the phase with a line when it ended short of its last 10 % (or had no total); a phase that
        counted nothing (a keyless verify of an encrypted package reads no entry) prints nothing."""
        with self.lock:
            if self.done and (not self.total or self.decile < 10):
                elapsed = time.monotonic() - self.started
                click.echo(f"ptmpack: {self.label}: done, {self._amount(self.done)} in {elapsed:.1f} s", err=True)


def _rich_progress(*columns: Any) -> Any:
    from rich.console import Console
    from rich.progress import Progress

    return Progress("[bold]{task.description}", *columns, console=Console(stderr=True), transient=True)


def _byte_columns() -> tuple[Any, ...]:
    from rich.progress import BarColumn, DownloadColumn, ProgressColumn, TimeRemainingColumn
    from rich.text import Text

    class BinarySpeedColumn(ProgressColumn):
        """Speed in KiB/s, MiB/s (rich's TransferSpeedColumn speaks decimal MB/s beside binary sizes)."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else f"{human_size(speed)}/s", style="progress.data.speed")

    return BarColumn(), DownloadColumn(binary_units=True), BinarySpeedColumn(), TimeRemainingColumn()


@contextmanager
def byte_progress(label: str, total: int | Callable[[], int | None] | None) -> Iterator[Callable[[int], None]]:
    """A ``progress(n_bytes)`` callback for one phase; ``total`` may be a function, called only when shown."""
    how = mode()
    if how == "none":
        yield lambda n: None
        return
    if callable(total):
        total = total()
    if how == "plain":
        phase = _PlainPhase(label, total, "bytes")
        yield phase.advance
        phase.finish()
        return
    with _rich_progress(*_byte_columns()) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def step_progress(noun: str = "layers") -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(label, done, total)`` callback: one bar (or plain phase) per step label, counted in ``noun``."""
    how = mode()
    if how == "none":
        yield lambda label, done, total: None
        return
    if how == "plain":
        phases: dict[str, _PlainPhase] = {}

        def plain(label: str, done: int, total: int) -> None:
            if label not in phases:
                phases[label] = _PlainPhase(f"{label} {noun}", total, "items")
            phases[label].advance(done=done, total=total)

        yield plain
        for phase in phases.values():
            phase.finish()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn, TimeRemainingColumn

    with _rich_progress(BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()) as bar:
        tasks: dict[str, Any] = {}

        def update(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(f"{label} {noun}", total=total)
            bar.update(tasks[label], completed=done, total=total)

        yield update


class TransferProgress:
    """The ``start(label, total)`` / ``advance(n)`` hook of push and pull, one phase at a time; thread-safe."""

    def __init__(self) -> None:
        self._how = mode()
        self._lock = threading.Lock()
        self._bar: Any = None
        self._task: Any = None
        self._phase: _PlainPhase | None = None

    def __enter__(self) -> TransferProgress:
        if self._how == "bar":
            self._bar = _rich_progress(*_byte_columns())
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self._phase is not None and exc[0] is None:
            self._phase.finish()

    def start(self, label: str, total: int) -> None:
        with self._lock:
            if self._bar is not None:
                if self._task is not None:
                    self._bar.update(self._task, visible=False)
                self._task = self._bar.add_task(label, total=max(total, 1))
            elif self._how == "plain":
                if self._phase is not None:
                    self._phase.finish()
                self._phase = _PlainPhase(label, total, "bytes")

    def advance(self, n: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)
        elif self._phase is not None:
            self._phase.advance(n)

