"""Container benchmarks (issue 2): ptmpack side by side with cp, tar, safetensors and zstd.

Each ``bench_*`` function runs one comparison on the datasets it is given and returns
plain dicts (one per table row) that ``run.py`` prints and stores. Runs of the two sides
are interleaved (A B A B ...) so drift on a shared machine hits both equally, and the
median of the runs is reported. Before every timed run dirty pages are flushed (untimed);
in "cold" mode the page cache is then dropped and the Python environment re-warmed with
``ptmpack --version`` so that only the *data* is cold, not the interpreter's libraries.
"""

from __future__ import annotations

import cProfile
import hashlib
import mmap
import os
import pstats
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import (
    MB,
    PTMPACK,
    TMP,
    MiB,
    Sample,
    Series,
    drop_caches,
    log,
    prefault,
    rm,
    run_cmd,
    safetensors_files,
    time_call,
    tree_bytes,
    wait_idle,
    warm,
)


@dataclass
class Dataset:
    name: str
    tree: Path

    @property
    def nbytes(self) -> int:
        return tree_bytes(self.tree)

    @property
    def ptm(self) -> Path:
        """The raw package of this dataset (made by the pack benchmark, or on demand)."""
        return TMP / f"{self.name}.ptm"


@dataclass
class Ctx:
    runs: int
    runs_big: int
    runs_big_cold: int
    modes: tuple[str, ...]
    """Page-cache states to measure: "warm" and/or "cold"."""
    can_drop: bool
    wait_idle: float = 0.0
    prefault: bool = True
    """Before each timed run, wait up to this many seconds for the rest of the machine to go quiet."""

    def n(self, ds: Dataset, mode: str = "warm") -> int:
        if ds.nbytes <= 2 << 30:
            return self.runs
        return self.runs_big_cold if mode == "cold" else self.runs_big


def _prepare(mode: str, ctx: Ctx, inputs: list[Path], *outputs: Path, write: int | None = None) -> None:
    """Remove outputs (their dirty pages are discarded, not written), flush, set the cache state, and
    pre-fault as much memory as the run will put in the page cache (``write`` bytes, default the
    inputs' size; plus the inputs when cold)."""
    rm(*outputs)
    os.sync()
    if mode == "cold":
        drop_caches()
        run_cmd([PTMPACK, "--version"])  # re-warm the interpreter and libraries, not the data
    else:
        warm(inputs)
    if ctx.wait_idle:
        wait_idle(ctx.wait_idle)
    if ctx.prefault:
        size = sum(tree_bytes(p) for p in inputs)
        prefault((size if write is None else write) + (size if mode == "cold" else 0))


def _mbps(nbytes: int, seconds: float) -> float:
    return nbytes / MB / seconds if seconds > 0 else float("inf")


def _row(test: str, ds: Dataset, mode: str, nbytes: int, ours: Series, other_name: str, other: Series,
         target: str, ratio: float, met: bool) -> dict[str, object]:
    return {
        "test": test, "dataset": ds.name, "cache": mode, "MB": nbytes / MB,
        "ptmpack_s": ours.median(), "ptmpack_MBps": _mbps(nbytes, ours.median()),
        "ptmpack_cpu_s": ours.median("user") + ours.median("sys"), "other_cpu_s": other.median("user") + other.median("sys"),
        "other": other_name, "other_s": other.median(), "other_MBps": _mbps(nbytes, other.median()),
        "ratio": ratio, "target": target, "met": met,
        "ptmpack_spread": ours.spread(), "other_spread": other.spread(),
        "others_cores": ours.median("others") / 2 + other.median("others") / 2,
        "steal_cores": ours.median("steal") / 2 + other.median("steal") / 2,
        "raw": {"ptmpack": ours.to_json(), other_name: other.to_json()},
    }


def _interleave(n: int, sides: dict[str, Callable[[], Sample]]) -> dict[str, Series]:
    out = {k: Series() for k in sides}
    names = list(sides)
    for i in range(n):
        order = names[i % len(names):] + names[: i % len(names)]
        for k in order:
            out[k].add(sides[k]())
    return out


