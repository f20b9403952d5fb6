# ruff: noqa: RUF002 - formulas quote the alpha of LoRA
"""Merge a PEFT LoRA adapter into the package's weights (``compress --merge-lora ADAPTER_DIR``, §7.4.6).

The adapter is PEFT's own saved layout: ``adapter_config.json`` (``r``, ``lora_alpha``,
``target_modules``, ``use_rslora``, ``fan_in_fan_out``, ``rank_pattern``, ``alpha_pattern``)
and ``adapter_model.safetensors`` holding ``base_model.model.<module>.lora_A.weight`` ``[r, in]``
and ``…lora_B.weight`` ``[out, r]`` per adapted linear (``lora_embedding_A``/``_B`` for an
embedding). Each adapted weight becomes ``W + s·B·A`` with ``s = α/r``, or ``α/√r`` with
rsLoRA, the per-module rank and alpha taken from the patterns when they name the module,
exactly as PEFT's ``merge_and_unload`` computes it. The sum is formed in float64 and stored in
the weight's dtype. DoRA, bias training and ``modules_to_save`` change more than ``W`` and are
refused, as is an adapter that names a module the checkpoint lacks.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.report import StepRecord
from ptmpack.compress.spec import CompressSpec
from ptmpack.compress.step import StepContext
from ptmpack.compress.tree.checkpoint import Checkpoint
from ptmpack.errors import InvalidTreeError, UnsupportedError, UsageError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_TENSOR = re.compile(r"(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?$")


def read_adapter(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The adapter's config and tensors.

    Raises:
        UsageError: not a directory, or the config or weights file is missing.
        InvalidTreeError: unreadable config or weights.
        UnsupportedError: a PEFT type other than LORA, DoRA, or a pickled ``adapter_model.bin`` only.
    """
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise UsageError(f"{adapter_dir}: not an adapter directory", hint=f"give the folder holding {CONFIG_FILE}")
    cfg_path, st_path = adapter_dir / CONFIG_FILE, adapter_dir / WEIGHTS_FILE
    if not cfg_path.is_file():
        raise UsageError(f"{adapter_dir}: no {CONFIG_FILE}", hint="save the adapter with PEFT's save_pretrained")
    if not st_path.is_file():
        if (adapter_dir / "adapter_model.bin").is_file():
            raise UnsupportedError(f"{adapter_dir}: only a pickled adapter_model.bin; ptmpack reads safetensors only",
                                   hint="re-save with save_pretrained(..., safe_serialization=True)")
        raise UsageError(f"{adapter_dir}: no {WEIGHTS_FILE}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        tensors = load_file(str(st_path))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidTreeError(f"{adapter_dir}: unreadable adapter ({exc})") from None
    if not isinstance(cfg, dict):
        raise InvalidTreeError(f"{cfg_path}: not a JSON object")
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise UnsupportedError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r}; only LORA adapters merge")
    if cfg.get("use_dora"):
        raise UnsupportedError(f"{cfg_path}: DoRA adapters rescale each column and are not merged by ptmpack")
    return cfg, tensors


def _pattern_value(patterns: Any, module: str, default: float) -> float:
    """PEFT's rank/alpha pattern lookup: the first key ``k`` with ``module`` matching ``(.*\\.)?k$``."""
    if isinstance(patterns, dict):
        for key, value in patterns.items():
            if re.match(rf"(.*\.)?{key}$", module):
                return float(value)
    return default


def scaling(cfg: dict[str, Any], module: str) -> float:
    """The LoRA scale of ``module``: ``α/r``, or ``α/√r`` with ``use_rslora``."""
    r = _pattern_value(cfg.get("rank_pattern"), module, float(cfg.get("r", 8)))
    alpha = _pattern_value(cfg.get("alpha_pattern"), module, float(cfg.get("lora_alpha", 8)))
    if r <= 0:
        raise InvalidTreeError(f"adapter rank of {module!r} is {r}; it must be positive")
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _base_name(module: str, names: set[str]) -> str:
    """The checkpoint's ``<module>.weight``, allowing a task-head wrapper prefix on either side."""
    for cand in (module, *(module[len(p):] for p in ("bert.", "model.", "transformer.") if module.startswith(p)),
                 *(p + module for p in ("bert.", "model.", "transformer."))):
        if f"{cand}.weight" in names:
            return f"{cand}.weight"
    raise InvalidTreeError(f"the adapter adapts {module!r}, which the package's checkpoint does not have")


