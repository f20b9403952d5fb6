"""diff --residual / apply through the library on small real-format packages.

Each test builds a base tree A and a target tree B with the safetensors library,
packs them, diffs, applies, unpacks, and compares what comes back with B: bytes
for everything lossless, values within the recorded error for quantized tensors.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from ptmpack import api
from ptmpack.config import EncryptionSpec
from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import BaseMismatchError, IntegrityError, KeyAccessError, UsageError
from ptmpack.format import spec
from ptmpack.residual import RESIDUAL_JSON, ResidualDoc, apply_residual, diff_residual, summarize_residual
from ptmpack.storage.package import open_package
from tests._support.residual_trees import base_tensors, fine_tune, make_tree
from tests._support.trees import tree_files

ZSTD = api.PackConfig(compression=spec.Compression.ZSTD)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A.ptm (zstd), the target tree B, and B's tensors."""
    a = base_tensors()
    b = fine_tune(a)
    make_tree(tmp_path / "A", a)
    make_tree(tmp_path / "B", b, '{"hidden": 96, "tuned": true}')
    (tmp_path / "B" / "Program" / "Scripts" / "new.py").write_text("print('new')\n")
    api.pack(tmp_path / "A", tmp_path / "A.ptm", ZSTD)
    return tmp_path / "A.ptm", tmp_path / "B", b


def rebuilt(tmp_path: Path, package: Path, opener: Opener | None = None) -> Path:
    out = tmp_path / (package.stem + "-tree")
    api.unpack(package, out, opener=opener)
    return out


def residual_doc(delta: Path, opener: Opener | None = None) -> ResidualDoc:
    with open_package(delta, opener) as pkg:
        return ResidualDoc.from_json(pkg.read_file(RESIDUAL_JSON))


def bits_of(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x).reshape(-1).view(np.uint8).tobytes()


def test_lossless_round_trip_is_byte_exact(pair: tuple[Path, Path, dict], tmp_path: Path) -> None:
    a, b_tree, _ = pair
    report = diff_residual(a, b_tree, tmp_path / "d.ptm", bits=0)
    assert report.lossless and report.data_bytes < report.target_bytes
    modes = report.to_json()["modes"]
    assert modes == {"unchanged": 1, "quantized": 0, "xor": 5, "whole": 3, "removed": 1}
    applied = apply_residual(a, tmp_path / "d.ptm", tmp_path / "new.ptm")
    assert applied.lossless
    assert tree_files(rebuilt(tmp_path, tmp_path / "new.ptm")) == tree_files(b_tree)
    with open_package(tmp_path / "new.ptm") as pkg:
        assert not pkg.reader.header.flags & spec.Flags.RESIDUAL  # type: ignore[attr-defined]


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quantized_round_trip_within_recorded_error(pair: tuple[Path, Path, dict], tmp_path: Path, bits: int) -> None:
    a_ptm, b_tree, b = pair
    a = base_tensors()
    report = diff_residual(a_ptm, b_tree, tmp_path / "d.ptm", bits=bits)
    rows = {r.name: r for r in report.tensors}
    assert {rows[k].mode for k in ("w32", "w16", "wbf", "w64")} == {"quantized"}
    assert (rows["same"].mode, rows["ids"].mode) == ("unchanged", "xor")
    assert (rows["fresh"].reason, rows["grow"].reason, rows["retype"].reason) == ("new", "reshaped", "retyped")
    apply_residual(a_ptm, tmp_path / "d.ptm", tmp_path / "new.ptm")
    tree = rebuilt(tmp_path, tmp_path / "new.ptm")
    got = load_file(str(tree / "Model" / "model.safetensors"))
    assert set(got) == set(b)
    for name in ("same", "ids", "fresh", "grow", "retype"):  # exact whatever the bit width
        assert got[name].dtype == b[name].dtype and bits_of(got[name]) == bits_of(b[name]), name
    bound = {8: 0.01, 4: 0.2, 2: 0.8}[bits]
    for name in ("w32", "w16", "wbf", "w64"):
        delta = b[name].astype(np.float64) - a[name].astype(np.float64)
        err = got[name].astype(np.float64) - b[name].astype(np.float64)
        rel = np.linalg.norm(err) / np.linalg.norm(delta)
        assert rel == pytest.approx(rows[name].result_rel_fro, rel=1e-6, abs=1e-12), name
        assert rows[name].rel_fro <= bound, name
        if name in ("w32", "w64"):  # 16-bit tensors add their own rounding when cast back
            assert rel <= bound, name
    files = tree_files(tree)
    target = tree_files(b_tree)
    assert {p for p in files if files[p] != target.get(p)} == {"Model/model.safetensors"}