# --------------------------------------------------------------------------- 1. pack raw


def bench_pack(datasets: list[Dataset], ctx: Ctx, rss: dict[str, Series]) -> list[dict[str, object]]:
    rows = []
    for ds in datasets:
        nbytes = ds.nbytes
        for mode in ctx.modes:
            log(f"pack raw: {ds.name} ({mode} cache, {ctx.n(ds, mode)} runs)")
            out_cp, out_tar = TMP / f"cp-{ds.name}", TMP / f"{ds.name}.tar"

            def ours(mode: str = mode, ds: Dataset = ds) -> Sample:
                _prepare(mode, ctx, [ds.tree], ds.ptm)
                return run_cmd([PTMPACK, "pack", str(ds.tree), "-o", str(ds.ptm)])

            def cp(mode: str = mode, ds: Dataset = ds, out: Path = out_cp) -> Sample:
                _prepare(mode, ctx, [ds.tree], out)
                return run_cmd(["cp", "-r", str(ds.tree), str(out)])

            def tar(mode: str = mode, ds: Dataset = ds, out: Path = out_tar) -> Sample:
                _prepare(mode, ctx, [ds.tree], out)
                return run_cmd(["tar", "-cf", str(out), "-C", str(ds.tree), "."])

            sides = {"ptmpack": ours, "cp -r": cp}
            if mode == "warm":  # tar is only a reference; its cold runs would cost minutes on the 4 GiB model
                sides["tar -cf"] = tar
            s = _interleave(ctx.n(ds, mode), sides)
            rm(out_cp, out_tar)
            rss.setdefault(f"pack|{ds.name}", Series()).samples.extend(s["ptmpack"].samples)
            for other in [k for k in s if k != "ptmpack"]:
                ratio = s[other].median() / s["ptmpack"].median()
                rows.append(_row("pack raw", ds, mode, nbytes, s["ptmpack"], other, s[other],
                                 ">= 0.8x cp" if other == "cp -r" else "(reference)", ratio,
                                 ratio >= 0.8 if other == "cp -r" else True))
    return rows


def ensure_ptm(ds: Dataset) -> Path:
    if not ds.ptm.exists():
        log(f"packing {ds.name} (untimed, needed by later benchmarks)")
        run_cmd([PTMPACK, "pack", str(ds.tree), "-o", str(ds.ptm)])
    return ds.ptm


# --------------------------------------------------------------------------- 2. unpack raw


def bench_unpack(datasets: list[Dataset], ctx: Ctx, rss: dict[str, Series]) -> list[dict[str, object]]:
    rows = []
    for ds in datasets:
        ptm = ensure_ptm(ds)
        nbytes = ptm.stat().st_size
        out_dir, out_cp = TMP / f"unpacked-{ds.name}", TMP / f"cp-{ds.name}.ptm"
        for mode in ctx.modes:
            log(f"unpack raw: {ds.name} ({mode} cache, {ctx.n(ds, mode)} runs)")

            def ours(mode: str = mode, out: Path = out_dir, ptm: Path = ptm) -> Sample:
                _prepare(mode, ctx, [ptm], out)
                return run_cmd([PTMPACK, "unpack", str(ptm), "-o", str(out)])

            def cp(mode: str = mode, out: Path = out_cp, ptm: Path = ptm) -> Sample:
                _prepare(mode, ctx, [ptm], out)
                return run_cmd(["cp", str(ptm), str(out)])

            s = _interleave(ctx.n(ds, mode), {"ptmpack": ours, "cp": cp})
            rss.setdefault(f"unpack|{ds.name}", Series()).samples.extend(s["ptmpack"].samples)
            ratio = s["cp"].median() / s["ptmpack"].median()
            rows.append(_row("unpack raw", ds, mode, nbytes, s["ptmpack"], "cp .ptm", s["cp"], ">= 0.8x cp",
                             ratio, ratio >= 0.8))
        rm(out_dir, out_cp)
    return rows


# --------------------------------------------------------------------------- 6. verify (RSS)


