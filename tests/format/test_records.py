"""Round-trip and rejection properties of the fixed records, the manifest and the path rules.

Laws checked (hypothesis): ``R.unpack(r.pack()) == r`` for FileHeader, ModelHeader and
Trailer over their valid field ranges; ``Manifest.from_json(m.to_json()) == m`` (and the
JSON is canonical) for generated manifests that obey the validity rules of manifest.py;
``check_entry_path`` accepts generated valid paths and rejects every rule break of SPEC §1;
``check_unique_paths`` rejects case-insensitive duplicates and file/directory clashes.
"""

from __future__ import annotations

import contextlib
import json
import math
import unicodedata

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ptmpack.errors import IntegrityError, InvalidTreeError, PtmError, UnsupportedError
from ptmpack.format import spec
from ptmpack.format.manifest import EntryRecord, Manifest, TensorRecord
from ptmpack.format.paths import MAX_COMPONENT_BYTES, check_entry_path, check_unique_paths
from ptmpack.format.records import FileHeader, ModelHeader, Trailer

U16, U32, U64 = 2**16 - 1, 2**32 - 1, 2**64 - 1
ROOTS = tuple(spec.KIND_ROOTS)

# ---------------------------------------------------------------- strategies

_component_chars = st.characters(
    blacklist_categories=("Cs", "Cc"),  # surrogates and every control character (C0, DEL, C1)
    blacklist_characters="/\\",
)
components = (
    st.text(_component_chars, min_size=1, max_size=10)
    .map(lambda s: unicodedata.normalize("NFC", s))
    .filter(lambda s: s not in (".", ".."))
)


@st.composite
def entry_paths(draw: st.DrawFn, root: str | None = None, unique_prefix: str = "") -> str:
    """A valid entry path; ``unique_prefix`` goes in front of the first component below the root."""
    root = root or draw(st.sampled_from(ROOTS))
    parts = draw(st.lists(components, min_size=1, max_size=4))
    parts[0] = unique_prefix + parts[0]
    path = "/".join([root, *parts])
    assume(len(path.encode("utf-8")) <= spec.MAX_PATH_BYTES)
    return path


file_headers = st.builds(
    lambda flags, pid, slots, minor, counts: FileHeader(
        flags=flags,
        model_count=counts[0],
        entry_count=counts[1],
        package_id=pid,
        keyslots_length=slots if flags & spec.Flags.ENCRYPTED else 0,
        header_size=spec.align_up(FileHeader.SIZE + (slots if flags & spec.Flags.ENCRYPTED else 0)),
        version_minor=minor,
    ),
    flags=st.integers(0, int(spec.KNOWN_FLAGS)),
    pid=st.binary(min_size=16, max_size=16),
    slots=st.integers(1, spec.MAX_KEYSLOTS_BYTES),
    minor=st.integers(0, U16),
    counts=st.integers(0, spec.MAX_ENTRIES).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
)


@st.composite
def model_headers(draw: st.DrawFn) -> ModelHeader:
    codec = draw(st.integers(0, 0x00FFFFFF))
    chunk = draw(st.integers(spec.MIN_CHUNK_SIZE, spec.MAX_CHUNK_SIZE) if codec else st.integers(0, spec.MAX_CHUNK_SIZE))
    return ModelHeader(
        entry_index=draw(st.integers(0, U32)),
        kind=draw(st.sampled_from(list(spec.Kind))),
        codec=codec,
        path_length=draw(st.integers(0, spec.MAX_PATH_BYTES)),
        stored_length=draw(st.integers(0, U64)),
        raw_length=draw(st.integers(0, U64)),
        chunk_size=chunk,
        sha256=draw(st.binary(min_size=32, max_size=32)),
    )


