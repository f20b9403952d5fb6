"""The input activation of chosen quantization targets, captured in one plain IR run of the whole model.

The reference the block-by-block GPTQ tests compare against: no blocks, no mini-batches, the
executor's operator hook reads what each target linear (or matmul by a 2-D weight) multiplies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.eval.blocks import INPUT_SLOTS
from ptmpack.compress.quant.linear import find_targets


def target_inputs(tree: Path, model: Any, feeds: dict[str, Any], wanted: set[str]) -> dict[str, np.ndarray]:
    """Run ``model`` of ``tree`` on ``feeds`` (inputs and any weights fed in place of the stored ones); the input of
    each target whose prefix is in ``wanted``."""
    from ptmpack.ir.execute import OPERATOR_HOOK, Executor
    from ptmpack.ir.registry import ExecContext
    from ptmpack.storage.package import open_package

    by_weight = {t.weight: t for t in find_targets(model)}
    got: dict[str, np.ndarray] = {}

    def hook(graph: Any, node: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        slot = INPUT_SLOTS.get(node.type)
        t = by_weight.get(node.inputs.get(slot[1], ("",))[0]) if slot else None
        if t is not None and t.prefix in wanted:
            got[t.prefix] = np.array(inputs[slot[0]])
        return inputs

    with open_package(tree) as pkg:
        ex = Executor(model, pkg, ExecContext())
        ex.ctx.state[OPERATOR_HOOK] = hook
        ex.run(feeds)
    return got


def hessian(x: np.ndarray) -> np.ndarray:
    """``2/n · XᵀX`` of the rows of ``x`` (``[..., in]``), in float32: GPTQ's Hessian of all the rows at once."""
    rows = x.reshape(-1, x.shape[-1]).astype(np.float32, copy=False)
    return (rows.T @ rows) * np.float32(2.0 / max(len(rows), 1))
