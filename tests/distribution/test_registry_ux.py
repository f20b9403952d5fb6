"""Registry UX (issue 16 item 7): login/logout, the containers auth.json, and the bounded pull cache."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._support.clirun import assert_clean_error, cli
from tests._support.hostile_registry import served
from tests._support.registry import Registry, registry_available, write_htpasswd
from tests._support.trees import REPO
from tests.cli.test_json_contract import check
from tests.distribution.packages import pack_kind, write_model_tree


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ux-pkg")
    return pack_kind(write_model_tree(folder / "tree", rows=600), folder / "p.ptm", "raw")


@pytest.fixture
def private(tmp_path: Path) -> Registry:
    if not registry_available():
        pytest.skip("docker-registry (Debian package docker-registry) is not installed")
    with Registry(tmp_path / "reg", htpasswd=write_htpasswd(tmp_path / "htpasswd", "alice", "right")) as reg:
        yield reg  # type: ignore[misc]


def _ptmpack(*args: object, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ptmpack.cli", *map(str, args)], input=stdin, capture_output=True,
                          text=True, cwd=REPO, env=dict(os.environ), timeout=120, check=False)


def test_login_checks_stores_and_logout_removes(private: Registry, package: Path, tmp_path: Path) -> None:
    config = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    wrong = _ptmpack("login", private.host, "-u", "alice", "--plain-http", stdin="wrong\n")
    assert wrong.returncode == 4, wrong.stderr
    assert not config.exists()  # a refused password is never stored
    ok = _ptmpack("login", private.host, "-u", "alice", "--plain-http", "--json", stdin="right\n")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["path"] == str(config)
    assert check("login", cli("login", "no/such", "-u", "x", "--json"), False)["error"]["exit_code"] == 2
    assert config.stat().st_mode & 0o777 == 0o600
    entry = json.loads(config.read_text())["auths"][private.host]
    assert base64.b64decode(entry["auth"]) == b"alice:right"
    ref = f"{private.host}/ux/model:v1"
    assert cli("push", package, ref, "--plain-http").code == 0  # no environment variables: the stored entry
    assert cli("logout", private.host).code == 0
    assert private.host not in json.loads(config.read_text())["auths"]
    denied = cli("pull", ref, "-o", tmp_path / "out.ptm", "--plain-http")
    assert_clean_error(denied, 4)
    assert f"ptmpack login {private.host}" in denied.err
    again = cli("logout", private.host)
    assert again.code == 0 and "not logged in" in again.err + again.out
    assert check("logout", cli("logout", private.host, "--json"), True)["removed"] is False


def test_wrong_password_names_the_containers_auth_json(private: Registry, package: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(json.dumps({"auths": {private.host: {"auth": base64.b64encode(b"alice:stale").decode()}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    run = cli("push", package, f"{private.host}/ux/model:v1", "--plain-http")
    assert_clean_error(run, 4)
    assert f"containers auth.json {auth_file}" in run.err and "stale" not in run.err
    auth_file.write_text(json.dumps({"auths": {private.host: {"auth": base64.b64encode(b"alice:right").decode()}}}))
    assert cli("push", package, f"{private.host}/ux/model:v1", "--plain-http").code == 0


def test_cache_is_bounded_least_recently_used_first(package: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    other = pack_kind(write_model_tree(tmp_path / "t2", rows=600, seed=7), tmp_path / "o.ptm", "raw")
    # the cache holds a package's small documents (config, recipe: about 2 KB) and, where the file system cannot
    # share blocks, only records where each file layer lives: room for one package's documents, not two
    monkeypatch.setenv("PTMPACK_CACHE_SIZE", "3K")
    with served(tmp_path / "layout", {"v1": package, "v2": other}) as reg:
        base = f"{reg.host}/{reg.content.repository}"
        assert cli("pull", f"{base}:v1", "-o", tmp_path / "a.ptm", "--plain-http").code == 0
        first = {e["digest"] for e in cli("cache", "ls", "--json").json()["entries"]}  # type: ignore[index]
        time.sleep(0.05)
        assert cli("pull", f"{base}:v2", "-o", tmp_path / "b.ptm", "--plain-http").code == 0
        doc = reg.manifest("v2")
        second = {doc["config"]["digest"], *(d["digest"] for d in doc["layers"])}
    listing = check("cache", cli("cache", "ls", "--json"), True)
    kept = {e["digest"] for e in listing["entries"]}  # type: ignore[index]
    located = set(listing["located"])  # type: ignore[arg-type]
    assert listing["bytes"] <= 3 * 1024 and listing["limit"] == 3 * 1024  # type: ignore[index]
    assert second <= kept | located  # the pull that just ran keeps its own blobs, in the cache or where they are
    assert first - second - kept  # the older package's blobs went first, just enough of them to fit
    assert (tmp_path / "b.ptm").read_bytes() == other.read_bytes()
    partial = tmp_path / "xdg-cache" / "ptmpack" / "partial" / "sha256" / ("0" * 64)
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"left by a pull that was killed")
    emptied = check("cache", cli("cache", "prune", "--all", "--json"), True)
    assert emptied["bytes_kept"] == 0 and emptied["partials_removed"] == 1  # type: ignore[index]
    empty = cli("cache", "ls", "--json").json()
    assert empty["blobs"] == 0 and empty["located"] == []  # type: ignore[index]
