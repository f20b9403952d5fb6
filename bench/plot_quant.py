"""Perplexity vs package size for bench_quant.py (matplotlib; run with the peer venv's Python).

    python bench/plot_quant.py bench/out/quant.json bench/out/quant_ppl_vs_size.png

One panel per evaluation text, one line per method through its W3 and W4 g64 points (x: the
package size), the float model as a dashed level. llm-compressor writes the same
pack-quantized layout, so its points sit at the size of ptmpack's GPTQ package of the same bits.
Rows measured at one bit width only (e.g. GPTQ without act-order) are single markers.
"""

from __future__ import annotations

import json
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

TEXTS = {"lee_unseen": "Lee, unseen half", "enwiki": "enwiki articles", "technical": "technical prose"}


def methods(results: dict) -> dict[str, list[tuple[float, dict[str, float]]]]:
    """Method label -> [(size MB, perplexities)] sorted by size, from ptmpack's rows and the peer's."""
    rows = results.get("rows", {})
    out: dict[str, list[tuple[float, dict[str, float]]]] = {}
    for name, r in rows.items():
        m = re.fullmatch(r"(\w+) W(\d) g64(.*)", name)
        if not m:
            continue
        method, rest = m.group(1), m.group(3).strip()
        if method == "GPTQ" and not rest:
            rest = f"{r.get('order') or 'linear'} order"
        label = f"ptmpack {method}" + (f" ({rest})" if rest else "")
        out.setdefault(label, []).append((r["size"] / 1e6, r["perplexity"]))
    for r in (results.get("peer") or {}).get("rows", []):
        same = rows.get(f"GPTQ W{r['scheme']['bits']} g64")
        if same:
            out.setdefault("llm-compressor GPTQ", []).append((same["size"] / 1e6, r["perplexity"]))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in out.items()}


def main() -> None:
    with open(sys.argv[1]) as f:
        results = json.load(f)
    fp = results.get("rows", {}).get("FP")
    lines = methods(results)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.5), sharex=True)
    for ax, (text, title) in zip(axes, TEXTS.items(), strict=True):
        for label, points in lines.items():
            xs = [p[0] for p in points]
            ys = [p[1][text] for p in points]
            style = {"marker": "x", "color": "black", "linestyle": ":"} if label.startswith("llm") else {"marker": "o"}
            ax.plot(xs, ys, label=label, **style)
        if fp:
            ax.axhline(fp["perplexity"][text], color="grey", linestyle="--", linewidth=1, label="float32")
        ax.set_title(title)
        ax.set_xlabel("package size (MB): W3 g64 left, W4 g64 right")
        ax.set_yscale("log")
    axes[0].set_ylabel("perplexity (4x512 tokens)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct: perplexity vs package size")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(sys.argv[2], dpi=120)


if __name__ == "__main__":
    main()
