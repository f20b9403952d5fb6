"""Where ptmpack's GPTQ and llm-compressor's part: the solver, then the Hessians, on real SmolLM2 layers.

Two phases, two interpreters (the peer lives in its own venv):

    /work/venv-peer/bin/python bench/gptq_vs_peer.py peer OUT.npz LAYER...   # llm-compressor side
    python bench/gptq_vs_peer.py ours OUT.npz                                # ptmpack side: compare

e.g. ``LAYER`` = ``model.layers.0.self_attn.q_proj model.layers.0.self_attn.o_proj
model.layers.5.mlp.down_proj``. The model and the calibration windows come from the job
bench_quant.py wrote for the peer (``$PTMPACK_BENCH_TMP/quant/peer_job.json``: the float
SmolLM2 checkpoint and the 8x512 calibration token ids).

Peer phase: transformers runs the float model on the windows; llm-compressor's own
``accumulate_hessian`` hook builds each named linear's Hessian (the float model, so for layer 0
exactly what its sequential pipeline sees), its ``minmax`` observer gives scale and zero point,
and its ``quantize_weight`` (W4 g64 asymmetric, act-order static, block 128, dampening 0.01)
gives the quantized weight. All of it goes to OUT.npz.

Ours phase: (1) ptmpack's solver on the same W and H: does it give the same weight? (2) ptmpack's
IR calibration of layer 0 in both orders (``layer``, ``linear``; see ptmpack.compress.quant.gptq.step): how
far is each Hessian from the peer's? (llm-compressor divides by the number of windows, ptmpack by
the number of tokens: the peer's H is rescaled by 1/seqlen before comparing.)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

JOB = Path(os.environ.get("PTMPACK_BENCH_TMP") or "/tmp/ptmpack-bench") / "quant" / "peer_job.json"
BITS, GROUP = 4, 64


def peer(out: Path, names: list[str]) -> None:
    import torch
    import transformers
    from compressed_tensors.quantization import QuantizationArgs
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
    from llmcompressor.modifiers.gptq.helpers import accumulate_hessian
    from llmcompressor.observers import Observer

    job = json.loads(JOB.read_text())
    model = transformers.AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    modules = dict(model.named_modules())
    hess = {n: torch.zeros(modules[n].in_features, modules[n].in_features) for n in names}
    count = {n: torch.zeros(()) for n in names}

    def hook_for(name: str):
        def hook(module, args, _out) -> None:
            hess[name], count[name] = accumulate_hessian(args[0], module, hess[name], count[name])
        return hook

    for n in names:
        modules[n].register_forward_hook(hook_for(n))
    with torch.no_grad():
        for row in torch.tensor(job["calib"]):
            model(row[None])
    arrays = {"seqlen": np.asarray(len(job["calib"][0]))}
    for n in names:
        args = QuantizationArgs(num_bits=BITS, type="int", symmetric=False, strategy="group", group_size=GROUP,
                                observer="minmax", actorder="static")
        observer = Observer.load_from_registry("minmax", base_name="weight", args=args)
        w = modules[n].weight.detach().clone()
        observer(w)
        qp = observer.get_qparams()
        h = hess[n] / count[n]
        q, _, _ = quantize_weight(w[None].clone(), h[None].clone(), qp["scale"][None], qp["zero_point"][None], None,
                                  args, blocksize=128, percdamp=0.01)
        arrays.update({f"{n}/W": w.numpy(), f"{n}/H": h.numpy(), f"{n}/Q": q[0].numpy(),
                       f"{n}/scale": qp["scale"].numpy()})
    np.savez(out, **arrays)
    print(f"wrote {out}")


def ours(path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ptmpack.compress.quant.gptq.solver import backend, gptq_quantize
    from ptmpack.compress.quant.gptq.step import calibrate_and_quantize
    from ptmpack.compress.quant.linear import QuantizedSpill, find_targets, load_model
    from ptmpack.compress.tree.weights import WeightFiles

    data = np.load(path)
    names = sorted({k.rsplit("/", 1)[0] for k in data.files if "/" in k})
    print("(1) the solver on llm-compressor's W and H")
    for n in names:
        w, h, theirs = data[f"{n}/W"], data[f"{n}/H"], data[f"{n}/Q"]
        q = gptq_quantize(w, h, BITS, GROUP, False, act_order=True, xp=backend())
        mine = q.dequantize(np.float32)
        print(f"  {n:34s} scales equal: {np.array_equal(q.scale, data[f'{n}/scale'])}; weights differing: "
              f"{np.mean(mine != theirs):.4%}")
    job = json.loads(JOB.read_text())
    tree = Path(job["model"]).parent
    windows = np.asarray(job["calib"])
    layer0 = [t for t in find_targets(load_model(tree)) if t.prefix.startswith("model.layers.0.")]
    tensors = WeightFiles(tree / "Model")
    print("(2) layer 0's Hessians from ptmpack's IR calibration vs the peer's")
    for order in ("layer", "linear"):
        seen: dict[str, np.ndarray] = {}
        queue = iter(layer0)

        def solve(w: np.ndarray, h: np.ndarray, seen: dict[str, np.ndarray] = seen, queue=queue, **_: object):
            seen[next(queue).prefix] = h.copy()
            return gptq_quantize(w, h, BITS, GROUP, act_order=True)

        with tempfile.TemporaryDirectory() as scratch:
            calibrate_and_quantize(tree, layer0, tensors, windows, solve, lambda *a: None, QuantizedSpill(Path(scratch)),
                                   sequential=order)
        for n in names:
            if n in seen:
                hp = data[f"{n}/H"].astype(np.float64) / float(data["seqlen"])
                rel = np.linalg.norm(seen[n].astype(np.float64) - hp) / np.linalg.norm(hp)
                print(f"  order {order:6s} {n:34s} ||H_ptmpack - H_peer|| / ||H_peer|| = {rel:.2e}")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("peer", "ours"):
        sys.exit(__doc__)
    if sys.argv[1] == "peer":
        peer(Path(sys.argv[2]), sys.argv[3:])
    else:
        ours(Path(sys.argv[2]))
