"""``ptmpack diff --residual`` and ``ptmpack apply`` from the command line: output, --json, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptmpack import api
from ptmpack.format import spec
from ptmpack.storage.package import open_package
from tests._support.clirun import cli as cli_run
from tests._support.residual_trees import base_tensors, fine_tune, make_tree
from tests._support.trees import REPO, tree_files


def cli(*args: object, env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``ptmpack.cli.main`` run in process."""
    run = cli_run(*args, env=env)
    return run.code, run.out, run.err


@pytest.fixture
def packages(tmp_path: Path) -> tuple[Path, Path]:
    make_tree(tmp_path / "A", base_tensors())
    make_tree(tmp_path / "B", fine_tune(base_tensors()))
    api.pack(tmp_path / "A", tmp_path / "A.ptm", api.PackConfig(compression=spec.Compression.ZSTD))
    api.pack(tmp_path / "B", tmp_path / "B.ptm")
    return tmp_path / "A.ptm", tmp_path / "B.ptm"


def test_diff_and_apply_json(packages: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = packages
    code, out, err = cli("diff", a, b, "-o", tmp_path / "d.ptm", "--residual", "--bits", "4", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ok"] and doc["output"]["bytes"] == (tmp_path / "d.ptm").stat().st_size
    assert doc["modes"]["quantized"] == 4 and doc["bits"] == {"4": 4}
    assert doc["ratio"] == pytest.approx(doc["output"]["bytes"] / doc["target_bytes"])
    assert {t["name"] for t in doc["tensors"] if t["mode"] == "quantized"} == {"w32", "w16", "wbf", "w64"}
    code, out, err = cli("apply", a, tmp_path / "d.ptm", "-o", tmp_path / "n.ptm", "--json")
    assert code == 0, err
    applied = json.loads(out)
    assert applied["ok"] and not applied["lossless"] and applied["max_rel_fro"] == doc["max_rel_fro"]
    code, out, err = cli("inspect", tmp_path / "d.ptm", "--json")
    assert code == 0 and "RESIDUAL" in json.loads(out)["header"]["flags"]


def test_human_output_goes_to_stdout(packages: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = packages
    code, out, err = cli("diff", a, b, "-o", tmp_path / "d.ptm", "--bits", "0", "--progress", "none")
    assert code == 0 and err == ""
    assert "wrote" in out and "lossless" in out
    code, out, err = cli("apply", a, tmp_path / "d.ptm", "-o", tmp_path / "n.ptm", "--compress", "none")
    assert code == 0 and "bit-exact" in out
    code, _, err = cli("unpack", tmp_path / "n.ptm", "-o", tmp_path / "n")
    assert code == 0, err
    assert tree_files(tmp_path / "n") == tree_files(tmp_path / "B")


def test_exit_codes(packages: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = packages
    delta = tmp_path / "d.ptm"
    assert cli("diff", a, b, "-o", delta, "--bits", "9")[0] == 2
    assert cli("diff", a, b, "-o", delta, "--residual", "--bits", "auto")[0] == 2
    assert cli("diff", a, b, "-o", delta, "--residual", "--bits", "3")[0] == 2
    assert cli("diff", a, b, "-o", delta, "--residual")[0] == 0
    assert cli("diff", a, b, "-o", delta, "--residual")[0] == 2  # exists, no --force
    assert cli("diff", a, b, "-o", delta, "--residual", "--force", "--bits", "8")[0] == 0
    code, out, err = cli("apply", b, delta, "-o", tmp_path / "n.ptm")
    assert code == 7 and out == "" and "manifest sha256" in err
    code, out, err = cli("apply", b, delta, "-o", tmp_path / "n.ptm", "--json")
    assert code == 7 and json.loads(out)["error"]["kind"] == "base-mismatch"
    assert not (tmp_path / "n.ptm").exists()
    with open_package(delta) as pkg:
        entry = pkg.entry("Model/residual/data-00000.safetensors")  # type: ignore[attr-defined]
    blob = bytearray(delta.read_bytes())
    blob[entry.data_offset + entry.stored_length // 2] ^= 0xFF
    delta.write_bytes(bytes(blob))
    code, _, err = cli("apply", a, delta, "-o", tmp_path / "n.ptm")
    assert code == 3 and "Traceback" not in err
    assert not (tmp_path / "n.ptm").exists()


def test_encrypted_delta_from_the_command_line(packages: tuple[Path, Path], tmp_path: Path) -> None:
    _, b = packages
    assert cli("keygen", "--type", "symmetric", "-o", tmp_path / "k")[0] == 0
    key = tmp_path / "k.key"
    assert cli("pack", tmp_path / "A", "-o", tmp_path / "Ae.ptm", "--encrypt", "--key-file", key)[0] == 0
    code, _, err = cli("diff", tmp_path / "Ae.ptm", b, "-o", tmp_path / "d.ptm", "--residual", "--bits", "0")
    assert code == 4, err
    code, _, err = cli("diff", tmp_path / "Ae.ptm", b, "-o", tmp_path / "d.ptm", "--residual", "--bits", "0",
                       "--key-file", key, "--encrypt")
    assert code == 0, err
    assert cli("apply", tmp_path / "Ae.ptm", tmp_path / "d.ptm", "-o", tmp_path / "n.ptm")[0] == 4
    code, _, err = cli("apply", tmp_path / "Ae.ptm", tmp_path / "d.ptm", "-o", tmp_path / "n.ptm", "--key-file", key)
    assert code == 0, err
    assert cli("unpack", tmp_path / "n.ptm", "-o", tmp_path / "n")[0] == 4, "the rebuilt package stays encrypted"
    assert cli("unpack", tmp_path / "n.ptm", "-o", tmp_path / "n", "--key-file", key)[0] == 0
    assert tree_files(tmp_path / "n") == tree_files(tmp_path / "B")
    code, _, err = cli("apply", tmp_path / "Ae.ptm", tmp_path / "d.ptm", "-o", tmp_path / "raw.ptm", "--key-file", key,
                       "--compress", "none")
    assert code == 0, err
    assert cli("unpack", tmp_path / "raw.ptm", "-o", tmp_path / "r")[0] == 4, "--compress must not drop encryption"


def test_subprocess_round_trip(packages: tuple[Path, Path], tmp_path: Path) -> None:
    """The real program: diff writes JSON only on stdout; a wrong base exits 7."""
    a, b = packages
    cmd = [sys.executable, "-m", "ptmpack.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([*cmd, "diff", str(a), str(b), "-o", str(tmp_path / "d.ptm"), "--residual", "--json"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["modes"]["quantized"] == 4
    proc = subprocess.run([*cmd, "apply", str(b), str(tmp_path / "d.ptm"), "-o", str(tmp_path / "n.ptm")],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120, check=False)
    assert proc.returncode == 7 and proc.stdout == "" and "error" in proc.stderr