def bench_memory(ds: Dataset, ctx: Ctx, rss: dict[str, Series], *, zstd: bool) -> list[dict[str, object]]:
    """Peak memory of pack, unpack and verify on the big model (adds runs where pack/unpack did not run)."""
    ptm = ensure_ptm(ds)
    log(f"verify: {ds.name} ({ctx.n(ds)} runs, warm cache)")
    key = f"verify|{ds.name}"
    for _ in range(ctx.n(ds)):
        _prepare("warm", ctx, [ptm], write=0)
        rss.setdefault(key, Series()).add(run_cmd([PTMPACK, "verify", str(ptm)]))
    if f"pack|{ds.name}" not in rss:
        _prepare("warm", ctx, [ds.tree], ds.ptm)
        rss.setdefault(f"pack|{ds.name}", Series()).add(run_cmd([PTMPACK, "pack", str(ds.tree), "-o", str(ds.ptm)]))
    if f"unpack|{ds.name}" not in rss:
        out = TMP / f"unpacked-{ds.name}"
        _prepare("warm", ctx, [ptm], out)
        rss.setdefault(f"unpack|{ds.name}", Series()).add(run_cmd([PTMPACK, "unpack", str(ptm), "-o", str(out)]))
        rm(out)
    if zstd:
        log(f"pack --compress zstd: {ds.name} (1 run, for its memory)")
        out = TMP / f"{ds.name}.zstd.ptm"
        _prepare("warm", ctx, [ds.tree], out)
        rss.setdefault(f"pack --compress zstd|{ds.name}", Series()).add(
            run_cmd([PTMPACK, "pack", str(ds.tree), "-o", str(out), "--compress", "zstd"]))
        rm(out)
    nbytes = ds.nbytes
    rows = []
    for key, series in rss.items():
        cmd, name = key.split("|")
        if name != ds.name:
            continue
        peak, anon = series.maximum("maxrss"), series.maximum("peak_anon")
        rows.append({
            "command": f"ptmpack {cmd}", "dataset": name, "runs": len(series.samples),
            "wall_s": series.median(), "MBps": _mbps(nbytes, series.median()),
            "user_s": series.median("user"), "sys_s": series.median("sys"),
            "minflt": int(series.median("minflt")), "majflt": int(series.median("majflt")),
            "peak_rss_MiB": peak / MiB, "peak_anon_MiB": anon / MiB,
            "target": "<= 256 MiB", "met_rss": peak <= 256 * MiB, "met_anon": anon <= 256 * MiB,
        })
    return rows


# --------------------------------------------------------------------------- 3. read one tensor


def bench_read_one(ds: Dataset, ctx: Ctx, names: list[str], runs: int) -> list[dict[str, object]]:
    from safetensors import safe_open

    from ptmpack.storage.package import open_package

    ptm = ensure_ptm(ds)
    where = {}
    for f in safetensors_files(ds.tree):
        with safe_open(str(f), "np") as st:
            where.update({k: f for k in st.keys()})  # noqa: SIM118 - safe_open has keys(), no __iter__
    rows = []
    for name in names:
        src = where[name]
        with open_package(ptm) as p:
            nbytes = p.read_tensor(name).nbytes
        for mode in ctx.modes:
            log(f"read one tensor: {name} ({nbytes / MB:.1f} MB, {mode} cache, {runs} runs)")

            def ours(name: str = name, mode: str = mode) -> Sample:
                if mode == "cold":
                    drop_caches()

                def go() -> None:
                    with open_package(ptm) as p:
                        a = np.array(p.read_tensor(name))  # materialise: read_tensor is a zero-copy view
                    assert a.size

                return time_call(go)

            def theirs(name: str = name, mode: str = mode, src: Path = src) -> Sample:
                if mode == "cold":
                    drop_caches()

                def go() -> None:
                    with safe_open(str(src), "np") as st:
                        a = st.get_tensor(name)
                    assert a.size

                return time_call(go)

            extra: dict[str, float] = {}
            if mode == "warm":
                ours()
                theirs()
                opens = Series()
                sopens = Series()
                for _ in range(runs):
                    opens.add(time_call(lambda: open_package(ptm).close()))
                    sopens.add(time_call(lambda src=src: safe_open(str(src), "np").keys()))
                extra = {"ptmpack_open_s": opens.median(), "safe_open_s": sopens.median()}
            s = _interleave(runs, {"ptmpack": ours, "safetensors": theirs})
            ratio = s["ptmpack"].median() / s["safetensors"].median()
            row = _row("read 1 tensor", ds, mode, nbytes, s["ptmpack"], "safe_open.get_tensor", s["safetensors"],
                       "<= 2x time", ratio, ratio <= 2.0)
            row["tensor"] = name
            row.update(extra)
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- 4. load all tensors


