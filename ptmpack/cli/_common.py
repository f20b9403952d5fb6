"""What every command family shares: key and protection options, size and codec parsing.

Options are defined once as decorators, so every command spells them the same way:
``--passphrase-file``/``--key-file``/``--identity`` always name the keys that open an
*input*; ``--encrypt`` with ``--recipient``/``--passphrase-file``/``--key-file`` (pack) or
``--encrypt-passphrase-file``/``--encrypt-key-file`` (commands that also read a package)
name who may open the *output*. Output and progress live in :mod:`ptmpack.cli.output`
and :mod:`ptmpack.cli.progress`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ptmpack.config import CIPHER_NAMES, parse_compression
from ptmpack.errors import UsageError

if TYPE_CHECKING:
    from ptmpack.api import Opener
    from ptmpack.config import EncryptionSpec, PackConfig

_SIZE = re.compile(r"^(\d+)([kKmMgG]?)(i?[bB])?$")


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


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``: one document on stdout, success or failure (:mod:`ptmpack.cli.output`)."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout, on success and on failure.")(f)


def deprecated_alias(old: str, new: str, dest: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """A hidden option ``old`` that still works for one release: it fills ``dest`` (the option ``new``'s
    parameter) when that is unset, and warns on stderr that ``new`` is the spelling to use."""

    def take(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is None or value == ():
            return
        from ptmpack.cli.output import warn

        warn(f"{old} is deprecated and will be removed in the next release; use {new}")
        ctx.meta.setdefault("deprecated", {})[dest] = value

    return click.option(old, f"_deprecated_{dest}", hidden=True, expose_value=False, callback=take, **kwargs)


def aliased(ctx: click.Context, dest: str, value: Any) -> Any:
    """``value``, or what a deprecated spelling of the same option gave when ``value`` is unset."""
    return value if value not in (None, ()) else ctx.meta.get("deprecated", {}).get(dest, value)


def output_protection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Who may open the output of a command that also reads a package (compress): named like ``pack``'s
    ``--encrypt``/``--recipient``/``--cipher``/``--sign-key``, with ``--encrypt-passphrase-file`` and
    ``--encrypt-key-file`` for symmetric secrets, since ``--passphrase-file``/``--key-file`` open the input."""
    for option in reversed((
        click.option("--encrypt/--no-encrypt", "encrypt", default=None,
                     help="Encrypt the output (default: when the input is encrypted, for the key that opened it); "
                          "--no-encrypt writes plaintext on purpose."),
        click.option("--recipient", "recipients", multiple=True, type=click.Path(path_type=Path),
                     help="X25519 public key (PEM) of a device that may open the output; repeatable."),
        click.option("--encrypt-passphrase-file", "encrypt_passphrase_files", multiple=True,
                     type=click.Path(path_type=Path), help="Passphrase file that may open the output; repeatable."),
        click.option("--encrypt-key-file", "encrypt_key_files", multiple=True, type=click.Path(path_type=Path),
                     help="Symmetric key file that may open the output; repeatable."),
        click.option("--cipher", type=click.Choice(sorted(CIPHER_NAMES)), default=None,
                     help="Cipher of the output (default: the input's, else aes-256-gcm)."),
        click.option("--sign-key", type=click.Path(path_type=Path), help="Ed25519 private key (PEM) to sign with."),
    )):
        f = option(f)
    return f


def derived_output_config(source: Path, keys: Opener | None, *, codec: str | None, chunk_size: str,
                          encrypt: bool | None, recipients: tuple[Path, ...],
                          encrypt_passphrase_files: tuple[Path, ...], encrypt_key_files: tuple[Path, ...],
                          cipher: str | None, sign_key: Path | None) -> PackConfig:
    """The PackConfig of a package made from ``source``: what the options say, the rest like the input."""
    from ptmpack import api

    named = recipients or encrypt_passphrase_files or encrypt_key_files
    if named and encrypt is False:
        raise UsageError("--no-encrypt given together with output recipients", hint="drop one of them")
    encryption = None
    if named:
        encryption = api.load_encryption(api.RecipientFiles(encrypt_passphrase_files, encrypt_key_files, recipients,
                                                            cipher or "aes-256-gcm"))
    config = api.output_config(source, keys, compression=parse_compression(codec) if codec else None,
                               encryption=encryption, encrypt=True if named else encrypt,
                               chunk_size=parse_size(chunk_size),
                               sign_key=api.load_signing_key(sign_key) if sign_key else None)
    if cipher and config.encryption is not None and not named:  # protection like the input's, another cipher
        config = dataclasses.replace(config, encryption=dataclasses.replace(config.encryption,
                                                                            cipher=CIPHER_NAMES[cipher]))
    return config
