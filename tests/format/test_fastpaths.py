"""The fast paths of the reader and writer accept exactly what the careful paths accept.

Opening a package parses the manifest with the C JSON decoder and checks plain entries with
one expression; tree scans check ASCII paths with one pattern; tensor tables are built when
first used. Each has a careful twin that names what is wrong. These tests hold the pairs to
the same answers, on generated input and on hostile manifests built with
``tests/_support/badwriter.py``.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptmpack import api
from ptmpack.errors import IntegrityError, InvalidTreeError
from ptmpack.format import manifest as mf
from ptmpack.format import spec
from ptmpack.format.paths import check_entry_path
from ptmpack.jsonio import loads_strict
from ptmpack.storage.package import open_package
from tests._support import badwriter as bw

ASCII = string.printable.replace("\x0b", "").replace("\x0c", "") + "/" * 10 + "." * 10


def _valid(path: str) -> bool:
    try:
        check_entry_path(path)
    except InvalidTreeError:
        return False
    return True


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(["Model/", "Program/", "Meta-info/", "Model", "model/", "", "/Model/"]),
       st.text(alphabet=ASCII, max_size=40))
def test_plain_path_pattern_agrees_with_the_path_rules_on_ascii(root: str, rest: str) -> None:
    path = root + rest
    if all(32 <= ord(c) < 127 for c in path):
        assert mf.plain_entry_path(path) == _valid(path), path
    else:  # control characters: the pattern refuses, the rules too
        assert not mf.plain_entry_path(path) and not _valid(path)


def test_plain_path_pattern_limits() -> None:
    assert mf.plain_entry_path("Model/" + "a" * 255) and not mf.plain_entry_path("Model/" + "a" * 256)
    deep = "Model/" + "/".join(["abcdefg"] * 600)
    assert len(deep) > spec.MAX_PATH_BYTES and not mf.plain_entry_path(deep) and not _valid(deep)
    for ok in ("Model/.hidden", "Model/a..b", "Meta-info/x y.json", "Program/Scripts/run.sh"):
        assert mf.plain_entry_path(ok) and _valid(ok)
    for bad in ("Model/.", "Model/..", "Model/a/../b", "Model//a", "Model/", "Model/a\\b", "Model/é"):
        assert not mf.plain_entry_path(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**25), 10**25) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_manifest_loader_parses_like_the_strict_loader(value: object) -> None:
    """Same document where the strict loader accepts; where it refuses (over-long numbers), the
    limits that ``Manifest.from_json`` applies to fields it does not define refuse too."""
    raw = json.dumps({"x": value}, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        want = loads_strict(raw, "manifest")
    except IntegrityError:
        with pytest.raises(IntegrityError):
            mf.check_unknown(mf.load_manifest_json(raw), frozenset(), 1, "manifest")
    else:
        assert mf.load_manifest_json(raw) == want
        mf.check_unknown(want, frozenset(), 1, "manifest")


@pytest.mark.parametrize("raw", [
    b'{"a":1,"a":1}', b'{"a":NaN}', b'{"a":Infinity}', b'{"a":1e999}', b'\xff{}', b'{"a":[1,]}',
    b"[" * 5000 + b"]" * 5000,
])
def test_manifest_loader_refuses_what_the_strict_loader_refuses(raw: bytes) -> None:
    with pytest.raises(IntegrityError):
        loads_strict(raw, "manifest")
    try:
        doc = mf.load_manifest_json(raw)
    except IntegrityError:
        return
    pytest.fail(f"fast loader accepted {raw[:40]!r} as {doc!r:.60}")


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(("where", "value", "ok"), [
    ("top", 10**20 - 1, True), ("top", 10**20, False), ("top", -(10**20), False),
    ("top", _nested(63), True), ("top", _nested(64), False),  # the manifest object is level 1
    ("entry", _nested(61), True), ("entry", _nested(62), False),  # entries list 2, entry 3
    ("entry", {"k": 10**21}, False),
])
def test_unknown_fields_keep_the_strict_limits(where: str, value: object, ok: bool) -> None:
    """Fields the format does not define must still obey the strict loader's depth and number
    limits (the loader no longer checks them token by token)."""
    entries = bw.good_entries()
    if where == "entry":
        entries[2].manifest["unknown"] = value
        overrides = {}
    else:
        overrides = {"unknown": value}
    built = bw.build(entries, manifest=overrides)
    strict_ok = True
    try:
        loads_strict(built.manifest, "manifest")
    except IntegrityError:
        strict_ok = False
    assert strict_ok == ok
    if ok:
        mf.Manifest.from_json(built.manifest)
    else:
        with pytest.raises(IntegrityError):
            mf.Manifest.from_json(built.manifest)


def test_fast_and_careful_entry_parsers_agree_on_written_manifests(tmp_path: Path) -> None:
    body = bw.build().manifest
    doc = json.loads(body)
    for i, e in enumerate(doc["entries"]):
        assert mf._entry_from(e, i) == mf._entry_checked(e, i)
        for key, bad in (("index", i + 1), ("raw_length", -1), ("raw_length", True), ("sha256", "AB" * 32),
                         ("path", "Model/../x"), ("kind", "meta"), ("chunks", [[0, 4]]), ("executable", 1)):
            changed = {**e, key: bad}
            try:
                careful = mf._entry_checked(changed, i)
            except (IntegrityError, InvalidTreeError) as exc:
                with pytest.raises(type(exc)):
                    mf._entry_from(changed, i)
            else:
                assert mf._entry_from(changed, i) == careful


def _two_shards() -> list[bw.BadEntry]:
    from safetensors.numpy import save

    entries = bw.metadata_entries()
    for shard, arrays in (("a", {"x": np.arange(4, dtype=np.float32)}), ("b", {"y": np.ones(3, dtype=np.float16)})):
        data = save(arrays)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        table = [{"name": k, "dtype": v["dtype"], "shape": v["shape"], "begin": 8 + n + v["data_offsets"][0],
                  "end": 8 + n + v["data_offsets"][1]} for k, v in header.items() if k != "__metadata__"]
        entries.append(bw.BadEntry(f"Model/{shard}.safetensors", data, tensors=table))
    return entries


def test_tensor_tables_are_checked_per_entry_before_use(tmp_path: Path) -> None:
    """A lying record in shard b: reading shard a's tensor works (b's table is not built),
    asking for anything of b raises, and verify checks every table."""
    entries = _two_shards()
    entries[3].tensors[0]["shape"] = [4]  # the shape no longer matches the byte range
    bad = tmp_path / "bad.ptm"
    bad.write_bytes(bw.build(entries).blob)
    with open_package(bad) as pkg:
        assert pkg.read_tensor("x").tolist() == [0.0, 1.0, 2.0, 3.0]
        with pytest.raises(IntegrityError, match="cannot hold shape"):
            pkg.read_tensor("y")
        with pytest.raises(IntegrityError):
            pkg.tensors()
    with pytest.raises(IntegrityError):
        api.verify(bad)


def test_tensor_table_unknown_field_limits_apply_when_built(tmp_path: Path) -> None:
    entries = _two_shards()
    entries[2].tensors[0]["extra"] = 10**30
    bad = tmp_path / "bad.ptm"
    bad.write_bytes(bw.build(entries).blob)
    with open_package(bad) as pkg, pytest.raises(IntegrityError, match="digits"):
        pkg.read_tensor("x")


def test_tensor_table_is_a_sequence_equal_to_its_records() -> None:
    rec = mf.TensorRecord("w", "F32", (2,), 8, 16)
    table = mf.TensorTable(doc=[{"name": "w", "dtype": "F32", "shape": [2], "begin": 8, "end": 16}], raw_length=16)
    assert len(table) == 1 and table.names() == ["w"]
    assert table == (rec,) and (rec,) == table and list(table) == [rec] and table[0] == rec and table[-1] == rec
    assert hash(table) == hash((rec,))
