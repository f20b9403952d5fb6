"""A ``compress`` killed outright leaves its plaintext working tree; the next run removes it (issue 18, item 14)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ptmpack.compress.pipeline import compress
from ptmpack.compress.spec import CompressSpec
from ptmpack.compress.tree.scratch import LOCK, PREFIX, STALE_SECONDS, remove_stale
from ptmpack.config import PackConfig
from tests._support.tiny_models import tiny_tree

HOLD = """
import sys, time
from pathlib import Path
from ptmpack.compress.tree.scratch import working_tree
with working_tree(Path(sys.argv[1])) as scratch:
    (scratch / "tree").mkdir()
    (scratch / "tree" / "secret.txt").write_text("plaintext")
    print(scratch, flush=True)
    time.sleep(120)
"""


def _hold(parent: Path) -> tuple[subprocess.Popen[str], Path]:
    """A process inside a working tree of ``parent`` (as a compress run is); returns it and the tree."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(parent)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_the_next_run_removes_the_tree_of_a_killed_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc, stale = _hold(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (stale / "tree" / "secret.txt").is_file()  # what SIGKILL leaves behind
    _age(stale, STALE_SECONDS + 5)
    compress(tiny_tree(tmp_path), out / "m.ptm", CompressSpec(quant="rtn", group_size=32), PackConfig())
    assert not stale.exists() and not list(out.glob(f"{PREFIX}*"))


def test_only_dead_old_trees_of_ptmpack_are_removed(tmp_path: Path) -> None:
    proc, live = _hold(tmp_path)
    try:
        _age(live, 3600)
        young = tmp_path / f"{PREFIX}young"
        young.mkdir()
        (young / LOCK).write_text("")  # unlocked, but may be a run about to take its lock
        lockless = tmp_path / f"{PREFIX}nolock"
        lockless.mkdir()
        _age(lockless, 3600)
        other = tmp_path / ".someone-else-old"
        other.mkdir()
        _age(other, 3600)
        assert remove_stale(tmp_path) == [lockless]
        assert live.is_dir() and young.is_dir() and other.is_dir()
        assert remove_stale(tmp_path, now=time.time() + STALE_SECONDS + 5) == [young]
        assert live.is_dir()  # held by a live process, however old
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert remove_stale(tmp_path) == [live]
