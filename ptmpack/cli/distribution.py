"""``ptmpack push``, ``pull`` and ``ls``: move packages through OCI registries and layout directories.

Parses options, calls :mod:`ptmpack.api.distribution`, renders the report through
:mod:`ptmpack.cli.output` (one JSON document with ``--json``, else a line or a table on
stdout), with progress on stderr while bytes move (:mod:`ptmpack.cli.progress`).
Everything a registry says (tags, annotations) is escaped before it is printed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ptmpack.api import load_public_key
from ptmpack.api.distribution import (
    DEFAULT_CACHE_LIMIT,
    ClientOptions,
    PullOptions,
    PushOptions,
    ls_ref,
    plain_http_warning,
    pull,
    push,
)
from ptmpack.cli._common import json_option, opener, opener_options, parse_size
from ptmpack.cli.output import Printer, clean, count, emit, file_ref, file_ref_soon, human_size, warn
from ptmpack.cli.progress import TransferProgress, progress_option


def _remember(ctx: click.Context, param: click.Parameter, value: object) -> object:
    ctx.meta[f"ptmpack.{param.name}"] = value
    return value


def client_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The registry connection options every distribution command takes."""
    f = click.option("--timeout", type=click.FloatRange(min=0, min_open=True), expose_value=False, callback=_remember,
                     metavar="SECONDS", help="Give up (exit 9) when the whole command takes longer than this.")(f)
    f = click.option("--speed-time", default=ClientOptions.speed_time_s, show_default=True, type=click.FloatRange(min=0, min_open=True),
                     expose_value=False, callback=_remember, metavar="SECONDS",
                     help="Window of --speed-limit; a registry silent this long times out too.")(f)
    f = click.option("--speed-limit", default=ClientOptions.speed_limit, show_default=True, type=click.IntRange(0), expose_value=False,
                     callback=_remember, metavar="BYTES",
                     help="Stop a transfer slower than this many bytes/s for --speed-time seconds (exit 9).")(f)
    f = click.option("--workers", default=4, show_default=True, type=click.IntRange(1, 32),
                     help="Blobs moved in parallel.")(f)
    f = click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False),
                     help="PEM bundle of a private CA to trust for HTTPS (verification is always on).")(f)
    return click.option("--plain-http", is_flag=True,
                        help="Speak HTTP instead of HTTPS (warns on stderr for a host that is not loopback).")(f)


def cache_limit() -> int:
    """The pull cache's size limit: ``PTMPACK_CACHE_SIZE`` (e.g. ``10G``), else the library's default."""
    text = os.environ.get("PTMPACK_CACHE_SIZE")
    return parse_size(text) if text else DEFAULT_CACHE_LIMIT


