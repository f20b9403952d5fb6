"""The lean raw paths (issue 8): kernel copies, parallel hashing, tight small entries, light imports.

Raw entries are copied with ``copy_file_range`` (or ``sendfile``, or read/write) while pool
threads hash them from a map; small entries are staged and packed without padding. These
tests hold the results to plain facts: the bytes in the package and on unpack are the
source bytes, every digest is ``hashlib.sha256`` of the file (what ``sha256sum`` prints), a
file that changes while being packed is refused with nothing left behind, and reading or
checking a raw package does not import numpy.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptmpack import api
from ptmpack.errors import InvalidTreeError
from ptmpack.format import spec
from ptmpack.format.digest import KernelCopier, hash_map
from ptmpack.storage.pack import pack_tree
from tests._support.trees import tree_files, write_tree

MiB = 1024 * 1024


@pytest.fixture
def mixed_tree(tmp_path: Path) -> Path:
    """Metadata, many small files, a few entries around the 64 KiB and 1 MiB thresholds and
    several large ones (hashed in parallel), with random bytes."""
    root = tmp_path / "tree"
    write_tree(root)
    rnd = os.urandom
    for i in range(40):
        (root / "Model" / "small" / f"{i:02d}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / "Model" / "small" / f"{i:02d}.txt").write_bytes(rnd(i * 7))
    for name, size in (("edge-64k", 64 * 1024), ("under-64k", 64 * 1024 - 1), ("mib", MiB), ("mib+1", MiB + 1)):
        (root / "Model" / name).write_bytes(rnd(size))
    for i in range(5):
        (root / "Model" / f"big{i}.bin").write_bytes(rnd(3 * MiB + i * 4099))
    (root / "Program" / "Scripts").mkdir(parents=True, exist_ok=True)
    run = root / "Program" / "Scripts" / "go.sh"
    run.write_bytes(b"#!/bin/sh\n")
    run.chmod(0o755)
    return root


def test_packed_bytes_and_digests_are_the_files(mixed_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.ptm"
    manifest = api.pack(mixed_tree, out).manifest
    blob = out.read_bytes()
    for e in manifest.entries:
        data = (mixed_tree / e.path).read_bytes()
        assert blob[e.data_offset:e.data_offset + e.raw_length] == data, e.path
        assert e.sha256 == hashlib.sha256(data).digest(), e.path  # what sha256sum and HF LFS ids give
        hdr = blob[e.header_offset:e.header_offset + spec.MODEL_HEADER.size]
        assert spec.MODEL_HEADER.unpack(hdr)[-1] == e.sha256, f"{e.path}: header digest not patched"
        aligned = e.raw_length >= spec.LARGE_ENTRY or e.path.endswith(".safetensors")
        assert (e.data_offset % spec.ALIGNMENT == 0) or not aligned
    api.verify(out)
    api.unpack(out, tmp_path / "back")
    assert tree_files(tmp_path / "back") == tree_files(mixed_tree)
    assert os.stat(tmp_path / "back" / "Program" / "Scripts" / "go.sh").st_mode & 0o777 == 0o755


def test_unpack_modes_do_not_depend_on_the_umask(mixed_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.ptm"
    api.pack(mixed_tree, out)
    old = os.umask(0o077)
    try:
        api.unpack(out, tmp_path / "back")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "back" / "Model" / "mib").st_mode & 0o777 == 0o644
    assert os.stat(tmp_path / "back" / "Model" / "small" / "03.txt").st_mode & 0o777 == 0o644
    assert os.stat(tmp_path / "back" / "Program" / "Scripts" / "go.sh").st_mode & 0o777 == 0o755


@pytest.mark.parametrize("method", ["copy_file_range", "sendfile", "pread"])
def test_kernel_copier_methods_copy_the_same_bytes(tmp_path: Path, method: str) -> None:
    data = os.urandom(2 * MiB + 12345)
    (tmp_path / "src").write_bytes(data)
    copier = KernelCopier()
    copier.method = method
    with open(tmp_path / "src", "rb") as src, open(tmp_path / "dst", "w+b") as dst:
        dst.write(b"x" * 100)
        dst.flush()
        assert copier.copy(src.fileno(), dst.fileno(), len(data) - 7, 7, 4096) == len(data) - 7
        assert copier.copy(src.fileno(), dst.fileno(), 100, len(data) - 10, 0) == 10  # input ends early
    got = (tmp_path / "dst").read_bytes()
    assert got[4096:] == data[7:] and got[:10] == data[-10:] and got[10:100] == b"x" * 90
    assert not any(got[100:4096])


def test_hash_map_matches_hashlib_and_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmap

    from ptmpack.format import digest

    monkeypatch.setattr(digest, "HASH_WINDOW", 64 * 1024 + 3)  # windows that straddle pages
    data = os.urandom(MiB + 777)
    (tmp_path / "f").write_bytes(data)
    with open(tmp_path / "f", "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        assert hash_map(mm, 5, len(data) - 9, close=False) == hashlib.sha256(data[5:-9]).digest()
        assert hash_map(mm) == hashlib.sha256(data).digest()
        assert mm.closed


@pytest.mark.parametrize("target", ["Model/small/05.txt", "Model/big3.bin"])
def test_a_file_that_grows_while_packing_is_refused(mixed_tree: Path, tmp_path: Path, target: str) -> None:
    """Entries are written in order (Meta-info, Model, Program); the first progress call comes
    from the first metadata file, long before ``target`` is read."""
    grown: list[bool] = []

    def grow(n: int) -> None:
        if not grown:
            with open(mixed_tree / target, "ab") as f:
                f.write(b"more")
            grown.append(True)

    out = tmp_path / "m.ptm"
    with pytest.raises(InvalidTreeError, match="changed"):
        pack_tree(mixed_tree, out, progress=grow)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".ptmpack-tmp-")]


def test_a_file_that_shrinks_while_packing_is_refused(mixed_tree: Path, tmp_path: Path) -> None:
    def shrink(n: int) -> None:
        os.truncate(mixed_tree / "Model" / "big4.bin", MiB + 5)

    with pytest.raises(InvalidTreeError, match="changed"):
        pack_tree(mixed_tree, tmp_path / "m.ptm", progress=shrink)
    assert not (tmp_path / "m.ptm").exists()


def test_small_entries_cost_their_header_and_path_only(tmp_path: Path) -> None:
    """1,000 files of 170 bytes: the package is the content plus 72 + path bytes per entry,
    the manifest, the 4 KiB file header and the trailer (1.0 padded each entry to 4096)."""
    root = tmp_path / "tree"
    write_tree(root)
    for i in range(1000):
        d = root / "Model" / f"d{i // 100}"
        d.mkdir(exist_ok=True)
        (d / f"{i:04d}").write_bytes(os.urandom(170))
    out = tmp_path / "m.ptm"
    manifest = api.pack(root, out).manifest
    expected = 4096 + sum(72 + len(e.path.encode()) + e.raw_length for e in manifest.entries if e.raw_length < 65536
                          and not e.path.endswith(".safetensors"))
    aligned = [e for e in manifest.entries if e.raw_length >= 65536 or e.path.endswith(".safetensors")]
    size = out.stat().st_size
    body = len(manifest.to_json())
    slack = sum(4096 + 72 + len(e.path.encode()) + e.raw_length for e in aligned)
    assert expected + body + 64 <= size <= expected + body + 64 + slack


def test_reading_and_checking_a_raw_package_does_not_import_numpy(tmp_path: Path, mixed_tree: Path) -> None:
    out = tmp_path / "m.ptm"
    api.pack(mixed_tree, out)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from ptmpack.storage.verify import verify_package\n"
        "from ptmpack.storage.unpack import unpack_file\n"
        "from ptmpack.storage.package import open_package\n"
        "from ptmpack.storage.pack import pack_tree\n"
        f"verify_package(Path({str(out)!r}))\n"
        f"unpack_file(Path({str(out)!r}), Path({str(tmp_path / 'back')!r}))\n"
        f"pack_tree(Path({str(mixed_tree)!r}), Path({str(tmp_path / 'again.ptm')!r}))\n"
        f"with open_package(Path({str(out)!r})) as p:\n"
        "    p.read_file('Meta-info/managementinfo.json')\n"
        "print(sorted(m for m in ('numpy', 'ml_dtypes', 'zstandard') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
