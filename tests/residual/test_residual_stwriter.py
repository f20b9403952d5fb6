"""The streaming safetensors writers: the safetensors library reads their files back identically."""

from __future__ import annotations

import io
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from ptmpack.errors import UsageError
from ptmpack.tensors.safetensors_index import index_safetensors_file
from ptmpack.tensors.stwriter import PlannedWriter, SpoolWriter, encode_header


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w": rng.standard_normal((33, 7)).astype(np.float32),
        "h": rng.standard_normal(5).astype(np.float16),
        "ids": np.arange(9, dtype=np.int64),
        "bytes": rng.integers(0, 255, (3, 4, 2)).astype(np.uint8),
        "scalar": np.array(2.5, np.float64),
        "empty": np.zeros((0, 3), np.float32),
        "ünïcode name": np.ones(2, np.int32),
    }


def test_spool_writer_reads_back_with_safetensors(tmp_path: Path) -> None:
    tensors = _tensors()
    path = tmp_path / "s.safetensors"
    w = SpoolWriter(path, {"format": "pt"})
    for name, arr in tensors.items():
        slot = w.add(name, {"f": "F", "i": "I", "u": "U"}[arr.dtype.kind] + str(8 * arr.dtype.itemsize), arr.shape)
        raw = arr.tobytes()
        half = len(raw) // 2
        w.write_at(slot, half, raw[half:])  # out of order within a tensor is allowed
        w.write_at(slot, 0, raw[:half])
    size = w.finish()
    assert size == path.stat().st_size
    assert not list(tmp_path.glob("*.spool"))
    got = load_file(str(path))
    assert set(got) == set(tensors)
    for name, arr in tensors.items():
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape
        assert got[name].tobytes() == arr.tobytes()
    with safe_open(str(path), "np") as f:
        assert f.metadata() == {"format": "pt"}
    assert (path.read_bytes()[:8] != b"") and int.from_bytes(path.read_bytes()[:8], "little") % 8 == 0


def test_spool_writer_bf16_reads_back_with_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file as load_torch

    arr = np.array([1.5, -0.0, np.inf, 3.0], np.float32).astype(ml_dtypes.bfloat16)
    w = SpoolWriter(tmp_path / "b.safetensors")
    w.put("x", "BF16", (4,), arr.view(np.uint8))
    w.finish()
    got = load_torch(str(tmp_path / "b.safetensors"))["x"]
    assert got.dtype == torch.bfloat16
    assert got.view(torch.int16).numpy().tobytes() == arr.tobytes()


def test_spool_writer_refuses_incomplete_and_duplicate(tmp_path: Path) -> None:
    w = SpoolWriter(tmp_path / "x.safetensors")
    slot = w.add("a", "F32", (4,))
    with pytest.raises(UsageError):
        w.add("a", "F32", (1,))
    with pytest.raises(UsageError):
        w.write_at(slot, 12, b"\0" * 8)
    w.write_at(slot, 0, b"\0" * 8)
    with pytest.raises(UsageError, match="8 of 16"):
        w.finish()
    assert not (tmp_path / "x.safetensors").exists()
    assert not list(tmp_path.iterdir())


def test_planned_writer_rebuilds_a_library_file_byte_exact(tmp_path: Path) -> None:
    """Header taken verbatim from a file the safetensors library wrote, tensors streamed in pieces."""
    tensors = _tensors()
    src = tmp_path / "src.safetensors"
    save_file(tensors, str(src), metadata={"k": "v"})
    blob = src.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    index = index_safetensors_file(str(src))
    out = io.BytesIO()
    w = PlannedWriter(out, blob[: 8 + n])
    for t in index.tensors:
        data = blob[t.begin:t.end]
        w.begin(t.name)
        for i in range(0, len(data), 5):
            w.write(data[i:i + 5])
        w.end()
    w.finish()
    assert out.getvalue() == blob


def test_planned_writer_is_a_state_machine(tmp_path: Path) -> None:
    header = encode_header([("a", "F32", (2,)), ("b", "U8", (3,))])
    w = PlannedWriter(io.BytesIO(), header)
    with pytest.raises(UsageError, match="out of order"):
        w.begin("b")
    with pytest.raises(UsageError, match="no tensor open"):
        w.write(b"x")
    w.begin("a")
    with pytest.raises(UsageError, match="more than"):
        w.write(b"\0" * 9)
    with pytest.raises(UsageError, match="still open"):
        w.begin("b")
    w.write(b"\0" * 8)
    w.end()
    with pytest.raises(UsageError, match="still to write"):
        w.finish()
    w.write_tensor("b", [b"\1", b"\2\3"])
    w.finish()
    with pytest.raises(UsageError, match="after the last"):
        w.begin("c")


def test_encode_header_rejects_bad_input() -> None:
    with pytest.raises(UsageError):
        encode_header([("a", "F31", (1,))])
    with pytest.raises(UsageError):
        encode_header([("a", "F32", (1,)), ("a", "F32", (1,))])