def _client(plain_http: bool, ca_file: Path | None, workers: int, reference: str = "") -> ClientOptions:
    meta = click.get_current_context().meta
    warning = plain_http_warning(reference) if plain_http else None
    if warning:
        warn(warning)
    return ClientOptions(plain_http=plain_http, ca_file=ca_file, workers=workers,
                         speed_limit=meta.get("ptmpack.speed_limit", ClientOptions.speed_limit),
                         speed_time_s=meta.get("ptmpack.speed_time", ClientOptions.speed_time_s),
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
@click.option("--split-size", default="8G", show_default=True,
              help="ModelPack artifacts: files larger than this travel as ordered parts (org.ptmpack.file.part).")
@progress_option
@json_option
def push_cmd(package: Path, reference: str, plain_http: bool, ca_file: Path | None, workers: int,
             mount_from: tuple[str, ...], no_auto_mount: bool, residual: bool, split_size: str, as_json: bool) -> None:
    """Push PACKAGE (.ptm) to REFERENCE: oci:DIR[:TAG] or HOST[:PORT]/REPO[:TAG]. Only new blobs are uploaded."""
    options = PushOptions(client=_client(plain_http, ca_file, workers, reference), workers=workers, mount_from=mount_from,
                          auto_mount=not no_auto_mount, residual=residual, split_size=parse_size(split_size))
    input_ref = file_ref_soon(package) if as_json and package.is_file() else lambda: file_ref(package)
    with TransferProgress() as bars:
        report = push(package, reference, options, bars)
    if as_json:
        emit(report.to_json(), input=input_ref(), drop=("package_bytes",))
        return
    Printer().status("pushed", f"{report.reference} {report.digest}: uploaded {human_size(report.bytes_uploaded)} "
                               f"of {human_size(report.package_bytes)} ({count(report.blobs_uploaded, 'blob')} uploaded, "
                               f"{report.blobs_reused} already there, {report.blobs_mounted} mounted) "
                               f"in {report.seconds:.2f} s")


@click.command("pull")
@click.argument("reference")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .ptm file to write.")
@client_options
@click.option("--delta", is_flag=True,
              help="Update the local package (OUTPUT, or --base) with a published residual when one matches it.")
@click.option("--base", type=click.Path(path_type=Path, dir_okay=False),
              help="A local older version: unchanged ranges are copied from it, not fetched (and the base of --delta).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--pubkey", type=click.Path(path_type=Path, dir_okay=False),
              help="Ed25519 public key (PEM): refuse (exit 3, nothing written) a package not signed by it.")
@opener_options
@progress_option
@json_option
def pull_cmd(reference: str, output: Path, plain_http: bool, ca_file: Path | None, workers: int, delta: bool,
             base: Path | None, force: bool, pubkey: Path | None, passphrase_file: Path | None, key_file: Path | None,
             identity: Path | None, as_json: bool) -> None:
    """Pull REFERENCE into OUTPUT, verifying every blob and the package before it is renamed into place.

    Key options are needed only to apply an encrypted residual with --delta.
    """
    options = PullOptions(client=_client(plain_http, ca_file, workers, reference), workers=workers, force=force, delta=delta,
                          cache_limit=cache_limit(),
                          base=base, opener=opener(passphrase_file, key_file, identity),
                          pubkey=load_public_key(pubkey) if pubkey else None)
    with TransferProgress() as bars:
        report = pull(reference, output, options, bars)
    if as_json:
        emit(report.to_json(), output=file_ref(output), drop=("package_bytes",))
        return
    how = {"full": "pulled", "delta": "updated (residual)", "up-to-date": "up to date"}[report.method]
    Printer().status(how, f"{report.output} from {report.reference}: downloaded "
                          f"{human_size(report.bytes_downloaded)} for a {human_size(report.package_bytes)} package "
                          f"({count(report.blobs_downloaded, 'blob')} fetched, {report.blobs_cached} from the cache) "
                          f"in {report.seconds:.2f} s" + (f"; {report.note}" if report.note else ""))


@click.command("ls")
@click.argument("reference")
@click.option("--all", "all_tags", is_flag=True,
              help="Also list the sha256-<hex> tags that hold signatures (registries without the referrers API).")
@client_options
@json_option
def ls_cmd(reference: str, all_tags: bool, plain_http: bool, ca_file: Path | None, workers: int,
           as_json: bool) -> None:
    """List the tags at REFERENCE, and describe the package it names (annotations, size) without downloading it.

    Not on a terminal, tags come one a line (``ptmpack ls oci:dir | wc -l`` counts them)
    and a package's fields as ``key<TAB>value`` lines.
    """
    report = ls_ref(reference, _client(plain_http, ca_file, workers, reference), all_tags=all_tags)
    if as_json:
        emit(report.to_json())
        return
    out = Printer()
    if report.package is None:
        if not report.tags:
            click.echo(f"ptmpack: {clean(report.reference)}: no tags", err=True)  # stdout stays 0 lines
        elif out.terminal:
            out.table(report.reference, ("tag",), [(t,) for t in report.tags])
        else:
            for t in report.tags:
                out.line(t)
        return
    p = report.package
    rows: list[tuple[str, object]] = [("digest", p.digest), ("size", human_size(p.size)),
                                      ("flags", ", ".join(p.flags) or "-"),
                                      ("blobs", f"{p.blobs} ({human_size(p.blob_bytes)})"),
                                      ("signed", ", ".join(f"yes, key {fp}" for fp in p.signers) or "no")]
    out.fields(report.reference, rows + sorted(p.annotations.items()))
