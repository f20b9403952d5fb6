"""The ``ptmpack`` command line: a click root whose subcommands load only when used.

``ptmpack --help`` and ``--version`` import click and nothing heavy (no numpy, rich or
crypto); each command family lives in its own module and imports :mod:`ptmpack.api`.
:func:`main` is the one place that maps a PtmError to its exit code and a one-line
message (tracebacks only with ``--debug``).
"""

from __future__ import annotations

import importlib
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
}
"""Every subcommand: the module under ptmpack.cli that defines it, and its one-line help."""


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand runs."""

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


def _fail(message: str, code: int) -> None:
    click.echo(f"ptmpack: error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn errors into exit codes (SPEC §6)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    # A stop signal unwinds like an interrupt, so temporary outputs are removed on the way out.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(args=args, prog_name="ptmpack", standalone_mode=False)
    except PtmError as exc:
        if debug:
            traceback.print_exc()
        _fail(exc.diagnostics(), exc.exit_code)
    except click.exceptions.Abort:
        click.echo("ptmpack: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except OSError as exc:
        if debug:
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        if exc.errno in ENVIRONMENT_ERRNOS:
            _fail(f"{exc.strerror or exc}{where}", EnvironmentFault.exit_code)
        _fail(f"{exc.strerror or exc}{where}", 1)
    except Exception as exc:
        if debug:
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc} (a bug: run with --debug and report the traceback)", 1)
    sys.exit(0)

