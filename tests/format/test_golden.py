"""Golden packages pin the container format byte for byte.

``fixtures/golden/`` holds ``raw.ptm`` and ``zstd.ptm`` made by ``fixtures/make_golden.py``
from a tiny tree whose every byte that script writes by hand. These tests only read the
golden files; they are rewritten solely by running ``python fixtures/make_golden.py``.

(a) Reading a golden file gives exactly the stored inspect document, the stored tensor
    values, and the tree back on unpack.
(b) Packing the same tree again, with the same package id and SOURCE_DATE_EPOCH, gives
    the same bytes.

About the tool string: the manifest records ``"tool": "ptmpack <version>"``, so a plain
version bump would change the bytes without changing the format. Test (b) therefore
packs with ``ptmpack.format.writer.__version__`` patched to the version recorded in
the golden manifest: a release does not need new golden files, a format change does.
The inspect document in (a) is read from the golden file, so its ``tool`` field is the
recorded one and needs no patching.

About zstd: libzstd may emit different (equally valid) bytes in another release, so the
byte comparison of ``zstd.ptm`` runs only under the libzstd version recorded in
``versions.json``; reading it is checked under any version.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import zstandard
from safetensors.numpy import load_file

from ptmpack import api
from ptmpack.format import spec
from ptmpack.format.records import FileHeader, ModelHeader, Trailer
from ptmpack.storage.package import open_package
from tests._support.trees import FIXTURES, tree_files

GOLDEN = FIXTURES / "golden"
NAMES = ("raw", "zstd")


def _load_maker() -> ModuleType:
    spec_ = importlib.util.spec_from_file_location("make_golden", FIXTURES / "make_golden.py")
    assert spec_ is not None and spec_.loader is not None
    module = importlib.util.module_from_spec(spec_)
    sys.modules.setdefault("make_golden", module)
    spec_.loader.exec_module(module)
    return module


make_golden = _load_maker()


def _stored_json(name: str) -> object:
    return json.loads((GOLDEN / name).read_text())


@pytest.fixture
def golden_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", make_golden.SOURCE_DATE_EPOCH)


def test_golden_files_exist_and_are_small() -> None:
    for name in NAMES:
        size = (GOLDEN / f"{name}.ptm").stat().st_size
        assert 0 < size < 64 * 1024
        assert (GOLDEN / f"{name}.inspect.json").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_golden_inspect_document_is_exactly_the_stored_one(name: str) -> None:
    doc = api.inspect(GOLDEN / f"{name}.ptm", tensors=True).to_json()
    doc["path"] = f"{name}.ptm"
    # Round-trip through JSON so tuples and lists compare alike, as the CLI would print them.
    assert json.loads(json.dumps(doc)) == _stored_json(f"{name}.inspect.json")


@pytest.mark.parametrize("name", NAMES)
def test_golden_verifies_and_tensors_have_the_stored_values(name: str) -> None:
    api.verify(GOLDEN / f"{name}.ptm")
    table = _stored_json("tensors.json")
    assert isinstance(table, dict)
    with open_package(GOLDEN / f"{name}.ptm") as pkg:
        assert sorted(t.name for _, t in pkg.tensors()) == sorted(table)
        for tensor, want in table.items():
            arr = pkg.read_tensor(tensor)
            assert list(arr.shape) == want["shape"], tensor
            assert hashlib.sha256(arr.tobytes()).hexdigest() == want["sha256"], tensor
            if "values" in want:
                assert np.asarray(arr, dtype=np.float64).ravel().tolist() == want["values"], tensor
        # and the values are what the script meant to write
        for tensor, arr in make_golden.tensors().items():
            got = pkg.read_tensor(tensor)
            assert got.dtype == arr.dtype and got.tobytes() == arr.tobytes(), tensor


@pytest.mark.parametrize("name", NAMES)
def test_golden_unpacks_to_the_golden_tree(name: str, tmp_path: Path) -> None:
    api.unpack(GOLDEN / f"{name}.ptm", tmp_path / "out")
    expected = make_golden.build_tree(tmp_path / "tree")
    assert tree_files(tmp_path / "out") == tree_files(tmp_path / "tree") == expected
    assert (tmp_path / "out" / "Program" / "Scripts" / "run.sh").stat().st_mode & 0o111
    # The hand-written safetensors file is a real one.
    weights = load_file(str(tmp_path / "out" / "Model" / "model.safetensors"))
    for tensor, arr in make_golden.tensors().items():
        assert weights[tensor].tobytes() == arr.tobytes()


def test_golden_raw_layout_fields() -> None:
    """Spot checks of FORMAT.md against the raw golden file, independent of the inspect code."""
    blob = (GOLDEN / "raw.ptm").read_bytes()
    header = FileHeader.unpack(blob[:FileHeader.SIZE])
    assert blob[:8] == b"PTMPACK\0" and blob[-8:] == b"PTMEND\0\0"
    assert (header.version_major, header.version_minor) == (1, 0)
    assert header.package_id == make_golden.PACKAGE_ID
    assert header.flags == 0 and header.entry_count == 4 and header.model_count == 1
    assert header.header_size == 4096 and not any(blob[FileHeader.SIZE:4096])
    trailer = Trailer.unpack(blob[-64:], len(blob))
    manifest = json.loads(blob[trailer.manifest_offset:trailer.manifest_offset + trailer.manifest_length])
    assert manifest["created"] == "2023-11-14T22:13:20Z"
    assert manifest["package_id"] == make_golden.PACKAGE_ID.hex()
    offset = header.header_size
    for i, e in enumerate(manifest["entries"]):
        assert e["header_offset"] == offset
        h = ModelHeader.unpack(blob[offset:offset + ModelHeader.SIZE], offset)
        path = blob[offset + 72: offset + 72 + h.path_length].decode()
        assert (h.entry_index, path, h.codec, h.chunk_size) == (i, e["path"], 0, 0)
        assert e["data_offset"] % 4096 == 0 == h.data_offset(offset) - e["data_offset"]
        data = blob[e["data_offset"]:e["data_offset"] + h.raw_length]
        assert hashlib.sha256(data).digest() == h.sha256
        offset = e["data_offset"] + h.stored_length
    assert offset == trailer.manifest_offset
    assert [e["path"] for e in manifest["entries"]] == [
        "Meta-info/managementinfo.json", "Meta-info/technicalinfo.json", "Model/model.safetensors",
        "Program/Scripts/run.sh"]
    assert blob[trailer.manifest_offset:trailer.manifest_offset + trailer.manifest_length] == json.dumps(
        manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_golden_zstd_uses_chunks_and_the_plane_transform() -> None:
    doc = _stored_json("zstd.inspect.json")
    assert isinstance(doc, dict)
    weights = next(e for e in doc["entries"] if e["path"] == "Model/model.safetensors")
    assert weights["chunks"] == 2 and weights["chunk_size"] == 4096
    assert weights["codec"]["compression"] == "zstd"
    assert doc["header"]["flags"] == ["COMPRESSED"]
    blob = (GOLDEN / "zstd.ptm").read_bytes()
    header = FileHeader.unpack(blob[:FileHeader.SIZE])
    assert header.flags == spec.Flags.COMPRESSED


def _recorded_version(name: str) -> str:
    doc = _stored_json(f"{name}.inspect.json")
    assert isinstance(doc, dict)
    tool = doc["manifest"]["tool"]
    assert tool.startswith("ptmpack ")
    return tool.removeprefix("ptmpack ")


def _same_zstd() -> bool:
    versions = _stored_json("versions.json")
    assert isinstance(versions, dict)
    return tuple(versions["zstd"]) == tuple(zstandard.ZSTD_VERSION)


@pytest.mark.parametrize("name", NAMES)
def test_packing_again_is_byte_identical(name: str, tmp_path: Path, golden_env: None,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if name == "zstd" and not _same_zstd():
        pytest.skip(f"golden zstd bytes were made with another libzstd than {zstandard.ZSTD_VERSION}")
    monkeypatch.setattr("ptmpack.format.writer.__version__", _recorded_version(name))
    make_golden.build_tree(tmp_path / "tree")
    out = tmp_path / f"{name}.ptm"
    make_golden.write_package(tmp_path / "tree", out, name)
    golden = (GOLDEN / f"{name}.ptm").read_bytes()
    mine = out.read_bytes()
    if mine != golden:
        first = next((i for i, (a, b) in enumerate(zip(mine, golden, strict=False)) if a != b), min(len(mine), len(golden)))
        pytest.fail(f"{name}.ptm differs from the golden file from byte {first} (sizes {len(mine)} vs {len(golden)}); "
                    "if the format change is intended, run: python fixtures/make_golden.py")


def test_golden_tree_is_deterministic(tmp_path: Path) -> None:
    a = make_golden.build_tree(tmp_path / "a")
    b = make_golden.build_tree(tmp_path / "b")
    assert a == b == tree_files(tmp_path / "a")


def test_make_golden_writes_elsewhere_on_request(tmp_path: Path, golden_env: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The script run with --out reproduces the stored inspect documents (and the golden
    directory is untouched)."""
    before = {p.name: p.read_bytes() for p in GOLDEN.iterdir() if p.is_file()}
    monkeypatch.setattr("ptmpack.format.writer.__version__", _recorded_version("raw"))
    assert make_golden.main(["--out", str(tmp_path / "g")]) == 0
    for name in NAMES if _same_zstd() else ("raw",):
        assert json.loads((tmp_path / "g" / f"{name}.inspect.json").read_text()) == _stored_json(f"{name}.inspect.json")
        assert (tmp_path / "g" / f"{name}.ptm").read_bytes() == (GOLDEN / f"{name}.ptm").read_bytes()
    assert json.loads((tmp_path / "g" / "tensors.json").read_text()) == _stored_json("tensors.json")
    assert {p.name: p.read_bytes() for p in GOLDEN.iterdir() if p.is_file()} == before
