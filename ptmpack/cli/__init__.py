"""The ``ptmpack`` command line: a click root whose subcommands load only when used.

``ptmpack --help`` and ``--version`` import click and nothing heavy (no numpy, rich or
crypto); each command family lives in its own module and imports :mod:`ptmpack.api`.
:func:`main` is the one place that maps a PtmError to its exit code and a one-line
message (tracebacks only with ``--debug``).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import traceback

import click

from ptmpack import __version__
from ptmpack.errors import ENVIRONMENT_ERRNOS, EnvironmentFault, PtmError

COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("container", "Lay out a package tree (Model/, Program/, Meta-info/) with metadata."),
    "pack": ("container", "Pack a package tree into a .ptm container."),
    "unpack": ("container", "Unpack a .ptm container into a package tree (atomically)."),
    "verify": ("container", "Verify a package or tree: layout, digests, tags, schemas, signature."),
    "inspect": ("container", "Show a package's headers, entries, metadata and tensors."),
    "keygen": ("container", "Make a key: symmetric key file, X25519 recipient pair, or Ed25519 signing pair."),
    "diff": ("residual", "Write the residual delta that turns BASE (.ptm) into TARGET (.ptm or tree)."),
    "apply": ("residual", "Rebuild the target of DELTA on BASE into a normal package (refuses another base)."),
    "graph": ("ir", "Check and show the chapter-6 IR (Model/graph.json) of a package."),
    "run": ("ir", "Run a packaged model on one input: next-token top-k or the sentence embedding."),
    "eval": ("ir", "Evaluate a packaged model: perplexity of a decoder, or embeddings of an encoder."),
    "compress": ("compress", "Compress a model (chapter 7): quantize, fold norms, prune, merge adapters."),
    "push": ("distribution", "Push a .ptm to an OCI registry or an oci:DIR layout."),
    "pull": ("distribution", "Pull a package from an OCI registry or an oci:DIR layout, verified."),
    "ls": ("distribution", "List the tags of a repository, or show a package's annotations."),
    "login": ("registry_admin", "Check and store a registry's credentials (password on stdin), as docker login."),
    "logout": ("registry_admin", "Remove a registry's stored credentials."),
    "cache": ("registry_admin", "Show (ls) or shrink (prune) the pull cache."),
}
"""Every subcommand: the module under ptmpack.cli that defines it, and its one-line help."""


_NO_ARGS_IS_HELP: tuple[type[Exception], ...] = tuple(
    t for t in (getattr(click.exceptions, "NoArgsIsHelpError", None),) if t is not None)
"""click >= 8.2 raises this for a group given no subcommand; its message is the whole help text."""


class _Interrupted(BaseException):
    """Ctrl-C, carried past click's own handler (which writes a blank line to stderr before its Abort) to
    :func:`main`, which reports it in one line. Raised only after the interrupt has unwound every command."""


class _StdoutClosed(BaseException):
    """The reader of stdout went away (``ptmpack inspect m.ptm --tensors | head -1``), carried past click,
    which would exit 1, the code of an internal error."""


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on its write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is not a real file
        return False


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand runs."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted() from exc
        except BrokenPipeError as exc:
            if _stdout_gone():  # not a socket's EPIPE, which is the command's own failure
                raise _StdoutClosed() from exc
            raise

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module = importlib.import_module(f"ptmpack.cli.{entry[0]}")
        command = getattr(module, cmd_name.replace("-", "_") + "_cmd", None)
        if not isinstance(command, click.Command):
            raise click.UsageError(f"the {cmd_name!r} command is not available in this installation")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in sorted(COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ptmpack")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Package large pre-trained models in the GB/T 42382.2 container."""
    ctx.obj = {"debug": debug}


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _fail(message: str, code: int, hint: str | None = None, **fields: object) -> None:
    """Report a failure: the ``--json`` failure document on stdout when asked for, one line on stderr, exit."""
    from ptmpack.cli.output import clean_lines, emit_failure, session

    if session().json:
        emit_failure(code, message, hint, **fields)
    text = f"{message} ({hint})" if hint else message
    click.echo(f"ptmpack: error: {clean_lines(text)}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn errors into exit codes (SPEC §6).

    With ``--json`` a failure still prints one document on stdout (``ok: false`` and an
    ``error`` object, :mod:`ptmpack.cli.output`), so a script always has something to parse.
    """
    from ptmpack.cli.output import begin

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    begin(args)
    # A stop signal unwinds like an interrupt, so temporary outputs are removed on the way out.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(args=args, prog_name="ptmpack", standalone_mode=False)
    except PtmError as exc:
        if debug:
            traceback.print_exc()
        fields = {"check": exc.check} if getattr(exc, "check", None) else {}
        _fail(exc.message, exc.exit_code, exc.hint, **fields)
    except _Interrupted:
        _fail("interrupted", 130)
    except _StdoutClosed:
        # As a Unix tool killed by SIGPIPE: no message, exit 128 + 13; stdout points at /dev/null so the
        # interpreter's last flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.exceptions.Exit as exc:  # --help, --version
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        if isinstance(exc, _NO_ARGS_IS_HELP):  # `ptmpack` or `ptmpack cache` alone: the help, as click shows it
            exc.show()
            sys.exit(2)
        # One line like every other failure (click's own show() prints four), naming the help to read.
        ctx = getattr(exc, "ctx", None)
        _fail(exc.format_message(), 2, f"see '{ctx.command_path} --help'" if ctx is not None else "see --help")
    except OSError as exc:
        if debug:
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        code = EnvironmentFault.exit_code if exc.errno in ENVIRONMENT_ERRNOS else 1
        _fail(f"{exc.strerror or exc}{where}", code)
    except Exception as exc:
        if debug:
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc}", 1, "a bug: run with --debug and report the traceback")
    sys.exit(0)
