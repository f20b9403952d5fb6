"""On a file system with reflinks (XFS, btrfs) the pulled package and the cache share their blocks (issue 16 item 7).

A small XFS (``reflink=1``) or btrfs image is loop-mounted, the cache and the outputs
go on it, and the blocks are shown shared twice over: ``filefrag -v`` (FIEMAP)
flags the extents of the output and of the cached blob ``shared``, and the file
system's used space grows by about one copy of the package, not two. A second pull
assembles from the cache with ``copy_file_range``, which clones block-aligned
spans on these file systems (entries of 64 KiB and more start on a 4096-byte
boundary, docs/FORMAT.md §4.1): it adds almost nothing. Needs root and loop
devices; skipped with the reason where they are not there (a CI container).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ptmpack.distribution import ClientOptions, PullOptions, PushOptions, pull, push
from ptmpack.distribution.cache import BlobCache
from tests._support.registry import Registry
from tests.distribution.packages import pack_kind, write_model_tree

PLAIN = ClientOptions(plain_http=True)
IMAGES = {"xfs": (["mkfs.xfs", "-q", "-f", "-m", "reflink=1"], 512), "btrfs": (["mkfs.btrfs", "-q", "-f"], 256)}


@pytest.fixture(params=sorted(IMAGES))
def reflink_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A loop-mounted file system of the parameter's kind, unmounted afterwards."""
    mkfs, mib = IMAGES[request.param]
    if os.geteuid() != 0:
        pytest.skip("mounting a loop image needs root")
    if shutil.which(mkfs[0]) is None or shutil.which("filefrag") is None:
        pytest.skip(f"{mkfs[0]} or filefrag is missing (Debian: xfsprogs, btrfs-progs, e2fsprogs)")
    image, mnt = tmp_path / f"{request.param}.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(mib * 1024 * 1024)
    made = subprocess.run([*mkfs, str(image)], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"{mkfs[0]} failed: {made.stderr.strip()[:200]}")
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot loop-mount here (a container?): {mounted.stderr.strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _used(folder: Path) -> int:
    os.sync()  # btrfs and XFS settle delayed allocations: measure what is really on disk
    st = os.statvfs(folder)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _shared_bytes(path: Path) -> int:
    """Bytes of ``path``'s extents that FIEMAP flags shared (filefrag -v, in file system blocks)."""
    out = subprocess.run(["filefrag", "-v", "-b4096", str(path)], capture_output=True, text=True, check=True).stdout
    total = 0
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(":")]
        if len(fields) >= 5 and fields[0].isdigit() and "shared" in fields[-1]:
            total += int(fields[3]) * 4096
    return total


def test_pull_shares_blocks_with_the_cache(reflink_fs: Path, registry: Registry, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = pack_kind(write_model_tree(tmp_path / "tree", rows=24000), tmp_path / "p.ptm", "raw")  # 24 MB of weights
    size = pkg.stat().st_size
    ref = f"{registry.host}/reflink/{reflink_fs.name}-{os.getpid()}:v1"
    push(pkg, ref, PushOptions(client=PLAIN))
    monkeypatch.setenv("XDG_CACHE_HOME", str(reflink_fs / "cache"))
    before = _used(reflink_fs)
    first = pull(ref, reflink_fs / "a.ptm", PullOptions(client=PLAIN))
    assert first.bytes_downloaded >= size * 0.99 and (reflink_fs / "a.ptm").read_bytes() == pkg.read_bytes()
    cache = BlobCache()
    weights = max(((e.digest, e.size) for e in cache.entries()), key=lambda t: t[1])
    assert weights[1] > size * 0.9, "the weights were not kept in the cache as a reflink"
    assert cache.located() == []  # every blob was cloned, none had to be recorded elsewhere
    blob = cache.blob_path(weights[0])
    # FIEMAP: the weights' blocks are shared between the output and the cached blob (the tail block is copied)
    assert _shared_bytes(blob) >= weights[1] - 4096
    assert _shared_bytes(reflink_fs / "a.ptm") >= weights[1] - 4096
    after_first = _used(reflink_fs)
    assert after_first - before < size * 1.2, (before, after_first, size)  # one copy on disk, not two
    # assembled from the cache: copy_file_range clones the block-aligned span into the new output
    second = pull(ref, reflink_fs / "b.ptm", PullOptions(client=PLAIN))
    assert second.bytes_downloaded == 0 and (reflink_fs / "b.ptm").read_bytes() == pkg.read_bytes()
    assert _shared_bytes(reflink_fs / "b.ptm") >= weights[1] - 4096
    assert _used(reflink_fs) - after_first < size * 0.1, (after_first, _used(reflink_fs), size)