def test_auto_picks_the_smallest_width_within_max_error(pair: tuple[Path, Path, dict], tmp_path: Path) -> None:
    a_ptm, b_tree, _ = pair
    report = diff_residual(a_ptm, b_tree, tmp_path / "d.ptm", bits="auto", max_error=0.15)
    for r in report.tensors:
        if r.mode == "quantized":
            assert r.rel_fro <= 0.15 and r.bits in (4, 8)
    assert report.to_json()["bits"] == {"4": 4}
    strict = diff_residual(a_ptm, b_tree, tmp_path / "s.ptm", bits=8, max_error=1e-9)
    assert {r.mode for r in strict.tensors if r.name.startswith("w")} == {"xor"}
    assert all("max-error" in (r.reason or "") for r in strict.tensors if r.name.startswith("w"))


def test_special_values_force_lossless_and_stay_exact(tmp_path: Path) -> None:
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, 1e-40, -3.0], np.float32)
    nan_payload = np.array([0x7FC01234], np.uint32).view(np.float32)
    a = {"x": specials, "h": specials.astype(np.float16), "b": specials.astype(ml_dtypes.bfloat16),
         "d": specials.astype(np.float64),
         "z": np.concatenate([np.full(128, -0.0, np.float32), np.zeros(128, np.float32)])}
    b = {"x": np.concatenate([specials[::-1][:7], nan_payload]), "h": specials[::-1].astype(np.float16),
         "b": specials[::-1].astype(ml_dtypes.bfloat16), "d": specials[::-1].astype(np.float64),
         "z": np.concatenate([np.full(128, -0.0, np.float32), np.zeros(127, np.float32), [1.0]]).astype(np.float32)}
    assert bits_of(b["z"][:1]) == b"\x00\x00\x00\x80"
    make_tree(tmp_path / "A", a)
    make_tree(tmp_path / "B", b)
    api.pack(tmp_path / "A", tmp_path / "A.ptm")
    for bits in (8, 0):
        report = diff_residual(tmp_path / "A.ptm", tmp_path / "B", tmp_path / f"d{bits}.ptm", bits=bits)
        rows = {r.name: r for r in report.tensors}
        assert {rows[k].mode for k in "xhbd"} == {"xor"}
        if bits:
            assert {rows[k].reason for k in "xhbd"} == {"non-finite values"}
        apply_residual(tmp_path / "A.ptm", tmp_path / f"d{bits}.ptm", tmp_path / f"n{bits}.ptm")
        got = tree_files(rebuilt(tmp_path, tmp_path / f"n{bits}.ptm"))["Model/model.safetensors"]
        if bits == 0:
            assert got == (tmp_path / "B" / "Model" / "model.safetensors").read_bytes()
        else:
            z = load_file(str(tmp_path / "n8-tree" / "Model" / "model.safetensors"))["z"]
            assert bits_of(z[:128]) == bits_of(b["z"][:128]), "-0.0 must survive an 8-bit delta"


