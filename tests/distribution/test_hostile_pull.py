"""A registry that lies about a package (issue 18, items 2, 3, 8, 13): refused with the documented exit code,
nothing written at the output, nothing half-finished left in the cache."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from ptmpack.distribution.stores import residual_tag
from ptmpack.format.reader import PackageReader
from tests._support.clirun import assert_clean_error, cli
from tests._support.hostile_registry import limited, served
from tests.distribution.packages import pack_kind, write_model_tree

PULL = [sys.executable, "-m", "ptmpack.cli", "pull"]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile-pkg")
    # compressed: a ptmpack-native artifact, whose config and recipe (layers[0]) these attacks edit; the lies a
    # ModelPack artifact (what a raw package becomes) can tell are in test_modelpack.py
    return pack_kind(write_model_tree(folder / "tree", rows=600), folder / "p.ptm", "zstd")


def _ref(reg: object, tag: str = "v1") -> str:
    return f"{reg.host}/{reg.content.repository}:{tag}"  # type: ignore[attr-defined]


def _left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_honest_registry_pulls_byte_for_byte(package: Path, tmp_path: Path) -> None:
    with served(tmp_path / "layout", {"v1": package}) as reg:
        run = cli("pull", _ref(reg), "-o", tmp_path / "out.ptm", "--plain-http", "--json")
    assert run.code == 0, run.err
    assert (tmp_path / "out.ptm").read_bytes() == package.read_bytes()


def test_config_claiming_encrypted_does_not_switch_verification_off(package: Path, tmp_path: Path) -> None:
    """Item 2: a flipped weight byte in a plain package, served with a config that says ENCRYPTED."""
    tampered = tmp_path / "tampered.ptm"
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside encoder.weight, the bulk of the file
    tampered.write_bytes(bytes(data))
    with served(tmp_path / "layout", {"v1": tampered}) as reg:
        reg.edit_config("v1", lambda c: c.update(flags=[*c["flags"], "ENCRYPTED"]))
        run = cli("pull", _ref(reg), "-o", tmp_path / "out.ptm", "--plain-http")
    assert_clean_error(run, 3)
    assert "ENCRYPTED" in run.err and not (tmp_path / "out.ptm").exists()


def _bomb_frame(declared: int) -> bytes:
    """A 14-byte zstd frame that declares ``declared`` bytes of content and holds one RLE block."""
    header = struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", declared)  # single segment, 8-byte size
    block = ((1024 << 3) | (1 << 1) | 1).to_bytes(3, "little") + b"\0"  # last block, RLE, 1024 zeros
    return header + block


def test_recipe_declaring_a_huge_size_is_refused_before_allocating(package: Path, tmp_path: Path) -> None:
    """Item 3: a recipe frame that declares 8 GiB, pulled under a 1.5 GiB address-space limit."""
    with served(tmp_path / "layout", {"v1": package}) as reg:
        reg.set_recipe("v1", _bomb_frame(8 << 30))
        code, err, _ = limited([*PULL, _ref(reg), "-o", str(tmp_path / "out.ptm"), "--plain-http"],
                               address_space=1536 << 20)
    assert code == 3, err
    assert "recipe" in err and not (tmp_path / "out.ptm").exists()


def test_layer_larger_than_the_disk_is_refused_before_any_byte(package: Path, tmp_path: Path) -> None:
    """Item 8: one layer declared at 2^62 bytes: exit 8 naming the cache, and the blob is never requested."""
    huge = 1 << 62
    with served(tmp_path / "layout", {"v1": package}) as reg:
        fake = reg.put_blob(b"not that big")
        reg.edit_recipe("v1", lambda r: r.update(size=r["size"] + huge, spans=[*r["spans"], [1, fake, huge]]))
        doc = reg.manifest("v1")
        doc["layers"].append({"mediaType": "application/vnd.ptmpack.chunk.v1", "digest": fake, "size": huge})
        reg.set_manifest("v1", doc)
        reg.edit_config("v1", lambda c: c.update(size=c["size"] + huge))
        run = cli("pull", _ref(reg), "-o", tmp_path / "out.ptm", "--plain-http")
        asked = [s.path for s in reg.seen if fake in s.path]
    assert_clean_error(run, 8)
    assert "xdg-cache" in run.err and "free" in run.err
    assert asked == [] and not (tmp_path / "out.ptm").exists()


def test_blob_referenced_thousands_of_times_is_refused(package: Path, tmp_path: Path) -> None:
    """Item 8: a recipe that repeats one blob 20,000 times (a small download assembling gigabytes)."""
    def repeat(r: dict[str, object]) -> None:
        spans = r["spans"]
        blob = next(s for s in spans if s[0] == 1)  # type: ignore[union-attr]
        r["spans"] = [*spans, *[blob] * 20_000]  # type: ignore[misc]
        r["size"] = r["size"] + 20_000 * blob[2]  # type: ignore[operator]

    with served(tmp_path / "layout", {"v1": package}) as reg:
        reg.edit_recipe("v1", repeat)
        size = reg.recipe("v1")[0]["size"]
        reg.edit_config("v1", lambda c: c.update(size=size))
        code, err, _ = limited([*PULL, _ref(reg), "-o", str(tmp_path / "out.ptm"), "--plain-http"],
                               file_size=256 << 20)
    assert code == 3, err
    assert "20001 times" in err and not (tmp_path / "out.ptm").exists()


def test_partial_that_cannot_finish_is_dropped(package: Path, tmp_path: Path) -> None:
    """Item 8: a write refused by the environment (EFBIG here, ENOSPC alike) exits 8 naming the path, no partial left."""
    cache = tmp_path / "xdg-cache"
    with served(tmp_path / "layout", {"v1": package}) as reg:
        code, err, _ = limited([*PULL, _ref(reg), "-o", str(tmp_path / "out.ptm"), "--plain-http"],
                               file_size=64 << 10, env={"XDG_CACHE_HOME": str(cache)})
    assert code == 8, err
    assert str(cache) in err
    assert _left_in(cache / "ptmpack" / "partial") == []
    assert not (tmp_path / "out.ptm").exists()


def test_delta_whose_config_lies_about_residual_exits_3(package: Path, tmp_path: Path) -> None:
    """Item 13: the residual tag holds a normal package whose config claims RESIDUAL."""
    target = pack_kind(write_model_tree(tmp_path / "t", rows=600, bump=0.5), tmp_path / "t.ptm", "zstd")
    with PackageReader(package) as reader:
        base_digest = reader.trailer.manifest_sha256.hex()
    rtag = residual_tag("v2", base_digest)
    with served(tmp_path / "layout", {"v2": target, rtag: target}) as reg:
        reg.edit_config(rtag, lambda c: c.update(flags=[*c["flags"], "RESIDUAL"], residual_base=base_digest))
        local = tmp_path / "local.ptm"
        local.write_bytes(package.read_bytes())
        run = cli("pull", _ref(reg, "v2"), "-o", local, "--delta", "--force", "--plain-http")
    assert_clean_error(run, 3)
    assert rtag in run.err and ".ptmpack-" not in run.err
    assert local.read_bytes() == package.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ptmpack")] == []


def test_push_refused_by_the_disk_names_the_layout(package: Path, tmp_path: Path) -> None:
    """Item 16: a full disk (EFBIG here) while pushing to a layout named no path at all."""
    layout = tmp_path / "layout"
    code, err, _ = limited([sys.executable, "-m", "ptmpack.cli", "push", str(package), f"oci:{layout}:v1"],
                           file_size=64 << 10)
    assert code == 8, err
    assert str(layout) in err
    assert [p for p in layout.rglob(".ptmpack-*")] == []


def test_push_leaves_no_lock_file_in_the_layout(package: Path, tmp_path: Path) -> None:
    """Issue 16 item 7: the layout holds what the OCI spec says and nothing of ptmpack's."""
    layout = tmp_path / "layout"
    assert cli("push", package, f"oci:{layout}:v1").code == 0
    assert cli("push", package, f"oci:{layout}:v2").code == 0
    assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]
