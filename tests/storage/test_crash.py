"""Crash safety (issue 3): a killed or failed pack/unpack/apply never leaves a partial output at its target.

Real ``ptmpack`` processes work on a 64 MiB safetensors model and are SIGKILLed at random moments
while their temporary output (``.ptmpack-tmp-*``) exists; the target must then either not exist or be
complete and valid. SIGKILL cannot be caught, so the temporary file or directory may stay behind
(``docs/SECURITY.md`` says to remove them); every *normal* failure — a wrong key, a chunk that fails
authentication mid-unpack, an interrupt — must leave neither the target nor any temporary behind.

``PTMPACK_CRASH_TRIALS`` sets the kills per scenario (default 2; the moments are random, seeded per
run and printed on failure).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from ptmpack import api
from ptmpack.config import EncryptionSpec
from ptmpack.crypto import keyfiles
from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import IntegrityError, KeyAccessError, PtmError
from ptmpack.format import spec
from ptmpack.format.atomic import TEMP_PREFIX
from ptmpack.format.reader import PackageReader
from ptmpack.storage.protect import unlocker
from tests._support.trees import tree_files, write_tree

TRIALS = int(os.environ.get("PTMPACK_CRASH_TRIALS", "2"))
SEED = int(os.environ.get("PTMPACK_CRASH_SEED", str(int(time.time()))))
BIG = "Model/big.safetensors"


@dataclass
class Work:
    dir: Path
    tree: Path
    kek: bytes
    key_file: Path
    raw: Path
    encrypted: Path

    def opener(self) -> Opener:
        return Opener(kek=self.kek)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Work:
    d = tmp_path_factory.mktemp("crash")
    tree = d / "tree"
    write_tree(tree)
    weights = np.random.default_rng(7).standard_normal(16 * 1024 * 1024, dtype=np.float32).reshape(4096, 4096)
    save_file({"big.weight": weights}, str(tree / BIG))
    keyfiles.keygen("symmetric", d / "sym")
    kek = keyfiles.load_symmetric_key(d / "sym.key")
    raw, enc = d / "raw.ptm", d / "enc.ptm"
    api.pack(tree, raw)
    api.pack(tree, enc, api.PackConfig(compression=spec.Compression.ZSTD,
                                       encryption=EncryptionSpec(keks=(kek,))))
    return Work(d, tree, kek, d / "sym.key", raw, enc)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PTMPACK_")}


def _temps(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(TEMP_PREFIX)]


def _clean(parent: Path, *paths: Path) -> None:
    for p in [*paths, *_temps(parent)]:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _run_and_kill(argv: list[str], parent: Path, delay: float | None, sig: int = signal.SIGKILL) -> tuple[int, bool]:
    """Start ``ptmpack ARGV``; once its temporary output exists, wait ``delay`` s and send ``sig``.

    Returns (exit status, whether the signal was sent while the process ran). ``delay=None`` lets it finish.
    """
    proc = subprocess.Popen([sys.executable, "-m", "ptmpack.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env())
    sent = False
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and not _temps(parent) and time.monotonic() < deadline:
            time.sleep(0.002)
        if delay is not None and proc.poll() is None:
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(sig)
                sent = True
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"Traceback" not in err, err.decode(errors="replace")
    return proc.returncode, sent


def _timed(argv: list[str], parent: Path) -> float:
    """How long the command works once its temporary output exists (one full, unkilled run)."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "ptmpack.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env())
    while proc.poll() is None and not _temps(parent):
        time.sleep(0.002)
    seen = time.monotonic()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode(errors="replace")
    return max(0.05, time.monotonic() - (seen if seen - start < 60 else start))


def _check_pack_target(target: Path, work: Work, *, encrypted: bool) -> str:
    if not target.exists():
        return "absent"
    api.verify(target, opener=work.opener() if encrypted else None)  # complete and valid, or raises
    return "complete"


def _check_unpack_target(target: Path, work: Work) -> str:
    if not target.exists():
        return "absent"
    assert tree_files(target) == tree_files(work.tree), f"{target} is partial"
    return "complete"


