"""Round trips of the container through the library API: raw, zstd, byte planes; tensors; layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from ptmpack import api
from ptmpack.errors import UsageError
from ptmpack.format import spec
from ptmpack.format.reader import PackageReader
from ptmpack.format.records import FileHeader, Trailer
from ptmpack.storage.package import FilePackage, TreePackage, open_package
from tests._support.trees import tree_files, write_tree

ZSTD = api.PackConfig(compression=spec.Compression.ZSTD, chunk_size=4096)


@pytest.mark.parametrize("config", [api.PackConfig(), ZSTD], ids=["raw", "zstd"])
def test_pack_unpack_is_byte_exact(tree: Path, tmp_path: Path, config: api.PackConfig) -> None:
    out = tmp_path / "m.ptm"
    manifest = api.pack(tree, out, config).manifest
    assert len(manifest.entries) == 6
    result = api.unpack(out, tmp_path / "back")
    assert tree_files(tmp_path / "back") == tree_files(tree)
    assert result.files == 6
    assert os.stat(tmp_path / "back" / "Program" / "Scripts" / "run.sh").st_mode & 0o111
    assert not os.stat(tmp_path / "back" / "Model" / "config.json").st_mode & 0o111
    assert (tmp_path / "back" / "Program").is_dir()


def test_raw_entries_are_aligned_and_byte_exact_in_the_file(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.ptm"
    manifest = api.pack(tree, out).manifest
    blob = out.read_bytes()
    for e in manifest.entries:
        assert e.data_offset % spec.ALIGNMENT == 0
        assert blob[e.data_offset:e.data_offset + e.raw_length] == (tree / e.path).read_bytes()


def test_layout_records(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.ptm"
    manifest = api.pack(tree, out, package_id=bytes(range(16))).manifest
    blob = out.read_bytes()
    header = FileHeader.unpack(blob[:FileHeader.SIZE])
    assert header.package_id == bytes(range(16))
    assert header.entry_count == 6 and header.model_count == 3
    assert header.header_size == 4096
    trailer = Trailer.unpack(blob[-64:], len(blob))
    assert blob[-8:] == spec.END_MAGIC
    assert trailer.manifest_offset == manifest.entries[-1].data_offset + manifest.entries[-1].stored_length
    assert trailer.signature_offset == 0


@pytest.mark.parametrize("config", [api.PackConfig(), ZSTD], ids=["raw", "zstd"])
def test_read_each_tensor_matches_safetensors(tree_tensors, tmp_path: Path, config: api.PackConfig) -> None:
    root, tensors = tree_tensors
    out = tmp_path / "m.ptm"
    api.pack(root, out, config)
    with open_package(out) as pkg, safe_open(str(root / "Model" / "model.safetensors"), "np") as ref:
        assert isinstance(pkg, FilePackage)
        assert {t.name for _, t in pkg.tensors()} == set(tensors)
        for name in tensors:
            got = pkg.read_tensor(name)
            want = ref.get_tensor(name)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes()


def test_read_tensor_from_tree(tree_tensors) -> None:
    root, tensors = tree_tensors
    with open_package(root) as pkg:
        assert isinstance(pkg, TreePackage)
        np.testing.assert_array_equal(pkg.read_tensor("encoder.weight"), tensors["encoder.weight"])
        names = [n for n, _ in pkg.iter_tensors()]
        assert sorted(names) == sorted(tensors)


def test_raw_tensor_read_is_zero_copy(tree_tensors, tmp_path: Path) -> None:
    root, _ = tree_tensors
    out = tmp_path / "m.ptm"
    api.pack(root, out)
    with open_package(out) as pkg:
        arr = pkg.read_tensor("encoder.weight")
        assert not arr.flags.owndata and not arr.flags.writeable


def test_compressed_read_touches_only_needed_chunks(tmp_path: Path, monkeypatch) -> None:
    tree = tmp_path / "big"
    write_tree(tree, big=True)
    out = tmp_path / "m.ptm"
    api.pack(tree, out, api.PackConfig(compression=spec.Compression.ZSTD, chunk_size=4096))
    calls: list[int] = []
    original = PackageReader.read_chunk

    def spy(self, e, i):
        calls.append(i)
        return original(self, e, i)

    monkeypatch.setattr(PackageReader, "read_chunk", spy)
    with open_package(out) as pkg:
        f, t = pkg.find_tensor("head.weight")
        pkg.read_tensor("head.weight")
        entry = pkg.reader.manifest.entries[[e.path for e in pkg.reader.entries].index(f.path)]
        assert len(entry.chunks) > 100
        assert set(calls) == set(range(t.begin // 4096, (t.end - 1) // 4096 + 1))


def test_zstd_chooses_plane_transform_for_float_weights(tmp_path: Path) -> None:
    root = tmp_path / "big"
    write_tree(root, big=True)
    out = tmp_path / "m.ptm"
    manifest = api.pack(root, out, api.PackConfig(compression=spec.Compression.ZSTD)).manifest
    weights = next(e for e in manifest.entries if e.path.endswith(".safetensors"))
    assert spec.split_codec(weights.codec)[2] != 0
    assert weights.stored_length < weights.raw_length
    api.unpack(out, tmp_path / "back")
    assert tree_files(tmp_path / "back") == tree_files(root)


def test_refuses_existing_target_without_force(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.ptm"
    api.pack(tree, out)
    with pytest.raises(UsageError, match="already exists"):
        api.pack(tree, out)
    api.pack(tree, out, force=True)
    api.unpack(out, tmp_path / "dir")
    with pytest.raises(UsageError, match="already exists"):
        api.unpack(out, tmp_path / "dir")
    (tmp_path / "dir" / "stale").write_text("x")
    api.unpack(out, tmp_path / "dir", force=True)
    assert not (tmp_path / "dir" / "stale").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ptmpack-tmp-")]


def test_reproducible_with_source_date_epoch(tree: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    pid = b"\x01" * 16
    api.pack(tree, tmp_path / "a.ptm", ZSTD, package_id=pid)
    api.pack(tree, tmp_path / "b.ptm", ZSTD, package_id=pid)
    assert (tmp_path / "a.ptm").read_bytes() == (tmp_path / "b.ptm").read_bytes()


def test_inspect_document(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.ptm"
    api.pack(tree, out, ZSTD)
    doc = api.inspect(out, tensors=True).to_json()
    assert doc["type"] == "file"
    assert doc["header"]["flags"] == ["COMPRESSED"]
    assert doc["totals"]["files"] == 6
    assert doc["totals"]["tensors"] == 7
    assert {t["name"] for t in doc["tensors"]} >= {"encoder.weight", "head.bf16"}
    assert doc["metadata"]["managementinfo"]["name"] == "test model"
    tree_doc = api.inspect(tree, tensors=True).to_json()
    assert tree_doc["totals"] == doc["totals"]


def test_verify_report(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.ptm"
    api.pack(tree, out, ZSTD)
    report = api.verify(out)
    assert report.kind == "file" and report.entries == 6
    assert "sequential walk" in report.checks and report.signature == "none"
    assert api.verify(tree).kind == "tree"
