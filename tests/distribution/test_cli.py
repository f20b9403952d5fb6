"""The push / pull / ls commands as a user runs them: JSON on stdout, clean errors with the contract's exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._support.clirun import assert_clean_error, cli
from tests._support.registry import Registry, write_htpasswd
from tests.distribution.packages import pack_kind, write_model_tree


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli-pkg")
    return pack_kind(write_model_tree(folder / "tree", rows=6000), folder / "p.ptm", "zstd")


def test_layout_push_pull_ls(package: Path, tmp_path: Path) -> None:
    ref = f"oci:{tmp_path / 'layout'}:v1"
    pushed = cli("push", package, ref, "--json")
    assert pushed.code == 0, pushed.err
    doc = pushed.json()
    assert doc["ok"] and doc["command"] == "push" and doc["digest"].startswith("sha256:")
    assert doc["bytes_uploaded"] > 0 and doc["blobs_reused"] == 0
    pulled = cli("pull", ref, "-o", tmp_path / "out.ptm", "--json")
    assert pulled.code == 0, pulled.err
    assert pulled.json()["digest"] == doc["digest"]  # type: ignore[index]
    assert (tmp_path / "out.ptm").read_bytes() == package.read_bytes()
    listed = cli("ls", ref, "--json").json()
    assert listed["tags"] == ["v1"] and listed["package"]["annotations"]["org.opencontainers.image.title"]  # type: ignore[index]
    human = cli("push", package, ref, "--progress", "none")  # results go to stdout, piped or not
    assert human.code == 0 and human.err == "" and "pushed" in human.out and "already there" in human.out


def test_registry_commands_and_exit_codes(registry: Registry, package: Path, tmp_path: Path) -> None:
    ref = f"{registry.host}/cli/model:v1"
    assert cli("push", package, ref, "--plain-http", "--json").code == 0
    again = cli("push", package, ref, "--plain-http", "--json").json()
    assert again["bytes_uploaded"] == 0 and again["manifest_uploaded"] is False  # type: ignore[index]
    out = tmp_path / "out.ptm"
    pulled = cli("pull", ref, "-o", out, "--plain-http", "--json")
    assert pulled.code == 0 and out.read_bytes() == package.read_bytes()
    assert cli("ls", f"{registry.host}/cli/model", "--plain-http", "--json").json()["tags"] == ["v1"]  # type: ignore[index]
    unknown = cli("pull", f"{registry.host}/cli/model:v9", "-o", tmp_path / "x.ptm", "--plain-http")
    assert_clean_error(unknown, 2)
    assert "v9" in unknown.err and not (tmp_path / "x.ptm").exists()
    assert_clean_error(cli("pull", ref, "-o", out, "--plain-http"), 2)  # exists, no --force
    assert_clean_error(cli("pull", "not a reference", "-o", tmp_path / "y.ptm"), 2)


def test_corrupt_blob_exits_3_with_no_output(own_registry: Registry, package: Path, tmp_path: Path) -> None:
    ref = f"{own_registry.host}/cli/corrupt:v1"
    assert cli("push", package, ref, "--plain-http").code == 0
    blobs = sorted(own_registry.storage.rglob("data"), key=lambda p: p.stat().st_size)
    victim = blobs[-1]  # the largest blob: a chunk of the weights
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x80
    victim.write_bytes(bytes(data))
    run = cli("pull", ref, "-o", tmp_path / "out.ptm", "--plain-http", "--json")
    assert_clean_error(run, 3)
    assert not (tmp_path / "out.ptm").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["own-registry", "xdg-cache"]  # no temporary left


def test_wrong_credentials_exit_4(tmp_path: Path, package: Path) -> None:
    from tests._support.registry import registry_available

    if not registry_available():
        pytest.skip("docker-registry (Debian package docker-registry) is not installed")
    with Registry(tmp_path / "reg", htpasswd=write_htpasswd(tmp_path / "htpasswd", "alice", "right")) as reg:
        ref = f"{reg.host}/cli/private:v1"
        env = {"PTMPACK_REGISTRY_USER": "alice", "PTMPACK_REGISTRY_PASSWORD": "wrong"}
        assert_clean_error(cli("push", package, ref, "--plain-http", env=env), 4)
        ok = {"PTMPACK_REGISTRY_USER": "alice", "PTMPACK_REGISTRY_PASSWORD": "right"}
        assert cli("push", package, ref, "--plain-http", env=ok).code == 0
        denied = cli("pull", ref, "-o", tmp_path / "out.ptm", "--plain-http", env=env)
        assert_clean_error(denied, 4)
        assert "wrong" not in denied.err and "right" not in denied.err
