"""The one output contract of every command: where results go, what ``--json`` prints, how text is made safe.

* Results (summaries, tables, the ``--json`` document) go to **stdout**; progress, warnings
  and errors go to **stderr** (:mod:`ptmpack.cli.progress`, :func:`warn`).
* With ``--json`` stdout carries exactly one document, on success and on failure, in one
  envelope: ``command``, ``ok``, ``seconds``, then the command's own fields; a failure adds
  ``error: {exit_code, kind, message, hint}``. Paths the command read or wrote appear as
  ``input`` / ``output`` objects with the same fields everywhere (``path``, ``bytes``,
  ``sha256`` for files). Each command's document has a JSON Schema in ``schemas/cli/``.
* Human results on a terminal are rich tables; anywhere else they are plain lines, one
  record a line, fields separated by tabs, nothing cut short and no colour or box drawing,
  so ``grep`` and ``cut -f`` work on them.
* Every string that comes from outside (file names, metadata, registry annotations, error
  messages) passes through :func:`clean` before it is printed: control characters are
  written as ``\\xNN`` escapes and, on a terminal, rich markup is escaped.

rich is imported only when a terminal is drawn on, so plain output and ``--json`` stay light.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

ERROR_KINDS: dict[int, str] = {
    1: "internal", 2: "usage", 3: "integrity", 4: "key", 5: "invalid", 6: "unsupported", 7: "base-mismatch",
    8: "environment", 9: "network", 130: "interrupted",
}
"""The ``error.kind`` of a ``--json`` failure for each exit code (SPEC §6): stable names scripts may test."""

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: object) -> str:
    """``text`` safe to print: C0/C1 control characters (ESC, CSI, OSC…) and bidi overrides as ``\\xNN``/``\\uNNNN``.

    Tabs and newlines are escaped too, except a plain newline is kept when ``text`` is a
    message of several lines; this keeps one record per line in plain output.
    """
    s = str(text)

    def esc(m: re.Match[str]) -> str:
        c = ord(m.group())
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"

    return _CONTROL.sub(esc, s).replace("\t", "\\t").replace("\n", "\\n")


def clean_lines(text: object) -> str:
    """Like :func:`clean`, but keeps line breaks (for multi-line messages such as a list of schema errors)."""
    return "\n".join(clean(line) for line in str(text).split("\n"))


@dataclass
class Session:
    """One invocation: the command's name, whether ``--json`` was asked for, and when it started."""

    command: str
    json: bool = False
    started: float = field(default_factory=time.perf_counter)
    emitted: bool = False
    """Set once a document went to stdout, so a failure after it does not print a second one."""

    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 3)


_session = Session("ptmpack")


def begin(args: Sequence[str]) -> Session:
    """Start the session for ``args`` (the command line without the program name)."""
    global _session
    words = [a for a in args if not a.startswith("-")]
    name = words[0] if words else "ptmpack"
    if name == "graph" and len(words) > 1:
        name = f"graph {words[1]}"
    _session = Session(name, json="--json" in args)
    return _session


def session() -> Session:
    """The running invocation."""
    return _session


def file_ref(path: Path | str) -> dict[str, Any]:
    """The common description of a path a command read or wrote: ``path``, ``bytes`` and, for a file, ``sha256``.

    A directory (a package tree) gets ``kind: tree`` and the total bytes of its regular files.
    """
    p = Path(path)
    if p.is_dir():
        total = sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
        return {"path": str(p), "kind": "tree", "bytes": total}
    h = hashlib.sha256()
    with p.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return {"path": str(p), "kind": "file", "bytes": p.stat().st_size, "sha256": h.hexdigest()}


def file_ref_soon(path: Path | str) -> Callable[[], dict[str, Any]]:
    """:func:`file_ref` of an input, computed on a helper thread while the command works.

    hashlib releases the GIL, so hashing a large package beside ``verify`` or ``push``
    costs little wall time; call the result to wait for it.
    """
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["ref"] = file_ref(path)
        except BaseException as exc:  # handed to whoever waits
            done["error"] = exc

    worker = threading.Thread(target=run, name="ptmpack-input-digest", daemon=True)
    worker.start()

    def result() -> dict[str, Any]:
        worker.join()
        if "error" in done:
            raise done["error"]
        return done["ref"]

    return result


