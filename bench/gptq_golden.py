"""Write fixtures/gptq/llmcompressor_golden.npz: llm-compressor's GPTQ answers for seeded inputs.

Run it in the peer venv (llm-compressor 0.14, torch CPU), only to (re)make the fixture:

    /work/venv-peer/bin/python bench/gptq_golden.py --write    # rewrites the fixture
    /work/venv-peer/bin/python bench/gptq_golden.py            # prints what it would write

The inputs are numpy-seeded (PCG64, seed 20261205) and independent of any model: 1024 input
rows ``X`` of 192 features with a few outlier channels (x20, as LLM activations have), mixed so
features correlate, and one dead feature (column 7 always 0); ``W`` is ``[32, 192]``, normal
with a few large entries. ``H = 2/n · XᵀX`` computed in float64 and stored in float32, the
form llm-compressor hands to its solver. 192 columns make three groups of 64 and a partial
second block of 128, so group boundaries, block boundaries and act-order all show.

For each case, the expected output is what llm-compressor itself computes:
``Observer "minmax"`` on ``W`` gives scale and zero point (``calculate_qparams``), then
``llmcompressor.modifiers.gptq.gptq_quantize.quantize_weight(W, H, scale, zp, ...)`` with
block 128 and dampening 0.01 returns the dequantized weight ``Q``. The fixture stores ``W``,
``H``, and per case ``Q``, ``scale``, ``zero_point``; tests/compress/test_quant_gptq_golden.py checks that
ptmpack's solver reproduces them, with no llm-compressor needed in CI.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "gptq" / "llmcompressor_golden.npz"
SEED, ROWS, COLS, N, DEAD = 20261205, 32, 192, 1024, 7
CASES = {  # name: (bits, group, symmetric, actorder)
    "w4_g64_asym_static": (4, 64, False, "static"),
    "w3_g64_asym_static": (3, 64, False, "static"),
    "w4_g64_sym_none": (4, 64, True, None),
    "w2_g32_asym_static": (2, 32, False, "static"),
}


def inputs() -> tuple[np.ndarray, np.ndarray]:
    """The seeded ``W`` ``[ROWS, COLS]`` and ``H`` ``[COLS, COLS]`` (float32)."""
    rng = np.random.default_rng(SEED)
    gain = rng.uniform(0.2, 3.0, size=COLS)
    gain[rng.choice(COLS, 4, replace=False)] *= 20.0
    mix = rng.normal(size=(COLS, COLS)) / np.sqrt(COLS) + np.eye(COLS)
    x = (rng.normal(size=(N, COLS)) @ mix) * gain
    x[:, DEAD] = 0.0
    w = rng.normal(scale=0.05, size=(ROWS, COLS))
    w[rng.random(size=w.shape) < 0.01] *= 8.0
    h = (x.T @ x) * (2.0 / N)
    return w.astype(np.float32), h.astype(np.float32)


def expected(w: np.ndarray, h: np.ndarray, bits: int, group: int, symmetric: bool, actorder: str | None
             ) -> dict[str, np.ndarray]:
    """llm-compressor's observer and ``quantize_weight`` on ``w``, ``h``."""
    import torch
    from compressed_tensors.quantization import QuantizationArgs
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
    from llmcompressor.observers import Observer

    args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="group", group_size=group,
                            observer="minmax", actorder=actorder)
    wt = torch.tensor(w)
    observer = Observer.load_from_registry("minmax", base_name="weight", args=args)
    observer(wt)
    qp = observer.get_qparams()
    q, _, fallback = quantize_weight(wt[None].clone(), torch.tensor(h)[None].clone(), qp["scale"][None],
                                     qp["zero_point"][None], None, args, blocksize=128, percdamp=0.01)
    if bool(fallback.any()):
        raise RuntimeError("llm-compressor fell back to RTN: the Hessian did not factorize")
    return {"Q": q[0].numpy(), "scale": qp["scale"].numpy(), "zero_point": qp["zero_point"].float().numpy()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the fixture")
    args = parser.parse_args()
    import llmcompressor
    import torch

    w, h = inputs()
    arrays: dict[str, np.ndarray] = {"W": w, "H": h}
    for name, (bits, group, symmetric, actorder) in CASES.items():
        for key, value in expected(w, h, bits, group, symmetric, actorder).items():
            arrays[f"{name}/{key}"] = value
    meta = {"llmcompressor": llmcompressor.__version__, "torch": torch.__version__, "seed": SEED, "dead": DEAD,
            "block": 128, "dampening_frac": 0.01,
            "cases": {k: {"bits": b, "group": g, "symmetric": s, "actorder": a} for k, (b, g, s, a) in CASES.items()}}
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    print(json.dumps(meta, indent=2))
    if args.write:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        tmp = FIXTURE.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(FIXTURE)
        print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
