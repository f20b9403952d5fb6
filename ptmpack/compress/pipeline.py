"""``compress``: run the steps of a :class:`CompressSpec` on a private copy of a package, then pack it.

The input (a ``.ptm`` — encrypted ones opened with the caller's opener — or a tree) is
materialized as a working tree in a temporary directory beside the target (so the final
rename stays on one file system), the steps run on it in the fixed order
``merge_lora → merge_adapter → fold_norm → prune → quant``, each step's record is appended
to ``Meta-info/technicalinfo.json`` ``compression.steps``, and the tree is packed with the
caller's :class:`PackConfig` (compression, encryption, signing as ``pack``). The working
tree is removed whatever happens; nothing appears at the target unless every step succeeded.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptmpack.compress.context import CalibrationData, StepContext, no_progress
from ptmpack.compress.report import CompressReport
from ptmpack.compress.spec import CompressSpec
from ptmpack.errors import PtmError, UnsupportedError, UsageError

STEP_MODULES = {
    "merge_lora": "ptmpack.compress.lora",
    "merge_adapter": "ptmpack.compress.adapters",
    "fold_norm": "ptmpack.compress.fold_norm",
    "prune": "ptmpack.compress.prune",
}
QUANT_MODULES = {
    "rtn": "ptmpack.compress.rtn",
    "gptq": "ptmpack.compress.gptq",
    "affine": "ptmpack.compress.affine",
    "ptq": "ptmpack.compress.ptq",
}
TECHNICAL = "Meta-info/technicalinfo.json"


def step_module(step: str, spec: CompressSpec) -> Any:
    """The module running ``step`` (the quant step by method), imported now.

    Raises:
        UnsupportedError: the module is not part of this ptmpack.
    """
    name = QUANT_MODULES[spec.quant or ""] if step == "quant" else STEP_MODULES[step]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        what = f"--quant {spec.quant}" if step == "quant" else f"--{step.replace('_', '-')}"
        raise UnsupportedError(f"{what} is not available in this ptmpack (no module {name})") from None
    if not callable(getattr(module, "apply", None)):
        raise UnsupportedError(f"{name} has no apply(tree, ctx)")
    return module


def _materialize(source: Path, work: Path, opener: Any) -> None:
    """Copy the input package into ``work`` as a tree."""
    if source.is_dir():
        shutil.copytree(source, work, symlinks=False)
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
    from ptmpack.compress.quantize import read_json, write_json

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
    modules = [(step, step_module(step, spec)) for step in spec.steps()]
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".ptmpack-compress-", dir=target.parent))
    started = time.perf_counter()
    try:
        work = scratch / "tree"
        _materialize(source, work, opener)
        size_in = source.stat().st_size if source.is_file() else sum(
            p.stat().st_size for p in source.rglob("*") if p.is_file())
        cache: list[CalibrationData] = []

        def calibration() -> CalibrationData:
            if not cache:
                from ptmpack.compress.calibration import load_calibration

                cache.append(load_calibration(work, spec))
            return cache[0]

        ctx = StepContext(spec, progress, calibration if spec.calib is not None else None)
        records = []
        for step, module in modules:
            t0 = time.perf_counter()
            record = module.apply(work, ctx)
            if not isinstance(record, dict):
                raise PtmError(f"step {step} returned no record")
            record.setdefault("step", step)
            record.setdefault("wall_seconds", round(time.perf_counter() - t0, 3))
            records.append(record)
        _record(work, records, spec)
        _pack(work, target, pack_config, force)
    except PtmError as exc:  # name the user's input, never the scratch copy that is about to be deleted
        exc.message = exc.message.replace(str(work), str(source))
        exc.args = (exc.message,)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return CompressReport(source=str(source), target=str(target), steps=tuple(_json_safe(r) for r in records),
                          size_in=size_in, size_out=target.stat().st_size,
                          seconds=round(time.perf_counter() - started, 3))
