"""``ptmpack login``, ``logout`` and ``cache ls|prune``: what the registry commands keep on this machine.

``login HOST -u USER`` reads the password from standard input (one line; never an
option, so it stays out of shell history and ``ps``), checks it against the
registry and stores it in the Docker config. ``cache`` shows and shrinks the pull
cache; its size limit is ``PTMPACK_CACHE_SIZE`` (e.g. ``10G``), which pulls honour too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ptmpack.api.distribution import cache_list, cache_prune, login, logout
from ptmpack.cli._common import json_option, parse_size
from ptmpack.cli.distribution import _client, cache_limit, client_options
from ptmpack.cli.output import Printer, count, emit, human_size
from ptmpack.errors import UsageError


@click.command("login")
@click.argument("host")
@click.option("-u", "--username", required=True, help="User name (or the name a token is issued to).")
@client_options
@json_option
def login_cmd(host: str, username: str, plain_http: bool, ca_file: Path | None, workers: int, as_json: bool) -> None:
    """Check USERNAME and the password read from stdin (asked for, unechoed, on a terminal) against HOST, then
    store them (Docker config format).

    Example: echo "$TOKEN" | ptmpack login ghcr.io -u me
    """
    if sys.stdin.isatty():  # a person at a terminal: ask, without echoing the password (prompt on stderr)
        password = click.prompt("Password", hide_input=True, default="", show_default=False, err=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("login reads the password from standard input, and it was empty",
                         hint=f"echo \"$PASSWORD\" | ptmpack login {host} -u {username}")
    report = login(host, username, password, _client(plain_http, ca_file, workers, f"{host}/ptmpack-login"))
    if as_json:
        emit(report.to_json())
        return
    Printer().status("logged in", f"to {report.host} as {report.username}; credentials stored in {report.path}")


@click.command("logout")
@click.argument("host")
@json_option
def logout_cmd(host: str, as_json: bool) -> None:
    """Remove the stored credentials of HOST from the Docker config."""
    report = logout(host)
    if as_json:
        emit(report.to_json())
        return
    if report.removed:
        Printer().status("logged out", f"of {report.host}; removed its entry from {report.path}")
    else:
        Printer().status("not logged in", f"{report.path} holds no credentials for {report.host}", style="yellow")


@click.group("cache")
def cache_cmd() -> None:
    """Show (ls) or shrink (prune) the pull cache ($XDG_CACHE_HOME/ptmpack)."""


@cache_cmd.command("ls")
@json_option
def cache_ls_cmd(as_json: bool) -> None:
    """List the cached blobs, least recently used first, with the cache's size and limit."""
    listing = cache_list(limit=cache_limit())
    if as_json:
        emit(listing.to_json())
        return
    out = Printer()
    out.fields(listing.root, [("blobs", len(listing.entries)), ("size", human_size(listing.bytes)),
                              ("limit (PTMPACK_CACHE_SIZE)", human_size(listing.limit)),
                              ("partial downloads", listing.partials), ("blobs found in pulled files", len(listing.located))])
    if listing.entries:
        out.table("blobs, least recently used first", ("digest", "size"),
                  [(e.digest, human_size(e.size)) for e in listing.entries], right=("size",))


@cache_cmd.command("prune")
@click.option("--max-size", metavar="SIZE", help="Keep at most this much (e.g. 2G); default: the cache's limit.")
@click.option("--all", "everything", is_flag=True, help="Empty the cache.")
@json_option
def cache_prune_cmd(max_size: str | None, everything: bool, as_json: bool) -> None:
    """Remove least recently used blobs until the cache fits its limit, and stale partial downloads."""
    if everything and max_size is not None:
        raise UsageError("give --max-size or --all, not both")
    limit = 0 if everything else parse_size(max_size) if max_size is not None else cache_limit()
    report = cache_prune(limit=limit)
    if as_json:
        emit(report.to_json())
        return
    Printer().status("pruned", f"{report.root}: removed {count(report.blobs_removed, 'blob')} ({human_size(report.bytes_freed)}) "
                               f"and {report.partials_removed} partial downloads; "
                               f"{human_size(report.bytes_kept)} kept (limit {human_size(report.limit)})")

