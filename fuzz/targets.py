"""What the reader fuzzers share: seed packages, mutators, and the one exercise that must only raise PtmError.

Used by ``tests/test_fuzz.py`` (a bounded hypothesis run inside ``make test``) and by
``fuzz/fuzz_reader.py`` (the long atheris run of ``make fuzz``).

The seeds are small real packages (plain, zstd, encrypted, signed, encrypted+signed) made with
fixed keys, including a fixed data key, so a mutated package can still be opened and a
*structure-aware* mutation can decrypt the manifest, change its JSON, re-seal and re-sign it,
and fix the trailer: that reaches the cross-checks behind the digests, which random byte flips
never get past.

Contract checked by :func:`exercise` on any input: every failure is a
:class:`ptmpack.errors.PtmError`; no call hangs (the callers set a time limit); no call
allocates more than :data:`ALLOC_LIMIT` bytes of Python memory (the format's own bounds: a
64 MiB chunk, a few in flight); unpack never writes outside its target directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ptmpack import api
from ptmpack.config import EncryptionSpec
from ptmpack.crypto.aead import Cipher, Sealer
from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import PtmError
from ptmpack.format import spec
from ptmpack.format.records import Trailer
from ptmpack.storage.package import open_package
from ptmpack.storage.pipeline import ChunkPipeline
from ptmpack.storage.protect import signer

KEK = hashlib.sha256(b"ptmpack fuzz key file").digest()
DEK = hashlib.sha256(b"ptmpack fuzz data key").digest()
SIGN_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"ptmpack fuzz signing key").digest())
PUBKEY = SIGN_KEY.public_key()
OPENER = Opener(kek=KEK)
ALLOC_LIMIT = 320 * 1024 * 1024
"""Peak traced Python allocation allowed while reading one mutated package: four 64 MiB chunks
in flight plus slack. The seeds are ~40 KB, so anything near this is already suspicious."""

INTERESTING_INTS = (0, 1, 2, 3, 4, 15, 16, 17, 52, 63, 64, 72, 4095, 4096, 4097, 2**16 - 1, 2**16,
                    2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1)
INTERESTING_JSON = (0, -1, 1, 4096, 2**31, 2**32, 2**53 + 1, 2**63, 2**64, 10**40, True, None, 1.5, "", "x",
                    "Model/x", "../etc/passwd", "Model/../../x", "/abs", "Model/\u0000", "Model/a\\b",
                    "F32", "U8", [], [0, 0], [[0, 4]], {}, {"a": 1})


@dataclass(frozen=True)
class Seed:
    """One seed package: its bytes and what is needed to rewrite it."""

    name: str
    data: bytes
    encrypted: bool
    signed: bool
    package_id: bytes

    def __repr__(self) -> str:
        return f"Seed({self.name!r}, {len(self.data)} bytes)"


def _tiny_tree(root: Path) -> None:
    """A small valid tree: the shared test tree (several dtypes, an empty file, an executable)."""
    from tests._support.trees import write_tree

    write_tree(root)


SEED_CONFIGS: dict[str, api.PackConfig] = {}


def _configs() -> dict[str, api.PackConfig]:
    if not SEED_CONFIGS:
        enc = EncryptionSpec(keks=(KEK,))
        zstd = spec.Compression.ZSTD
        SEED_CONFIGS.update({
            "plain": api.PackConfig(workers=1),
            "zstd": api.PackConfig(compression=zstd, chunk_size=4096, workers=1),
            "encrypted": api.PackConfig(compression=zstd, chunk_size=4096, encryption=enc, workers=1),
            "encrypted-raw": api.PackConfig(chunk_size=4096, encryption=enc, workers=1),
            "signed": api.PackConfig(sign_key=SIGN_KEY, workers=1),
            "encrypted-signed": api.PackConfig(compression=zstd, chunk_size=4096, encryption=enc,
                                               sign_key=SIGN_KEY, workers=1),
        })
    return SEED_CONFIGS


def make_seeds(workdir: Path) -> dict[str, Seed]:
    """Pack the seed packages under ``workdir`` (with the fixed data key) and return them by name."""
    tree = workdir / "seed-tree"
    if not tree.exists():
        _tiny_tree(tree)
    seeds = {}
    for i, (name, config) in enumerate(_configs().items()):
        out = workdir / f"seed-{name}.ptm"
        out.unlink(missing_ok=True)
        package_id = bytes([i + 1]) * 16
        with mock.patch("ptmpack.storage.protect.new_data_key", lambda cipher: DEK):
            api.pack(tree, out, config, package_id=package_id)
        seeds[name] = Seed(name, out.read_bytes(), config.encryption is not None, config.sign_key is not None,
                           package_id)
    return seeds


# --------------------------------------------------------------------------- byte-level mutation


def apply_byte_ops(data: bytes, ops: Sequence[tuple], donor: bytes = b"") -> bytes:
    """Apply byte-level mutations; each op is a tuple whose first item names it.

    ("flip", pos, mask), ("set", pos, byte), ("int", pos, width, value), ("truncate", length),
    ("delete", pos, n), ("insert", pos, bytes), ("splice", pos, donor_pos, n): copy ``n`` bytes of
    ``donor`` (another package) over ``data`` at ``pos``. Positions wrap modulo the current length.
    """
    buf = bytearray(data)
    for op in ops:
        if not buf:
            break
        kind = op[0]
        if kind == "flip":
            buf[op[1] % len(buf)] ^= op[2] or 1
        elif kind == "set":
            buf[op[1] % len(buf)] = op[2] & 0xFF
        elif kind == "int":
            pos, width, value = op[1] % len(buf), op[2], op[3]
            raw = (value % (1 << (8 * width))).to_bytes(width, "little")
            buf[pos:pos + width] = raw[: len(buf) - pos]
        elif kind == "truncate":
            del buf[op[1] % (len(buf) + 1):]
        elif kind == "delete":
            pos = op[1] % len(buf)
            del buf[pos:pos + op[2]]
        elif kind == "insert":
            pos = op[1] % (len(buf) + 1)
            buf[pos:pos] = op[2]
        elif kind == "splice" and donor:
            pos, src, n = op[1] % len(buf), op[2] % len(donor), op[3]
            piece = donor[src:src + n]
            buf[pos:pos + len(piece)] = piece
    return bytes(buf)


def fix_trailer_digest(data: bytes) -> bytes:
    """Recompute the trailer's manifest digest so a mutated manifest gets past the digest check."""
    if len(data) < Trailer.SIZE:
        return data
    m_off, m_len, _sha, s_off, magic = spec.TRAILER.unpack_from(data, len(data) - Trailer.SIZE)
    if magic != spec.END_MAGIC or m_off + m_len > len(data) - Trailer.SIZE:
        return data
    digest = hashlib.sha256(data[m_off:m_off + m_len]).digest()
    return data[: len(data) - Trailer.SIZE] + spec.TRAILER.pack(m_off, m_len, digest, s_off, magic)


