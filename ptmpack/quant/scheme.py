"""The weight scheme a ``config.json`` ``quantization_config`` (compressed-tensors) states.

Read by the IR converter (to build ``quantized_linear`` operators) and by the dequantizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ptmpack.errors import UnsupportedError

FORMAT = "pack-quantized"
QUANT_METHOD = "compressed-tensors"


@dataclass(frozen=True)
class WeightScheme:
    """The weight settings a ``quantization_config`` states for the layers it covers."""

    bits: int
    group_size: int | None
    symmetric: bool
    strategy: str


def scheme_of(config: Mapping) -> WeightScheme | None:
    """The weight scheme of a config.json's compressed-tensors ``quantization_config``, if any.

    Raises:
        UnsupportedError: a quantization_config ptmpack cannot run (another format, several
            different weight schemes, float weights, activation quantization of another kind).
    """
    qc = config.get("quantization_config")
    if not isinstance(qc, Mapping):
        return None
    if qc.get("quant_method") != QUANT_METHOD:
        raise UnsupportedError(f"quantization_config quant_method {qc.get('quant_method')!r} is not supported",
                         hint="ptmpack runs compressed-tensors pack-quantized checkpoints")
    groups = qc.get("config_groups") or {}
    schemes = set()
    for g in groups.values() if isinstance(groups, Mapping) else ():
        w = g.get("weights") if isinstance(g, Mapping) else None
        if not isinstance(w, Mapping):
            continue
        fmt = g.get("format") or qc.get("format")
        if fmt != FORMAT or w.get("type", "int") != "int":
            raise UnsupportedError(f"compressed-tensors format {fmt!r} ({w.get('type')}) is not supported",
                             hint="ptmpack runs the pack-quantized integer format")
        schemes.add(WeightScheme(int(w["num_bits"]), w.get("group_size"), bool(w.get("symmetric", True)),
                                 str(w.get("strategy") or "group")))
    if len(schemes) > 1:
        raise UnsupportedError("quantization_config has several weight schemes; ptmpack runs one scheme per model")
    return schemes.pop() if schemes else None
