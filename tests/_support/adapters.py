"""Transfer adapters written into a package tree, for the adapter-merge tests (random, seeded by the caller)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ptmpack.compress.tree.adapters import FOLDER
from ptmpack.compress.tree.rebuild import rebuild_graph


def write_adapters(tree: Path, adapters: list[dict], tensors: dict[str, np.ndarray]) -> None:
    """Put unmerged transfer adapters into ``tree`` (config + tensors) and rebuild its graph to run them."""
    folder = tree / FOLDER
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"format": "ptmpack-adapters", "version": 1,
                                                            "adapters": adapters}))
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(folder / "adapters.safetensors"))
    rebuild_graph(tree)  # the unmerged package runs its adapters


def rep_adapter_tensors(rng: np.random.Generator, name: str, d: int = 32, c: int = 8, k: int = 2) -> dict[str, np.ndarray]:
    """Random tensors of a RepAdapter ``name`` of width ``d``, ``c`` hidden channels in ``k`` groups."""
    return {f"{name}.W_down": rng.standard_normal((c, d)) * 0.2, f"{name}.b_down": rng.standard_normal(c) * 0.1,
            f"{name}.W_up": rng.standard_normal((k, d // k, c // k)) * 0.2, f"{name}.b_up": rng.standard_normal(d) * 0.1}


def linear_adapter_tensors(rng: np.random.Generator, name: str, n: int, zeros: int, shift_zero: bool = False) -> dict[str, np.ndarray]:
    """Random scale/shift of a linear adapter over ``n`` channels, ``zeros`` of them scaled to 0."""
    s = 1.0 + 0.3 * rng.standard_normal(n)
    s[rng.permutation(n)[:zeros]] = 0.0
    b = np.zeros(n) if shift_zero else rng.standard_normal(n) * 0.1
    return {f"{name}.scale": s, f"{name}.shift": b}
