"""Key files: ``ptmpack keygen`` and the loaders behind every key option of the CLI.

Secrets are written with mode 0600 from the moment the file exists (``O_CREAT | O_EXCL``), an
existing file is never overwritten, and a key pair is written whole or not at all. Every
loader turns a missing, unreadable, unparseable or wrong-type file into a
:class:`KeyAccessError` that names the file, what was expected, and how to make one.
"""

from __future__ import annotations

import base64
import binascii
import os
import warnings
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa, x448
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.utils import CryptographyDeprecationWarning

from ptmpack.crypto.keyslots import KEK_SIZE
from ptmpack.errors import KeyAccessError, UsageError

KEY_KINDS = ("symmetric", "x25519", "ed25519")
MAX_KEY_FILE = 65536
PASSPHRASE_ENV = "PTMPACK_PASSPHRASE"
KEY_FILE_ENV = "PTMPACK_KEY_FILE"

_K = TypeVar("_K", X25519PrivateKey, X25519PublicKey, Ed25519PrivateKey, Ed25519PublicKey)
_SECRET_MODE = 0o600
_PUBLIC_MODE = 0o644


def _create_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` holding ``data`` with ``mode``; never replace an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    except FileExistsError:
        raise UsageError(
            f"{path} already exists; ptmpack keygen never overwrites a key", hint="choose another -o"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed the mode given to open
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def keygen(kind: str, prefix: Path) -> list[Path]:
    """Make a new key and write it next to ``prefix``; return the paths written.

    ``symmetric`` writes ``PREFIX.key`` (32 random bytes as one base64 line, for --key-file).
    ``x25519`` and ``ed25519`` write ``PREFIX.key`` (unencrypted PKCS#8 PEM, mode 0600) and
    ``PREFIX.pub`` (SubjectPublicKeyInfo PEM, mode 0644): X25519 pairs encrypt to recipients
    (--recipient/--identity), Ed25519 pairs sign (--sign-key/--pubkey).

    Raises:
        UsageError: unknown ``kind``, a target file already exists, or a file cannot be
            created; nothing is left behind then.
    """
    prefix = Path(prefix)
    secret_path = prefix.with_name(prefix.name + ".key")
    public_path = prefix.with_name(prefix.name + ".pub")
    if kind == "symmetric":
        _create_exclusive(secret_path, base64.b64encode(os.urandom(KEK_SIZE)) + b"\n", _SECRET_MODE)
        return [secret_path]
    if kind == "x25519":
        private: X25519PrivateKey | Ed25519PrivateKey = X25519PrivateKey.generate()
    elif kind == "ed25519":
        private = Ed25519PrivateKey.generate()
    else:
        raise UsageError(f"unknown key type {kind!r}; choose one of {', '.join(KEY_KINDS)}")
    if public_path.exists():
        raise UsageError(
            f"{public_path} already exists; ptmpack keygen never overwrites a key", hint="choose another -o"
        )
    secret_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _create_exclusive(secret_path, secret_pem, _SECRET_MODE)
    try:
        _create_exclusive(public_path, public_pem, _PUBLIC_MODE)
    except BaseException:
        secret_path.unlink(missing_ok=True)
        raise
    return [secret_path, public_path]


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyAccessError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyAccessError(f"{path} is larger than {MAX_KEY_FILE} bytes; it is not a {what}")
    return data


def load_symmetric_key(path: Path) -> bytes:
    """Read a ``--key-file``: one base64 line that decodes to exactly 32 bytes.

    Raises:
        KeyAccessError: missing or unreadable file, not base64, or not 32 bytes.
    """
    data = _read_key_file(path, "key file")
    hint = "make one with: ptmpack keygen --type symmetric -o PREFIX"
    if data.lstrip().startswith(b"-----BEGIN"):
        raise KeyAccessError(
            f"{path} is a PEM key, not a symmetric key file; --key-file needs 32 random bytes in base64",
            hint="an X25519 private key goes to --identity",
        )
    try:
        key = base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyAccessError(
            f"{path} is not base64 text; --key-file needs 32 random bytes in base64", hint=hint
        ) from None
    if len(key) != KEK_SIZE:
        raise KeyAccessError(
            f"{path} decodes to {len(key)} bytes; --key-file needs exactly {KEK_SIZE} bytes in base64", hint=hint
        )
    return key


def load_passphrase(path: Path) -> bytes:
    """Read a ``--passphrase-file``: its bytes, less one trailing newline (``\\n`` or ``\\r\\n``).

    Raises:
        KeyAccessError: missing or unreadable file, or an empty passphrase.
    """
    data = _read_key_file(path, "passphrase file")
    for newline in (b"\r\n", b"\n"):
        if data.endswith(newline):
            data = data[: -len(newline)]
            break
    if not data:
        raise KeyAccessError(f"passphrase file {path} is empty")
    return data


def _key_type_name(key: object) -> str:
    with warnings.catch_warnings():  # naming a DSA key must not print cryptography's DSA deprecation notice
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return _family_name(key)


def _family_name(key: object) -> str:
    families = (
        ((X25519PrivateKey, X25519PublicKey), "an X25519"),
        ((Ed25519PrivateKey, Ed25519PublicKey), "an Ed25519"),
        ((x448.X448PrivateKey, x448.X448PublicKey), "an X448"),
        ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "an Ed448"),
        ((rsa.RSAPrivateKey, rsa.RSAPublicKey), "an RSA"),
        ((ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey), "an EC"),
        ((dsa.DSAPrivateKey, dsa.DSAPublicKey), "a DSA"),
    )
    for (private_cls, public_cls), name in families:
        if isinstance(key, private_cls):
            return f"{name} private key"
        if isinstance(key, public_cls):
            return f"{name} public key"
    return f"a {type(key).__name__} key"


def _load_pem(
    path: Path, *, private: bool, expected: type[_K], expected_name: str, option: str, keygen_type: str
) -> _K:
    """Load a PEM key of class ``expected`` or raise a KeyAccessError that says what to pass."""
    hint = f"make one with: ptmpack keygen --type {keygen_type} -o PREFIX"
    data = _read_key_file(path, f"{expected_name} file")
    public_pem = b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data
    if private and public_pem:
        raise KeyAccessError(
            f"{path} is a public key; {option} needs {expected_name} (the PREFIX.key file of the pair)", hint=hint
        )
    if not private and b"PRIVATE KEY-----" in data:
        raise KeyAccessError(
            f"{path} is a private key; {option} needs {expected_name} (the PREFIX.pub file of the pair)", hint=hint
        )
    try:
        with warnings.catch_warnings():  # a DSA key is refused below by name, not with a library warning
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            if private:
                key = serialization.load_pem_private_key(data, password=None)
            else:
                key = serialization.load_pem_public_key(data)
    except TypeError:
        raise KeyAccessError(
            f"{path} is a password-protected key; {option} needs an unencrypted PEM key", hint=hint
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyAccessError(f"{path} is not a PEM key; {option} needs {expected_name}", hint=hint) from None
    if not isinstance(key, expected):
        raise KeyAccessError(f"{path} is {_key_type_name(key)}; {option} needs {expected_name}", hint=hint)
    return key


def load_x25519_private(path: Path) -> X25519PrivateKey:
    """Read an ``--identity``: an X25519 private key in PEM.

    Raises:
        KeyAccessError: missing, unparseable, encrypted or another type of key.
    """
    return _load_pem(
        path,
        private=True,
        expected=X25519PrivateKey,
        expected_name="an X25519 private key",
        option="--identity",
        keygen_type="x25519",
    )


def load_x25519_public(path: Path) -> X25519PublicKey:
    """Read a ``--recipient``: an X25519 public key in PEM.

    Raises:
        KeyAccessError: missing, unparseable or another type of key.
    """
    return _load_pem(
        path,
        private=False,
        expected=X25519PublicKey,
        expected_name="an X25519 public key",
        option="--recipient",
        keygen_type="x25519",
    )


def load_ed25519_private(path: Path) -> Ed25519PrivateKey:
    """Read a ``--sign-key``: an Ed25519 private key in PEM.

    Raises:
        KeyAccessError: missing, unparseable, encrypted or another type of key.
    """
    return _load_pem(
        path,
        private=True,
        expected=Ed25519PrivateKey,
        expected_name="an Ed25519 private key",
        option="--sign-key",
        keygen_type="ed25519",
    )


def load_ed25519_public(path: Path) -> Ed25519PublicKey:
    """Read a ``--pubkey``: an Ed25519 public key in PEM.

    Raises:
        KeyAccessError: missing, unparseable or another type of key.
    """
    return _load_pem(
        path,
        private=False,
        expected=Ed25519PublicKey,
        expected_name="an Ed25519 public key",
        option="--pubkey",
        keygen_type="ed25519",
    )


def passphrase_from_env() -> bytes | None:
    """The passphrase in ``PTMPACK_PASSPHRASE`` as bytes, or None when it is unset.

    Raises:
        KeyAccessError: the variable is set but empty.
    """
    environ = os.environb if os.supports_bytes_environ else None
    if environ is not None:
        value = environ.get(PASSPHRASE_ENV.encode())
    else:
        text = os.environ.get(PASSPHRASE_ENV)
        value = None if text is None else text.encode("utf-8")
    if value is None:
        return None
    if not value:
        raise KeyAccessError(f"{PASSPHRASE_ENV} is set but empty")
    return value


def key_file_from_env() -> Path | None:
    """The key file path in ``PTMPACK_KEY_FILE``, or None when it is unset or empty."""
    value = os.environ.get(KEY_FILE_ENV)
    return Path(value) if value else None
