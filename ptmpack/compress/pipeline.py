"""``compress``: run the steps of a :class:`CompressSpec` on a private copy of a package, then pack it.

The input (a ``.ptm`` — encrypted ones opened with the caller's opener — or a tree) is
materialized as a working tree in a temporary directory beside the target (so the final
rename stays on one file system; a tree's safetensors files are hard-linked, not copied,
where the file system allows), the steps run on it in the fixed order
``merge_lora → merge_adapter → fold_norm → prune → quant``, each step's record is appended
to ``Meta-info/technicalinfo.json`` ``compression.steps``, and the tree is packed with the
caller's :class:`PackConfig` (compression, encryption, signing as ``pack``). The working
tree is removed whatever happens; nothing appears at the target unless every step succeeded.
A run killed outright leaves its tree behind; the next run into the same folder removes it
(:mod:`ptmpack.compress.tree.scratch`: stale by age and by a lock no live process holds).
"""

from __future__ import annotations

import importlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ptmpack.compress.eval.quality import HeldOut, Snapshot, compare, held_out, snapshot
from ptmpack.compress.methods import OPTIONS, method
from ptmpack.compress.report import CompressReport, Quality, StepRecord
from ptmpack.compress.spec import CompressSpec
from ptmpack.compress.step import CalibrationData, Step, StepContext, no_progress
from ptmpack.compress.tree.scratch import working_tree
from ptmpack.errors import PtmError, UnsupportedError, UsageError

TECHNICAL = "Meta-info/technicalinfo.json"


def load_step(step: str, spec: CompressSpec) -> Step:
    """The :class:`Step` filling slot ``step`` with the method ``spec`` names there (methods table), imported and
    built now, its :meth:`Step.check` passed.

    Raises:
        UsageError: no such method, or the method's check refused.
        UnsupportedError: the method's module is not part of this ptmpack, or its check refused.
    """
    name = spec.method_name(step) or ""
    found = method(step, name)
    if found is None:
        raise UsageError(f"no {step.replace('_', '-')} method {name!r}")
    module_name, _, class_name = found.entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise UnsupportedError(f"--{OPTIONS[step]} {name} is not available in this ptmpack (no module {module_name})"
                               ) from None
    built: Step = getattr(module, class_name)()
    built.check(spec)
    return built


NOT_MEASURED = Quality(None, None, None, {"note": "no calibration text: weight errors only"})
"""The quality of a quantization run without ``--calib`` (kept layer by layer: the model is never run whole)."""


def run_step(step: Step, slot: str, tree: Path, ctx: StepContext, text: HeldOut) -> StepRecord:
    """Run ``step`` on ``tree`` wrapped in THE quality measurement of every compress step.

    The model is run on the held-out ``text`` (:mod:`ptmpack.compress.eval.quality`) before
    and after the step; the record gets the quality change, the FLOPs per token and, unless the
    step recorded its own (a quantizer's weight-file sizes and per-layer weight errors), the tensor
    bytes and each transformer layer's output error. A quantization run without ``--calib`` is
    not measured, so that it stays layer by layer in bounded memory.

    Raises:
        PtmError: as the step's :meth:`Step.run`, or the model cannot be run for the measurement.
    """
    return _measured(step, slot, tree, ctx, text, None)[0]


def _measured(step: Step, slot: str, tree: Path, ctx: StepContext, text: HeldOut,
              before: Snapshot | None) -> tuple[StepRecord, Snapshot | None]:
    """:func:`run_step`, starting from ``before`` when the previous step already measured the tree (its "after"),
    and returning the snapshot after this step for the next one (None when not measured)."""
    started = time.perf_counter()
    if slot == "quant" and ctx.spec.calib is None:
        return replace(step.run(tree, ctx), quality=NOT_MEASURED).timed(time.perf_counter() - started), None
    if before is None:
        before = snapshot(tree, text)
    record = step.run(tree, ctx)
    after = snapshot(tree, text)
    quality, fields = compare(before, after, text)
    record = replace(record, quality=quality, details={**fields, **record.details})
    return record.timed(time.perf_counter() - started), after


def _link_or_copy(src: str, dst: str) -> object:
    """Hard-link a weight file into the working tree (no copy of gigabytes), copy anything else.

    Safe because no step writes into an existing weight file: every rewrite goes to a temporary
    file renamed over the old name, which replaces the working tree's link and leaves the
    source's file as it was. Falls back to a copy across file systems or where linking is refused.
    """
    if src.endswith(".safetensors"):
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass
    return shutil.copy2(src, dst)


