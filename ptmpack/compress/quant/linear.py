"""The weight-quantization step shared by RTN and GPTQ: which layers, which group size, and the tree edit.

Targets are read from the model's IR (built afresh from ``Model/config.json`` and the
safetensors headers by :mod:`ptmpack.ir.convert_hf`): every ``linear`` whose weight is a
2-D parameter, and every ``matmul`` by a 2-D parameter (GPT-2's ``Conv1D``, stored
``[in, out]`` and quantized as its transpose), except the operators producing a model
output (the LM head) — embeddings and norms are not linears and stay float too.

The step rewrites ``Model/`` in place: each quantized linear's ``weight`` becomes the
compressed-tensors tensors of :mod:`ptmpack.compress.quant.pack_quantized` (files rewritten by the
safetensors library through a temporary file and a rename), ``config.json`` gains the
``quantization_config``, and ``graph.json`` is rebuilt so it runs ``quantized_linear``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.quant.pack_quantized import (
    QuantizedWeight,
    quantization_config,
    quantized_layout,
    quantized_tensors,
)
from ptmpack.compress.report import QuantScheme, StepRecord
from ptmpack.compress.step import StepContext
from ptmpack.compress.tree.documents import read_json, write_json
from ptmpack.compress.tree.weights import TensorSpec, WeightFiles, write_safetensors
from ptmpack.errors import UnsupportedError, UsageError
from ptmpack.ir.model import ModelStructure

GROUP_CANDIDATES = (128, 64, 32)


@dataclass(frozen=True)
class Target:
    """One linear layer to quantize."""

    prefix: str
    """Module name (tensor name without ``.weight``): where the quantized tensors go."""
    weight: str
    """The float weight tensor's name."""
    op: str
    """The IR operator using it."""
    in_features: int
    out_features: int
    transposed: bool = False
    """True for weights stored ``[in, out]`` (GPT-2 Conv1D, run by ``matmul``)."""


def find_targets(model: ModelStructure) -> list[Target]:
    """The linears of ``model``'s main graph that quantization replaces, in execution order."""
    graph = model.main_graph
    variables = graph.variable_map()
    outputs = set(model.outputs)
    found: list[Target] = []
    seen: set[str] = set()
    for node in graph.operators:
        slot = {"linear": "W", "matmul": "B"}.get(node.type)
        if slot is None or not node.inputs.get(slot):
            continue
        name = node.inputs[slot][0]
        v = variables.get(name)
        produced = {n for ns in node.outputs.values() for n in ns}
        if v is None or not v.persistable or len(v.shape) != 2 or produced & outputs or name in seen:
            continue
        if not name.endswith(".weight"):
            continue
        seen.add(name)
        rows, cols = v.shape
        transposed = node.type == "matmul"
        out_f, in_f = (cols, rows) if transposed else (rows, cols)
        found.append(Target(name[: -len(".weight")], name, node.name, int(in_f), int(out_f), transposed))
    return found


def largest_valid_group(widths: list[int], limit: int) -> int | None:
    """The largest power of two ≤ ``limit`` (and ≥ 8) dividing every width, or None."""
    g = 1 << max(3, int(limit).bit_length() - 1)  # from 8 up: a request below 8 still gets a hint
    while g >= 8:
        if all(w % g == 0 for w in widths):
            return g
        g //= 2
    return None


def choose_group_size(targets: list[Target], requested: int | None) -> int:
    """The group size to use: ``requested`` when it divides every input width, else the default.

    0 means per output channel (compressed-tensors strategy ``channel``): each layer's own input width.

    Raises:
        UsageError: ``requested`` does not divide some layer's input width (names the largest
            size that would), or no default group size fits.
    """
    widths = sorted({t.in_features for t in targets})
    if requested == 0:  # per output channel: one group spanning each layer's whole input
        return 0
    if requested is not None:
        bad = [t for t in targets if t.in_features % requested]
        if bad:
            best = largest_valid_group(widths, requested)
            hint = f"use --group-size {best}" if best else "no power-of-two group size fits every layer"
            raise UsageError(f"group size {requested} does not divide the input width {bad[0].in_features} of "
                             f"{bad[0].prefix} (compressed-tensors has no ragged groups)", hint=hint)
        return requested
    for g in GROUP_CANDIDATES:
        if all(w % g == 0 for w in widths):
            return g
    best = largest_valid_group(widths, GROUP_CANDIDATES[-1])
    if best is None:
        raise UsageError(f"no group size of 32 or less divides every input width {widths}")
    return best