def bench_load_all(ds: Dataset, ctx: Ctx) -> list[dict[str, object]]:
    from safetensors.numpy import load_file

    from ptmpack.storage.package import open_package

    ptm = ensure_ptm(ds)
    files = safetensors_files(ds.tree)
    biggest = max(f.stat().st_size for f in files)  # load_file holds one whole shard at a time
    with open_package(ptm) as p:
        nbytes = sum(t.end - t.begin for _, t in p.tensors())
    rows = []
    for mode in ctx.modes:
        log(f"load all tensors: {ds.name} ({mode} cache, {ctx.n(ds, mode)} runs)")

        def ours(mode: str = mode) -> Sample:
            _prepare(mode, ctx, [ptm], write=biggest)

            def go() -> None:
                total = 0
                with open_package(ptm) as p:
                    for _, a in p.iter_tensors():
                        total += np.array(a).nbytes  # one copy each, as load_file makes
                assert total == nbytes

            return time_call(go)

        def theirs(mode: str = mode) -> Sample:
            _prepare(mode, ctx, files, write=biggest)

            def go() -> None:
                total = 0
                for f in files:
                    total += sum(a.nbytes for a in load_file(str(f)).values())
                assert total == nbytes

            return time_call(go)

        s = _interleave(ctx.n(ds, mode), {"ptmpack": ours, "safetensors": theirs})
        ratio = s["safetensors"].median() / s["ptmpack"].median()
        rows.append(_row("load all tensors", ds, mode, nbytes, s["ptmpack"], "safetensors.numpy.load_file",
                         s["safetensors"], ">= 1.0x", ratio, ratio >= 1.0))
    return rows


# --------------------------------------------------------------------------- 5. zstd


def bench_zstd(datasets: list[Dataset], ctx: Ctx) -> list[dict[str, object]]:
    from ptmpack import api
    from ptmpack.format import spec
    from ptmpack.storage.inspect import codec_names
    from ptmpack.storage.package import open_package

    rows = []
    for ds in datasets:
        files = safetensors_files(ds.tree)
        st = files[0]
        out_ptm, out_lib, out_zst = TMP / f"{ds.name}.zstd.ptm", TMP / f"{ds.name}.lib.zstd.ptm", TMP / f"{ds.name}.zst"
        tree_n, st_n = ds.nbytes, st.stat().st_size
        log(f"zstd: {ds.name} ({ctx.runs} runs, warm cache)")

        def cli(ds: Dataset = ds, out: Path = out_ptm) -> Sample:
            _prepare("warm", ctx, [ds.tree], out)
            return run_cmd([PTMPACK, "pack", str(ds.tree), "-o", str(out), "--compress", "zstd"])

        def lib(ds: Dataset = ds, out: Path = out_lib) -> Sample:
            _prepare("warm", ctx, [ds.tree], out)
            config = api.PackConfig(compression=spec.Compression.ZSTD)
            return time_call(lambda: api.pack(ds.tree, out, config))

        def zstd(st: Path = st, out: Path = out_zst) -> Sample:
            _prepare("warm", ctx, [st], out)
            return run_cmd(["zstd", "-3", "-T0", "-q", "-f", str(st), "-o", str(out)])

        s = _interleave(ctx.runs, {"cli": cli, "lib": lib, "zstd": zstd})
        with open_package(out_ptm) as p:
            entry = next(e for e in p.reader.entries if e.path == f"Model/{st.relative_to(ds.tree / 'Model')}")
            ours_ratio = entry.raw_length / entry.stored_length
            transform = codec_names(entry.codec)["transform"]
        zstd_ratio = st_n / out_zst.stat().st_size
        whole_ratio = tree_n / out_ptm.stat().st_size
        cli_mbps, lib_mbps, z_mbps = _mbps(tree_n, s["cli"].median()), _mbps(tree_n, s["lib"].median()), \
            _mbps(st_n, s["zstd"].median())
        rows.append({
            "dataset": ds.name, "file": st.name, "MB": st_n / MB, "transform": transform,
            "ptmpack_ratio": ours_ratio, "ptm_file_ratio": whole_ratio, "zstd_ratio": zstd_ratio,
            "ratio_gain": ours_ratio / zstd_ratio,
            "cli_s": s["cli"].median(), "cli_MBps": cli_mbps, "lib_s": s["lib"].median(), "lib_MBps": lib_mbps,
            "zstd_s": s["zstd"].median(), "zstd_MBps": z_mbps,
            "speed_cli": cli_mbps / z_mbps, "speed_lib": lib_mbps / z_mbps,
            "met_ratio": ours_ratio / zstd_ratio >= 1.1, "met_speed_cli": cli_mbps >= z_mbps,
            "met_speed_lib": lib_mbps >= z_mbps,
            "raw": {k: v.to_json() for k, v in s.items()},
        })
        rm(out_ptm, out_lib, out_zst)
    return rows


