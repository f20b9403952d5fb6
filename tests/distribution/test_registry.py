"""push / pull / ls against a real registry (docker-registry on 127.0.0.1, plain HTTP)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from ptmpack.distribution import ClientOptions, PullOptions, PushOptions, ls_ref, pull, push
from ptmpack.distribution.cache import BlobCache
from ptmpack.distribution.fetch import resolve
from ptmpack.distribution.reference import parse_reference
from ptmpack.distribution.registry import RegistryStore
from ptmpack.distribution.storetypes import fetch_blob
from ptmpack.errors import IntegrityError, UsageError
from ptmpack.storage.package import open_package
from tests._support.registry import Registry
from tests.distribution.packages import KINDS, pack_kind, write_model_tree

PLAIN = ClientOptions(plain_http=True)


def _push(pkg: Path, ref: str, **kw: object) -> object:
    return push(pkg, ref, PushOptions(client=PLAIN, **kw))  # type: ignore[arg-type]


def _pull(ref: str, out: Path, **kw: object) -> object:
    return pull(ref, out, PullOptions(client=PLAIN, **kw))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("packages")
    tree = write_model_tree(folder / "tree")
    return {kind: pack_kind(tree, folder / f"{kind}.ptm", kind) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_byte_identical(registry: Registry, packages: dict[str, Path], tmp_path: Path,
                                      kind: str) -> None:
    ref = f"{registry.host}/models/{kind}:v1"
    pushed = _push(packages[kind], ref)
    assert pushed.blobs_uploaded == pushed.blobs and pushed.bytes_uploaded > 0
    out = tmp_path / "pulled.ptm"
    pulled = _pull(ref, out)
    assert out.read_bytes() == packages[kind].read_bytes()
    assert pulled.digest == pushed.digest and pulled.method == "full"
    assert "blob digests" in pulled.checks
    listing = ls_ref(ref, PLAIN)
    assert "v1" in listing.tags and listing.package is not None
    ann = listing.package.annotations
    if kind == "encrypted":  # names and metadata never leave the ciphertext
        assert "ENCRYPTED" in listing.package.flags
        assert not any(k.startswith("org.opencontainers.image.") for k in ann)
        store = RegistryStore(parse_reference(ref), PLAIN)
        try:
            fetched = resolve(store, parse_reference(ref), BlobCache(tmp_path / "probe"))
        finally:
            store.close()
        digests = [fetched.digest, fetched.manifest.config.digest, *(d.digest for d in fetched.manifest.layers)]
        stored = [registry.blob_file(d).read_bytes() for d in digests] + [fetched.recipe.literals]
        for secret in (b"dist test model", b"model.safetensors", b"Model/", b"encoder.weight", b"Apache-2.0"):
            assert not any(secret in blob for blob in stored), secret
    else:
        assert ann["org.opencontainers.image.title"] == "dist test model"
        assert ann["org.opencontainers.image.licenses"] == "Apache-2.0"
        assert ann["org.opencontainers.image.version"] == "1.0.0"


def test_second_push_uploads_nothing(registry: Registry, packages: dict[str, Path]) -> None:
    ref = f"{registry.host}/models/twice:v1"
    first = _push(packages["raw"], ref)
    second = _push(packages["raw"], ref)
    assert second.digest == first.digest
    assert (second.bytes_uploaded, second.blobs_uploaded, second.manifest_uploaded) == (0, 0, False)
    assert second.blobs_reused == second.blobs


def test_versions_move_only_what_changed(registry: Registry, tmp_path: Path) -> None:
    """The issue's bar: one tensor changed in a 55 MB package, v1 local → the pull moves < 25 % of it."""
    v1 = pack_kind(write_model_tree(tmp_path / "t1", rows=54000), tmp_path / "v1.ptm", "raw")
    v2 = pack_kind(write_model_tree(tmp_path / "t2", rows=54000, version="1.0.1"), tmp_path / "v2.ptm", "raw")
    v3 = pack_kind(write_model_tree(tmp_path / "t3", rows=54000, version="1.1.0", bump=0.5), tmp_path / "v3.ptm",
                   "raw")
    repo = f"{registry.host}/models/versions"
    first = _push(v1, f"{repo}:v1")
    meta_only = _push(v2, f"{repo}:v2")
    tuned = _push(v3, f"{repo}:v3")
    size = v1.stat().st_size
    assert size > 55_000_000 and first.blobs == 4 + 2  # four files, the recipe, the config
    # pushes: a metadata-only change uploads config, recipe and managementinfo.json; a changed weight file moves whole
    assert meta_only.bytes_uploaded < 0.01 * size and meta_only.blobs_reused == first.blobs - 3, meta_only
    assert tuned.blobs_uploaded == 4 and tuned.bytes_uploaded > 0.95 * size, tuned
    pulled1 = _pull(f"{repo}:v1", tmp_path / "p1.ptm")
    pulled2 = _pull(f"{repo}:v2", tmp_path / "p2.ptm")
    assert pulled1.bytes_downloaded >= 0.99 * size
    assert pulled2.bytes_downloaded < 0.01 * size and pulled2.blobs_cached == 3  # weights, config.json, technicalinfo.json
    # one tensor changed: the chunk index says which 1 MiB ranges of the new weight file differ from the local v2
    pulled3 = _pull(f"{repo}:v3", tmp_path / "p3.ptm", base=tmp_path / "p2.ptm")
    assert pulled3.bytes_downloaded < 0.25 * size, pulled3
    # the same with nothing cached: the local package alone is enough
    fresh = _pull(f"{repo}:v3", tmp_path / "p3b.ptm", base=tmp_path / "p1.ptm", cache_dir=tmp_path / "fresh")
    assert fresh.bytes_downloaded < 0.25 * size, fresh
    for src, got in ((v1, "p1"), (v2, "p2"), (v3, "p3"), (v3, "p3b")):
        assert (tmp_path / f"{got}.ptm").read_bytes() == src.read_bytes()


