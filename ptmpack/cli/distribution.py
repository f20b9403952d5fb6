"""``ptmpack push``, ``pull`` and ``ls``: move packages through OCI registries and layout directories.

Parses options, calls :mod:`ptmpack.api.distribution`, renders the report: one JSON
document on stdout with ``--json``, else a line or a table (stderr when stdout is
not a terminal), with rich progress bars on stderr while bytes move. Errors are
PtmErrors that the root command turns into exit codes.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from ptmpack.api.distribution import ClientOptions, PullOptions, PushOptions, ls_ref, plain_http_warning, pull, push
from ptmpack.cli._common import console as _console
from ptmpack.cli._common import emit_json as _emit_json
from ptmpack.cli._common import opener, opener_options


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


class _Bars:
    """rich progress bars on stderr, one per phase (hashing, uploading, downloading, assembling, verifying)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._lock = threading.Lock()
        self._task: TaskID | None = None
        self._bar: Progress | None = None

    def __enter__(self) -> _Bars:
        if self.enabled:
            cols = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
            self._bar = Progress("[bold]{task.description}", *cols, console=Console(stderr=True), transient=True)
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def start(self, label: str, total: int) -> None:
        if self._bar is None:
            return
        with self._lock:
            if self._task is not None:
                self._bar.update(self._task, visible=False)
            self._task = self._bar.add_task(label, total=max(total, 1))

    def advance(self, n: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)


def _remember(ctx: click.Context, param: click.Parameter, value: object) -> object:
    ctx.meta[f"ptmpack.{param.name}"] = value
    return value


def client_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The registry connection options every distribution command takes."""
    f = click.option("--timeout", type=click.FloatRange(min=0, min_open=True), expose_value=False, callback=_remember,
                     metavar="SECONDS", help="Give up (exit 9) when the whole command takes longer than this.")(f)
    f = click.option("--speed-time", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                     expose_value=False, callback=_remember, metavar="SECONDS",
                     help="Window of --speed-limit; a registry silent this long times out too.")(f)
    f = click.option("--speed-limit", default=1024, show_default=True, type=click.IntRange(0), expose_value=False,
                     callback=_remember, metavar="BYTES",
                     help="Stop a transfer slower than this many bytes/s for --speed-time seconds (exit 9).")(f)
    f = click.option("--workers", default=4, show_default=True, type=click.IntRange(1, 32),
                     help="Blobs moved in parallel.")(f)
    f = click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False),
                     help="PEM bundle of a private CA to trust for HTTPS (verification is always on).")(f)
    return click.option("--plain-http", is_flag=True,
                        help="Speak HTTP instead of HTTPS (warns on stderr for a host that is not loopback).")(f)


def _client(plain_http: bool, ca_file: Path | None, workers: int, reference: str = "") -> ClientOptions:
    meta = click.get_current_context().meta
    warning = plain_http_warning(reference) if plain_http else None
    if warning:
        click.echo(f"ptmpack: warning: {warning}", err=True)
    return ClientOptions(plain_http=plain_http, ca_file=ca_file, workers=workers,
                         speed_limit=meta.get("ptmpack.speed_limit", 1024),
                         speed_time_s=meta.get("ptmpack.speed_time", 30.0),
                         deadline_s=meta.get("ptmpack.timeout"))


@click.command("push")
@click.argument("package", type=click.Path(path_type=Path))
@click.argument("reference")
@client_options
@click.option("--mount-from", "mount_from", multiple=True, metavar="REPO",
              help="Repository of the same registry to mount blobs from instead of uploading; repeatable.")
@click.option("--no-auto-mount", "no_auto_mount", is_flag=True,
              help="Do not mount blobs from the repositories the local cache saw holding them.")
@click.option("--residual", is_flag=True,
              help="Publish this residual package as the delta to REFERENCE's tag (tag TAG.residual-<base>).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def push_cmd(package: Path, reference: str, plain_http: bool, ca_file: Path | None, workers: int,
             mount_from: tuple[str, ...], no_auto_mount: bool, residual: bool, as_json: bool) -> None:
    """Push PACKAGE (.ptm) to REFERENCE: oci:DIR[:TAG] or HOST[:PORT]/REPO[:TAG]. Only new blobs are uploaded."""
    options = PushOptions(client=_client(plain_http, ca_file, workers, reference), workers=workers, mount_from=mount_from,
                          auto_mount=not no_auto_mount, residual=residual)
    with _Bars(not as_json) as bars:
        report = push(package, reference, options, bars)
    if as_json:
        _emit_json(report.to_json())
        return
    _console().print(f"[green]pushed[/] {report.reference} {report.digest}: uploaded {_size(report.bytes_uploaded)} "
                     f"of {_size(report.package_bytes)} ({report.blobs_uploaded} blobs uploaded, "
                     f"{report.blobs_reused} already there, {report.blobs_mounted} mounted) in {report.seconds:.2f}s")


@click.command("pull")
@click.argument("reference")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .ptm file to write.")
@client_options
@click.option("--delta", is_flag=True,
              help="Update the local package (OUTPUT, or --base) with a published residual when one matches it.")
@click.option("--base", type=click.Path(path_type=Path, dir_okay=False), help="Local base package for --delta.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@opener_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def pull_cmd(reference: str, output: Path, plain_http: bool, ca_file: Path | None, workers: int, delta: bool,
             base: Path | None, force: bool, passphrase_file: Path | None, key_file: Path | None,
             identity: Path | None, as_json: bool) -> None:
    """Pull REFERENCE into OUTPUT, verifying every blob and the package before it is renamed into place.

    Key options are needed only to apply an encrypted residual with --delta.
    """
    options = PullOptions(client=_client(plain_http, ca_file, workers, reference), workers=workers, force=force, delta=delta,
                          base=base, opener=opener(passphrase_file, key_file, identity))
    with _Bars(not as_json) as bars:
        report = pull(reference, output, options, bars)
    if as_json:
        _emit_json(report.to_json())
        return
    how = {"full": "pulled", "delta": "updated (residual)", "up-to-date": "up to date"}[report.method]
    _console().print(f"[green]{how}[/] {report.output} from {report.reference}: downloaded "
                     f"{_size(report.bytes_downloaded)} for a {_size(report.package_bytes)} package "
                     f"({report.blobs_downloaded} blobs fetched, {report.blobs_cached} from the cache) "
                     f"in {report.seconds:.2f}s" + (f"; {report.note}" if report.note else ""))


@click.command("ls")
@click.argument("reference")
@client_options
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON on stdout.")
def ls_cmd(reference: str, plain_http: bool, ca_file: Path | None, workers: int, as_json: bool) -> None:
    """List the tags at REFERENCE, and describe the package it names (annotations, size) without downloading it."""
    report = ls_ref(reference, _client(plain_http, ca_file, workers, reference))
    if as_json:
        _emit_json(report.to_json())
        return
    console = _console()
    if report.package is None:
        table = Table("tag", title=report.reference)
        for t in report.tags:
            table.add_row(t)
        console.print(table if report.tags else f"{report.reference}: no tags")
        return
    p = report.package
    table = Table("field", "value", title=f"{report.reference} {p.digest}")
    table.add_row("size", _size(p.size))
    table.add_row("flags", ", ".join(p.flags) or "-")
    table.add_row("blobs", f"{p.blobs} ({_size(p.blob_bytes)})")
    for k, v in sorted(p.annotations.items()):
        table.add_row(k, v)
    console.print(table)