# --------------------------------------------------------------------------- profiling


def _top(prof: cProfile.Profile, total: float, n: int = 12) -> list[dict[str, object]]:
    stats = pstats.Stats(prof)
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = "~" if filename == "~" else f"{Path(filename).name}:{line}"
        rows.append({"function": f"{func} ({where})", "calls": nc, "tottime_s": tt, "cumtime_s": ct,
                     "share": tt / total if total else 0.0})
    rows.sort(key=lambda r: -float(r["tottime_s"]))  # type: ignore[arg-type]
    return rows[:n]


def profile_big(ds: Dataset, ctx: Ctx) -> dict[str, object]:
    """cProfile of api.pack / api.unpack / api.verify on the big model (warm cache) plus micro-timers
    that split the raw copy path into read, sha256, write, mmap page faults and kernel copy."""
    from ptmpack import api

    out: dict[str, object] = {}
    ptm = ensure_ptm(ds)
    nbytes = ds.nbytes
    for verb in ("pack", "unpack", "verify"):
        target = TMP / f"profile-{verb}"
        src = [ds.tree] if verb == "pack" else [ptm]
        call = {"pack": lambda t=target: api.pack(ds.tree, t),
                "unpack": lambda t=target: api.unpack(ptm, t),
                "verify": lambda: api.verify(ptm)}[verb]
        log(f"profiling api.{verb} on {ds.name}")
        _prepare("warm", ctx, src, target, write=0 if verb == "verify" else None)
        prof = cProfile.Profile()
        sample = time_call(lambda call=call, prof=prof: prof.runcall(call))
        out[verb] = {"wall_s": sample.wall, "MBps": _mbps(nbytes, sample.wall), "user_s": sample.user,
                     "sys_s": sample.sys, "minflt": sample.minflt, "majflt": sample.majflt,
                     "top": _top(prof, sample.wall)}
        rm(target)
    out["micro"] = micro(safetensors_files(ds.tree)[0], ctx)
    return out


MICRO_BYTES = 512 * MiB


