"""The long reader fuzzer behind ``make fuzz``: coverage-guided with atheris, or a random mutator.

    python fuzz/fuzz_reader.py                      # atheris (libFuzzer), 10 minutes
    python fuzz/fuzz_reader.py --seconds 3600       # longer
    python fuzz/fuzz_reader.py --engine random      # no atheris: random mutations, keeps going past bugs

Both engines feed the same inputs as ``tests/test_fuzz.py`` through ``fuzz/targets.py``: real
seed packages (plain, zstd, encrypted, signed, encrypted+signed) mutated byte-wise or, behind a
re-sealed, re-signed manifest, JSON-wise; every input is verified, inspected, read and
unpacked, and anything but a PtmError, a hang (``--timeout``) or an allocation over the
format's bounds is a bug. Packages that broke the contract are written to ``fuzz/out/``
(``crash-<sha256>.ptm``, with the error in ``.txt``) to be kept in ``fixtures/crashers/``.

With atheris, a libFuzzer input that starts with the package magic is read as a package as it
is (the corpus in ``fuzz/out/corpus`` starts from the seeds and grows with new coverage);
any other input drives the structured mutators through a FuzzedDataProvider.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import sys
import time
import traceback
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "fuzz" / "out"
sys.path.insert(0, str(REPO))


def _save(data: bytes, exc: BaseException, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"crash-{hashlib.sha256(data).hexdigest()[:16]}.ptm"
    path.write_bytes(data)
    cause = exc.__cause__ or exc
    text = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
    path.with_suffix(".txt").write_text(f"{exc}\n\n{text}")
    return path


def _random_case(rng: random.Random, seeds: dict, targets) -> bytes:
    names = sorted(seeds)
    seed = seeds[rng.choice(names)]
    if rng.random() < 0.4:
        ops = []
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(("replace", "replace", "delete", "dup"))
            which = rng.randrange(10_000)
            if kind == "replace":
                value = rng.choice(targets.INTERESTING_JSON) if rng.random() < 0.7 else rng.randint(-(2**66), 2**66)
                ops.append((kind, which, value))
            else:
                ops.append((kind, which))
        doc = targets.mutate_doc(targets.manifest_doc(seed), ops)
        return targets.rebuild_with_manifest(seed, targets.canonical(doc), resign=rng.random() < 0.8)
    ops = []
    size = len(seed.data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(size) if rng.random() < 0.5 else rng.choice((0, 8, 12, 16, 20, 44, 48, 52, 4096, 4100,
                                                                           4108, 4112, 4116, 4124, 4132, size - 64,
                                                                           size - 56, size - 8))
        kind = rng.choice(("flip", "set", "int", "truncate", "delete", "insert", "splice"))
        if kind == "flip":
            ops.append((kind, pos, rng.randint(1, 255)))
        elif kind == "set":
            ops.append((kind, pos, rng.randint(0, 255)))
        elif kind == "int":
            ops.append((kind, pos, rng.choice((1, 2, 4, 8)), rng.choice(targets.INTERESTING_INTS)))
        elif kind == "truncate":
            ops.append((kind, pos))
        elif kind == "delete":
            ops.append((kind, pos, rng.randint(1, 5000)))
        elif kind == "insert":
            ops.append((kind, pos, rng.randbytes(rng.randint(1, 64))))
        else:
            ops.append((kind, pos, rng.randrange(size), rng.randint(1, 8192)))
    data = targets.apply_byte_ops(seed.data, ops, seeds[rng.choice(names)].data)
    return targets.fix_trailer_digest(data) if rng.random() < 0.5 else data


def run_random(seconds: float, timeout: float, seed: int, out: Path) -> int:
    from fuzz import targets

    rng = random.Random(seed)
    found: dict[str, Path] = {}
    tracemalloc.start()  # once: starting and stopping it per input fragments the heap
    with targets.scratch_dir() as scratch:
        seeds = targets.make_seeds(scratch)
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            data = _random_case(rng, seeds, targets)
            n += 1
            try:
                with targets.time_limit(timeout):
                    targets.exercise(data, scratch / "case")
            except (targets.BugFound, targets.Hang) as exc:
                key = targets.bug_signature(exc)
                if key not in found:
                    found[key] = _save(data, exc, out)
                    print(f"[{n}] new bug: {key} -> {found[key]}", flush=True)
    print(f"random engine: {n} inputs in {seconds:.0f} s, {len(found)} distinct bugs", flush=True)
    for key, path in sorted(found.items()):
        print(f"  {key}: {path}")
    return 1 if found else 0


def run_atheris(seconds: float, timeout: float, out: Path, extra: list[str]) -> int:
    import atheris

    with atheris.instrument_imports(include=["ptmpack"]):
        import ptmpack.api  # noqa: F401
        from fuzz import targets

    tracemalloc.start()  # once: starting and stopping it per input fragments the heap
    # libFuzzer ends the process with exit(), past any cleanup: use a fixed scratch folder, emptied here.
    scratch = out / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    seeds = targets.make_seeds(scratch)
    names = sorted(seeds)
    known = targets.known_bugs()
    if known:
        print(f"not stopping for the open bugs already kept in fixtures/crashers/: {sorted(known)}", flush=True)
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for name, s in seeds.items():
        (corpus / f"seed-{name}.ptm").write_bytes(s.data)

    def one_input(data: bytes) -> None:
        if data.startswith(b"PTMPACK"):
            package = data
        else:
            fdp = atheris.FuzzedDataProvider(data)
            seed = seeds[names[fdp.ConsumeIntInRange(0, len(names) - 1)]]
            if fdp.ConsumeBool():
                ops = []
                for _ in range(fdp.ConsumeIntInRange(1, 3)):
                    which = fdp.ConsumeIntInRange(0, 10_000)
                    choice = fdp.ConsumeIntInRange(0, 2)
                    if choice == 0:
                        pool = targets.INTERESTING_JSON
                        ops.append(("replace", which, pool[fdp.ConsumeIntInRange(0, len(pool) - 1)]))
                    else:
                        ops.append(("delete" if choice == 1 else "dup", which))
                doc = targets.mutate_doc(targets.manifest_doc(seed), ops)
                package = targets.rebuild_with_manifest(seed, targets.canonical(doc), resign=fdp.ConsumeBool())
            else:
                ops = []
                for _ in range(fdp.ConsumeIntInRange(1, 4)):
                    pos = fdp.ConsumeIntInRange(0, len(seed.data) - 1)
                    kind = fdp.ConsumeIntInRange(0, 3)
                    if kind == 0:
                        ops.append(("flip", pos, fdp.ConsumeIntInRange(1, 255)))
                    elif kind == 1:
                        ints = targets.INTERESTING_INTS
                        ops.append(("int", pos, (1, 2, 4, 8)[fdp.ConsumeIntInRange(0, 3)],
                                    ints[fdp.ConsumeIntInRange(0, len(ints) - 1)]))
                    elif kind == 2:
                        ops.append(("truncate", pos))
                    else:
                        ops.append(("insert", pos, fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64))))
                package = targets.apply_byte_ops(seed.data, ops)
                if fdp.ConsumeBool():
                    package = targets.fix_trailer_digest(package)
        try:
            with targets.time_limit(timeout):
                targets.exercise(package, scratch / "case")
        except (targets.BugFound, targets.Hang) as exc:
            key = targets.bug_signature(exc)
            if key in known:
                return
            path = _save(package, exc, out)
            print(f"bug: {key} -> {path}", flush=True)
            raise

    args = [sys.argv[0], str(corpus), f"-max_total_time={int(seconds)}", f"-timeout={int(timeout) + 5}",
            "-max_len=131072", "-rss_limit_mb=4096", f"-artifact_prefix={out}/", *extra]
    atheris.Setup(args, one_input)
    atheris.Fuzz()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto",
                    help="auto: atheris when installed, else random")
    ap.add_argument("--seconds", type=float, default=600, help="total fuzzing time (default 600)")
    ap.add_argument("--timeout", type=float, default=10, help="seconds one input may take (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="random engine: RNG seed")
    ap.add_argument("--out", type=Path, default=OUT, help=f"where crashers go (default {OUT})")
    args, extra = ap.parse_known_args(argv)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            print("atheris is not installed (pip install atheris); using the random engine", file=sys.stderr)
            engine = "random"
    if engine == "atheris":
        return run_atheris(args.seconds, args.timeout, args.out, extra)
    return run_random(args.seconds, args.timeout, args.seed, args.out)


if __name__ == "__main__":
    sys.exit(main())