@st.composite
def trailers(draw: st.DrawFn) -> tuple[Trailer, int]:
    """A trailer and a file size it is valid for."""
    m_off = draw(st.integers(FileHeader.SIZE, 2**62))
    m_len = draw(st.integers(0, spec.MAX_MANIFEST_BYTES))
    signed = draw(st.booleans())
    sig_len = draw(st.integers(1, 2**20)) if signed else 0
    trailer = Trailer(m_off, m_len, draw(st.binary(min_size=32, max_size=32)), m_off + m_len if signed else 0)
    return trailer, m_off + m_len + sig_len + Trailer.SIZE


ST_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1}


@st.composite
def tensor_records(draw: st.DrawFn, raw_length: int) -> TensorRecord:
    """A record whose byte range holds exactly its shape and dtype, as the parser requires."""
    dtype = draw(st.sampled_from(sorted(ST_SIZES)))
    shape = tuple(draw(st.lists(st.integers(0, 64), max_size=3)))
    nbytes = math.prod(shape) * ST_SIZES[dtype]
    assume(nbytes <= raw_length)
    begin = draw(st.integers(0, raw_length - nbytes))
    return TensorRecord(name=draw(st.text(max_size=12)), dtype=dtype, shape=shape, begin=begin, end=begin + nbytes)


