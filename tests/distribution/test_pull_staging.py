"""A pull downloads into its place in a staging file, resumes it after a kill, and finds blobs in pulled files.

docs/DISTRIBUTION.md §3-§4: blobs go straight into the package being assembled
(``partial/packages/<manifest>.ptm`` in the cache, with a journal of what each
download wrote); the cache then records where a pulled file holds each blob
(or keeps a reflink where the file system shares blocks) and re-hashes that range
before any reuse. Against the real docker-registry on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ptmpack.distribution import ClientOptions, PullOptions, PushOptions, pull, push
from ptmpack.distribution.cache import BlobCache
from ptmpack.distribution.fetch import resolve
from ptmpack.distribution.reference import parse_reference
from ptmpack.distribution.registry import RegistryStore
from tests._support.registry import Registry
from tests._support.trees import REPO
from tests.distribution.packages import pack_kind, write_model_tree

PLAIN = ClientOptions(plain_http=True)
KILL_AFTER = 5 * 1024 * 1024

# Pulls with a progress hook that SIGKILLs its own process once KILL_AFTER bytes of blobs arrived: a kill at a
# known point of the download, with nothing run on the way out.
KILLED_PULL = """
import os, signal, sys
from pathlib import Path
from ptmpack.distribution import ClientOptions, PullOptions, pull

class Kill:
    seen = 0
    def start(self, label, total):
        self.label = label
    def advance(self, n):
        self.seen += n
        if self.label == "downloading" and self.seen >= int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)

pull(sys.argv[1], Path(sys.argv[2]), PullOptions(client=ClientOptions(plain_http=True), workers=1), Kill())
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("staging-pkg")
    return pack_kind(write_model_tree(folder / "tree", rows=12000), folder / "p.ptm", "raw")  # 12 MB of weights


def _file_layers(ref: str) -> dict[str, int]:
    store = RegistryStore(parse_reference(ref), PLAIN)
    try:
        fetched = resolve(store, parse_reference(ref), BlobCache())
    finally:
        store.close()
    return fetched.recipe.blobs()


def test_killed_pull_resumes_where_each_download_stopped(registry: Registry, package: Path, tmp_path: Path) -> None:
    ref = f"{registry.host}/staging/killed:v1"
    push(package, ref, PushOptions(client=PLAIN))
    out = tmp_path / "out.ptm"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", KILLED_PULL, ref, str(out), str(KILL_AFTER)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    cache = BlobCache()
    staged = list((cache.root / "partial" / "packages").glob("*.ptm"))
    assert len(staged) == 1 and staged[0].with_suffix(".journal").is_file()
    kept = cache.partial_bytes()
    # what arrived was written and journaled, up to the one receive buffer (1 MiB) being filled at the kill
    assert KILL_AFTER - 1024 * 1024 <= kept <= KILL_AFTER
    report = pull(ref, out, PullOptions(client=PLAIN))
    assert out.read_bytes() == package.read_bytes()
    # every journaled byte stayed: the downloads resumed (Range) exactly where the killed run's writes ended
    assert report.bytes_downloaded == sum(_file_layers(ref).values()) - kept
    assert list((cache.root / "partial" / "packages").iterdir()) == []


def test_blobs_are_found_in_pulled_files_and_rehashed(registry: Registry, package: Path, tmp_path: Path) -> None:
    ref = f"{registry.host}/staging/found:v1"
    push(package, ref, PushOptions(client=PLAIN))
    layers = _file_layers(ref)
    first = pull(ref, tmp_path / "a.ptm", PullOptions(client=PLAIN))
    assert first.bytes_downloaded >= sum(layers.values())
    cache = BlobCache()
    assert set(layers) <= {e.digest for e in cache.entries()} | set(cache.located())
    again = pull(ref, tmp_path / "b.ptm", PullOptions(client=PLAIN))
    assert again.bytes_downloaded == 0 and again.blobs_cached == len(layers)  # from a.ptm, not the registry
    assert (tmp_path / "b.ptm").read_bytes() == package.read_bytes()
    # b.ptm is now where the blobs are recorded; damage one byte of its weights and hide it from stat
    big = max(layers, key=layers.__getitem__)
    st = (tmp_path / "b.ptm").stat()
    with open(tmp_path / "b.ptm", "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(tmp_path / "b.ptm", ns=(st.st_atime_ns, st.st_mtime_ns))
    third = pull(ref, tmp_path / "c.ptm", PullOptions(client=PLAIN))
    assert third.bytes_downloaded >= layers[big]  # the re-hash refused the damaged range: fetched again
    assert (tmp_path / "c.ptm").read_bytes() == package.read_bytes()


def test_cache_on_another_file_system(registry: Registry, package: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The staging file cannot be renamed across file systems: it is copied beside the output, then renamed."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm writable and on another file system than the test's folder")
    cache_home = Path(tempfile.mkdtemp(prefix="ptmpack-test-", dir=shm))
    try:
        monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
        ref = f"{registry.host}/staging/crossfs:v1"
        push(package, ref, PushOptions(client=PLAIN))
        pull(ref, tmp_path / "out.ptm", PullOptions(client=PLAIN))
        assert (tmp_path / "out.ptm").read_bytes() == package.read_bytes()
        assert [p.name for p in tmp_path.iterdir()] == ["out.ptm"]  # no temporary left beside it
        cache = BlobCache()
        assert list((cache.root / "partial" / "packages").iterdir()) == []
        # tmpfs shares no blocks: the weights are recorded where they are, the final output (not the staging file)
        again = pull(ref, tmp_path / "again.ptm", PullOptions(client=PLAIN))
        assert again.bytes_downloaded == 0 and (tmp_path / "again.ptm").read_bytes() == package.read_bytes()
    finally:
        shutil.rmtree(cache_home, ignore_errors=True)
