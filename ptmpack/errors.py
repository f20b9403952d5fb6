"""The one exception hierarchy of ptmpack.

Every failure a user can cause or meet (bad input, tampering, a wrong key, an
unsupported file) is a :class:`PtmError` subclass whose ``exit_code`` is the CLI
contract of SPEC §6 and whose message says what failed, where, and what to do.
Anything else escaping the library is a bug.
"""

from __future__ import annotations

import errno


class PtmError(Exception):
    """Root of all ptmpack errors; ``exit_code`` is what the CLI exits with."""

    exit_code = 1
    check: str | None = None
    """For a failed verification: which check failed (``digests``, ``signature``…), set by the verifier."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def diagnostics(self) -> str:
        """One line for the user: the message, then the hint when there is one."""
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(PtmError):
    """The command was called wrongly: a missing option, an existing target without --force."""

    exit_code = 2


class IntegrityError(PtmError):
    """The package is corrupt, truncated or tampered with, or a digest or signature fails."""

    exit_code = 3


class KeyAccessError(PtmError):
    """No key was given for an encrypted package, or the key given opens none of its slots."""

    exit_code = 4


class InvalidTreeError(PtmError):
    """A package tree or path breaks the rules of SPEC §1 (links, traversal, missing files)."""

    exit_code = 5


class MetadataError(InvalidTreeError):
    """A metadata document fails its JSON Schema; names the file and the JSON path.

    ``file``, ``json_path`` and ``reason`` describe the first problem; ``problems`` lists
    every one found (``file: path: reason``), so a user fixes them all in one round.
    """

    def __init__(self, file: str, json_path: str, reason: str, *, also: tuple[str, ...] = ()) -> None:
        first = f"{file}: {json_path}: {reason}"
        super().__init__(first if not also else f"{len(also) + 1} problems: " + "; ".join((first, *also)))
        self.file = file
        self.json_path = json_path
        self.reason = reason
        self.problems = (first, *also)

    @staticmethod
    def combine(errors: list[MetadataError]) -> MetadataError:
        """One error reporting every problem of ``errors`` (the first one's fields lead)."""
        head = errors[0]
        rest = tuple(p for e in errors for p in e.problems)[1:]
        return MetadataError(head.file, head.json_path, head.reason, also=rest)


class UnsupportedError(PtmError):
    """The file uses a format version or feature this ptmpack does not know."""

    exit_code = 6


class BaseMismatchError(PtmError):
    """A residual delta was applied to a base it was not made from."""

    exit_code = 7


class GraphError(InvalidTreeError):
    """An IR model breaks a structural rule: names the graph, the node and the reason (exit 5)."""


class EnvironmentFault(PtmError):
    """The environment refused an operation: a full disk, a read-only file system, no permission.

    Not a bug in ptmpack nor a bad package: the message names the path and the system's reason.
    """

    exit_code = 8


class NetworkError(PtmError):
    """The network or a registry failed: unreachable, TLS refused, timed out or too slow, HTTP 5xx/429 after
    bounded retries, or an answer that breaks the protocol. Not a bug and not the package's fault: the message
    names the registry and the object, the hint what to try (exit 9)."""

    exit_code = 9


class RegistryError(NetworkError):
    """A registry answered, but with an error that is neither the package's nor the credentials' fault (exit 9)."""


ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
"""OS errors the environment causes; they surface as :class:`EnvironmentFault` (exit 8)."""


def raise_environment_fault(exc: OSError, path: object) -> None:
    """Raise :class:`EnvironmentFault` for an OS error the environment caused; return for any other."""
    if exc.errno in ENVIRONMENT_ERRNOS:
        raise EnvironmentFault(f"{exc.filename or path}: {exc.strerror or exc}") from exc
