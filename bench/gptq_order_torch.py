"""GPTQ calibration order and solver, swapped one at a time, in one torch harness (the peer venv).

    PYTHONPATH=. /work/venv-peer/bin/python bench/gptq_order_torch.py ORDER BITS SOLVER [OUT.json]

ORDER ``layer``: every linear of decoder layer i calibrated on layer i's input with layer i's
float weights (llm-compressor's sequential pipeline), then the quantized layer's output feeds
layer i+1. ORDER ``linear``: q/k/v, then o_proj, then gate/up, then down_proj, each calibrated
on the activations of the already-quantized linears before it (ptmpack's order before this
change). SOLVER ``peer``: llm-compressor 0.14's ``quantize_weight`` with its ``minmax`` observer
(Cholesky in float32); ``ptmpack``: ptmpack's ``gptq_quantize`` (Cholesky in float64), the two
shown equal up to float rounding by bench/gptq_vs_peer.py.

Everything else is fixed: SmolLM2-135M-Instruct float32 in transformers, the 8x512 calibration
windows and the 4x512 evaluation windows of each text from bench_quant.py's peer job, group 64
asymmetric, act-order static, block 128, dampening 0.01, one thread. So the runs tell how much
of a perplexity difference the order makes, and how much mere float rounding in the solver does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

JOB = Path(os.environ.get("PTMPACK_BENCH_TMP") or "/tmp/ptmpack-bench") / "quant" / "peer_job.json"
ORDERS = {
    "layer": [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj"]],
    "linear": [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
               ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]],
}


def solver(kind: str, bits: int):
    """``solve(weight, hessian) -> dequantized weight`` (torch tensors)."""
    if kind == "ptmpack":
        from ptmpack.compress.quant.gptq.solver import backend, gptq_quantize

        xp = backend()

        def ours(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            q = gptq_quantize(w.numpy(), h.numpy(), bits, 64, False, act_order=True, xp=xp)
            return torch.from_numpy(q.dequantize(np.float32))

        return ours
    from compressed_tensors.quantization import QuantizationArgs
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
    from llmcompressor.observers import Observer

    def theirs(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        args = QuantizationArgs(num_bits=bits, type="int", symmetric=False, strategy="group", group_size=64,
                                observer="minmax", actorder="static")
        observer = Observer.load_from_registry("minmax", base_name="weight", args=args)
        observer(w)
        qp = observer.get_qparams()
        q, _, _ = quantize_weight(w[None].clone(), h[None].clone(), qp["scale"][None], qp["zero_point"][None], None,
                                  args, blocksize=128, percdamp=0.01)
        return q[0]

    return theirs


def main() -> None:
    import transformers
    from llmcompressor.modifiers.gptq.helpers import accumulate_hessian

    order, bits, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    solve = solver(kind, bits)
    job = json.loads(JOB.read_text())
    model = transformers.AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32).eval()
    layers = model.model.layers
    xs: list[torch.Tensor] = []
    kws: list[dict] = []

    def grab(_module, args, kwargs):
        xs.append(args[0] if args else kwargs["hidden_states"])
        kws.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise StopIteration

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        for row in torch.tensor(job["calib"]):
            with contextlib.suppress(StopIteration):
                model(row[None])
    handle.remove()

    def run(layer: torch.nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = [layer(x, **kw) for x, kw in zip(inputs, kws, strict=True)]
        return [o[0] if isinstance(o, tuple) else o for o in outs]

    t0 = time.perf_counter()
    with torch.no_grad():
        for layer in layers:
            mods = dict(layer.named_modules())
            for group in ORDERS[order]:
                hess = {n: torch.zeros(mods[n].in_features, mods[n].in_features) for n in group}
                count = {n: torch.zeros(()) for n in group}

                def hook_for(name: str, hess=hess, count=count):
                    def hook(module, args, _out):
                        hess[name], count[name] = accumulate_hessian(args[0], module, hess[name], count[name])
                    return hook

                handles = [mods[n].register_forward_hook(hook_for(n)) for n in group]
                run(layer, xs)
                for h in handles:
                    h.remove()
                for n in group:
                    mods[n].weight.copy_(solve(mods[n].weight.detach().clone(), hess[n] / count[n]))
            xs = run(layer, xs)
        seconds = time.perf_counter() - t0
        ppl = {}
        for name, windows in job["eval"].items():
            nll, n = 0.0, 0
            for w in windows:
                ids = torch.tensor([w])
                logits = model(ids).logits[0, :-1].double()
                nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
                n += len(w) - 1
            ppl[name] = math.exp(nll / n)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    doc = {"order": order, "bits": bits, "solver": kind, "perplexity": ppl, "quantize_wall_s": round(seconds, 1),
           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "load": os.getloadavg()[0]}
    print(json.dumps(doc), flush=True)
    if len(sys.argv) > 4:
        Path(sys.argv[4]).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
