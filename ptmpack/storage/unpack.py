"""Unpack a ``.ptm`` into a package tree: every digest and tag checked before the tree appears."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import IntegrityError
from ptmpack.format import spec
from ptmpack.format.atomic import atomic_dir
from ptmpack.format.reader import PackageReader
from ptmpack.reports import UnpackReport
from ptmpack.storage.protect import check_signature, unlocker

Progress = Callable[[int], None]


def unpack_file(package: Path, target: Path, *, opener: Opener | None = None,
                pubkey: Ed25519PublicKey | None = None, force: bool = False, progress: Progress | None = None,
                workers: int = 2, finish: Callable[[Path], object] | None = None) -> UnpackReport:
    """Unpack a ``.ptm`` into the directory ``target`` atomically.

    With ``pubkey`` the signature is checked before anything is written. Every
    entry's SHA-256 (and, when encrypted, every chunk's tag) is checked before the
    directory appears; on any failure nothing is left at ``target``. The digests are
    checked even under encryption: GCM is not key-committing, so any holder of the
    data key could forge chunks that keep their tags. ``finish``, when given, transforms the
    complete tree (still private) before it is published.

    Raises:
        IntegrityError, KeyAccessError, UnsupportedError: a bad package, key or signature.
        UsageError: the target exists without ``force``.
    """
    progress = progress or (lambda n: None)
    with PackageReader(Path(package), unlock=unlocker(opener), workers=workers) as reader:
        if pubkey is not None:
            sig = reader.signature()
            if sig is None:
                raise IntegrityError(f"{package} is not signed, but a signature by a given public key is required")
            check_signature(sig, reader.header.package_id, pubkey)
        reader.check_padding()
        total = 0
        with atomic_dir(Path(target), force=force) as tmp:
            for d in spec.SKELETON_DIRS:
                tmp.joinpath(*d.split("/")).mkdir(parents=True)
            for e in reader.entries:
                dest = tmp.joinpath(*e.path.split("/"))
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(dest, "xb") as out:
                    for block in reader.iter_entry(e):
                        out.write(block)
                        progress(len(block))
                os.chmod(dest, 0o755 if e.executable else 0o644)
                total += e.raw_length
            if finish is not None:
                finish(tmp)
        return UnpackReport(str(target), len(reader.entries), total)
