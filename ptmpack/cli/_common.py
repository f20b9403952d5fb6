"""What every command family shares: key and protection options, size and codec parsing, output.

Options are defined once as decorators; human output goes to stdout on a terminal and
to stderr otherwise, so ``--json`` keeps stdout to exactly one JSON document.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ptmpack.config import CIPHER_NAMES, parse_compression
from ptmpack.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from ptmpack.api import Opener
    from ptmpack.config import EncryptionSpec, PackConfig

_SIZE = re.compile(r"^(\d+)([kKmMgG]?)(i?[bB])?$")



def console() -> Console:
    """Human output: stdout on a terminal, else stderr so stdout stays clean for pipes."""
    from rich.console import Console

    return Console(stderr=not sys.stdout.isatty())


def emit_json(doc: Any) -> None:
    """Print one JSON document on stdout."""
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


def parse_size(text: str) -> int:
    """``4M``, ``512K``, ``1048576`` → bytes."""
    m = _SIZE.match(text.strip())
    if not m:
        raise UsageError(f"cannot read size {text!r}", hint="use e.g. 4M, 512K or 1048576")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]


def opener_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options that open an encrypted package, shared by every reading command."""
    f = click.option("--identity", type=click.Path(path_type=Path), help="X25519 private key (PEM) of a recipient.")(f)
    f = click.option("--key-file", type=click.Path(path_type=Path),
                     help="Symmetric key file (base64). Env: PTMPACK_KEY_FILE.")(f)
    return click.option("--passphrase-file", type=click.Path(path_type=Path),
                        help="File holding the passphrase. Env: PTMPACK_PASSPHRASE.")(f)


def opener(passphrase_file: Path | None, key_file: Path | None, identity: Path | None) -> Opener | None:
    """The Opener for the key options given (None when there are none)."""
    from ptmpack import api

    return api.load_opener(api.KeyFiles(passphrase_file, key_file, identity))


def protection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options that encrypt and sign a new package, shared by every writing command."""
    for option in reversed((
        click.option("--encrypt", is_flag=True, help="Encrypt the package (needs a passphrase, key file or recipient)."),
        click.option("--passphrase-file", "passphrase_files", multiple=True, type=click.Path(path_type=Path),
                     help="Passphrase file that may open the output; repeatable. Env: PTMPACK_PASSPHRASE."),
        click.option("--key-file", "key_files", multiple=True, type=click.Path(path_type=Path),
                     help="Symmetric key file that may open the output; repeatable."),
        click.option("--recipient", "recipients", multiple=True, type=click.Path(path_type=Path),
                     help="X25519 public key (PEM) of a device that may open the output; repeatable."),
        click.option("--cipher", type=click.Choice(sorted(CIPHER_NAMES)), default="aes-256-gcm", show_default=True),
        click.option("--sign-key", type=click.Path(path_type=Path), help="Ed25519 private key (PEM) to sign with."),
    )):
        f = option(f)
    return f


def pack_config(*, compress: str, chunk_size: str, encrypt: bool, passphrase_files: tuple[Path, ...],
                key_files: tuple[Path, ...], recipients: tuple[Path, ...], cipher: str,
                sign_key: Path | None) -> PackConfig:
    """The PackConfig that the codec and protection options describe."""
    from ptmpack import api

    compression, level = parse_compression(compress)
    encryption: EncryptionSpec | None = None
    if encrypt:
        try:
            encryption = api.load_encryption(api.RecipientFiles(passphrase_files, key_files, recipients, cipher))
        except UsageError as exc:
            raise UsageError(exc.message, hint="give --passphrase-file, --key-file or --recipient, "
                                               "or set PTMPACK_PASSPHRASE") from exc
    elif passphrase_files or key_files or recipients:
        raise UsageError("key options given without --encrypt", hint="add --encrypt")
    return api.PackConfig(compression=compression, level=level, chunk_size=parse_size(chunk_size),
                          encryption=encryption, sign_key=api.load_signing_key(sign_key) if sign_key else None)


@contextmanager
def progress_bar(label: str, total: int | None, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A byte-progress callback drawing a rich bar on a terminal's stderr (a no-op elsewhere)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    cols = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(f"[bold]{label}", *cols, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