def _materialize(source: Path, work: Path, opener: Any) -> None:
    """Bring the input package into ``work`` as a tree (a tree's weight files are hard-linked)."""
    if source.is_dir():
        shutil.copytree(source, work, symlinks=False, copy_function=_link_or_copy)
        return
    if not source.is_file():
        raise UsageError(f"{source}: no such package file or tree")
    from ptmpack.storage.unpack import unpack_file

    unpack_file(source, work, opener=opener)


def _pack(work: Path, target: Path, pack_config: Any, force: bool) -> Any:
    from ptmpack.storage.pack import pack_tree

    return pack_tree(work, target, pack_config, force=force)


def _record(work: Path, records: list[StepRecord]) -> None:
    """Append the step records to technicalinfo.json ``compression.steps`` (kept valid by its schema)."""
    from ptmpack.compress.tree.documents import read_json, write_json

    path = work / TECHNICAL
    doc = read_json(path)
    comp = doc.get("compression") if isinstance(doc.get("compression"), dict) else {}
    steps = list(comp.get("steps") or [])
    steps.extend(r.to_json() for r in records)
    comp["steps"] = steps
    quant = next((r for r in reversed(records) if r.scheme is not None), None)
    if quant is not None and quant.scheme is not None:
        scheme = quant.scheme
        comp["quantization"] = {"method": quant.method, "bits": scheme.bits, "group_size": scheme.group_size,
                                "symmetric": scheme.symmetric, "format": scheme.format}
    doc["compression"] = comp
    sizes = sum(p.stat().st_size for p in (work / "Model").rglob("*") if p.is_file())
    doc["model_size_bytes"] = sizes
    write_json(path, doc)


def _run(source: Path, work: Path, spec: CompressSpec, steps: list[Step],
         progress: Callable[[str, int, int], None], opener: Any) -> tuple[list[StepRecord], int]:
    """Materialize ``source`` as the tree ``work``, run the steps on it and record them; the records and input size."""
    _materialize(source, work, opener)
    size_in = source.stat().st_size if source.is_file() else sum(
        p.stat().st_size for p in source.rglob("*") if p.is_file())
    cache: list[CalibrationData] = []

    def calibration() -> CalibrationData:
        if not cache:
            from ptmpack.compress.eval.calibration import load_calibration

            cache.append(load_calibration(work, spec))
        return cache[0]

    ctx = StepContext(spec, progress, calibration if spec.calib is not None else None)
    text = held_out(spec)
    records: list[StepRecord] = []
    last: Snapshot | None = None  # the tree is untouched between steps: one step's "after" is the next's "before"
    for slot, step in zip(spec.steps(), steps, strict=True):
        record, last = _measured(step, slot, work, ctx, text, last)
        records.append(record)
    _record(work, records)
    return records, size_in


def compress(source: Path, target: Path, spec: CompressSpec, pack_config: Any, *,
             progress: Callable[[str, int, int], None] = no_progress, opener: Any = None,
             force: bool = False) -> CompressReport:
    """Compress the package ``source`` into the ``.ptm`` file ``target`` as ``spec`` says.

    Raises:
        UsageError: bad options, an existing target without ``force``, no calibration text where needed.
        UnsupportedError: a step not available, or a model a step cannot handle.
        PtmError: reading the input or packing the output failed (nothing is written).
    """
    spec = spec.check()
    source, target = Path(source), Path(target)
    if target.exists() and not force:
        raise UsageError(f"{target} exists", hint="add --force to replace it")
    steps = [load_step(slot, spec) for slot in spec.steps()]
    started = time.perf_counter()
    with working_tree(target.parent) as scratch:
        work = scratch / "tree"
        try:
            records, size_in = _run(source, work, spec, steps, progress, opener)
            _pack(work, target, pack_config, force)
        except PtmError as exc:  # name the user's input, never the scratch copy that is about to be deleted
            exc.message = exc.message.replace(str(work), str(source))
            exc.args = (exc.message,)
            raise
    return CompressReport(source=str(source), target=str(target), steps=tuple(records),
                          size_in=size_in, size_out=target.stat().st_size,
                          seconds=round(time.perf_counter() - started, 3))