def micro(shard: Path, ctx: Ctx) -> list[dict[str, object]]:
    """Split the raw copy path into its parts on the first 512 MiB of a shard (warm cache, median of runs).

    Each step reads ``src`` and (where it writes) writes a new file, 8 MiB at a time, as the
    library does. "2nd thread" steps hash on a helper thread while this one reads and writes
    (hashlib and file I/O release the GIL), the pattern the writer and reader use since 2c05f7a.
    """
    src = TMP / "micro.src"
    with open(shard, "rb") as f, open(src, "wb") as o:
        o.write(f.read(MICRO_BYTES))
    n = src.stat().st_size
    dst = TMP / "micro.out"
    block = 8 * MiB
    rows = []

    def run(label: str, fn: Callable[[], object], note: str = "") -> None:
        s = Series()
        for _ in range(max(3, ctx.runs)):
            _prepare("warm", ctx, [src], dst)
            s.add(time_call(fn))
        rows.append({"step": label, "file": f"{n / MB:,.0f} MB", "s": s.median(), "MBps": _mbps(n, s.median()),
                     "cpu_s": s.median("user") + s.median("sys"), "sys_s": s.median("sys"),
                     "minflt": int(s.median("minflt")), "others": s.median("others"), "note": note})
        rm(dst)

    def blocks() -> Iterator[bytes]:
        with open(src, "rb", buffering=0) as f:
            while b := f.read(block):
                yield b

    def pread_blocks() -> Iterator[bytes]:
        fd = os.open(src, os.O_RDONLY)
        try:
            for pos in range(0, n, block):
                yield os.pread(fd, min(block, n - pos), pos)
        finally:
            os.close(fd)

    def read_only() -> None:
        buf = bytearray(block)
        with open(src, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass

    def sha_only() -> None:
        h = hashlib.sha256()
        for b in blocks():
            h.update(b)

    def write_only() -> None:
        buf = bytes(block)
        with open(dst, "wb") as o:
            for _ in range(0, n, block):
                o.write(buf)

    def copy(hash_: str, source: Callable[[], Iterator[bytes]] = blocks) -> Callable[[], None]:
        def go() -> None:
            h = hashlib.sha256()
            with open(dst, "wb") as o, ThreadPoolExecutor(1) as pool:
                for b in source():
                    if hash_ == "thread":
                        pending = pool.submit(h.update, b)
                        o.write(b)
                        pending.result()
                    else:
                        if hash_ == "serial":
                            h.update(b)
                        o.write(b)
        return go

    def kernel_copy() -> None:
        with open(src, "rb") as f, open(dst, "wb") as o:
            left = n
            while left:
                k = os.copy_file_range(f.fileno(), o.fileno(), left)
                if not k:
                    break
                left -= k

    def kernel_copy_hash_thread() -> None:
        """copy_file_range (no user-space copy of the data) with sha256 of the same bytes on a 2nd thread."""
        with ThreadPoolExecutor(1) as pool:
            hashed = pool.submit(sha_only)
            kernel_copy()
            hashed.result()

    def mmap_write(hash_: bool) -> None:
        h = hashlib.sha256()
        with open(src, "rb") as f, open(dst, "wb") as o:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            view = memoryview(mm)
            for pos in range(0, n, block):
                part = view[pos: pos + block]
                if hash_:
                    h.update(part)
                o.write(part)
                part.release()
            view.release()
            mm.close()

    log(f"micro-benchmarks on {n / MB:.0f} MB of {shard.name}")
    run("read 8 MiB blocks (read only)", read_only)
    run("sha256 of 8 MiB blocks (read + hash)", sha_only)
    run("write 8 MiB blocks to a new file (write only)", write_only)
    run("read + write (copy, no hash)", copy("none"))
    run("read + sha256 + write, serial", copy("serial"), "pack raw before 2c05f7a")
    run("read + write, sha256 on a 2nd thread", copy("thread"), "pack raw now (writer._raw)")
    run("pread + write, sha256 on a 2nd thread", copy("thread", pread_blocks), "unpack raw now (reader.iter_entry)")
    run("mmap slices + sha256 + write, serial", lambda: mmap_write(True), "unpack raw before 2c05f7a")
    run("mmap slices + write (no hash)", lambda: mmap_write(False))
    run("os.copy_file_range (what cp does)", kernel_copy)
    run("os.copy_file_range, sha256 on a 2nd thread", kernel_copy_hash_thread, "suggested pack/unpack raw path")
    rm(src)
    return rows
