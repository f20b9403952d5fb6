"""Shared fixtures: small real package trees written with the real safetensors library."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from tests._support.trees import write_tree

settings.register_profile("ci", max_examples=60, deadline=None)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    write_tree(root)
    return root


@pytest.fixture
def tree_tensors(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "tree"
    return root, write_tree(root)
