"""Errors the environment causes are not bugs: a full disk or a read-only target exits 8 naming the path.

Each case mounts a small tmpfs (root only; skipped with the reason elsewhere), makes the
environment refuse the write, and checks the exit code, the one-line message and that
nothing is left behind.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests._support.clirun import assert_clean_error, cli
from tests._support.trees import write_tree


def _mount(point: Path, *options: str) -> None:
    point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=2m", *options)), "tmpfs", str(point)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not root'})")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "disk"
    _mount(point)
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def big_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    write_tree(root)
    save_file({"w": np.ones((1024, 1024), np.float32)}, str(root / "Model" / "model.safetensors"))  # 4 MiB
    return root


def test_full_disk_exits_8_and_leaves_nothing(big_tree: Path, small_disk: Path) -> None:
    run = cli("pack", big_tree, "-o", small_disk / "m.ptm")
    assert_clean_error(run, 8)
    assert str(small_disk / "m.ptm") in run.err or "No space left" in run.err
    assert os.listdir(small_disk) == []


def test_full_disk_on_unpack_exits_8(big_tree: Path, small_disk: Path, tmp_path: Path) -> None:
    assert cli("pack", big_tree, "-o", tmp_path / "m.ptm").code == 0
    run = cli("unpack", tmp_path / "m.ptm", "-o", small_disk / "tree")
    assert_clean_error(run, 8)
    assert os.listdir(small_disk) == []


def test_read_only_target_exits_8(big_tree: Path, small_disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    run = cli("pack", big_tree, "-o", small_disk / "m.ptm")
    assert_clean_error(run, 8)
    assert "Read-only file system" in run.err and str(small_disk) in run.err


def test_pack_of_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    run = cli("pack", tmp_path / "nowhere", "-o", tmp_path / "m.ptm")
    assert_clean_error(run, 2)
    assert "does not exist" in run.err


def test_ctrl_c_is_one_line_and_one_document() -> None:
    """Ctrl-C while a command waits (login reading its password from stdin): exit 130, the one line
    ``ptmpack: error: interrupted`` on stderr (no blank line from click before it), and the --json document."""
    import json
    import signal
    import sys
    import time

    from tests._support.trees import REPO

    proc = subprocess.Popen([sys.executable, "-m", "ptmpack.cli", "login", "127.0.0.1:9", "-u", "me", "--plain-http",
                             "--json"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO)
    try:
        time.sleep(3)  # imported and blocked on stdin
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.decode() == "ptmpack: error: interrupted\n"
    doc = json.loads(out)
    assert doc["ok"] is False and doc["error"]["kind"] == "interrupted" and doc["error"]["exit_code"] == 130


def test_login_at_a_terminal_asks_without_echo() -> None:
    """On a terminal, login prompts for the password on stderr and does not echo it (piped stdin is read as is)."""
    import pty
    import select
    import sys
    import time

    from tests._support.trees import REPO

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ptmpack.cli", "login", "127.0.0.1:9", "-u", "me", "--plain-http"],
                            stdin=slave, stdout=subprocess.PIPE, stderr=slave, cwd=REPO)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"Password" not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                seen += os.read(master, 4096)
        os.write(master, b"hunter2\n")
        proc.communicate(timeout=60)
        while select.select([master], [], [], 1)[0]:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not data:
                break
            seen += data
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 9  # nothing listens on port 9: the password was read, then the registry failed
    assert b"Password: " in seen and b"hunter2" not in seen, seen


def test_a_closed_stdout_ends_quietly_like_a_unix_tool(tmp_path: Path) -> None:
    """``ptmpack inspect m.ptm --tensors | head -1``: the reader leaves early; ptmpack exits 141 (128 + SIGPIPE,
    as cat would) with nothing on stderr, not 1 (an internal error) nor a BrokenPipeError traceback."""
    import sys

    from tests._support.trees import FIXTURES, REPO

    tree = tmp_path / "t"
    assert cli("init", tree, "--from-hf", FIXTURES / "tiny-bert").code == 0
    read, write = os.pipe()
    os.close(read)  # the reader is gone before ptmpack writes its first line
    try:
        proc = subprocess.run([sys.executable, "-m", "ptmpack.cli", "inspect", str(tree), "--tensors"], stdout=write,
                              stderr=subprocess.PIPE, cwd=REPO, timeout=120, check=False)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == b"", proc.stderr
