"""A base model and its fine-tune as package trees, for residual-update tests."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from tests._support.trees import write_tree


def base_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w32": (rng.standard_normal((64, 96)) * 0.05).astype(np.float32),
        "w16": (rng.standard_normal((40, 32)) * 0.05).astype(np.float16),
        "wbf": (rng.standard_normal((16, 48)) * 0.05).astype(ml_dtypes.bfloat16),
        "w64": rng.standard_normal(50),
        "same": rng.standard_normal(30).astype(np.float32),
        "ids": np.arange(12, dtype=np.int64),
        "gone": np.ones(8, np.float32),
        "grow": np.ones((4, 4), np.float32),
        "retype": np.ones(6, np.float32),
    }


def fine_tune(a: dict[str, np.ndarray], seed: int = 1) -> dict[str, np.ndarray]:
    """Move every float weight a little (like training), add, reshape, re-type and drop some tensors."""
    rng = np.random.default_rng(seed)
    b = {}
    for k, v in a.items():
        if k in ("w32", "w16", "wbf", "w64"):
            moved = v.astype(np.float64) + rng.standard_normal(v.shape) * 2e-3
            b[k] = moved.astype(v.dtype)
        else:
            b[k] = v
    b["ids"] = a["ids"] + 1
    del b["gone"]
    b["grow"] = np.ones((5, 4), np.float32)
    b["retype"] = np.ones(6, np.float16)
    b["fresh"] = np.full(3, 7.0, np.float32)
    return b


def make_tree(root: Path, tensors: dict[str, np.ndarray], config: str = '{"hidden": 96}') -> Path:
    write_tree(root)
    save_file(tensors, str(root / "Model" / "model.safetensors"))
    (root / "Model" / "config.json").write_text(config)
    return root
