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
from pathlib import Path
from typing import Any

from ptmpack.compress.methods import method
from ptmpack.compress.report import CompressReport
from ptmpack.compress.spec import CompressSpec
from ptmpack.compress.step import CalibrationData, StepContext, no_progress
from ptmpack.compress.tree.scratch import working_tree
from ptmpack.errors import PtmError, UnsupportedError, UsageError

TECHNICAL = "Meta-info/technicalinfo.json"


def step_function(step: str, spec: CompressSpec) -> Callable[[Path, StepContext], dict[str, Any]]:
    """The function running slot ``step`` with the method ``spec`` names there (methods table), imported now.

    Raises:
        UnsupportedError: the method's module is not part of this ptmpack.
    """
    name = spec.method_name(step) or ""
    found = method(step, name)
    if found is None:
        raise UsageError(f"no {step.replace('_', '-')} method {name!r}")
    module_name, _, function = found.entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        what = f"--quant {spec.quant}" if step == "quant" else f"--{step.replace('_', '-')}"
        raise UnsupportedError(f"{what} is not available in this ptmpack (no module {module_name})") from None
    return getattr(module, function)


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


def _record(work: Path, records: list[dict[str, Any]], spec: CompressSpec) -> None:
    """Append the step records to technicalinfo.json ``compression.steps`` (kept valid by its schema)."""
    from ptmpack.compress.tree.documents import read_json, write_json

    path = work / TECHNICAL
    doc = read_json(path)
    comp = doc.get("compression") if isinstance(doc.get("compression"), dict) else {}
    steps = list(comp.get("steps") or [])
    steps.extend(_json_safe(r) for r in records)
    comp["steps"] = steps
    quant = next((r for r in reversed(records) if r.get("step") == "quant"), None)
    if quant is not None:
        comp["quantization"] = {k: quant.get(k) for k in ("method", "bits", "group_size", "symmetric", "format")}
    doc["compression"] = comp
    sizes = sum(p.stat().st_size for p in (work / "Model").rglob("*") if p.is_file())
    doc["model_size_bytes"] = sizes
    write_json(path, doc)


def _json_safe(value: Any) -> Any:
    """Drop what JSON cannot hold (numpy arrays kept by a step for its own use)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items() if not isinstance(v, np.ndarray)}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _run(source: Path, work: Path, spec: CompressSpec, modules: list[tuple[str, Any]],
         progress: Callable[[str, int, int], None], opener: Any) -> tuple[list[dict[str, Any]], int]:
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
    records = []
    for step, module in modules:
        t0 = time.perf_counter()
        record = module(work, ctx)
        if not isinstance(record, dict):
            raise PtmError(f"step {step} returned no record")
        record.setdefault("step", step)
        record.setdefault("wall_seconds", round(time.perf_counter() - t0, 3))
        records.append(record)
    _record(work, records, spec)
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
    modules = [(step, step_function(step, spec)) for step in spec.steps()]
    started = time.perf_counter()
    with working_tree(target.parent) as scratch:
        work = scratch / "tree"
        try:
            records, size_in = _run(source, work, spec, modules, progress, opener)
            _pack(work, target, pack_config, force)
        except PtmError as exc:  # name the user's input, never the scratch copy that is about to be deleted
            exc.message = exc.message.replace(str(work), str(source))
            exc.args = (exc.message,)
            raise
    return CompressReport(source=str(source), target=str(target), steps=tuple(_json_safe(r) for r in records),
                          size_in=size_in, size_out=target.stat().st_size,
                          seconds=round(time.perf_counter() - started, 3))