@st.composite
def entry_records(draw: st.DrawFn, index: int) -> EntryRecord:
    path = draw(entry_paths(unique_prefix=f"{index}-"))
    kind = spec.KIND_ROOTS[path.split("/", 1)[0]]
    chunked = draw(st.booleans())
    if chunked:
        codec = draw(st.integers(1, 0x00FFFFFF))
        chunk_size = draw(st.integers(spec.MIN_CHUNK_SIZE, spec.MAX_CHUNK_SIZE))
        raw_length = draw(st.integers(0, chunk_size * 4))
        n = max(1, -(-raw_length // chunk_size))
        lengths = draw(st.lists(st.integers(spec.CHUNK_PREFIX.size, spec.MAX_CHUNK_SIZE + 2**20), min_size=n, max_size=n))
        offsets = [sum(lengths[:i]) for i in range(n)]
        chunks = tuple(zip(offsets, lengths, strict=True))
        stored_length = sum(lengths)
    else:
        codec, chunk_size, chunks = 0, draw(st.sampled_from([0, 0, 4096])), ()
        raw_length = stored_length = draw(st.integers(0, U64))
    tensors = None
    if path.endswith(".safetensors"):
        tensors = draw(st.none() | st.lists(tensor_records(min(raw_length, 2**40)), max_size=3).map(tuple))
    return EntryRecord(
        index=index,
        path=path,
        kind=kind,
        header_offset=draw(st.integers(0, U64)),
        data_offset=draw(st.integers(0, U64)),
        stored_length=stored_length,
        raw_length=raw_length,
        codec=codec,
        chunk_size=chunk_size,
        sha256=draw(st.binary(min_size=32, max_size=32)),
        executable=draw(st.booleans()),
        chunks=chunks,
        tensors=tensors,
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    n = draw(st.integers(0, 5))
    entries = tuple(draw(entry_records(i)) for i in range(n))
    return Manifest(
        package_id=draw(st.binary(min_size=16, max_size=16)),
        created=draw(st.text(max_size=25)),
        tool=draw(st.text(max_size=20)),
        flags=draw(st.integers(0, U32)),
        entries=entries,
        residual_base=draw(st.none() | st.binary(min_size=32, max_size=32).map(bytes.hex)),
        version=(spec.VERSION_MAJOR, draw(st.integers(0, U16))),
        extra=draw(st.dictionaries(st.text(max_size=6).map(lambda k: "x-" + k), json_values, max_size=3)),
    )


# ---------------------------------------------------------------- fixed records


@given(file_headers)
def test_file_header_round_trip(h: FileHeader) -> None:
    packed = h.pack()
    assert len(packed) == FileHeader.SIZE == 52
    assert packed[:8] == spec.MAGIC
    assert FileHeader.unpack(packed) == h


@given(model_headers())
def test_model_header_round_trip(h: ModelHeader) -> None:
    packed = h.pack()
    assert len(packed) == ModelHeader.SIZE == 72
    assert packed[:4] == spec.ENTRY_MAGIC
    assert ModelHeader.unpack(packed, 12345) == h


@given(trailers())
def test_trailer_round_trip(case: tuple[Trailer, int]) -> None:
    trailer, size = case
    packed = trailer.pack()
    assert len(packed) == Trailer.SIZE == 64
    assert packed[-8:] == spec.END_MAGIC
    assert Trailer.unpack(packed, size) == trailer


def _header(**over: object) -> bytes:
    fields = {"magic": spec.MAGIC, "major": 1, "minor": 0, "flags": 0, "models": 1, "entries": 2, "reserved": 0,
              "pid": bytes(16), "slots": 0, "hsize": 4096}
    fields.update(over)
    return spec.FILE_HEADER.pack(*fields.values())


@pytest.mark.parametrize(
    ("over", "error"),
    [
        ({"magic": b"PTMPACK\1"}, IntegrityError),
        ({"major": 2}, UnsupportedError),
        ({"major": 0}, UnsupportedError),
        ({"flags": 16}, UnsupportedError),
        ({"flags": 1 << 31}, UnsupportedError),
        ({"reserved": 1}, IntegrityError),
        ({"entries": spec.MAX_ENTRIES + 1, "models": 0}, IntegrityError),
        ({"entries": 10**9, "models": 0}, IntegrityError),
        ({"models": 3}, IntegrityError),
        ({"slots": 100}, IntegrityError),  # slots without ENCRYPTED
        ({"flags": 1}, IntegrityError),  # ENCRYPTED without slots
        ({"flags": 1, "slots": spec.MAX_KEYSLOTS_BYTES + 1, "hsize": spec.align_up(52 + spec.MAX_KEYSLOTS_BYTES + 1)},
         IntegrityError),
        ({"flags": 1, "slots": U32, "hsize": 0}, IntegrityError),
        ({"hsize": 0}, IntegrityError),
        ({"hsize": 8192}, IntegrityError),
    ],
    ids=lambda v: "-".join(f"{k}={v}" for k, v in v.items()) if isinstance(v, dict) else v.__name__,
)
def test_file_header_rejects(over: dict, error: type[PtmError]) -> None:
    with pytest.raises(error):
        FileHeader.unpack(_header(**over))


def test_file_header_rejects_truncation() -> None:
    good = _header()
    FileHeader.unpack(good)
    for n in range(len(good)):
        with pytest.raises(IntegrityError):
            FileHeader.unpack(good[:n])


def _model_header(**over: object) -> bytes:
    fields = {"magic": spec.ENTRY_MAGIC, "index": 0, "kind": 1, "codec": 0, "plen": 10, "stored": 5, "raw": 5,
              "chunk": 0, "sha": bytes(32)}
    fields.update(over)
    return spec.MODEL_HEADER.pack(*fields.values())


@pytest.mark.parametrize(
    ("over", "error"),
    [
        ({"magic": b"PTMF"}, IntegrityError),
        ({"kind": 0}, IntegrityError),
        ({"kind": 4}, IntegrityError),
        ({"kind": U32}, IntegrityError),
        ({"codec": 0x01000001, "chunk": 4096}, UnsupportedError),
        ({"plen": spec.MAX_PATH_BYTES + 1}, IntegrityError),
        ({"plen": U32}, IntegrityError),
        ({"codec": 1, "chunk": 0}, IntegrityError),
        ({"codec": 1, "chunk": spec.MIN_CHUNK_SIZE - 1}, IntegrityError),
        ({"codec": 1, "chunk": spec.MAX_CHUNK_SIZE + 1}, IntegrityError),
        ({"chunk": U32}, IntegrityError),
    ],
    ids=lambda v: "-".join(f"{k}={v}" for k, v in v.items()) if isinstance(v, dict) else v.__name__,
)
def test_model_header_rejects(over: dict, error: type[PtmError]) -> None:
    with pytest.raises(error):
        ModelHeader.unpack(_model_header(**over))


def test_model_header_rejects_truncation() -> None:
    for n in range(ModelHeader.SIZE):
        with pytest.raises(IntegrityError):
            ModelHeader.unpack(_model_header()[:n])


def _trailer(m_off: int, m_len: int, s_off: int = 0, magic: bytes = spec.END_MAGIC) -> bytes:
    return spec.TRAILER.pack(m_off, m_len, bytes(32), s_off, magic)


@pytest.mark.parametrize(
    ("buf", "size"),
    [
        (_trailer(4096, 100, magic=b"PTMEND\0\1"), 4096 + 100 + 64),
        (_trailer(4096, 2**63), 2**64),  # manifest over the 256 MiB cap
        (_trailer(4096, spec.MAX_MANIFEST_BYTES + 1), 2**40),
        (_trailer(0, 10), 10 + 64),  # manifest inside the file header
        (_trailer(51, 10), 51 + 10 + 64),
        (_trailer(4096, 100), 4096 + 99 + 64),  # runs into the trailer
        (_trailer(U64, 100), 4096),
        (_trailer(4096, 100), 4096 + 101 + 64),  # stray bytes before the trailer
        (_trailer(4096, 100, s_off=4097), 4096 + 200 + 64),  # signature not right after the manifest
        (_trailer(4096, 100, s_off=4196), 4196 + 64),  # empty signature block
        (_trailer(4096, 100, s_off=U64), 4096 + 200 + 64),
        (_trailer(4096, 100)[:-1], 4096 + 100 + 63),
    ],
)
def test_trailer_rejects(buf: bytes, size: int) -> None:
    with pytest.raises(IntegrityError):
        Trailer.unpack(buf, size)


@given(st.binary(min_size=52, max_size=52))
def test_file_header_random_bytes_raise_only_ptm_errors(buf: bytes) -> None:
    with contextlib.suppress(PtmError):
        FileHeader.unpack(spec.MAGIC + buf[8:] if buf[0] & 1 else buf)


@given(st.binary(min_size=72, max_size=72), st.booleans())
def test_model_header_random_bytes_raise_only_ptm_errors(buf: bytes, magic: bool) -> None:
    with contextlib.suppress(PtmError):
        ModelHeader.unpack(spec.ENTRY_MAGIC + buf[4:] if magic else buf)


@given(st.binary(min_size=56, max_size=56), st.integers(0, 2**64))
def test_trailer_random_bytes_raise_only_ptm_errors(buf: bytes, size: int) -> None:
    with contextlib.suppress(PtmError):
        Trailer.unpack(buf + spec.END_MAGIC, size)


# ---------------------------------------------------------------- manifest


@given(manifests())
def test_manifest_round_trip(m: Manifest) -> None:
    raw = m.to_json()
    back = Manifest.from_json(raw)
    assert back == m
    assert back.to_json() == raw


@given(manifests())
def test_manifest_json_is_canonical(m: Manifest) -> None:
    raw = m.to_json()
    doc = json.loads(raw)
    assert raw == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert doc["format"] == "ptmpack"
    assert doc["version"] == list(m.version)
    assert [e["index"] for e in doc["entries"]] == list(range(len(m.entries)))


def _valid_manifest_doc() -> dict:
    entry = {
        "index": 0, "path": "Model/a.bin", "kind": "model", "header_offset": 4096, "data_offset": 8192,
        "stored_length": 3, "raw_length": 3, "codec": 0, "chunk_size": 0, "sha256": "00" * 32,
        "executable": False, "chunks": [],
    }
    return {"format": "ptmpack", "version": [1, 0], "package_id": "11" * 16, "created": "2024-01-01T00:00:00Z",
            "tool": "t", "flags": 0, "entries": [entry]}


def _mutate(doc: dict, path: tuple, value: object) -> dict:
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()
E0 = ("entries", 0)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("format",), "other"),
        (("format",), _DELETE),
        (("version",), [1]),
        (("version",), [1, "0"]),
        (("version",), [True, 0]),
        (("package_id",), "11" * 15),
        (("package_id",), "zz" * 16),
        (("flags",), -1),
        (("flags",), 2**32),
        (("flags",), 1.0),
        (("entries",), {}),
        (("created",), 5),
        (("residual_base",), {"manifest_sha256": "ab"}),
        (("residual_base",), "ab" * 32),
        ((*E0, "index"), 1),
        ((*E0, "index"), -1),
        ((*E0, "kind"), "program"),
        ((*E0, "kind"), "weights"),
        ((*E0, "path"), "../a.bin"),
        ((*E0, "path"), "Model/../../a"),
        ((*E0, "path"), "/etc/passwd"),
        ((*E0, "path"), "Model\\..\\a"),
        ((*E0, "path"), "Model/a\x00b"),
        ((*E0, "path"), "C:/a"),
        ((*E0, "path"), 7),
        ((*E0, "stored_length"), 4),
        ((*E0, "raw_length"), 2**64),
        ((*E0, "chunks"), [[0, 7]]),
        ((*E0, "sha256"), "00" * 31),
        ((*E0, "executable"), 0),
        ((*E0, "executable"), _DELETE),
        ((*E0, "chunk_size"), spec.MAX_CHUNK_SIZE + 1),
        ((*E0, "tensors"), [{"name": "t", "dtype": "F32", "shape": [1], "begin": 0, "end": 4}]),
        ((*E0, "tensors"), [{"name": "t", "dtype": "F32", "shape": [-1], "begin": 0, "end": 0}]),
        ((*E0, "tensors"), [{"name": "t", "dtype": "F32", "shape": [1], "begin": 3, "end": 2}]),
        ((*E0, "tensors"), "no"),
    ],
)
def test_manifest_rejects(path: tuple, value: object) -> None:
    Manifest.from_json(json.dumps(_valid_manifest_doc()).encode())
    with pytest.raises(PtmError) as info:
        Manifest.from_json(json.dumps(_mutate(_valid_manifest_doc(), path, value)).encode())
    assert isinstance(info.value, (IntegrityError, InvalidTreeError, UnsupportedError))


