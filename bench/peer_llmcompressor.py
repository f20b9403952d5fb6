"""Peer rows of bench_quant.py: llm-compressor's GPTQModifier on the same calibration tokens.

Runs in its own venv (/work/venv-peer: llmcompressor, transformers, torch CPU), never in
ptmpack's. Input: a JSON job written by bench_quant.py (model directory, calibration windows,
evaluation windows per text, schemes); output: JSON with perplexities and wall times.

    /work/venv-peer/bin/python bench/peer_llmcompressor.py JOB.json OUT.json [BITS...]

The model is the float checkpoint ptmpack imported from GGUF (Model/ of the FP package). Each
scheme is W{bits} asymmetric, group 64 (strategy group), dampening_frac 0.01, ignore lm_head,
oneshot over exactly the calibration windows ptmpack used (token ids, not text), with the
modifier's default activation ordering (``static``: act-order with groups fixed beforehand). Perplexity is
taken on the quantized model in memory (fake-quantized forward): asymmetric pack-quantized
checkpoints do not reload in transformers 5.x (llm-compressor issue #1618).
"""

from __future__ import annotations

import json
import sys
import time

import common  # bench/common.py: stdlib only, so it imports in the peer venv
import numpy as np
import torch


def main() -> None:
    with open(sys.argv[1]) as f:
        job = json.load(f)
    import llmcompressor
    import transformers
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    torch.manual_seed(0)
    out = {"versions": {"llmcompressor": llmcompressor.__version__, "transformers": transformers.__version__,
                        "torch": torch.__version__}, "rows": []}
    calib = np.asarray(job["calib"], dtype=np.int64)
    ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": np.ones_like(calib).tolist()})
    only = {int(b) for b in sys.argv[3:]}
    for scheme in job["schemes"]:
        if only and scheme["bits"] not in only:
            continue
        model = transformers.AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
        recipe = GPTQModifier(
            config_groups={"group_0": {"targets": ["Linear"], "weights": {
                "num_bits": scheme["bits"], "type": "int", "symmetric": False, "strategy": "group",
                "group_size": scheme["group_size"], "observer": "minmax"}}},
            ignore=["lm_head"], dampening_frac=0.01, block_size=128)
        t0 = time.perf_counter()
        oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(calib),
                max_seq_length=calib.shape[1], pipeline="sequential")
        seconds = time.perf_counter() - t0
        ppl = {name: common.causal_lm_perplexity(model, windows) for name, windows in job["eval"].items()}
        out["rows"].append({"scheme": scheme, "seconds": round(seconds, 1), "perplexity": ppl})
        print(json.dumps(out["rows"][-1]), flush=True)
        del model
    if job.get("fp") and (not only or 4 in only):
        model = transformers.AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
        out["fp_transformers"] = {name: common.causal_lm_perplexity(model, windows) for name, windows in job["eval"].items()}
    with open(sys.argv[2], "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
