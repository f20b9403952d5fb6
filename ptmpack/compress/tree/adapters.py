"""The transfer adapters a package carries unmerged (``Model/adapters/``): their layout, and their operators in the graph.

The layout and the merge are described in :mod:`ptmpack.compress.structure.merge_adapter`;
this part is shared plumbing: every rebuild of ``graph.json`` (:mod:`ptmpack.compress.tree.rebuild`)
puts the unmerged adapters back in front of their linears.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.tree.checkpoint import read_json
from ptmpack.compress.tree.graph import checked, insert, param
from ptmpack.errors import InvalidTreeError
from ptmpack.ir.model import ModelStructure, OperatorNode

FOLDER = "Model/adapters"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapters.safetensors"
FORMAT = "ptmpack-adapters"


def read_adapters(tree: Path) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]] | None:
    """The adapter list and tensors of ``tree`` (None when it carries no adapters).

    Raises:
        InvalidTreeError: a malformed config, a missing tensor or an unknown adapter type.
    """
    from safetensors.numpy import load_file

    folder = Path(tree) / FOLDER
    if not (folder / CONFIG_NAME).is_file():
        return None
    doc = read_json(tree, f"{FOLDER}/{CONFIG_NAME}")
    adapters = doc.get("adapters")
    if doc.get("format") != FORMAT or not isinstance(adapters, list) or not adapters:
        raise InvalidTreeError(f"{folder / CONFIG_NAME}: not a {FORMAT} document with a non-empty adapters list")
    try:
        tensors = load_file(str(folder / WEIGHTS_NAME))
    except (OSError, ValueError) as exc:
        raise InvalidTreeError(f"{folder / WEIGHTS_NAME}: unreadable ({exc})") from None
    needs = {"rep_adapter": ("W_down", "W_up"), "linear_adapter": ("scale",)}
    for a in adapters:
        kind = a.get("type") if isinstance(a, dict) else None
        if kind not in needs or not isinstance(a.get("name"), str):
            raise InvalidTreeError(f"{folder / CONFIG_NAME}: adapter {a!r} needs a name and a type in {sorted(needs)}")
        missing = [f"{a['name']}.{k}" for k in needs[kind] if f"{a['name']}.{k}" not in tensors]
        if missing:
            raise InvalidTreeError(f"{folder / WEIGHTS_NAME}: missing {', '.join(missing)}")
    return adapters, tensors


def linear_op(graph: Any, weight: str) -> OperatorNode:
    """The ``linear`` operator of ``graph`` whose weight is ``weight``.

    Raises:
        InvalidTreeError: no linear reads that weight.
    """
    for node in graph.operators:
        if node.type == "linear" and node.inputs["W"][0] == weight:
            return node
    raise InvalidTreeError(f"adapter target {weight[: -len('.weight')]!r} is not a linear layer of the graph")


def attach(model: ModelStructure, adapters: list[dict[str, Any]], tensors: dict[str, np.ndarray],
           file: str = f"{FOLDER}/{WEIGHTS_NAME}") -> ModelStructure:
    """The graph with the unmerged adapters as ``rep_adapter``/``transfer_compression_adapter`` operators.

    Raises:
        InvalidTreeError: a target is not a linear, or a RepAdapter's targets read different inputs.
    """
    for a in adapters:
        g = model.main_graph
        if a["type"] == "rep_adapter":
            nodes = [linear_op(g, f"{t}.weight") for t in a.get("targets", [])]
            xs = {n.inputs["X"][0] for n in nodes}
            if len(xs) != 1:
                raise InvalidTreeError(f"adapter {a['name']!r}: its targets must read one common input, not {sorted(xs)}")
            src, readers, slots = xs.pop(), {n.name for n in nodes}, ("W_down", "b_down", "W_up", "b_up")
            op_type, extra = "rep_adapter", {"scale": float(a.get("scale", 1.0))}
        else:
            src, readers, slots = linear_op(g, f"{a['target']}.weight").outputs["Y"][0], None, ("scale", "shift")
            op_type, extra = "transfer_compression_adapter", {}
        ins, decl = {"X": (src,)}, []
        for slot in slots:
            n = f"{a['name']}.{slot}"
            if n in tensors:
                ins[slot] = (n,)
                decl.append(param(n, str(tensors[n].dtype), tensors[n].shape, file))
        model = insert(model, op_type, f"adapter.{a['name']}", ins, redirect=src, readers=readers, params=decl, **extra)
    return checked(model)