def test_manifest_chunk_table_rules() -> None:
    doc = _valid_manifest_doc()
    e = doc["entries"][0]
    e.update(codec=1, chunk_size=4096, raw_length=5000, stored_length=30, chunks=[[0, 10], [10, 20]])
    Manifest.from_json(json.dumps(doc).encode())
    for chunks, stored in (([[0, 10]], 10), ([[0, 10], [11, 19]], 30), ([[0, 10], [10, 20]], 31),
                           ([[0, 10], [10, 3]], 13), ([[0, 10], [10, 20], [30, 5]], 35)):
        e.update(chunks=chunks, stored_length=stored)
        with pytest.raises(IntegrityError):
            Manifest.from_json(json.dumps(doc).encode())
    e.update(chunk_size=100, chunks=[[0, 30]], stored_length=30)
    with pytest.raises(IntegrityError):
        Manifest.from_json(json.dumps(doc).encode())


def test_manifest_major_version_is_unsupported() -> None:
    with pytest.raises(UnsupportedError):
        Manifest.from_json(json.dumps(_mutate(_valid_manifest_doc(), ("version",), [2, 0])).encode())


def test_manifest_keeps_unknown_fields() -> None:
    doc = _valid_manifest_doc()
    doc["x-new"] = {"a": [1, 2]}
    m = Manifest.from_json(json.dumps(doc).encode())
    assert m.extra == {"x-new": {"a": [1, 2]}}
    assert json.loads(m.to_json())["x-new"] == {"a": [1, 2]}


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xff\xfe", b"[", b"null", b"[]", b"[" * 100_000 + b"]" * 100_000, b'{"format": NaN}'],
    ids=["empty", "not-utf8", "truncated", "null", "list", "deep", "nan"],
)
def test_manifest_garbage_is_integrity_error(raw: bytes) -> None:
    with pytest.raises(IntegrityError):
        Manifest.from_json(raw)