def test_unknown_tag_is_a_usage_error(registry: Registry, packages: dict[str, Path], tmp_path: Path) -> None:
    _push(packages["raw"], f"{registry.host}/models/known:v1")
    with pytest.raises(UsageError) as err:
        _pull(f"{registry.host}/models/known:nope", tmp_path / "x.ptm")
    assert err.value.exit_code == 2 and "nope" in err.value.message and "v1" in err.value.message
    assert not (tmp_path / "x.ptm").exists()


def test_corrupt_blob_in_registry_storage_is_refused(own_registry: Registry, packages: dict[str, Path],
                                                     tmp_path: Path) -> None:
    ref = f"{own_registry.host}/models/corrupt:v1"
    _push(packages["raw"], ref)
    store = RegistryStore(parse_reference(ref), PLAIN)
    try:
        fetched = resolve(store, parse_reference(ref), BlobCache(tmp_path / "probe-cache"))
    finally:
        store.close()
    victim = max(fetched.recipe.blobs().items(), key=lambda kv: kv[1])[0]
    data = bytearray(own_registry.blob_file(victim).read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit flipped
    own_registry.blob_file(victim).write_bytes(bytes(data))
    out = tmp_path / "out.ptm"
    with pytest.raises(IntegrityError) as err:
        _pull(ref, out)
    assert err.value.exit_code == 3 and victim in err.value.message
    assert not out.exists() and not any(p.name.startswith(".ptmpack-tmp-") for p in tmp_path.iterdir())
    assert not BlobCache().has(victim, len(data))


class _KillMidBlob:
    """Progress hook that kills the registry once part of a blob has arrived, and restarts it shortly after."""

    def __init__(self, registry: Registry, after: int) -> None:
        self.registry, self.after, self.seen, self.killed = registry, after, 0, False
        self.restarter: threading.Thread | None = None

    def start(self, label: str, total: int) -> None:
        self.label = label

    def advance(self, n: int) -> None:
        if self.label != "downloading":
            return
        self.seen += n
        if not self.killed and self.seen >= self.after:
            self.killed = True
            self.registry.kill()
            self.restarter = threading.Timer(0.5, self.registry.start)
            self.restarter.start()


def test_interrupted_pull_resumes_with_range(own_registry: Registry, tmp_path: Path) -> None:
    pkg = pack_kind(write_model_tree(tmp_path / "tree", rows=12000), tmp_path / "big.ptm", "raw")
    ref = f"{own_registry.host}/models/resume:v1"
    _push(pkg, ref)
    hook = _KillMidBlob(own_registry, after=1536 * 1024)
    out = tmp_path / "out.ptm"
    try:
        report = pull(ref, out, PullOptions(client=PLAIN, workers=1), hook)
    finally:
        if hook.restarter is not None:  # never leave a registry started after the fixture's teardown
            hook.restarter.join()
    assert hook.killed
    assert out.read_bytes() == pkg.read_bytes()
    blob_bytes = sum(d.size for d in RegistryStoreView.layers(ref))
    # every byte arrived once: the interrupted blob resumed where it stopped instead of starting over
    assert report.bytes_downloaded == blob_bytes, (report.bytes_downloaded, blob_bytes)


class RegistryStoreView:
    @staticmethod
    def layers(ref: str) -> list:
        store = RegistryStore(parse_reference(ref), PLAIN)
        try:
            fetched = resolve(store, parse_reference(ref), BlobCache())
            return [*fetched.manifest.layers, fetched.manifest.config]
        finally:
            store.close()


def test_pull_delta_applies_a_published_residual(registry: Registry, tmp_path: Path) -> None:
    from ptmpack.residual import diff_residual

    base = pack_kind(write_model_tree(tmp_path / "a"), tmp_path / "a.ptm", "raw")
    target = pack_kind(write_model_tree(tmp_path / "b", version="1.1.0", bump=0.25), tmp_path / "b.ptm", "raw")
    delta = tmp_path / "delta.ptm"
    diff_residual(base, target, delta, bits=0)
    repo = f"{registry.host}/models/delta"
    _push(base, f"{repo}:v1")
    _push(target, f"{repo}:v2")
    published = _push(delta, f"{repo}:v2", residual=True)
    assert published.tag.startswith("v2.residual-")
    local = tmp_path / "local.ptm"
    _pull(f"{repo}:v1", local)
    report = _pull(f"{repo}:v2", local, delta=True)
    assert report.method == "delta", report.note
    assert report.bytes_downloaded <= delta.stat().st_size + 4096
    with open_package(local) as got, open_package(target) as want:
        for (name, a), (_, b) in zip(got.iter_tensors(), want.iter_tensors(), strict=True):
            assert np.array_equal(a, b), name
    # lossless residual, same codec: the output is the published v2 byte for byte, so the next delta chains
    assert local.read_bytes() == target.read_bytes()
    assert _pull(f"{repo}:v2", local, delta=True).method == "up-to-date"


def test_pull_delta_falls_back_without_a_residual(registry: Registry, tmp_path: Path) -> None:
    base = pack_kind(write_model_tree(tmp_path / "a"), tmp_path / "a.ptm", "raw")
    target = pack_kind(write_model_tree(tmp_path / "b", version="2.0.0"), tmp_path / "b.ptm", "raw")
    repo = f"{registry.host}/models/nodelta"
    _push(base, f"{repo}:v1")
    _push(target, f"{repo}:v2")
    local = tmp_path / "local.ptm"
    os.link(base, local)
    report = _pull(f"{repo}:v2", local, delta=True)
    assert report.method == "full" and "no residual" in report.note
    assert local.read_bytes() == target.read_bytes()
    # a fresh cache, yet only what changed moved: unchanged blobs came from the local base
    assert report.bytes_downloaded < 0.05 * target.stat().st_size, report


@pytest.mark.parametrize("upload_chunk", [1 << 20, 64 << 20])
def test_blob_upload_streams_each_byte_once(registry: Registry, tmp_path: Path, upload_chunk: int) -> None:
    """A blob goes up in pieces of at most 1 MiB, read once and in order (what the push hashes its chunk
    index from), as PATCH chunks or one PUT; fetched back it is the same bytes."""
    import dataclasses
    import hashlib

    from ptmpack.distribution.registry import SEND_PIECE

    data = os.urandom(3 * SEND_PIECE + 12345)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    opts = dataclasses.replace(PLAIN, upload_chunk=upload_chunk)
    store = RegistryStore(parse_reference(f"{registry.host}/stream/c{upload_chunk}:v1"), opts)
    reads: list[tuple[int, int]] = []
    moved: list[int] = []

    def read(pos: int, n: int) -> bytes:
        reads.append((pos, n))
        return data[pos: pos + n]

    try:
        assert store.put_blob(digest, len(data), read, moved.append) == len(data)
        got = fetch_blob(store, digest, len(data), tmp_path / "partial", lambda n: None)
    finally:
        store.close()
    assert got == len(data) and (tmp_path / "partial").read_bytes() == data
    assert max(n for _, n in reads) <= SEND_PIECE and sum(moved) == len(data)
    assert [p for p, _ in reads] == [sum(n for _, n in reads[:i]) for i in range(len(reads))]  # once, in order


def test_receive_buffer_is_bounded(registry: Registry) -> None:
    """Connections get the receive buffer asked for (not the kernel's autotuned tens of MiB), so a killed pull
    loses less than one 4 MiB chunk of received bytes; None leaves the kernel's default."""
    import socket

    from ptmpack.distribution.receive import socket_of

    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())  # the kernel caps SO_RCVBUF there
    bounded = 2 * min(256 * 1024, rmem_max)  # and doubles it for bookkeeping
    for size in (256 * 1024, None):
        store = RegistryStore(parse_reference(f"{registry.host}/rcv/x:v1"),
                              ClientOptions(plain_http=True, receive_buffer=size))
        try:
            with store._open("GET", f"http://{registry.host}/v2/", "ping") as r:
                sock = socket_of(r)
                assert sock is not None
                got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        finally:
            store.close()
        assert (got == bounded) if size is not None else (got != bounded)