SCENARIOS = {
    "pack-raw": (lambda w, t: ["pack", w.tree, "-o", t], False),
    "pack-encrypted": (lambda w, t: ["pack", w.tree, "-o", t, "--encrypt", "--key-file", w.key_file,
                                     "--compress", "zstd"], True),
    "unpack-raw": (lambda w, t: ["unpack", w.raw, "-o", t], None),
    "unpack-encrypted": (lambda w, t: ["unpack", w.encrypted, "-o", t, "--key-file", w.key_file], None),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_sigkill_never_leaves_a_partial_target(work: Work, tmp_path: Path, scenario: str) -> None:
    make_args, encrypted = SCENARIOS[scenario]
    parent = tmp_path / "out"
    parent.mkdir()
    is_pack = scenario.startswith("pack")
    target = parent / ("m.ptm" if is_pack else "tree")
    argv = [str(a) for a in make_args(work, target)]
    duration = _timed(argv, parent)
    _clean(parent, target)
    rng = random.Random(f"{SEED}-{scenario}")
    outcomes = []
    delays = [rng.uniform(0, duration * 1.1) for _ in range(TRIALS)]
    while delays:
        delay = delays.pop(0)
        code, sent = _run_and_kill(argv, parent, delay)
        assert code in ((0, -signal.SIGKILL) if sent else (0,)), f"exit {code} after {delay:.3f} s (seed {SEED})"
        state = _check_pack_target(target, work, encrypted=encrypted) if is_pack else _check_unpack_target(target, work)
        outcomes.append((round(delay, 3), code, state))
        _clean(parent, target)
        if not delays and TRIALS and not any(c == -signal.SIGKILL for _, c, _ in outcomes) and len(outcomes) < 6:
            delays.append(duration * 0.25)  # make sure at least one kill lands mid-run
    assert not TRIALS or any(c == -signal.SIGKILL for _, c, _ in outcomes), f"no kill landed: {outcomes}"


@pytest.mark.parametrize("what", ["pack", "unpack"])
def test_sigkill_during_force_replace_keeps_a_complete_target(work: Work, tmp_path: Path, what: str) -> None:
    """With --force over an existing output, a kill leaves the old output or the new one, each complete."""
    parent = tmp_path / "out"
    parent.mkdir()
    target = parent / ("m.ptm" if what == "pack" else "tree")
    if what == "pack":
        argv = ["pack", str(work.tree), "-o", str(target), "--force"]
        shutil.copy(work.raw, target)
    else:
        argv = ["unpack", str(work.raw), "-o", str(target), "--force"]
    duration = _timed(argv, parent)
    rng = random.Random(f"{SEED}-force-{what}")
    # the swap itself is the moment that matters: aim a kill at the end of the run too
    delays = [rng.uniform(0, duration * 1.1) for _ in range(max(2, TRIALS))] + [duration * 0.97]
    for delay in delays:
        code, sent = _run_and_kill(argv, parent, delay)
        assert code in ((0, -signal.SIGKILL) if sent else (0,))
        if what == "pack":
            assert _check_pack_target(target, work, encrypted=False) == "complete"
        else:  # renameat2(RENAME_EXCHANGE) swaps old and new trees in one step
            assert _check_unpack_target(target, work) == "complete", f"kill after {delay:.3f} s (seed {SEED})"
        _clean(parent)


def _apply_inputs(work: Work) -> tuple[Path, Path]:
    base = work.dir / "raw.ptm"
    changed = work.dir / "changed"
    if not changed.exists():
        shutil.copytree(work.tree, changed)
        weights = np.random.default_rng(7).standard_normal(16 * 1024 * 1024, dtype=np.float32).reshape(4096, 4096)
        weights[0, :100] += 1
        save_file({"big.weight": weights}, str(changed / BIG))
    target_pkg, delta = work.dir / "changed.ptm", work.dir / "delta.ptm"
    if not delta.exists():
        api.pack(changed, target_pkg, force=True)
        proc = subprocess.run([sys.executable, "-m", "ptmpack.cli", "diff", str(base), str(target_pkg), "-o",
                               str(delta), "--residual", "--bits", "0"], capture_output=True, text=True, env=_env(),
                              timeout=300, check=False)
        if proc.returncode != 0:
            pytest.skip(f"ptmpack diff does not work yet: {proc.stderr.strip()[-300:]}")
    return base, delta


def test_sigkill_during_apply_never_leaves_a_partial_target(work: Work, tmp_path: Path) -> None:
    inputs = _apply_inputs(work)
    base, delta = inputs
    parent = tmp_path / "out"
    parent.mkdir()
    target = parent / "new.ptm"
    argv = ["apply", str(base), str(delta), "-o", str(target)]
    duration = _timed(argv, parent)
    api.verify(target)
    _clean(parent, target)
    rng = random.Random(f"{SEED}-apply")
    for _ in range(max(1, TRIALS - 1)):
        code, sent = _run_and_kill(argv, parent, rng.uniform(0, duration * 1.1))
        assert code in ((0, -signal.SIGKILL) if sent else (0,))
        _check_pack_target(target, work, encrypted=False)
        _clean(parent, target)


# --------------------------------------------------------------------------- normal failures


def _nothing_left(parent: Path, *allowed: str) -> None:
    left = sorted(p.name for p in parent.iterdir() if p.name not in allowed)
    assert not left, f"left behind after a failure: {left}"


def test_wrong_key_leaves_nothing(work: Work, tmp_path: Path) -> None:
    parent = tmp_path / "out"
    parent.mkdir()
    with pytest.raises(KeyAccessError):
        api.unpack(work.encrypted, parent / "tree", opener=Opener(kek=bytes(32)))
    with pytest.raises(KeyAccessError):
        api.unpack(work.encrypted, parent / "tree")
    _nothing_left(parent)


def _tampered_mid_entry(work: Work, tmp_path: Path, package: Path) -> Path:
    """A copy of ``package`` with one byte flipped in the middle of the big entry's data."""
    with PackageReader(package, unlock=unlocker(work.opener())) as r:
        e = next(e for e in r.entries if e.path == BIG)
        pos = e.data_offset + e.stored_length // 2
    data = bytearray(package.read_bytes())
    data[pos] ^= 0x10
    out = tmp_path / f"tampered-{package.name}"
    out.write_bytes(data)
    return out


@pytest.mark.parametrize("which", ["raw", "encrypted"])
def test_tampered_chunk_mid_unpack_leaves_nothing_plaintext(work: Work, tmp_path: Path, which: str) -> None:
    package = _tampered_mid_entry(work, tmp_path, work.raw if which == "raw" else work.encrypted)
    parent = tmp_path / "out"
    parent.mkdir()
    with pytest.raises(IntegrityError):
        api.unpack(package, parent / "tree", opener=work.opener())
    _nothing_left(parent)
    code, _ = _run_and_kill(["unpack", str(package), "-o", str(parent / "tree"), "--key-file", str(work.key_file)],
                            parent, None)
    assert code == 3
    _nothing_left(parent)


def test_failed_unpack_with_force_keeps_the_old_target(work: Work, tmp_path: Path) -> None:
    package = _tampered_mid_entry(work, tmp_path, work.encrypted)
    target = tmp_path / "tree"
    api.unpack(work.raw, target)
    before = tree_files(target)
    with pytest.raises(IntegrityError):
        api.unpack(package, target, opener=work.opener(), force=True)
    assert tree_files(target) == before
    _nothing_left(tmp_path, "tree", package.name)


def test_failed_pack_leaves_nothing(work: Work, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error half-way through sealing chunks: no target, no temporary file."""
    from ptmpack.storage.pipeline import ChunkPipeline

    calls = {"n": 0}
    original = ChunkPipeline.encode

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] == 8:
            raise IntegrityError("injected failure")
        return original(self, *args)

    monkeypatch.setattr(ChunkPipeline, "encode", failing)
    parent = tmp_path / "out"
    parent.mkdir()
    with pytest.raises(PtmError, match="injected"):
        api.pack(work.tree, parent / "m.ptm", api.PackConfig(encryption=EncryptionSpec(keks=(work.kek,))))
    _nothing_left(parent)


def _stop_unpack_mid_work(work: Work, parent: Path, sig: int, tries: int = 3) -> int:
    """Send ``sig`` to an unpack once its temporary output exists; return the exit status of a stopped run.

    On a loaded machine the signal can land after the work is done (the process is already exiting):
    then the exit is 0 and the output must be whole. That run proves nothing about stopping, so it is
    tried again; the test is skipped only when every try finished first.
    """
    for _ in range(tries):
        if parent.exists():
            shutil.rmtree(parent)
        parent.mkdir()
        argv = ["unpack", str(work.encrypted), "-o", str(parent / "tree"), "--key-file", str(work.key_file)]
        code, sent = _run_and_kill(argv, parent, 0.0, sig)
        if sent and code != 0:
            return code
        assert code == 0 and (parent / "tree").is_dir() and not _temps(parent), (code, sorted(parent.iterdir()))
    pytest.skip(f"the unpack finished before signal {sig} in {tries} tries")


def test_interrupt_cleans_up(work: Work, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) mid-unpack: exit 130, and the temporary plaintext is removed."""
    code = _stop_unpack_mid_work(work, tmp_path / "out", signal.SIGINT)
    assert code in (130, -signal.SIGINT)
    _nothing_left(tmp_path / "out")


def test_sigterm_cleans_up(work: Work, tmp_path: Path) -> None:
    code = _stop_unpack_mid_work(work, tmp_path / "out", signal.SIGTERM)
    assert code in (128 + signal.SIGTERM, -signal.SIGTERM)
    _nothing_left(tmp_path / "out")