def test_manifest_huge_integer_field_is_integrity_error() -> None:
    """A number too long for int() (Python's 4300-digit limit) must not escape as ValueError."""
    raw = json.dumps(_valid_manifest_doc()).replace('"flags": 0', '"flags": ' + "9" * 5000).encode()
    for doc in (raw, b"1" * 5000):
        with pytest.raises(IntegrityError):
            Manifest.from_json(doc)


@given(st.binary(max_size=200))
def test_manifest_random_bytes_raise_only_ptm_errors(raw: bytes) -> None:
    with contextlib.suppress(PtmError):
        Manifest.from_json(raw)


@given(json_values)
def test_manifest_random_json_raise_only_ptm_errors(doc: object) -> None:
    with contextlib.suppress(PtmError):
        Manifest.from_json(json.dumps(doc).encode())


# ---------------------------------------------------------------- path rules


@given(entry_paths())
def test_valid_paths_are_accepted(path: str) -> None:
    assert check_entry_path(path) == path


def test_component_over_255_bytes_is_rejected() -> None:
    with pytest.raises(InvalidTreeError, match="255"):
        check_entry_path("Model/" + "a" * (MAX_COMPONENT_BYTES + 1))
    with pytest.raises(InvalidTreeError, match="255"):
        check_entry_path("Model/" + "\u00e9" * 128)


