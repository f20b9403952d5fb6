"""A bounded mutation fuzzer over the reader (about a minute in ``make test``).

Hypothesis mutates real seed packages (plain, zstd, encrypted, signed, encrypted+signed; see
``fuzz/targets.py``) at the byte level (flips, boundary integers in header fields, truncation,
splices from another package) and at the manifest level (JSON edits behind a recomputed
digest, a re-sealed manifest and a fresh signature, so the cross-checks behind the digests are
reached). Every input is read every way a user can: verify with and without the key, inspect,
read every file and tensor, unpack. Any exception other than a PtmError, an input that runs
longer than ``PER_INPUT_SECONDS``, or a peak allocation over ``targets.ALLOC_LIMIT`` fails.

The longer, coverage-guided run is ``make fuzz`` (``fuzz/fuzz_reader.py``, atheris). Inputs
it finds that broke the contract are kept in ``fixtures/crashers/`` and replayed here.

Environment: ``PTMPACK_FUZZ_EXAMPLES`` scales the number of inputs per test (default 1.0),
``PTMPACK_FUZZ_SECONDS`` caps each of the two mutation tests' wall time (default 20 s).
"""

from __future__ import annotations

import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fuzz import targets  # noqa: E402

CRASHERS = REPO / "fixtures" / "crashers"
PER_INPUT_SECONDS = 10.0
SCALE = float(os.environ.get("PTMPACK_FUZZ_EXAMPLES", "1"))
BUDGET = float(os.environ.get("PTMPACK_FUZZ_SECONDS", "20"))
SEED_NAMES = ("plain", "zstd", "encrypted", "encrypted-raw", "signed", "encrypted-signed")
FUZZ_SETTINGS = {
    "deadline": None,
    "derandomize": False,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, targets.Seed]:
    return targets.make_seeds(tmp_path_factory.mktemp("seeds"))


@pytest.fixture(scope="module")
def scratch() -> Path:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()  # once for the module: starting and stopping it per input fragments the heap
    with targets.scratch_dir() as d:
        yield d
    if started:
        tracemalloc.stop()


class _Budget:
    """Stops spending time once a test's wall-time budget is used (remaining examples pass at once).

    After a failure the budget no longer applies, so hypothesis can replay and shrink it.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start: float | None = None
        self.failed = False

    def spent(self) -> bool:
        now = time.monotonic()
        if self.start is None:
            self.start = now
        return not self.failed and now - self.start > self.seconds


KNOWN = targets.known_bugs()
"""Open bugs already kept as crashers (replayed as strict xfails below): not reported again, so the
suite stays green until they are fixed, when their replay turns into a failure to un-mark."""


def _run(data: bytes, scratch: Path, budget: _Budget, *, unpack: bool = True, known: set[str] = KNOWN) -> None:
    try:
        with targets.time_limit(PER_INPUT_SECONDS):
            targets.exercise(data, scratch, unpack=unpack)
    except targets.BugFound as exc:
        if targets.bug_signature(exc) in known:
            return
        budget.failed = True
        raise
    except BaseException:
        budget.failed = True
        raise


positions = st.integers(min_value=0, max_value=2**20)
byte_op = st.one_of(
    st.tuples(st.just("flip"), positions, st.integers(1, 255)),
    st.tuples(st.just("set"), positions, st.integers(0, 255)),
    st.tuples(st.just("int"), positions, st.sampled_from((1, 2, 4, 8)), st.sampled_from(targets.INTERESTING_INTS)),
    st.tuples(st.just("truncate"), positions),
    st.tuples(st.just("delete"), positions, st.integers(1, 5000)),
    st.tuples(st.just("insert"), positions, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("splice"), positions, positions, st.integers(1, 8192)),
)


def _anchor(seed: targets.Seed, which: int) -> int:
    """A structurally interesting offset: header fields, the key slots, entry headers, frames, trailer."""
    data = seed.data
    size = len(data)
    m_off = int.from_bytes(data[size - 64: size - 56], "little")
    anchors = [0, 8, 12, 16, 20, 24, 28, 44, 48, 52, 56, 60, 64, 100, size - 64, size - 56, size - 48, size - 16,
               size - 8, m_off, m_off + 4, m_off + 20]
    pos = int.from_bytes(data[48:52], "little")
    while pos + 72 <= m_off and data[pos:pos + 4] == b"PTME":
        anchors += [pos + k for k in (4, 8, 12, 16, 20, 28, 36, 40, 72)]
        path_len = int.from_bytes(data[pos + 16: pos + 20], "little")
        stored = int.from_bytes(data[pos + 20: pos + 28], "little")
        start = -(-(pos + 72 + path_len) // 4096) * 4096
        anchors += [start, start + 4, start + 8]
        pos = start + stored
    return anchors[which % len(anchors)]


anchored_op = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("int"), st.integers(0, 10_000), st.sampled_from((1, 2, 4, 8)),
              st.sampled_from(targets.INTERESTING_INTS)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
)


@st.composite
def byte_mutation(draw: st.DrawFn) -> tuple[str, list[tuple], str, bool]:
    """A seed, 1-4 mutations (some at random offsets, some at structural anchors), a donor, a digest fix."""
    name = draw(st.sampled_from(SEED_NAMES))
    ops = draw(st.lists(st.one_of(byte_op, st.tuples(st.just("anchored"), anchored_op)), min_size=1, max_size=4))
    return name, ops, draw(st.sampled_from(SEED_NAMES)), draw(st.booleans())


def _apply(seeds: dict[str, targets.Seed], name: str, ops: list[tuple], donor: str, fix_digest: bool) -> bytes:
    seed = seeds[name]
    concrete = [(op[1][0], _anchor(seed, op[1][1]), *op[1][2:]) if op[0] == "anchored" else op for op in ops]
    data = targets.apply_byte_ops(seed.data, concrete, seeds[donor].data)
    return targets.fix_trailer_digest(data) if fix_digest else data


BYTE_BUDGET = _Budget(BUDGET)


@settings(max_examples=max(1, int(400 * SCALE)), **FUZZ_SETTINGS)
@given(case=byte_mutation())
def test_byte_mutations_raise_only_ptm_errors(seeds, scratch, case) -> None:
    if BYTE_BUDGET.spent():
        return
    name, ops, donor, fix_digest = case
    _run(_apply(seeds, name, ops, donor, fix_digest), scratch, BYTE_BUDGET)


json_value = st.one_of(
    st.sampled_from(targets.INTERESTING_JSON),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=20),
)
json_op = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 10_000), json_value),
    st.tuples(st.just("delete"), st.integers(0, 10_000)),
    st.tuples(st.just("dup"), st.integers(0, 10_000)),
)
MANIFEST_BUDGET = _Budget(BUDGET)


@settings(max_examples=max(1, int(400 * SCALE)), **FUZZ_SETTINGS)
@given(name=st.sampled_from(SEED_NAMES), ops=st.lists(json_op, min_size=1, max_size=3), resign=st.booleans())
def test_manifest_mutations_raise_only_ptm_errors(seeds, scratch, name, ops, resign) -> None:
    """Edit the manifest's JSON and re-seal/re-sign it, so every cross-check behind the digest is exercised."""
    if MANIFEST_BUDGET.spent():
        return
    seed = seeds[name]
    doc = targets.mutate_doc(targets.manifest_doc(seed), ops)
    data = targets.rebuild_with_manifest(seed, targets.canonical(doc), resign=resign)
    _run(data, scratch, MANIFEST_BUDGET)