def _write(doc: dict[str, Any]) -> None:
    _session.emitted = True
    click.echo(json.dumps(doc, indent=2, default=str))


def emit(doc: dict[str, Any], *, input: dict[str, Any] | None = None, output: dict[str, Any] | None = None,
         drop: Iterable[str] = ()) -> None:
    """Print the success document of the running command: the envelope, then ``doc``'s fields.

    ``drop`` names the report's own spellings of what ``input``/``output`` now say, so a
    path or a size appears once, under its common name; a report field named like an
    envelope field (``output``…) gives way to it.
    """
    body = {k: v for k, v in doc.items() if k not in {"ok", "command", "seconds", *drop}}
    head: dict[str, Any] = {"command": _session.command, "ok": True, "seconds": _session.seconds()}
    if input is not None:
        head["input"] = input
    if output is not None:
        head["output"] = output
    _write({**head, **{k: v for k, v in body.items() if k not in head}})


def emit_failure(exit_code: int, message: str, hint: str | None, **fields: Any) -> None:
    """Print the failure document of the running command (``ok: false`` and ``error``), unless one was printed."""
    if _session.emitted:
        return
    error = {"exit_code": exit_code, "kind": ERROR_KINDS.get(exit_code, "internal"), "message": message,
             "hint": hint}
    _write({"command": _session.command, "ok": False, "seconds": _session.seconds(), "error": error, **fields})


def warn(message: str) -> None:
    """A warning on stderr (never on stdout, which carries results)."""
    click.echo(f"ptmpack: warning: {clean_lines(message)}", err=True)


def stdout_is_terminal() -> bool:
    """Whether results are drawn for a person: stdout is a terminal, or colour is forced (``FORCE_COLOR``)."""
    return sys.stdout.isatty() or bool(os.environ.get("FORCE_COLOR"))


class Printer:
    """Human results on stdout: rich on a terminal, plain tab-separated lines anywhere else."""

    def __init__(self) -> None:
        self.terminal = stdout_is_terminal()
        self._console: Any = None
        if self.terminal:
            from rich.console import Console

            self._console = Console(soft_wrap=True, highlight=False)

    def number(self, n: int) -> str:
        """An integer as a person reads it on a terminal (``1,234``), as a script reads it elsewhere (``1234``)."""
        return f"{n:,}" if self.terminal else str(n)

    def status(self, label: str, text: str = "", style: str = "green") -> None:
        """A one-line result: a coloured ``label`` (on a terminal) then ``text``, both escaped."""
        if self.terminal:
            from rich.markup import escape

            self._console.print(f"[{style}]{escape(clean(label))}[/] {escape(clean(text))}".rstrip())
        else:
            click.echo(f"{clean(label)} {clean(text)}".rstrip())

    def line(self, text: str) -> None:
        """A plain line of result text, escaped."""
        if self.terminal:
            from rich.markup import escape

            self._console.print(escape(clean(text)))
        else:
            click.echo(clean(text))

    def fields(self, title: str, rows: Iterable[tuple[str, object]]) -> None:
        """A key/value block: a two-column table on a terminal, ``key<TAB>value`` lines elsewhere."""
        self.table(title, None, [(k, v) for k, v in rows])

    def table(self, title: str, columns: Sequence[str] | None, rows: Iterable[Sequence[object]],
              right: Sequence[str] = ()) -> None:
        """A table: rich with a box on a terminal (cells wrap, never cut); elsewhere ``# title``, a
        ``# col<TAB>col`` header when ``columns`` are given, then one tab-separated line per row."""
        rows = [[clean(c) for c in row] for row in rows]
        if self.terminal:
            from rich.markup import escape
            from rich.table import Table

            t = Table(title=escape(clean(title)), show_header=columns is not None)
            for col in columns or ("", ""):
                t.add_column(escape(col), justify="right" if col in right else "left", overflow="fold")
            for row in rows:
                t.add_row(*(escape(c) for c in row))
            self._console.print(t)
            return
        click.echo(f"# {clean(title)}")
        if columns is not None:
            click.echo("# " + "\t".join(columns))
        for row in rows:
            click.echo("\t".join(row))


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 (``1 file``, ``2 files``): every noun counted here takes -s."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def human_size(n: float) -> str:
    """Bytes in binary (IEC) units, the one unit system of every human message: ``B``, ``KiB``, ``MiB``, ``GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
