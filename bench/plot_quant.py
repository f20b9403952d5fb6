"""Perplexity vs package size for bench_quant.py (matplotlib; run with the peer venv's Python).

    python bench/plot_quant.py bench/out/quant.json bench/out/quant_ppl_vs_size.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    with open(sys.argv[1]) as f:
        results = json.load(f)
    rows = results.get("rows", {})
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharex=True)
    for ax, text in zip(axes, ("lee_unseen", "enwiki", "technical"), strict=True):
        for name, r in rows.items():
            mb = r["size"] / 1e6
            ax.scatter(mb, r["perplexity"][text], label=name)
            ax.annotate(name, (mb, r["perplexity"][text]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for r in (results.get("peer") or {}).get("rows", []):
            w4 = rows.get(f"GPTQ W{r['scheme']['bits']} g64")
            if w4:
                ax.scatter(w4["size"] / 1e6, r["perplexity"][text], marker="x", color="black")
                ax.annotate(f"llm-compressor W{r['scheme']['bits']}", (w4["size"] / 1e6, r["perplexity"][text]),
                            fontsize=7, xytext=(3, -9), textcoords="offset points")
        ax.set_title(text)
        ax.set_xlabel("package size (MB)")
        ax.set_yscale("log")
    axes[0].set_ylabel("perplexity (4x512 tokens)")
    fig.suptitle("SmolLM2-135M-Instruct: perplexity vs package size")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)


if __name__ == "__main__":
    main()