def test_unchanged_model_costs_almost_nothing(tmp_path: Path) -> None:
    make_tree(tmp_path / "A", base_tensors())
    api.pack(tmp_path / "A", tmp_path / "A.ptm", ZSTD)
    api.pack(tmp_path / "A", tmp_path / "A2.ptm")
    report = diff_residual(tmp_path / "A.ptm", tmp_path / "A2.ptm", tmp_path / "d.ptm")
    assert report.files["same"] == 4 and report.files["carried"] == 2 and report.data_bytes == 0
    tree_report = diff_residual(tmp_path / "A.ptm", tmp_path / "A", tmp_path / "t.ptm")
    assert {r.mode for r in tree_report.tensors} == {"unchanged"}
    apply_residual(tmp_path / "A.ptm", tmp_path / "t.ptm", tmp_path / "new.ptm")
    assert tree_files(rebuilt(tmp_path, tmp_path / "new.ptm")) == tree_files(tmp_path / "A")


def test_files_carried_only_when_they_differ(pair: tuple[Path, Path, dict], tmp_path: Path) -> None:
    a_ptm, b_tree, _ = pair
    (b_tree / "Model" / "empty.txt").unlink()
    (b_tree / "Model" / "residual.json").write_text('{"mine": true}')  # a path the delta reserves
    diff_residual(a_ptm, b_tree, tmp_path / "d.ptm", bits=0)
    doc = residual_doc(tmp_path / "d.ptm")
    modes = {f.path: f.mode.value for f in doc.files}
    assert modes["Program/Scripts/run.sh"] == "same"
    assert modes["Model/config.json"] == modes["Program/Scripts/new.py"] == "carried"
    assert modes["Model/model.safetensors"] == "tensors"
    assert doc.removed_files == ("Model/empty.txt",)
    moved = next(f for f in doc.files if f.path == "Model/residual.json")
    assert moved.stored_as == "Model/residual/files/Model/residual.json"
    apply_residual(a_ptm, tmp_path / "d.ptm", tmp_path / "new.ptm")
    assert tree_files(rebuilt(tmp_path, tmp_path / "new.ptm")) == tree_files(b_tree)
    assert (tmp_path / "new-tree" / "Program" / "Scripts" / "run.sh").stat().st_mode & 0o111


def test_wrong_base_is_refused_and_nothing_written(pair: tuple[Path, Path, dict], tmp_path: Path) -> None:
    a_ptm, b_tree, _ = pair
    diff_residual(a_ptm, b_tree, tmp_path / "d.ptm")
    other = tmp_path / "A-again.ptm"
    api.pack(tmp_path / "A", other, ZSTD)  # same content, another package: another manifest digest
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BaseMismatchError) as exc:
        apply_residual(other, tmp_path / "d.ptm", tmp_path / "new.ptm")
    assert exc.value.exit_code == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_corrupted_delta_is_an_integrity_error(pair: tuple[Path, Path, dict], tmp_path: Path) -> None:
    a_ptm, b_tree, _ = pair
    delta = tmp_path / "d.ptm"
    diff_residual(a_ptm, b_tree, delta)
    with open_package(delta) as pkg:
        entry = pkg.entry("Model/residual/data-00000.safetensors")  # type: ignore[attr-defined]
        offset = entry.data_offset + entry.stored_length // 2
    blob = bytearray(delta.read_bytes())
    blob[offset] ^= 0x40
    delta.write_bytes(bytes(blob))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(IntegrityError):
        apply_residual(a_ptm, delta, tmp_path / "new.ptm")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_damaged_base_tensor_is_caught_by_its_digest(pair: tuple[Path, Path, dict], tmp_path: Path) -> None:
    """A raw base whose bytes change after the diff: the entry digest or the tensor digest trips."""
    _, b_tree, _ = pair
    api.pack(tmp_path / "A", tmp_path / "raw.ptm")
    diff_residual(tmp_path / "raw.ptm", b_tree, tmp_path / "d.ptm", bits=0)
    with open_package(tmp_path / "raw.ptm") as pkg:
        f, t = pkg.find_tensor("w32")
        offset = pkg.entry(f.path).data_offset + t.begin + 10  # type: ignore[attr-defined]
    blob = bytearray((tmp_path / "raw.ptm").read_bytes())
    blob[offset] ^= 1
    (tmp_path / "raw.ptm").write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="w32"):
        apply_residual(tmp_path / "raw.ptm", tmp_path / "d.ptm", tmp_path / "new.ptm")
    assert not (tmp_path / "new.ptm").exists()