# --------------------------------------------------------------------------- manifest-level mutation


def _pipeline(seed: Seed) -> ChunkPipeline:
    return ChunkPipeline(seed.package_id, 3, Sealer(Cipher.AES_256_GCM, DEK))


def manifest_doc(seed: Seed) -> dict:
    """The seed's manifest as a JSON document (decrypted with the fixed data key when sealed)."""
    m_off, m_len, *_ = spec.TRAILER.unpack_from(seed.data, len(seed.data) - Trailer.SIZE)
    stored = seed.data[m_off:m_off + m_len]
    if seed.encrypted:
        (n,) = spec.CHUNK_PREFIX.unpack_from(stored)
        body = stored[4:4 + n]
        stored = _pipeline(seed).decode(spec.MANIFEST_ENTRY_INDEX, 0, "", 0, 0, True, body, spec.MAX_CHUNK_SIZE)
    return json.loads(stored)


def _leaf_paths(doc: object, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(doc, dict):
        for k in sorted(doc):
            yield from _leaf_paths(doc[k], (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _leaf_paths(v, (*prefix, i))


def mutate_doc(doc: dict, ops: Sequence[tuple]) -> dict:
    """Apply JSON mutations: ("replace", which, value), ("delete", which), ("dup", which).

    ``which`` indexes (modulo) the list of every node path of the current document.
    """
    doc = json.loads(json.dumps(doc))
    for op in ops:
        paths = [p for p in _leaf_paths(doc) if p]
        if not paths:
            break
        path = paths[op[1] % len(paths)]
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if op[0] == "replace":
            parent[key] = op[2]
        elif op[0] == "delete":
            del parent[key]
        elif op[0] == "dup" and isinstance(parent, list):
            parent.insert(key, json.loads(json.dumps(parent[key])))
    return doc


def rebuild_with_manifest(seed: Seed, body: bytes, *, resign: bool = True) -> bytes:
    """The seed package with its manifest replaced by ``body`` (sealed, signed and digested anew)."""
    data = seed.data
    m_off, *_ = spec.TRAILER.unpack_from(data, len(data) - Trailer.SIZE)
    if seed.encrypted:
        sealed = _pipeline(seed).encode(spec.MANIFEST_ENTRY_INDEX, 0, "", 0, 0, True, body)
        body = spec.CHUNK_PREFIX.pack(len(sealed)) + sealed
    digest = hashlib.sha256(body).digest()
    sig_block = b""
    if seed.signed:
        if resign:  # the signature covers every byte before it, as the writer signs
            prefix = hashlib.sha256(data[:m_off] + body).digest()
            sig_block = signer(SIGN_KEY, seed.package_id)(digest, prefix)
        else:
            _, _, _, s_off, _ = spec.TRAILER.unpack_from(data, len(data) - Trailer.SIZE)
            sig_block = data[s_off:len(data) - Trailer.SIZE]
    s_off = m_off + len(body) if sig_block else 0
    return data[:m_off] + body + sig_block + Trailer(m_off, len(body), digest, s_off).pack()


def canonical(doc: object) -> bytes:
    """Serialize like the writer does (sorted keys, no whitespace)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------- the exercise


class Hang(BaseException):
    """Raised by the callers' alarm when one input runs too long (BaseException: nothing swallows it)."""


class BugFound(AssertionError):
    """The reader broke its contract on an input."""


CRASHERS_INDEX = Path(__file__).resolve().parent.parent / "fixtures" / "crashers" / "index.json"


def bug_signature(exc: BaseException) -> str:
    """Where a bug happened: the exception type and the innermost ptmpack function ("ValueError in package.py:f")."""
    import traceback

    cause = exc.__cause__ or exc
    frames = [f for f in traceback.extract_tb(cause.__traceback__) if "/ptmpack/" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else "?"
    return f"{type(cause).__name__} in {where}" if exc.__cause__ else str(exc)[:60]


def known_bugs() -> set[str]:
    """Signatures of bugs kept in fixtures/crashers/ and still open: the fuzzers do not stop for them again."""
    if not CRASHERS_INDEX.exists():
        return set()
    entries = json.loads(CRASHERS_INDEX.read_text())
    return {e["signature"] for e in entries.values() if e.get("open_bug") and e.get("signature")}


def exercise(data: bytes, scratch: Path, *, unpack: bool = True) -> None:
    """Write ``data`` as a package under ``scratch`` and read it every way a user can.

    Raises:
        BugFound: an exception that is not a PtmError, more than ALLOC_LIMIT allocated, or a
            file written outside the unpack target.
        Hang: from the caller's timer.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "input.ptm"
    path.write_bytes(data)
    out_parent = scratch / "out"
    shutil.rmtree(out_parent, ignore_errors=True)
    out_parent.mkdir()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        for step in _steps(path, out_parent / "target", unpack):
            try:
                step()
            except PtmError:
                pass
            except (Hang, KeyboardInterrupt):
                raise
            except BaseException as exc:
                raise BugFound(f"{step.__name__}: {type(exc).__name__}: {exc}") from exc
            _, peak = tracemalloc.get_traced_memory()
            if peak > ALLOC_LIMIT:
                raise BugFound(f"{step.__name__}: allocated {peak / 2**20:.0f} MiB on a {len(data)}-byte input")
        leftovers = sorted(p.name for p in out_parent.iterdir() if p.name != "target")
        if leftovers:
            raise BugFound(f"unpack left {leftovers} next to its target")
        target = out_parent / "target"
        if target.exists():
            for p in target.rglob("*"):
                if p.is_symlink():
                    raise BugFound(f"unpack made a symlink {p}")
    finally:
        if started:
            tracemalloc.stop()


def _steps(path: Path, target: Path, unpack: bool) -> list:
    def verify_keyed() -> None:
        api.verify(path, opener=OPENER, pubkey=PUBKEY)

    def verify_keyless() -> None:
        api.verify(path, pubkey=PUBKEY)

    def verify_plain() -> None:
        api.verify(path, opener=OPENER)

    def inspect_all() -> None:
        api.inspect(path, opener=OPENER, tensors=True)

    def read_tensors() -> None:
        with open_package(path, OPENER) as pkg:
            for f in pkg.files:
                if f.size <= 1 << 20:
                    pkg.read_file(f.path)
            for _name, _arr in pkg.iter_tensors():
                pass

    def unpack_all() -> None:
        api.unpack(path, target, opener=OPENER)

    steps = [verify_keyed, verify_keyless, verify_plain, inspect_all, read_tensors]
    return [*steps, unpack_all] if unpack else steps


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread if the block runs longer than ``seconds``."""

    def alarm(signum: int, frame: object) -> None:
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A scratch directory on tmpfs when there is one (the fuzzers write one file per input)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = Path(tempfile.mkdtemp(prefix="ptmpack-fuzz-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