RAW_BUDGET = _Budget(BUDGET / 4)


@settings(max_examples=max(1, int(300 * SCALE)), **FUZZ_SETTINGS)
@given(body=st.binary(max_size=4096), head=st.sampled_from((b"", b"PTMPACK\0\x01\x00\x00\x00")),
       tail=st.sampled_from((b"", b"PTMEND\0\0")))
def test_random_bytes_raise_only_ptm_errors(scratch, body, head, tail) -> None:
    if RAW_BUDGET.spent():
        return
    _run(head + body + tail, scratch, RAW_BUDGET, unpack=False)


def _crashers() -> list:
    index = json.loads((CRASHERS / "index.json").read_text()) if (CRASHERS / "index.json").exists() else {}
    params = []
    for path in sorted(CRASHERS.glob("*.ptm")):
        bug = index.get(path.name, {}).get("open_bug")
        marks = [pytest.mark.xfail(strict=True, reason=f"BUG: {bug}")] if bug else []
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params or [pytest.param(None, marks=pytest.mark.skip(reason="no crashers recorded"))]


@pytest.mark.parametrize("crasher", _crashers())
def test_crashers_replay(crasher: Path, scratch: Path) -> None:
    """Inputs that once broke the contract (found by fuzzing) must now fail with a PtmError only."""
    _run(crasher.read_bytes(), scratch, _Budget(0), known=set())


@pytest.mark.parametrize("shape", [[0, 10**40], [1] * 65], ids=["huge-dimension", "65-dimensions"])
def test_tree_tensor_shape_numpy_cannot_represent(tmp_path: Path, shape: list[int]) -> None:
    """The tree-side twin of the fuzzer's shape crashers (fixed in 41c0d53): a safetensors header with a shape numpy
    cannot hold is refused with a PtmError when read from a tree or packed, never numpy's ValueError."""
    import json as _json
    import struct as _struct

    from ptmpack import api
    from ptmpack.errors import PtmError
    from ptmpack.storage.package import open_package
    from tests._support.trees import write_tree

    tree = tmp_path / "tree"
    write_tree(tree)
    nbytes = 0 if 0 in shape else 4
    header = _json.dumps({"t": {"dtype": "F32", "shape": shape, "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    (tree / "Model" / "model.safetensors").write_bytes(_struct.pack("<Q", len(header)) + header + bytes(nbytes))
    for read in (lambda: open_package(tree).read_tensor("t"),
                 lambda: (api.pack(tree, tmp_path / "m.ptm", force=True), open_package(tmp_path / "m.ptm").read_tensor("t"))):
        try:
            read()
        except PtmError:
            continue
