"""The one quality measurement every compress step is wrapped in (:func:`ptmpack.compress.pipeline.run_step`).

One held-out text for every method, so ``--quant ptq`` and ``--quant gptq`` (and every structure
step) report numbers on the same text: the last :data:`~ptmpack.compress.eval.probe.HELD_OUT`
non-empty lines of the ``--calib`` file (a one-line text: its last sentences), or, without
``--calib``, the built-in sentences :data:`~ptmpack.compress.eval.probe.DEFAULT_TEXT`.

* decoders: the perplexity of the first :data:`MAX_TOKENS` tokens of those lines joined by newlines;
* encoders: the mean cosine, after the step against before it, of each line's pooled embedding.

Beside the metric, one snapshot holds each transformer layer's output on the text (the
relative error per layer), the tensor bytes and the FLOPs per token (from the shapes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.eval.probe import calibration_text, feeds_for, held_out_lines
from ptmpack.compress.report import Quality
from ptmpack.compress.spec import CompressSpec
from ptmpack.compress.tree.documents import read_json

MAX_TOKENS = 128
"""Tokens of the held-out text a decoder's perplexity is measured on (fewer for a shorter context)."""

_LAYER = re.compile(r"layers\.(\d+)\.")
_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h)\.\d+\.")


@dataclass(frozen=True)
class HeldOut:
    """The held-out text of a run: its lines and where they came from."""

    lines: tuple[str, ...]
    source: str
    """The ``--calib`` file's name (no directories), or ``"built-in"``."""


def held_out(spec: CompressSpec) -> HeldOut:
    """The held-out text for ``spec``: the last lines of ``--calib``, else the built-in sentences.

    Raises:
        UsageError: the ``--calib`` file cannot be read as UTF-8 text.
    """
    text = calibration_text(spec)
    return HeldOut(tuple(held_out_lines(text)), "built-in" if spec.calib is None else Path(spec.calib).name)


def flops_per_token(shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any], seq: int = 128) -> int:
    """Forward FLOPs per token at sequence length ``seq``, from the tensors' shapes.

    Every 2-D ``*.weight`` inside the transformer layers and the LM head costs ``2·out·in`` (a
    multiply-add per weight); attention scores and the weighted sum cost ``4·seq·width`` per
    layer, ``width`` being the query projection's output width. Embedding look-ups are free.
    Shapes, not config, decide, so a pruned checkpoint is costed as it is.
    """
    total = 0
    for name, shape in shapes.items():
        if len(shape) != 2 or not name.endswith(".weight") or "embed" in name:
            continue
        if _BLOCK.search(name) or name == "lm_head.weight":
            total += 2 * int(shape[0]) * int(shape[1])
            if name.endswith(("attention.self.query.weight", "self_attn.q_proj.weight")):
                total += 4 * seq * int(shape[0])
    if config.get("model_type") != "bert" and "lm_head.weight" not in shapes:
        emb = next((s for n, s in shapes.items() if n.endswith("embed_tokens.weight")), None)
        if emb is not None:
            total += 2 * int(emb[0]) * int(emb[1])
    return total


@dataclass
class Snapshot:
    """What one model computed on the held-out text."""

    kind: str
    layers: dict[str, np.ndarray]
    metric: float
    embeddings: np.ndarray | None
    size: int
    flops: int


def _layer_outputs(model: Any) -> list[str]:
    """The output variable of each transformer layer: the last operator whose name starts with ``layers.i.``."""
    last: dict[int, str] = {}
    for node in model.main_graph.operators:
        m = _LAYER.match(node.name)
        if m:
            outs = [n for names in node.outputs.values() for n in names]
            last[int(m.group(1))] = outs[0]
    return [last[i] for i in sorted(last)]


def snapshot(tree: Path, text: HeldOut) -> Snapshot:
    """Run the tree's model on the held-out text and keep what :func:`compare` needs.

    Sizes and FLOPs come from the safetensors headers; a quantized linear (``X.weight_packed``) is
    costed by its ``X.weight_shape`` (two integers read), so quantizing changes no FLOPs count.

    Raises:
        PtmError: the tree has no runnable graph or tokenizer.
    """
    from ptmpack.compress.tree.weights import WeightFiles
    from ptmpack.ir.runner import LoadedModel, embed_texts, sequence_nll

    weights = WeightFiles(Path(tree) / "Model")
    shapes = {n: tuple(weights.spec(n).shape) for n in weights.names()}
    for name in [n for n in shapes if n.endswith(".weight_shape")]:  # compressed-tensors' [out, in] of a packed weight
        shapes[name.removesuffix("_shape")] = tuple(int(v) for v in weights.read(name))
    size, flops = weights.nbytes(), flops_per_token(shapes, read_json(Path(tree) / "Model" / "config.json"))
    lines = list(text.lines)
    with LoadedModel.open(tree) as lm:
        names = _layer_outputs(lm.model)
        limit = lm.config.get("max_position_embeddings")
        max_tokens = min(MAX_TOKENS, limit) if isinstance(limit, int) and limit > 1 else MAX_TOKENS
        if lm.kind == "embedding":
            emb = embed_texts(lm, lines)
            enc = lm.tokenizer.encode(" ".join(lines[:4]))
            ids = np.asarray([enc.ids[:max_tokens]], np.int64)
            return Snapshot("embedding", lm.executor.run(feeds_for(lm.model, ids), names), 1.0, emb, size, flops)
        ids = np.asarray(lm.encode("\n".join(lines))[:max_tokens], np.int64)[None]
        out = lm.executor.run({"input_ids": ids}, [*names, lm.model.outputs[0]])
        nll, n = sequence_nll(out.pop(lm.model.outputs[0])[0], ids[0])
        return Snapshot("logits", out, float(np.exp(nll / max(n, 1))), None, size, flops)


def compare(before: Snapshot, after: Snapshot, text: HeldOut) -> tuple[Quality, dict[str, Any]]:
    """The quality change, and the size, FLOPs and per-layer output-error fields of a step record."""
    rows = []
    for (name, a), b in zip(before.layers.items(), after.layers.values(), strict=False):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        rel = float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(a64), 1e-30)) if a64.shape == b64.shape else None
        rows.append({"layer": name, "relative_error": rel})
    about = {"text": text.source, "lines": len(text.lines)}
    if before.kind == "embedding" and before.embeddings is not None and after.embeddings is not None:
        x, y = before.embeddings.astype(np.float64), after.embeddings.astype(np.float64)
        cos = (x * y).sum(-1) / np.maximum(np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1), 1e-30)
        quality = Quality("embedding_cosine_to_before", 1.0, float(cos.mean()), {**about, "sentences": len(cos)})
    else:
        quality = Quality("perplexity", before.metric, after.metric, about)
    return quality, {"size_before": before.size, "size_after": after.size, "flops_before": before.flops,
                     "flops_after": after.flops, "layers": rows}