@pytest.mark.parametrize(
    "path",
    [
        "Model/" + "/".join(["a" * 255] * 16)[: spec.MAX_PATH_BYTES - 6],
        "Model/" + "/".join(["\u00e9" * 127] * 16)[: (spec.MAX_PATH_BYTES - 6) // 2],
        "Model/" + "a" * MAX_COMPONENT_BYTES,
        "Model/a b/c.d",
        "Program/Library/core/x.so",
        "Meta-info/managementinfo.json",
        "Model/...",
        "Model/.hidden",
        "Model/\u00e9",
        "Model/\u4e2d\u6587/\U0001f600",
    ],
    ids=lambda p: repr(p[:40]),
)
def test_edge_valid_paths_are_accepted(path: str) -> None:
    assert check_entry_path(path) == path


BAD_PATHS = [
    "",
    "../x",
    "Model/../../x",
    "Model/..",
    "Model/./x",
    "Model/a/../b",
    "/etc/passwd",
    "/Model/x",
    "Model\\..\\x",
    "Model/a\\b",
    "Model/a\x00b",
    "Model/a\nb",
    "Model/a\rb",
    "Model/a\tb",
    "Model/a\x1bb",
    "Model/a\x7fb",
    "C:/x",
    "c:x",
    "C:\\x",
    "Model//x",
    "Model/x/",
    "Model/",
    "Model",
    "Meta-info",
    "model/x",
    "MODEL/x",
    "Models/x",
    "Other/x",
    "x",
    "./Model/x",
    "Model/e\u0301",  # NFD
    "Model/\u212b",  # ANGSTROM SIGN, NFC maps it to U+00C5
    "Model/\ud800",  # lone surrogate
    "Model/" + "a" * (spec.MAX_PATH_BYTES - 5),
    "Model/" + "\u00e9" * ((spec.MAX_PATH_BYTES - 6) // 2 + 1),
]


@pytest.mark.parametrize("path", BAD_PATHS, ids=lambda p: repr(p[:30]) + f"-{len(p)}")
def test_bad_paths_are_rejected(path: str) -> None:
    with pytest.raises(InvalidTreeError):
        check_entry_path(path)


def test_c1_control_characters_are_rejected() -> None:
    """FORMAT.md §8: paths contain 'no control character'; U+0080..U+009F are control characters (Cc)
    too, and U+009B (CSI) starts terminal escape sequences when a name is printed."""
    accepted = []
    for code in range(0x80, 0xA0):
        try:
            check_entry_path(f"Model/a{chr(code)}b")
            accepted.append(f"U+{code:04X}")
        except InvalidTreeError:
            pass
    assert not accepted, f"control characters accepted in entry paths: {', '.join(accepted)}"


@given(entry_paths(), st.integers(0, 31) | st.just(0x7F), st.data())
def test_control_characters_anywhere_are_rejected(path: str, code: int, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(path)))
    with pytest.raises(InvalidTreeError):
        check_entry_path(path[:at] + chr(code) + path[at:])


@given(entry_paths(), st.sampled_from(["..", ".", ""]), st.data())
def test_dot_and_empty_components_anywhere_are_rejected(path: str, bad: str, data: st.DataObject) -> None:
    parts = path.split("/")
    at = data.draw(st.integers(1, len(parts)))
    with pytest.raises(InvalidTreeError):
        check_entry_path("/".join([*parts[:at], bad, *parts[at:]]))


@given(entry_paths())
def test_absolute_and_backslash_variants_are_rejected(path: str) -> None:
    for bad in ("/" + path, "D:/" + path, path.replace("/", "\\"), path + "\\x"):
        with pytest.raises(InvalidTreeError):
            check_entry_path(bad)


@given(st.lists(entry_paths(), min_size=1, max_size=6))
def test_unique_paths_accept_distinct_leaves(paths: list[str]) -> None:
    # Make them distinct and clash-free: one unique first component per path.
    fixed = [p.replace("/", f"/{i}-", 1) for i, p in enumerate(paths)]
    check_unique_paths(fixed)


@given(st.lists(entry_paths(), min_size=1, max_size=5), st.data())
def test_unique_paths_reject_case_insensitive_duplicates(paths: list[str], data: st.DataObject) -> None:
    fixed = [p.replace("/", f"/{i}-", 1) for i, p in enumerate(paths)]
    victim = data.draw(st.sampled_from(fixed))
    twin = data.draw(st.sampled_from([victim, victim.upper(), victim.lower(), victim.swapcase()]))
    assume(twin.casefold() == victim.casefold())
    order = data.draw(st.permutations([*fixed, twin]))
    with pytest.raises(InvalidTreeError):
        check_unique_paths(order)


@given(st.lists(entry_paths(), min_size=1, max_size=5), components, st.data())
def test_unique_paths_reject_file_that_is_also_a_directory(paths: list[str], leaf: str, data: st.DataObject) -> None:
    fixed = [p.replace("/", f"/{i}-", 1) for i, p in enumerate(paths)]
    victim = data.draw(st.sampled_from(fixed))
    variant = data.draw(st.sampled_from([victim, victim.upper(), victim.swapcase()]))
    assume(variant.casefold() == victim.casefold())
    child = variant + "/" + leaf
    order = data.draw(st.permutations([*fixed, child]))
    with pytest.raises(InvalidTreeError):
        check_unique_paths(order)


@pytest.mark.parametrize(
    "paths",
    [
        ["Model/a", "Model/a"],
        ["Model/A", "Model/a"],
        ["Model/stra\u00dfe", "Model/STRASSE"],
        ["Model/a", "Model/a/b"],
        ["Model/a/b/c", "Model/A/B"],
        ["Meta-info/x.json", "Meta-info/X.JSON"],
    ],
)
def test_unique_paths_reject_examples(paths: list[str]) -> None:
    with pytest.raises(InvalidTreeError):
        check_unique_paths(paths)
    with pytest.raises(InvalidTreeError):
        check_unique_paths(list(reversed(paths)))


def test_unique_paths_accept_siblings_and_prefix_names() -> None:
    check_unique_paths(["Model/a", "Model/ab", "Model/a.b", "Model/b/a", "Program/a", "Meta-info/a"])