def merge_lora(tree: Path, adapter_dir: Path) -> dict[str, Any]:
    """Merge the adapter in ``adapter_dir`` into ``tree/Model`` (weights rewritten in place).

    Returns the step record: the adapter's settings and one row per merged weight with the
    norm of the update relative to the weight.

    Raises:
        UsageError, InvalidTreeError, UnsupportedError: as :func:`read_adapter`; a lora tensor
            without its partner, mismatched shapes, trained biases or ``modules_to_save``.
    """
    cfg, tensors = read_adapter(adapter_dir)
    if cfg.get("bias", "none") != "none":
        raise UnsupportedError(f"{adapter_dir}: the adapter trains biases (bias={cfg['bias']!r}); not merged")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, t in tensors.items():
        m = _TENSOR.match(name[len(_PREFIX):] if name.startswith(_PREFIX) else name)
        if m is None:
            raise UnsupportedError(f"{adapter_dir}: tensor {name!r} is not a LoRA A/B matrix "
                                   "(modules_to_save and other extras are not merged)")
        pairs.setdefault(m.group("module"), {})[m.group("kind")] = t
    ck = Checkpoint.load(tree)
    names = set(ck.tensors)
    rows = []
    for module in sorted(pairs):
        p = pairs[module]
        emb = "lora_embedding_A" in p or "lora_embedding_B" in p
        a, b = (p.get("lora_embedding_A"), p.get("lora_embedding_B")) if emb else (p.get("lora_A"), p.get("lora_B"))
        if a is None or b is None:
            raise InvalidTreeError(f"{adapter_dir}: {module!r} has only one of its two LoRA matrices")
        target = _base_name(module, names)
        w = ck.f64(target)
        delta = np.asarray(b, np.float64) @ np.asarray(a, np.float64)
        if emb or cfg.get("fan_in_fan_out"):
            delta = delta.T
        if delta.shape != w.shape:
            raise InvalidTreeError(f"{adapter_dir}: {module!r} update is {list(delta.shape)}, "
                                   f"weight {target} is {list(w.shape)}")
        s = scaling(cfg, module)
        ck.set(target, w + s * delta)
        rows.append({"tensor": target, "rank": int(a.shape[0]), "scale": s,
                     "relative_update": float(s * np.linalg.norm(delta) / max(np.linalg.norm(w), 1e-30))})
    if not rows:
        raise InvalidTreeError(f"{adapter_dir}: the adapter holds no LoRA matrices")
    ck.save()
    return {"method": "merge_lora", "adapter": {"r": cfg.get("r"), "lora_alpha": cfg.get("lora_alpha"),
            "use_rslora": bool(cfg.get("use_rslora")), "target_modules": cfg.get("target_modules"),
            "base_model_name_or_path": cfg.get("base_model_name_or_path")}, "merged": rows}


class LoraStep:
    """Pipeline step ``--merge-lora DIR``: merge a PEFT adapter, report sizes, FLOPs and quality (a :class:`Step`)."""

    def check(self, spec: CompressSpec) -> None:
        """Nothing beyond :meth:`CompressSpec.check`: the adapter is read (and refused) by :func:`merge_lora`."""

    def run(self, tree: Path, ctx: StepContext) -> StepRecord:
        """Merge ``ctx.spec.merge_lora`` (:func:`merge_lora`).

        Raises:
            PtmError: as :func:`merge_lora`, or the model cannot be run for the quality report.
        """
        record = merge_lora(tree, Path(str(ctx.spec.merge_lora)))
        return StepRecord("merge_lora", str(record.pop("method")), details=record)
