"""``diff --residual``: write the delta from a base package to a target as a residual package.

Tensor by tensor and streaming: each target tensor is read with its base tensor
(never both models whole), compared, and either left out (unchanged), quantized
(Δ = B - A per group), stored lossless (XOR of bit patterns) or carried whole; its
data go to spooled safetensors shards under ``Model/residual/``. Non-tensor files
are carried only when they differ from the base. The temporary tree is packed by
:func:`ptmpack.storage.pack.pack_tree` with the RESIDUAL flag and the base's manifest digest,
then removed; nothing is left at the output on failure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.config import PackConfig
from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import IntegrityError, UsageError
from ptmpack.format import spec
from ptmpack.format.atomic import TEMP_PREFIX, check_target
from ptmpack.format.manifest import TensorRecord
from ptmpack.format.tree import REQUIRED_FILES
from ptmpack.quant.group import BITS, DEFAULT_GROUP, blocks, check_group_size
from ptmpack.residual.codec import LOSSY_DTYPES, Quantized, dequantize, quantize_delta, squared_error, xor_encode
from ptmpack.residual.record import (
    DATA_DIR,
    RESIDUAL_JSON,
    BaseRef,
    DataRef,
    ErrorRecord,
    FileEntry,
    FileMode,
    ResidualDoc,
    Settings,
    TensorEntry,
    TensorMode,
)
from ptmpack.residual.report import DiffReport, tensor_rows
from ptmpack.residual.source import TensorSource, sha256_hex
from ptmpack.storage.pack import pack_tree
from ptmpack.storage.package import FileInfo, FilePackage
from ptmpack.tensors.dtypes import numpy_dtype
from ptmpack.tensors.safetensors_index import index_safetensors
from ptmpack.tensors.stwriter import SpoolWriter

Progress = Callable[[int], None]
SHARD_BYTES = 1 << 30
"""A data shard is closed once it holds this much (each tensor stays whole in one shard)."""


@dataclass(frozen=True)
class DiffOptions:
    """What to store: ``bits`` 8/4/2 (lossy), 0 (lossless) or "auto" (needs ``max_error``)."""

    bits: int | str = 8
    group_size: int = DEFAULT_GROUP
    max_error: float | None = None
    shard_bytes: int = SHARD_BYTES

    def __post_init__(self) -> None:
        if self.bits not in (0, *BITS, "auto"):
            raise UsageError(f"--bits {self.bits!r} is not one of 8, 4, 2, 0 or auto")
        check_group_size(self.group_size)
        if self.max_error is not None and not (self.max_error > 0 and np.isfinite(self.max_error)):
            raise UsageError(f"--max-error {self.max_error} must be a positive number")
        if self.bits == "auto" and self.max_error is None:
            raise UsageError("--bits auto needs --max-error", hint="e.g. --bits auto --max-error 0.01")

    def candidates(self) -> tuple[int, ...]:
        """Bit widths to try in order; a tensor none of them fits is stored lossless."""
        if self.bits == 0:
            return ()
        if self.bits == "auto":
            return BITS
        if self.max_error is None:
            return (int(self.bits),)
        return tuple(b for b in BITS if b >= int(self.bits))


class _Shards:
    """Spooled safetensors data files Model/residual/data-NNNNN.safetensors, rolled by size."""

    def __init__(self, tree: Path, limit: int) -> None:
        self.dir = tree / DATA_DIR
        self.limit = limit
        self.count = 0
        self.writer: SpoolWriter | None = None
        self.stored = 0

    def _current(self) -> tuple[SpoolWriter, str]:
        if self.writer is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.writer = SpoolWriter(self.dir / f"data-{self.count:05d}.safetensors", {"format": "ptmpack-residual"})
        return self.writer, f"{DATA_DIR}/data-{self.count:05d}.safetensors"

    def put(self, name: str, dtype: str, shape: tuple[int, ...], data: Any) -> DataRef:
        writer, rel = self._current()
        slot = writer.put(name, dtype, shape, memoryview(np.ascontiguousarray(data)).cast("B"))
        self.stored += slot.nbytes
        if writer.size >= self.limit:
            self.close()
        return DataRef(rel, name)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.finish()
            self.writer = None
            self.count += 1

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _stored_as(path: str) -> str:
    """Where a carried target file sits in the delta: its own path unless the delta reserves it."""
    low, data = path.casefold(), DATA_DIR.casefold()
    if low in (RESIDUAL_JSON.casefold(), data) or low.startswith(data + "/"):
        return f"{DATA_DIR}/files/{path}"
    return path


class _FileHashes:
    """sha256 of a target file and of the file apply rebuilds: one hash until the first lossy tensor."""

    def __init__(self, header: bytes) -> None:
        self.target = hashlib.sha256(header)
        self.result: Any = None

    def add(self, target_bytes: Any) -> None:
        """A tensor apply rebuilds exactly."""
        self.target.update(target_bytes)
        if self.result is not None:
            self.result.update(target_bytes)

    def add_lossy(self, target_bytes: Any) -> Any:
        """A tensor apply rebuilds differently; returns the result hash to feed its rebuilt bytes to."""
        if self.result is None:
            self.result = self.target.copy()
        self.target.update(target_bytes)
        return self.result

    def result_hexdigest(self) -> str:
        return (self.result or self.target).hexdigest()


class _Differ:
    """One diff run: the two sources, the temporary tree and the records built so far."""

    def __init__(self, base: TensorSource, target: TensorSource, tree: Path, opts: DiffOptions,
                 progress: Progress) -> None:
        self.base, self.target, self.tree, self.opts, self.progress = base, target, tree, opts, progress
        self.shards = _Shards(tree, opts.shard_bytes)
        self.base_tensors: dict[tuple[str, str], tuple[FileInfo, TensorRecord]] = {}
        self.base_by_name: dict[str, list[tuple[FileInfo, TensorRecord]]] = {}
        for f in base.safetensors_files():
            for t in f.tensors or ():
                self.base_tensors[(f.path, t.name)] = (f, t)
                self.base_by_name.setdefault(t.name, []).append((f, t))
        self.used: set[tuple[str, str]] = set()

    def run(self) -> ResidualDoc:
        files = []
        for index, f in enumerate(self.target.pkg.files):
            if self._is_tensor_file(f):
                files.append(self._tensor_file(index, f))
            else:
                files.append(self._plain_file(f))
        self.shards.close()
        target_paths = {f.path for f in self.target.pkg.files}
        reader = self.base.pkg.reader  # type: ignore[attr-defined]
        tpkg = self.target.pkg
        return ResidualDoc(
            base_manifest_sha256=reader.trailer.manifest_sha256.hex(),
            base_package_id=reader.header.package_id.hex(),
            settings=Settings(self.opts.bits, self.opts.group_size, self.opts.max_error),
            files=tuple(files),
            removed_files=tuple(f.path for f in self.base.pkg.files if f.path not in target_paths),
            removed_tensors=tuple(k for k in self.base_tensors if k not in self.used),
            target_manifest_sha256=tpkg.reader.trailer.manifest_sha256.hex() if isinstance(tpkg, FilePackage) else None,
        )

    def _is_tensor_file(self, f: FileInfo) -> bool:
        """A safetensors file whose bytes end with its last tensor (anything else is carried as bytes)."""
        if f.tensors is None:
            return False
        end = f.tensors[-1].end if f.tensors else len(self.target.header_bytes(f))
        return end == f.size

    def _same_as_base(self, f: FileInfo) -> bool:
        b = self.base.by_path.get(f.path)
        return b is not None and f.sha256 is not None and b.sha256 == f.sha256 and b.size == f.size

    def _plain_file(self, f: FileInfo) -> FileEntry:
        required = f.path in REQUIRED_FILES
        if not required and self._same_as_base(f):
            self.progress(f.size)
            return FileEntry(f.path, FileMode.SAME, f.size, f.sha256.hex(), f.executable)  # type: ignore[union-attr]
        stored = _stored_as(f.path)
        dest = self.tree.joinpath(*stored.split("/"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with open(dest, "xb") as out:
            for block in self.target.iter_file(f.path):
                h.update(block)
                out.write(block)
                self.progress(len(block))
        sha = h.hexdigest()
        base = self.base.by_path.get(f.path)
        if not required and base is not None and base.sha256 is not None and base.sha256.hex() == sha:
            dest.unlink()
            return FileEntry(f.path, FileMode.SAME, f.size, sha, f.executable)
        return FileEntry(f.path, FileMode.CARRIED, f.size, sha, f.executable, stored_as=stored)

    def _tensor_file(self, index: int, f: FileInfo) -> FileEntry:
        if self._same_as_base(f):
            self.used.update((f.path, t.name) for t in f.tensors or ())
            self.progress(f.size)
            return FileEntry(f.path, FileMode.SAME, f.size, f.sha256.hex(), f.executable)  # type: ignore[union-attr]
        header = self.target.header_bytes(f)
        try:
            text = header[8:].decode("utf-8")
        except UnicodeDecodeError:
            raise IntegrityError(f"{f.path}: safetensors header is not UTF-8") from None
        listed = tuple((t.name, t.dtype, t.shape, t.begin, t.end) for t in f.tensors or ())
        actual = tuple((t.name, t.dtype, t.shape, t.begin, t.end)
                       for t in index_safetensors(io.BytesIO(header), f.size, where=f.path).tensors)
        if listed != actual:
            raise IntegrityError(f"{f.path}: the manifest's tensor table does not match the file's safetensors header")
        hashes = _FileHashes(header)
        tensors = []
        for t in f.tensors or ():
            entry = self._tensor(index, f, t, hashes)
            tensors.append(entry)
            self.progress(t.end - t.begin)
        self.progress(len(header))
        sha = hashes.target.hexdigest()
        if f.sha256 is not None and f.sha256.hex() != sha:
            raise IntegrityError(f"{f.path}: its tensors do not hash to the file's recorded sha256")
        return FileEntry(f.path, FileMode.TENSORS, f.size, sha, f.executable, header=text,
                         result_sha256=hashes.result_hexdigest(), tensors=tuple(tensors))

    def _match(self, path: str, name: str) -> tuple[FileInfo, TensorRecord] | None:
        hit = self.base_tensors.get((path, name))
        if hit is None and len(self.base_by_name.get(name, ())) == 1:
            hit = self.base_by_name[name][0]
        return hit

    def _tensor(self, index: int, f: FileInfo, t: TensorRecord, hashes: _FileHashes) -> TensorEntry:
        b_raw = self.target.tensor_bytes(f, t)
        tsha = sha256_hex(b_raw)
        key = f"{index}:{t.name}"
        base = self._match(f.path, t.name)
        common = {"name": t.name, "dtype": t.dtype, "shape": t.shape, "target_sha256": tsha}
        if base is not None:
            self.used.add((base[0].path, base[1].name))
        reason = "new" if base is None else "reshaped" if base[1].shape != t.shape \
            else "retyped" if base[1].dtype != t.dtype else None
        if base is None or reason is not None:
            hashes.add(b_raw)
            ref = self.shards.put(f"{key}#tensor", t.dtype, t.shape, np.frombuffer(b_raw, np.uint8))
            return TensorEntry(**common, mode=TensorMode.WHOLE, reason=reason, data={"tensor": ref})
        bf, bt = base
        a_raw = self.base.tensor_bytes(bf, bt)
        ref_base = BaseRef(bf.path, bt.name, sha256_hex(a_raw))
        if ref_base.sha256 == tsha:
            hashes.add(b_raw)
            return TensorEntry(**common, mode=TensorMode.UNCHANGED, base=ref_base)
        dtype = numpy_dtype(t.dtype)
        a, b = np.frombuffer(a_raw, dtype), np.frombuffer(b_raw, dtype)
        candidates = self.opts.candidates()
        reason = "lossless requested" if not candidates else "not a float tensor"
        if candidates and t.dtype in LOSSY_DTYPES:
            reason = f"no bit width reaches --max-error {self.opts.max_error}"
            for bits in candidates:
                qz = quantize_delta(a, b, bits, self.opts.group_size)
                if qz is None:
                    reason = "non-finite values"
                    break
                if self.opts.max_error is None or qz.stats.rel_fro <= self.opts.max_error:
                    return self._quantized(key, common, ref_base, a, b, qz, hashes.add_lossy(b_raw))
        hashes.add(b_raw)
        ref = self.shards.put(f"{key}#planes", "U8", (dtype.itemsize, a.size), xor_encode(a, b))
        return TensorEntry(**common, mode=TensorMode.XOR, base=ref_base, reason=reason, data={"planes": ref})

    def _quantized(self, key: str, common: dict[str, Any], ref_base: BaseRef, a: np.ndarray, b: np.ndarray,
                   qz: Quantized, file_result: Any) -> TensorEntry:
        h = hashlib.sha256()
        err_sq = 0.0
        parts = dequantize(a, qz.packed, qz.scales, qz.bits, qz.group_size, f"tensor {common['name']!r}")
        for (s, e), res in zip(blocks(a.size), parts, strict=True):
            h.update(res.view(np.uint8))
            file_result.update(res.view(np.uint8))
            err_sq += squared_error(res, b[s:e])
        rsha = h.hexdigest()
        delta_sq = qz.stats.delta_sq
        error = ErrorRecord(qz.stats.max_abs, qz.stats.rel_fro, (err_sq / delta_sq) ** 0.5 if delta_sq else 0.0,
                            qz.delta_rel)
        data = {
            "codes": self.shards.put(f"{key}#codes", "U8", (qz.packed.size,), qz.packed),
            "scales": self.shards.put(f"{key}#scales", qz.scales.dtype, (qz.scales.values.size,), qz.scales.values),
        }
        return TensorEntry(**common, mode=TensorMode.QUANTIZED, base=ref_base, bits=qz.bits, group_size=qz.group_size,
                           scale_dtype=qz.scales.dtype, scale_exp=qz.scales.exp, data=data,
                           result_sha256=None if rsha == common["target_sha256"] else rsha, error=error)


def diff_residual(base: Path, target: Path, out: Path, *, bits: int | str = 8, group_size: int = DEFAULT_GROUP,
                  max_error: float | None = None, opener: Opener | None = None, force: bool = False,
                  config: PackConfig | None = None, progress: Progress | None = None,
                  shard_bytes: int = SHARD_BYTES) -> DiffReport:
    """Write the residual package that turns the package ``base`` into ``target``.

    ``base`` must be a ``.ptm`` (the delta binds to its manifest digest); ``target`` may be a
    ``.ptm`` or a tree. The same ``opener`` is tried for both when encrypted. ``config``
    (a :class:`ptmpack.config.PackConfig`) sets how the delta itself is packed: zstd level 3
    by default; encryption and signing apply to the delta. Memory stays at a few tensors.

    Raises:
        UsageError: bad options, ``base`` not a ``.ptm``, or the output exists without ``force``.
        IntegrityError, KeyAccessError, UnsupportedError: an input package is bad or locked.
    """
    opts = DiffOptions(bits, group_size, max_error, shard_bytes)
    out = Path(out)
    check_target(out, force=force, want_dir=False)
    started = time.perf_counter()
    progress = progress or (lambda n: None)
    with TensorSource(Path(base), opener) as src_base, TensorSource(Path(target), opener) as src_target:
        if not src_base.is_file:
            raise UsageError(f"BASE {base} is a directory; it must be a .ptm package",
                             hint="the delta binds to the base's manifest digest: pack the base first")
        work = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=out.parent))
        try:
            tree = work / "tree"
            for d in ("Model", "Meta-info"):
                (tree / d).mkdir(parents=True)
            differ = _Differ(src_base, src_target, tree, opts, progress)
            try:
                doc = differ.run()
            except BaseException:
                differ.shards.abort()
                raise
            (tree / RESIDUAL_JSON).write_bytes(doc.to_json())
            cfg = config or PackConfig(compression=spec.Compression.ZSTD)
            cfg = dataclasses.replace(cfg, residual_base=doc.base_manifest_sha256)
            pack_tree(tree, out, cfg, force=force)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    target_bytes = sum(f.size for f in doc.files)
    return DiffReport(
        output=str(out), base_manifest_sha256=doc.base_manifest_sha256, delta_bytes=os.path.getsize(out),
        target_bytes=target_bytes, data_bytes=differ.shards.stored, seconds=time.perf_counter() - started,
        files={m.value: sum(1 for f in doc.files if f.mode is m) for m in FileMode},
        removed_files=doc.removed_files, removed_tensors=len(doc.removed_tensors), tensors=tensor_rows(doc),
    )
