"""Quality before and after a compress step, recorded in technicalinfo.compression.

Measured on the calibration text's held-out tail (the tokens after the last window), or on
the first calibration window when nothing is left over (then ``held_out`` is false):
perplexity for decoders, and for encoders the mean cosine similarity of the pooled
embeddings to the float model's. Without ``--calib`` nothing is measured (the per-layer
weight errors remain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.report import Quality
from ptmpack.compress.step import CalibrationData

_ENCODER_TOKENS = 128


def measure(tree: Path, calib: CalibrationData | None, *, reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"value": number | None, "about": {...}, ...}`` for the model in ``tree``.

    ``reference`` is the result of the measurement before the step (encoders compare embeddings).
    """
    if calib is None:
        return {"value": None, "about": {"metric": None, "note": "no calibration text: weight errors only"}}
    from ptmpack.ir.runner import LoadedModel, sequence_nll

    held = calib.held_out is not None
    ids = calib.held_out if held else calib.windows[0]
    about = {"text": calib.source, "sha256": calib.text_sha256, "tokens": len(ids), "held_out": held}
    with LoadedModel.open(tree) as lm:
        if lm.kind == "logits":
            logits = lm.forward(np.asarray(ids)[None])[0]
            nll, n = sequence_nll(logits, np.asarray(ids))
            return {"value": float(np.exp(nll / max(n, 1))), "about": {"metric": "perplexity", **about}}
        rows = np.asarray(ids[:_ENCODER_TOKENS])[None]
        emb = lm.pool(lm.forward(rows), np.ones_like(rows))
    if reference is None or "embedding" not in reference:
        return {"value": 1.0, "embedding": emb, "about": {"metric": "embedding cosine vs float", **about}}
    ref = reference["embedding"]
    cos = float(np.sum(emb * ref) / max(float(np.linalg.norm(emb) * np.linalg.norm(ref)), 1e-12))
    return {"value": cos, "about": {"metric": "embedding cosine vs float", **about}}


def quality_change(before: dict[str, Any], after: dict[str, Any]) -> Quality:
    """The step record's :class:`Quality` from two :func:`measure` results (``after`` says what was measured)."""
    about = dict(after.get("about", {}))
    return Quality(about.pop("metric", None), before.get("value"), after.get("value"), about)
