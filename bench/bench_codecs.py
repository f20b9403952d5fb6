"""Plain zstd vs the exponent-plane transform on real float32 weights, chunk by chunk.

Usage: ``python bench/bench_codecs.py [FILE] [--level N] [--chunk-mib N]``. Without FILE
it uses all-MiniLM-L6-v2's model.safetensors from ``tests.realweights`` (downloaded once
from the package registry). Each variant codes the file as independent chunks on one
thread, like the pack writer does per chunk; speeds are raw megabytes (10^6 bytes) per
second, the median of 5 runs. When the zstd command-line tool is installed, it is timed on
the same file as a reference (``-T1``, one frame over the whole file).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from ptmpack.codecs import Transform, choose_transform, decode_chunk, encode_chunk

RUNS = 5


def median_seconds(work: Callable[[], object]) -> float:
    """Median wall time of RUNS calls of ``work``."""
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_transform(chunks: list[memoryview], transform: Transform, level: int) -> tuple[float, float, float]:
    """(ratio, encode MB/s, decode MB/s) of coding every chunk with ``transform``."""
    raw = sum(len(c) for c in chunks)
    stored = [encode_chunk(c, transform, level) for c in chunks]
    for chunk, body in zip(chunks, stored, strict=True):
        if decode_chunk(body, len(chunk), transform) != chunk:
            raise SystemExit(f"{transform.name}: round trip failed")
    encode = median_seconds(lambda: [encode_chunk(c, transform, level) for c in chunks])
    decode = median_seconds(lambda: [decode_chunk(b, len(c), transform) for c, b in zip(chunks, stored, strict=True)])
    return raw / sum(map(len, stored)), raw / encode / 1e6, raw / decode / 1e6


def bench_cli(zstd: str, path: Path, level: int) -> tuple[float, float, float]:
    """(ratio, compress MB/s, decompress MB/s) of the zstd tool, single-threaded, output discarded.

    The times include starting the process and reading the file from the page cache.
    """
    raw = path.stat().st_size
    with tempfile.TemporaryDirectory() as scratch:
        frame = Path(scratch) / "file.zst"
        subprocess.run([zstd, f"-{level}", "-T1", "-q", "-f", str(path), "-o", str(frame)], check=True)
        compress = [zstd, f"-{level}", "-T1", "-q", "-c", str(path)]
        encode = median_seconds(lambda: subprocess.run(compress, stdout=subprocess.DEVNULL, check=True))
        decompress = [zstd, "-d", "-q", "-c", str(frame)]
        decode = median_seconds(lambda: subprocess.run(decompress, stdout=subprocess.DEVNULL, check=True))
        return raw / frame.stat().st_size, raw / encode / 1e6, raw / decode / 1e6


def default_file() -> Path:
    try:
        from tests._support.realweights import minilm_dir
    except ImportError:
        raise SystemExit("no FILE given and tests/realweights.py is missing; pass a .safetensors path") from None
    return minilm_dir() / "model.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, help="file to code (default: MiniLM float32 weights)")
    parser.add_argument("--level", type=int, default=3, help="zstd level (default 3)")
    parser.add_argument("--chunk-mib", type=int, default=4, help="chunk size in MiB (default 4)")
    args = parser.parse_args()
    path = args.file or default_file()
    data = memoryview(path.read_bytes())
    size = args.chunk_mib << 20
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    chosen = choose_transform(chunks[0], 4, args.level)
    print(f"{path} ({len(data) / 1e6:.1f} MB, {len(chunks)} chunks of {args.chunk_mib} MiB, level {args.level})")
    print(f"choose_transform(first chunk, width 4) -> {chosen.name}")
    print(f"{'variant':<34}{'ratio':>8}{'enc MB/s':>10}{'dec MB/s':>10}")
    plain = bench_transform(chunks, Transform.NONE, args.level)
    planes = bench_transform(chunks, Transform.EXP_PLANES_32, args.level)
    rows = [(f"zstd -{args.level} per chunk", plain), (f"EXP_PLANES_32 + zstd -{args.level}", planes)]
    zstd = shutil.which("zstd")
    if zstd:
        rows.append((f"zstd CLI -{args.level} -T1 (whole file)", bench_cli(zstd, path, args.level)))
    for name, (ratio, enc, dec) in rows:
        print(f"{name:<34}{ratio:>8.4f}{enc:>10.0f}{dec:>10.0f}")
    print(f"ratio of ratios (planes / zstd): {planes[0] / plain[0]:.4f}  (goal >= 1.1)")
    print(f"speed vs zstd: encode x{planes[1] / plain[1]:.2f}, decode x{planes[2] / plain[2]:.2f}  (goal >= 1)")


if __name__ == "__main__":
    main()