def test_encrypted_and_signed_packages(pair: tuple[Path, Path, dict], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    _, b_tree, _ = pair
    kek = bytes(range(32))
    enc = api.PackConfig(compression=spec.Compression.ZSTD, encryption=EncryptionSpec(keks=(kek,)))
    api.pack(tmp_path / "A", tmp_path / "Ae.ptm", enc)
    api.pack(b_tree, tmp_path / "Be.ptm", enc)
    opener = Opener(kek=kek)
    with pytest.raises(KeyAccessError):
        diff_residual(tmp_path / "Ae.ptm", tmp_path / "Be.ptm", tmp_path / "d.ptm")
    signed_enc = api.PackConfig(compression=spec.Compression.ZSTD, encryption=EncryptionSpec(keks=(kek,)),
                                sign_key=Ed25519PrivateKey.generate())
    diff_residual(tmp_path / "Ae.ptm", tmp_path / "Be.ptm", tmp_path / "d.ptm", bits=0, opener=opener,
                  config=signed_enc)
    with open_package(tmp_path / "d.ptm", opener) as pkg:
        flags = pkg.reader.header.flags  # type: ignore[attr-defined]
    assert flags & spec.Flags.ENCRYPTED and flags & spec.Flags.SIGNED and flags & spec.Flags.RESIDUAL
    with pytest.raises(KeyAccessError):
        apply_residual(tmp_path / "Ae.ptm", tmp_path / "d.ptm", tmp_path / "new.ptm")
    assert not (tmp_path / "new.ptm").exists()
    apply_residual(tmp_path / "Ae.ptm", tmp_path / "d.ptm", tmp_path / "new.ptm", opener=opener)
    with pytest.raises(KeyAccessError):  # an encrypted update stays encrypted
        rebuilt(tmp_path, tmp_path / "new.ptm")
    assert tree_files(rebuilt(tmp_path, tmp_path / "new.ptm", opener)) == tree_files(b_tree)


def test_bad_inputs_are_usage_errors(pair: tuple[Path, Path, dict], tmp_path: Path) -> None:
    a_ptm, b_tree, _ = pair
    with pytest.raises(UsageError, match="directory"):
        diff_residual(tmp_path / "A", b_tree, tmp_path / "d.ptm")
    with pytest.raises(UsageError, match="max-error"):
        diff_residual(a_ptm, b_tree, tmp_path / "d.ptm", bits="auto")
    with pytest.raises(UsageError):
        diff_residual(a_ptm, b_tree, tmp_path / "d.ptm", bits=3)
    with pytest.raises(UsageError, match="not a residual"):
        apply_residual(a_ptm, a_ptm, tmp_path / "n.ptm")
    diff_residual(a_ptm, b_tree, tmp_path / "d.ptm")
    with pytest.raises(UsageError, match="exists"):
        diff_residual(a_ptm, b_tree, tmp_path / "d.ptm")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ptmpack-tmp-")]


def test_many_shards(pair: tuple[Path, Path, dict], tmp_path: Path) -> None:
    a_ptm, b_tree, _ = pair
    diff_residual(a_ptm, b_tree, tmp_path / "d.ptm", bits=4, shard_bytes=4096)
    with open_package(tmp_path / "d.ptm") as pkg:
        shards = [f.path for f in pkg.files if f.path.startswith("Model/residual/data-")]
    assert len(shards) >= 2
    apply_residual(a_ptm, tmp_path / "d.ptm", tmp_path / "new.ptm")


def test_summary_for_inspect(pair: tuple[Path, Path, dict], tmp_path: Path) -> None:
    a_ptm, b_tree, _ = pair
    diff_residual(a_ptm, b_tree, tmp_path / "d.ptm", bits=8)
    with open_package(tmp_path / "d.ptm") as pkg:
        raw = pkg.read_file(RESIDUAL_JSON)
        base = open_package(a_ptm)
        assert residual_doc(tmp_path / "d.ptm").base_manifest_sha256 == pkg.reader.manifest.residual_base  # type: ignore[attr-defined]
        assert pkg.reader.manifest.residual_base == base.reader.trailer.manifest_sha256.hex()  # type: ignore[attr-defined]
        base.close()
    for form in (raw, raw.decode(), json.loads(raw), ResidualDoc.from_json(raw)):
        s = summarize_residual(form)
        assert s["modes"]["quantized"] == 4 and s["bits"] == {"8": 4} and not s["lossless"]
        assert s["removed_files"] == [] and s["carried_files"] == [
            "Meta-info/managementinfo.json", "Meta-info/technicalinfo.json", "Model/config.json",
            "Program/Scripts/new.py"]
        assert 0 < s["max_rel_fro"] < 0.01
        assert any(t["mode"] == "removed" and t["name"] == "gone" for t in s["tensors"])


@pytest.mark.parametrize("edit", ["not json", "version", "bad hex", "bad mode", "missing files"])
def test_malformed_residual_json(pair: tuple[Path, Path, dict], tmp_path: Path, edit: str) -> None:
    a_ptm, b_tree, _ = pair
    diff_residual(a_ptm, b_tree, tmp_path / "d.ptm")
    with open_package(tmp_path / "d.ptm") as pkg:
        doc = json.loads(pkg.read_file(RESIDUAL_JSON))
    if edit == "not json":
        raw = b"{"
    else:
        if edit == "version":
            doc["version"] = 99
        elif edit == "bad hex":
            doc["files"][0]["sha256"] = "XYZ"
        elif edit == "bad mode":
            doc["files"][0]["mode"] = "teleported"
        else:
            del doc["files"]
        raw = json.dumps(doc).encode()
    from ptmpack.errors import UnsupportedError

    with pytest.raises(UnsupportedError if edit == "version" else IntegrityError):
        ResidualDoc.from_json(raw)


def _peaks(root: Path, count: int, bits: int) -> tuple[int, int]:
    """Peak traced allocations of diff and of apply for a model of ``count`` 512 KiB tensors."""
    rng = np.random.default_rng(3)
    a = {f"t{i}": rng.standard_normal(1 << 17).astype(np.float32) for i in range(count)}
    b = {k: v + np.float32(1e-3) * rng.standard_normal(v.size).astype(np.float32) for k, v in a.items()}
    make_tree(root / "A", a)
    make_tree(root / "B", b)
    small = api.PackConfig(compression=spec.Compression.ZSTD, chunk_size=256 << 10, workers=1)
    api.pack(root / "A", root / "A.ptm", small)
    api.pack(root / "B", root / "B.ptm", small)
    peaks = []
    for step in (lambda: diff_residual(root / "A.ptm", root / "B.ptm", root / "d.ptm", bits=bits, config=small),
                 lambda: apply_residual(root / "A.ptm", root / "d.ptm", root / "n.ptm", config=small)):
        tracemalloc.start()
        step()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return peaks[0], peaks[1]


@pytest.mark.parametrize("bits", [8, 0])
def test_memory_does_not_grow_with_the_model(tmp_path: Path, bits: int) -> None:
    """Diff and apply hold a few tensors at a time: 4x the model, same peak (never both models whole)."""
    small = _peaks(tmp_path / "small", 4, bits)
    large = _peaks(tmp_path / "large", 16, bits)
    tensor = 1 << 19
    for s, big in zip(small, large, strict=True):
        assert big <= s + tensor, (small, large)
