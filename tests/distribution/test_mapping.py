"""The blob mapping without a registry: cuts follow the container's chunks, recipes round-trip, and hostile
recipes, manifests and configs raise PtmError only."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptmpack.distribution import push
from ptmpack.distribution.describe import PackageConfig
from ptmpack.distribution.mapping import (
    MAX_BLOBS,
    PIECE_SIZE,
    Recipe,
    cut_spans,
    decode_recipe,
    encode_recipe,
    hash_cut,
)
from ptmpack.distribution.oci import PackageManifest
from ptmpack.errors import PtmError
from ptmpack.format.reader import PackageReader
from tests.distribution.packages import KINDS, pack_kind, write_model_tree


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("trees")
    return (write_model_tree(folder / "v1", rows=10000), write_model_tree(folder / "v2", rows=10000, version="1.0.1"),
            write_model_tree(folder / "v3", rows=10000, version="1.1.0", bump=0.5))


@pytest.mark.parametrize("kind", KINDS)
def test_cut_and_recipe_rebuild_the_file(trees: tuple[Path, Path, Path], tmp_path: Path, kind: str) -> None:
    pkg = pack_kind(trees[0], tmp_path / "p.ptm", kind)
    with PackageReader(pkg, sealed_ok=True) as reader:  # no key: encrypted packages are cut from clear headers
        spans = cut_spans(reader)
    assert sum(s.length for s in spans) == pkg.stat().st_size
    assert all(a.offset + a.length == b.offset for a, b in itertools.pairwise(spans))
    cut = hash_cut(pkg, spans)
    assert all(s.length <= PIECE_SIZE + 1024 for s in spans if s.blob)
    recipe_blob = encode_recipe(pkg, cut)
    recipe = decode_recipe(recipe_blob, {p.digest: p.length for p in cut.pieces()}, "test")
    blobs = {}
    data = pkg.read_bytes()
    for p in cut.pieces():
        blobs[p.digest] = tmp_path / p.digest[7:]
        blobs[p.digest].write_bytes(data[p.offset: p.offset + p.length])
    rebuilt, lit = bytearray(), 0
    for digest, length in recipe.spans:  # literal bytes in order, then each blob span's file
        if digest is None:
            rebuilt += recipe.literals[lit: lit + length]
            lit += length
        else:
            rebuilt += blobs[digest].read_bytes()[:length]
    assert bytes(rebuilt) == data
    assert len(recipe_blob) < 64 * 1024  # headers, small files and the manifest only


@pytest.mark.parametrize("kind", ["raw", "zstd"])
def test_versions_share_blobs(trees: tuple[Path, Path, Path], tmp_path: Path, kind: str) -> None:
    """Blobs are cut from each entry's data start on chunk boundaries, so unchanged data keeps its blobs."""
    layout = f"oci:{tmp_path / 'layout'}"
    v1, v2, v3 = (pack_kind(t, tmp_path / f"{t.name}.ptm", kind) for t in trees)
    first = push(v1, f"{layout}:v1")
    meta = push(v2, f"{layout}:v2")
    tuned = push(v3, f"{layout}:v3")
    if kind == "zstd":  # native: config and recipe; every chunk blob reused; one tensor moves the blobs it touches
        assert meta.blobs_uploaded == 2
        assert 0 < tuned.blobs_uploaded - 2 <= 2 and tuned.bytes_uploaded < 0.5 * first.bytes_uploaded
    else:  # ModelPack: config, recipe and the changed managementinfo.json; a changed weight file moves whole
        assert meta.blobs_uploaded == 3 and meta.bytes_uploaded < 0.01 * first.bytes_uploaded
        assert tuned.blobs_uploaded == 4 and tuned.bytes_uploaded > 0.95 * first.bytes_uploaded


def test_piece_size_keeps_manifests_small() -> None:
    from ptmpack.distribution.mapping import piece_size

    assert piece_size(0) == piece_size(PIECE_SIZE * MAX_BLOBS) == PIECE_SIZE
    for total in (PIECE_SIZE * MAX_BLOBS + 1, 10**12, 10**13):
        piece = piece_size(total)
        assert piece > PIECE_SIZE and -(-total // piece) <= MAX_BLOBS


@given(st.binary(max_size=2048))
def test_random_recipe_bytes_raise_ptm_errors(data: bytes) -> None:
    import zstandard

    for blob in (data, zstandard.ZstdCompressor().compress(b"PTMRCP\x00\x01" + data)):
        with contextlib.suppress(PtmError):
            decode_recipe(blob, {}, "fuzz")


@given(st.binary(max_size=2048))
def test_random_manifest_and_config_bytes_raise_ptm_errors(data: bytes) -> None:
    for parse in (PackageManifest.from_bytes, PackageConfig.from_bytes):
        with contextlib.suppress(PtmError):
            parse(data, "fuzz")


@given(st.lists(st.one_of(st.tuples(st.just(0), st.integers(-2, 10)), st.tuples(st.just(1), st.text(max_size=8),
                                                                                   st.integers(-2, 10))), max_size=5))
def test_malformed_span_lists_raise_ptm_errors(spans: list) -> None:
    import json

    import zstandard

    doc = json.dumps({"size": 3, "sha256": "0" * 64, "spans": [list(s) for s in spans]}).encode()
    head = b"PTMRCP\x00\x01" + len(doc).to_bytes(4, "little") + doc + b"abc"
    try:
        recipe = decode_recipe(zstandard.ZstdCompressor().compress(head), {}, "fuzz")
    except PtmError:
        return
    assert isinstance(recipe, Recipe) and sum(n for _, n in recipe.spans) == 3
