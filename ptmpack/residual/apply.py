"""``apply``: rebuild the target package from a base package and a residual delta.

Checks come first and are all-or-nothing: the delta must be a residual package
whose recorded base is the base's manifest digest (else :class:`BaseMismatchError`,
exit 7, before anything is written). Every base tensor's sha256 is checked against
the delta's record before it is used, and every rebuilt tensor and file against
the digest ``diff`` recorded (the target's own digest for lossless tensors, the
digest of B' = A + Q(Δ) for quantized ones). The output is built as a temporary
tree next to it and packed by :func:`ptmpack.storage.pack.pack_tree` into a normal package; on
any failure nothing is left behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.config import PackConfig
from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import BaseMismatchError, IntegrityError, InvalidTreeError, UsageError
from ptmpack.format import spec
from ptmpack.format.atomic import TEMP_PREFIX, check_target
from ptmpack.format.manifest import TensorRecord
from ptmpack.format.paths import check_entry_path, check_unique_paths
from ptmpack.quant.group import BITS, Scales, check_group_size, packed_size
from ptmpack.residual.codec import LOSSY_DTYPES, dequantize, xor_decode
from ptmpack.residual.record import RESIDUAL_JSON, FileEntry, FileMode, ResidualDoc, TensorEntry, TensorMode
from ptmpack.residual.report import ApplyReport, tensor_rows
from ptmpack.residual.source import TensorSource, sha256_hex
from ptmpack.storage.facts import package_facts, same_protection
from ptmpack.storage.pack import pack_tree
from ptmpack.storage.package import FileInfo
from ptmpack.tensors.dtypes import numpy_dtype
from ptmpack.tensors.stwriter import PlannedWriter

Progress = Callable[[int], None]
CHECKS = ("delta digests and tags", "base manifest digest", "base tensor digests", "target digests (lossless tensors)",
          "result digests (quantized tensors)", "file digests")


def read_residual(delta: TensorSource) -> ResidualDoc:
    """The residual record of an opened delta, checked against its manifest.

    Raises:
        UsageError: the package is not a residual package.
        IntegrityError: flagged residual but the record is missing, malformed or disagrees.
    """
    facts = package_facts(delta.pkg)
    if facts is None:
        raise UsageError(f"DELTA {delta.pkg.path} is a directory; it must be the .ptm that diff wrote")
    if not facts.flags & spec.Flags.RESIDUAL or facts.residual_base is None:
        raise UsageError(f"{delta.pkg.path} is not a residual package (no RESIDUAL flag)",
                         hint="make one with 'ptmpack diff BASE TARGET -o DELTA'")
    if RESIDUAL_JSON not in delta.by_path:
        raise IntegrityError(f"{delta.pkg.path} is flagged residual but has no {RESIDUAL_JSON}")
    doc = ResidualDoc.from_json(delta.pkg.read_file(RESIDUAL_JSON))
    if doc.base_manifest_sha256 != facts.residual_base:
        raise IntegrityError(f"{RESIDUAL_JSON} names base {doc.base_manifest_sha256}, the manifest {facts.residual_base}")
    try:
        for f in doc.files:
            check_entry_path(f.path)
            if f.stored_as is not None:
                check_entry_path(f.stored_as)
        check_unique_paths(f.path for f in doc.files)
    except InvalidTreeError as exc:
        raise IntegrityError(f"{RESIDUAL_JSON}: {exc.message}") from exc
    return doc


class _Builder:
    """Rebuilds the target's files into a tree from the base and the delta."""

    def __init__(self, base: TensorSource, delta: TensorSource, tree: Path, progress: Progress) -> None:
        self.base, self.delta, self.tree, self.progress = base, delta, tree, progress
        self.delta_tensors = {(f.path, t.name): t for f in delta.safetensors_files() for t in f.tensors or ()}

    def file(self, fe: FileEntry) -> None:
        dest = self.tree.joinpath(*fe.path.split("/"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        if fe.mode is FileMode.TENSORS:
            self._tensor_file(fe, dest)
        else:
            src = self.base if fe.mode is FileMode.SAME else self.delta
            path = fe.path if fe.mode is FileMode.SAME else fe.stored_as
            if path is None or path not in src.by_path:
                where = "base" if src is self.base else "delta"
                raise IntegrityError(f"{RESIDUAL_JSON}: {fe.path} is to come from {path!r}, which the {where} lacks")
            h = hashlib.sha256()
            with open(dest, "xb") as out:
                for block in src.iter_file(path):
                    h.update(block)
                    out.write(block)
                    self.progress(len(block))
            self._check(h.hexdigest(), fe.sha256, f"file {fe.path}")
        os.chmod(dest, 0o755 if fe.executable else 0o644)

    @staticmethod
    def _check(actual: str, expected: str, what: str) -> None:
        if actual != expected:
            raise IntegrityError(f"{what}: rebuilt sha256 {actual[:16]}… differs from the recorded {expected[:16]}…",
                                 hint="the delta or the base is damaged")

    def _tensor_file(self, fe: FileEntry, dest: Path) -> None:
        assert fe.header is not None and fe.result_sha256 is not None
        text = fe.header.encode("utf-8")
        header = struct.pack("<Q", len(text)) + text
        h = hashlib.sha256(header)
        with open(dest, "xb") as out:
            try:
                writer = PlannedWriter(out, header, where=fe.path)
            except (UsageError, InvalidTreeError) as exc:
                raise IntegrityError(f"{RESIDUAL_JSON}: header of {fe.path}: {exc.message}") from exc
            planned = [(t.name, t.dtype, t.shape) for t in writer.tensors]
            if planned != [(t.name, t.dtype, t.shape) for t in fe.tensors]:
                raise IntegrityError(f"{RESIDUAL_JSON}: the tensors of {fe.path} disagree with its header")
            for te in fe.tensors:
                writer.begin(te.name)
                for piece in self._tensor(fe, te):
                    h.update(piece)
                    writer.write(piece)
                    self.progress(piece.nbytes)
                writer.end()
            writer.finish()
        self._check(h.hexdigest(), fe.result_sha256, f"file {fe.path}")

    def _tensor(self, fe: FileEntry, te: TensorEntry) -> Iterator[memoryview]:
        """The tensor's rebuilt bytes in pieces; its digest is checked before the last piece is yielded."""
        where = f"{fe.path}: tensor {te.name!r}"
        n = math.prod(te.shape)
        dtype = numpy_dtype(te.dtype)
        if te.mode is TensorMode.WHOLE:
            raw = self._data(te, "tensor", te.dtype, te.shape, where)
            self._check(sha256_hex(raw), te.target_sha256, where)
            yield memoryview(raw).cast("B")
            return
        raw = self._base(te, where)
        a = np.frombuffer(raw, dtype)
        if te.mode is TensorMode.UNCHANGED:
            self._check(te.base.sha256 if te.base else "", te.target_sha256, where)
            yield memoryview(raw).cast("B")
        elif te.mode is TensorMode.XOR:
            planes = np.frombuffer(self._data(te, "planes", "U8", (dtype.itemsize, n), where), np.uint8)
            out = xor_decode(a, planes.reshape(dtype.itemsize, n))
            self._check(sha256_hex(out), te.target_sha256, where)
            yield memoryview(out)
        else:
            yield from self._quantized(te, a, n, where)

    def _quantized(self, te: TensorEntry, a: np.ndarray, n: int, where: str) -> Iterator[memoryview]:
        bits, group, exp = te.bits, te.group_size, te.scale_exp
        if bits not in BITS or group is None or te.scale_dtype not in ("F16", "F32") or exp is None \
                or not -300 <= exp <= 300 or te.dtype not in LOSSY_DTYPES:
            raise IntegrityError(f"{RESIDUAL_JSON}: {where}: bad quantization settings")
        try:
            check_group_size(group)
        except UsageError as exc:
            raise IntegrityError(f"{RESIDUAL_JSON}: {where}: {exc.message}") from exc
        packed = np.frombuffer(self._data(te, "codes", "U8", (packed_size(n, bits),), where), np.uint8)
        scales = np.frombuffer(self._data(te, "scales", te.scale_dtype, (-(-n // group),), where),
                               numpy_dtype(te.scale_dtype))
        if not np.isfinite(scales).all() or (scales < 0).any():
            raise IntegrityError(f"{where}: the delta's scales are not finite and non-negative")
        h = hashlib.sha256()
        expected = te.result_sha256 or te.target_sha256
        pending: np.ndarray | None = None
        for typed in dequantize(a, packed, Scales(scales, exp), bits, group, where):
            part = typed.view(np.uint8)
            h.update(part)
            if pending is not None:
                yield memoryview(pending).cast("B")
            pending = part
        self._check(h.hexdigest(), expected, where)
        if pending is not None:
            yield memoryview(pending).cast("B")

    def _base(self, te: TensorEntry, where: str) -> bytes | memoryview:
        ref = te.base
        f = self.base.by_path.get(ref.file) if ref is not None else None
        t = _find(f, ref.name) if f is not None and ref is not None else None
        if ref is None or f is None or t is None:
            raise IntegrityError(f"{RESIDUAL_JSON}: {where} is built on a base tensor the base does not have")
        if t.dtype != te.dtype or tuple(t.shape) != te.shape:
            raise IntegrityError(f"{RESIDUAL_JSON}: {where}: base tensor {ref.name!r} has another dtype or shape")
        raw = self.base.tensor_bytes(f, t)
        if sha256_hex(raw) != ref.sha256:
            raise IntegrityError(f"{where}: base tensor {ref.file}:{ref.name} does not match the digest the delta "
                                 "was made against", hint="the base package is damaged")
        return raw

    def _data(self, te: TensorEntry, role: str, dtype: str, shape: tuple[int, ...], where: str) -> Any:
        ref = te.data.get(role)
        t = self.delta_tensors.get((ref.file, ref.name)) if ref is not None else None
        if ref is None or t is None:
            raise IntegrityError(f"{RESIDUAL_JSON}: {where}: its {role} data are missing from the delta")
        if t.dtype != dtype or tuple(t.shape) != tuple(shape):
            raise IntegrityError(f"{where}: delta {role} {ref.name!r} is {t.dtype}{list(t.shape)}, "
                                 f"expected {dtype}{list(shape)}")
        return self.delta.tensor_bytes(self.delta.by_path[ref.file], t)


def _find(f: FileInfo, name: str) -> TensorRecord | None:
    return next((t for t in f.tensors or () if t.name == name), None)


def apply_residual(base: Path, delta: Path, out: Path, *, opener: Opener | None = None, force: bool = False,
                   config: PackConfig | None = None, progress: Progress | None = None) -> ApplyReport:
    """Rebuild the target of ``delta`` from ``base`` into the normal package ``out``.

    ``opener`` is tried for both packages when encrypted. ``config`` (a
    :class:`ptmpack.config.PackConfig`) sets how ``out`` is packed; by default zstd when
    the base was compressed, else raw. When an input was encrypted and ``config`` names
    no encryption, the output is encrypted with the base's cipher for the same secret(s)
    that opened the inputs: an encrypted update never comes out in the clear.

    Raises:
        BaseMismatchError: ``base`` is not the package the delta was made from (nothing written).
        IntegrityError: the delta or the base is damaged (a digest does not match).
        UsageError: ``delta`` is not a residual package, or the output exists without ``force``.
        KeyAccessError: an encrypted input and no key that opens it.
    """
    out = Path(out)
    check_target(out, force=force, want_dir=False)
    started = time.perf_counter()
    progress = progress or (lambda n: None)
    with TensorSource(Path(delta), opener) as src_delta:
        doc = read_residual(src_delta)
        with TensorSource(Path(base), opener) as src_base:
            facts = package_facts(src_base.pkg)
            if facts is None:
                raise UsageError(f"BASE {base} is a directory; it must be the .ptm the delta was made from")
            digest = facts.manifest_sha256
            if digest != doc.base_manifest_sha256:
                raise BaseMismatchError(
                    f"{delta} was made from the base with manifest sha256 {doc.base_manifest_sha256}, "
                    f"but {base} has {digest}", hint="apply it to the package it was diffed against")
            encrypted = facts.encrypted or src_delta.pkg.encrypted
            if config is None:
                config = PackConfig(compression=spec.Compression.ZSTD if facts.compressed else spec.Compression.NONE)
            if encrypted and config.encryption is None:
                config = dataclasses.replace(config, encryption=same_protection(facts.cipher, opener, "apply"))
            work = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=out.parent))
            try:
                tree = work / "tree"
                (tree / "Model").mkdir(parents=True)
                builder = _Builder(src_base, src_delta, tree, progress)
                for fe in doc.files:
                    builder.file(fe)
                pack_tree(tree, out, config, force=force)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    rows = tensor_rows(doc)
    return ApplyReport(
        output=str(out), base_manifest_sha256=digest,
        files={m.value: sum(1 for f in doc.files if f.mode is m) for m in FileMode},
        bytes=sum(f.size for f in doc.files), package_bytes=os.path.getsize(out),
        seconds=time.perf_counter() - started,
        lossless=not any(t.mode is TensorMode.QUANTIZED for _, t in doc.tensors()),
        tensors=rows, checks=CHECKS,
    )