def group_of(target: Target, group: int) -> int:
    """The group size used for ``target``: ``group``, or its whole input width when ``group`` is 0 (per channel)."""
    return group or target.in_features


def refuse_quantized(tree: Path, config: Mapping[str, Any]) -> None:
    """Refuse to quantize a model whose ``config.json`` says it is quantized already.

    Raises:
        UnsupportedError: ``quantization_config`` is present.
    """
    if "quantization_config" in config:
        raise UnsupportedError(f"{Path(tree).name}: the model is already quantized; quantizing again compounds the error",
                               hint="start from the float package, or 'ptmpack unpack --dequantize' first")


def load_model(tree: Path) -> ModelStructure:
    """The IR of the tree's checkpoint, built from config.json and the weights (not graph.json), with
    the records earlier steps left in config.json applied (unified norms, activation quantization).

    Raises:
        UnsupportedError: an architecture the IR converter does not know.
    """
    from ptmpack.compress.tree.rebuild import base_model

    return base_model(Path(tree))


def ignored_linears(shapes: Mapping[str, tuple[int, ...]], targets: list[Target], decoder: bool) -> list[str]:
    """Module names of 2-D weights left float (the LM head, a pooler): compressed-tensors' ``ignore``.

    ``shapes`` maps every tensor name of the checkpoint to its shape.
    """
    done = {t.weight for t in targets}
    ignore = {n[: -len(".weight")] for n, shape in shapes.items()
              if n.endswith(".weight") and n not in done and len(shape) == 2
              and not any(e in n for e in ("embed", "wte", "wpe"))}
    if decoder:
        ignore.add("lm_head")
    return sorted(ignore)


def regraph(tree: Path) -> None:
    """Rebuild ``Model/graph.json`` from the edited config.json and weights (if the tree had one)."""
    from ptmpack.compress.tree.rebuild import rebuild_graph

    rebuild_graph(Path(tree))


