"""Small real package trees for tests, written with the real safetensors library."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from ptmpack.metadata import documents as meta

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"


def write_tree(root: Path, *, seed: int = 0, big: bool = False) -> dict[str, np.ndarray]:
    """A valid package tree with mixed-dtype safetensors weights; returns the tensors written."""
    rng = np.random.default_rng(seed)
    n = 300_000 if big else 2_000
    tensors = {
        "encoder.weight": (rng.standard_normal((n // 100, 100)) * 0.02).astype(np.float32),
        "encoder.bias": np.zeros(100, np.float32),
        "head.weight": rng.standard_normal((16, 8)).astype(np.float16),
        "head.bf16": rng.standard_normal((4, 4)).astype(ml_dtypes.bfloat16),
        "ids": np.arange(10, dtype=np.int64),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }
    (root / "Model").mkdir(parents=True)
    (root / "Meta-info").mkdir()
    (root / "Program" / "Scripts").mkdir(parents=True)
    save_file(tensors, str(root / "Model" / "model.safetensors"))
    (root / "Model" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 100}))
    (root / "Model" / "empty.txt").write_bytes(b"")
    script = root / "Program" / "Scripts" / "run.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    (root / "Meta-info" / "managementinfo.json").write_text(json.dumps(meta.management_template("test model")))
    (root / "Meta-info" / "technicalinfo.json").write_text(json.dumps(meta.technical_template()))
    return tensors


def tree_files(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` by relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