class QuantizedSpill:
    """Quantized linears set aside as a calibrated method makes them, in the order it makes them (GPTQ: layer
    by layer), and read back one at a time in the order the weight files are rewritten (name order).

    Each :meth:`put` writes the linear's packed tensors (:func:`quantized_tensors`) to a small
    safetensors file of its own in ``folder`` (a scratch folder beside the working tree) and keeps
    its layout and error row; memory holds none of them.
    """

    @classmethod
    @contextmanager
    def beside(cls, tree: Path, prefix: str) -> Iterator[QuantizedSpill]:
        """A spill in a new scratch folder beside ``tree`` (named ``prefix…``), removed when the block ends."""
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=Path(tree).parent))
        try:
            yield cls(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.rows: dict[str, dict[str, Any]] = {}
        """Prefix -> its :func:`ptmpack.compress.quant.metrics.error_row`."""
        self._layout: dict[str, list[TensorSpec]] = {}
        self._files: WeightFiles | None = None

    def put(self, prefix: str, q: QuantizedWeight, row: dict[str, Any],
            extra: Mapping[str, np.ndarray] | None = None) -> None:
        """Set ``q`` (the quantized weight of linear ``prefix``) and its error row aside, with any ``extra``
        tensors stored after it (PTQ: the linear's new bias and its input quantizer).

        Raises:
            InvalidTreeError: the scratch file cannot be written.
        """
        tensors = {**quantized_tensors(prefix, q), **(extra or {})}
        write_safetensors(self.folder / f"{len(self._layout):05d}.safetensors", tensors)
        self._layout[prefix] = [TensorSpec.of(n, a) for n, a in tensors.items()]
        self.rows[prefix] = row
        self._files = None

    def __contains__(self, prefix: object) -> bool:
        return prefix in self._layout

    def layout(self, prefix: str) -> list[TensorSpec]:
        """The tensors linear ``prefix`` is stored as (its layout in the rewritten weight file)."""
        return self._layout[prefix]

    def tensors(self, prefix: str) -> dict[str, np.ndarray]:
        """Linear ``prefix``'s tensors, read back from its scratch file."""
        if self._files is None:
            self._files = WeightFiles(self.folder)
        return {s.name: self._files.read(s.name) for s in self._layout[prefix]}


RunFn = Callable[[list[Target], WeightFiles, int, QuantizedSpill], None]
"""A calibrated quantizer (GPTQ: calibration runs through the model): puts every target's quantized weight and
error row in the spill, in any order, as it makes them."""
LayerFn = Callable[[Target, np.ndarray, int], tuple[QuantizedWeight, dict[str, Any]]]
"""A data-free quantizer of one weight (``[out, in]``, in its stored dtype) and the step's group size:
the quantized weight and its :func:`ptmpack.compress.quant.rtn.error_row`."""


def quantize_tree(tree: Path, ctx: StepContext, method: str, run: RunFn | None = None, *, layer: LayerFn | None = None,
                  extra: Mapping[str, Any] | None = None) -> StepRecord:
    """Quantize the tree's linears and rewrite ``Model/``; return the step record.

    Give ``run(targets, weights, group_size, spill)``, which puts each target's quantized weight in
    a :class:`QuantizedSpill` as it makes them (in a scratch folder beside the tree, removed after),
    or ``layer(target, weight, group_size)`` for a method that needs nothing but the weight. Then
    the safetensors files are rewritten (:meth:`WeightFiles.rewrite`) reading one replacement at a
    time (from the spill, or read, quantized and written), so memory holds one layer. Group size 0
    means per channel (see :func:`group_of`). Tensors that are not quantized are copied as stored
    (a bfloat16 embedding stays bfloat16).

    Raises:
        UsageError: a bad group size.
        UnsupportedError: an unknown architecture, or no linear to quantize.
    """
    from ptmpack.compress.quant.observer import scale_dtype_for

    spec = ctx.spec
    tree = Path(tree)
    refuse_quantized(tree, read_json(tree / "Model" / "config.json"))
    model = load_model(tree)
    targets = find_targets(model)
    if not targets:
        raise UnsupportedError(f"{tree}: the model has no linear layer to quantize")
    group = choose_group_size(targets, spec.group_size)
    calibration = ctx.calib() if ctx.calibration is not None else None
    weights = WeightFiles(tree / "Model")
    size_before = weights.file_bytes()
    by_weight = {t.weight: t for t in targets}
    start = time.perf_counter()
    shapes = {n: weights.spec(n).shape for n in weights.names()}
    rows: dict[str, dict[str, Any]] = {}
    if layer is None:
        if run is None:
            raise TypeError("quantize_tree needs run or layer")
        with QuantizedSpill.beside(tree, ".quantized-") as spill:
            run(targets, weights, group, spill)
            missing = [t.prefix for t in targets if t.prefix not in spill]
            if missing:
                raise UnsupportedError(f"{method} quantized no weight for {missing[0]} (and {len(missing) - 1} more)")
            rows = spill.rows
            weights.rewrite({t.weight: spill.layout(t.prefix) for t in targets},
                            lambda name: spill.tensors(by_weight[name].prefix))
    else:
        plan = {t.weight: quantized_layout(t.prefix, (t.out_features, t.in_features), spec.bits, group_of(t, group),
                                           scale_dtype_for(weights.spec(t.weight).dtype), symmetric=spec.symmetric)
                for t in targets}

        def produce(name: str) -> dict[str, np.ndarray]:
            t = by_weight[name]
            w = weights.read(name)
            q, rows[t.prefix] = layer(t, w.T if t.transposed else w, group)
            return quantized_tensors(t.prefix, q)

        weights.rewrite(plan, produce, lambda done, total: ctx.progress(method, done, total))
    seconds = time.perf_counter() - start
    config_path = tree / "Model" / "config.json"
    config = read_json(config_path)
    decoder = model.metadata.get("structure") == "decoder-only"
    actorder = "weight" if spec.act_order else None
    config["quantization_config"] = quantization_config(spec.bits, group or None, spec.symmetric,
                                                        ignored_linears(shapes, targets, decoder), actorder=actorder)
    write_json(config_path, config)
    regraph(tree)
    size_after = weights.file_bytes()
    ordered = [rows[t.prefix] for t in targets]
    details: dict[str, Any] = {
        "layers_quantized": len(targets), "size_before": size_before, "size_after": size_after,
        "seconds": round(seconds, 3), "calibration": calibration.record() if calibration is not None else None,
        "layers": ordered, "mean_rel_error": float(np.mean([r["rel_error"] for r in ordered])), **(extra or {}),
    }
    return StepRecord("quant", method,
                      scheme=QuantScheme(spec.bits, "compressed-tensors/pack-quantized", group or "channel", spec.symmetric),
                      details=details)
