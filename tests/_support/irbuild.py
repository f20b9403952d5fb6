"""A small builder for IR models in tests: declare variables, add operators with plain Python
attribute values (typed from the operator's registered definition), get a ModelStructure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ptmpack.ir.model import Attribute, AttrType, Graph, ModelStructure, OperatorNode, TensorRef, VariableNode
from ptmpack.ir.ops.numeric import ir_dtype, is_float
from ptmpack.ir.registry import ExecContext, TensorType, lookup

_PY_TYPES = {bool: AttrType.BOOL, int: AttrType.INT, float: AttrType.FLOAT, str: AttrType.STRING}
_LISTS = {AttrType.BOOL: AttrType.BOOLS, AttrType.INT: AttrType.INTS, AttrType.FLOAT: AttrType.FLOATS,
          AttrType.STRING: AttrType.STRINGS}


def attr(op_type: str, key: str, value: Any) -> Attribute:
    """An Attribute typed as the operator declares it (or from the Python type for custom ops)."""
    if isinstance(value, Attribute):
        return value
    d = lookup(op_type)
    a = d.attribute(key) if d is not None else None
    if a is not None:
        return Attribute(a.type, tuple(value) if isinstance(value, list) else value)
    if isinstance(value, (list, tuple)):
        return Attribute(_LISTS[_PY_TYPES[type(value[0])]], tuple(value))
    return Attribute(_PY_TYPES[type(value)], value)


class GraphBuilder:
    """Collects the variables and operators of one graph."""

    def __init__(self, graph_id: int = 0, parent: int = -1, forward: int = -1) -> None:
        self.graph_id, self.parent, self.forward = graph_id, parent, forward
        self.variables: dict[str, VariableNode] = {}
        self.operators: list[OperatorNode] = []

    def var(self, name: str, dtype: str = "float32", shape: Sequence[int] = (), *, param: bool = False,
            tensor: str | None = None, file: str = "Model/model.safetensors") -> str:
        self.variables[name] = VariableNode(name, dtype, tuple(shape), param, TensorRef(file, tensor) if tensor else None)
        return name

    def op(self, op_type: str, inputs: Mapping[str, str | Sequence[str]], outputs: Mapping[str, str | Sequence[str]],
           name: str | None = None, **attrs: Any) -> None:
        def slots(m: Mapping[str, str | Sequence[str]]) -> dict[str, tuple[str, ...]]:
            return {k: (v,) if isinstance(v, str) else tuple(v) for k, v in m.items()}

        self.operators.append(OperatorNode(op_type, name or f"{op_type}_{len(self.operators)}", slots(inputs),
                                           slots(outputs), {k: attr(op_type, k, v) for k, v in attrs.items()}))

    def graph(self) -> Graph:
        return Graph(self.graph_id, self.parent, self.forward, tuple(self.variables.values()), tuple(self.operators))


def model(*builders: GraphBuilder, inputs: Sequence[str] = (), outputs: Sequence[str] = (), name: str = "test") -> ModelStructure:
    return ModelStructure(name=name, graphs=tuple(b.graph() for b in builders), inputs=tuple(inputs), outputs=tuple(outputs))


def run_op(op_type: str, inputs: Mapping[str, Any], ctx: ExecContext | None = None, *, unknown: bool = True,
           **attrs: Any) -> dict[str, Any]:
    """Run one kernel directly and check that shape inference predicts what it made.

    The dtype is checked too when the run is float32 and no input is another float type.
    With ``unknown``, inference is also run with every other input dimension replaced by -1
    (as declared shapes have them) and must still agree wherever it claims a size.
    """
    ctx = ctx or ExecContext()
    d = lookup(op_type)
    assert d is not None
    resolved = d.resolve_attributes(attrs, op_type)
    full = {s.name: inputs.get(s.name) for s in d.inputs}
    result = d.kernel(ctx, full, resolved)

    def ttype(a: Any) -> TensorType:
        return TensorType(ir_dtype(np.asarray(a).dtype), tuple(np.shape(a)))

    types = {k: None if v is None else [ttype(a) for a in v] if isinstance(v, (list, tuple)) else ttype(v)
             for k, v in full.items()}
    inferred = d.infer(types, resolved)
    if unknown:
        def hide(t: TensorType) -> TensorType:
            return TensorType(t.dtype, tuple(-1 if i % 2 == 0 else n for i, n in enumerate(t.shape)))

        hidden = {k: None if v is None else [hide(t) for t in v] if isinstance(v, list) else hide(v) for k, v in types.items()}
        _check_shapes(op_type, result, d.infer(hidden, resolved))
    floats = {t.dtype for v in types.values() if v is not None for t in (v if isinstance(v, list) else [v])
              if is_float(t.dtype)}
    check_dtype = ctx.compute_dtype == "float32" and floats <= {"float32"}
    _check_shapes(op_type, result, inferred, exact=True)
    if check_dtype:
        for slot, value in result.items():
            for g, w in zip(*(_as_list(v) for v in (value, inferred.get(slot, value))), strict=True):
                assert ir_dtype(g.dtype) == getattr(w, "dtype", ir_dtype(g.dtype)), f"{op_type}.{slot}: {g.dtype} vs {w}"
    return result


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _check_shapes(op_type: str, result: Mapping[str, Any], inferred: Mapping[str, Any], exact: bool = False) -> None:
    for slot, value in result.items():
        if slot not in inferred:
            continue
        got, want = _as_list(value), _as_list(inferred[slot])
        assert len(got) == len(want), (op_type, slot)
        for g, w in zip(got, want, strict=True):
            ok = g.ndim == len(w.shape) and all(b == a or (b == -1 and not exact) for a, b in zip(g.shape, w.shape, strict=True))
            assert ok, f"{op_type}.{slot}: kernel made {g.shape}, inference says {w.shape}"


def tiny_llama(vocab: int = 11, dim: int = 16, heads: int = 4, kv_heads: int = 2, ffn: int = 24, layers: int = 2,
               theta: float = 10000.0, seed: int = 0) -> tuple[ModelStructure, dict[str, np.ndarray]]:
    """A LLaMA-style decoder (RMSNorm, GQA attention with rotary embedding, SwiGLU MLP) and its weights.

    Weights reference ``Model/model.safetensors`` by their own names.
    """
    rng = np.random.default_rng(seed)
    hd = dim // heads
    g = GraphBuilder()
    w: dict[str, np.ndarray] = {}

    def param(name: str, *shape: int, scale: float = 0.2) -> str:
        w[name] = (rng.standard_normal(shape) * scale + (1.0 if len(shape) == 1 else 0.0)).astype(np.float32)
        return g.var(name, "float32", shape, param=True, tensor=name)

    def t(name: str, *shape: int) -> str:
        return g.var(name, "float32", shape)

    ids = g.var("ids", "int64", (-1, -1))
    h = t("h0", -1, -1, dim)
    g.op("embedding", {"X": ids, "W": param("embed", vocab, dim, scale=1.0)}, {"Y": h}, name="embed")
    for i in range(layers):
        p = f"l{i}."
        x = t(p + "x", -1, -1, dim)
        g.op("rms_norm", {"X": h, "Weight": param(p + "ln1", dim)}, {"Y": x}, name=p + "ln1", epsilon=1e-5)
        heads4 = {}
        for proj, nh in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
            flat, split, bhsd = t(p + proj, -1, -1, nh * hd), t(p + proj + "_s", -1, -1, nh, hd), t(p + proj + "_t", -1, nh, -1, hd)
            g.op("linear", {"X": x, "W": param(p + "w" + proj, nh * hd, dim)}, {"Y": flat}, name=p + proj)
            g.op("reshape", {"X": flat}, {"Y": split}, name=p + proj + "_reshape", shape=[0, 0, nh, hd])
            g.op("transpose", {"X": split}, {"Y": bhsd}, name=p + proj + "_transpose", perm=[0, 2, 1, 3])
            heads4[proj] = bhsd
        for proj, nh in (("q", heads), ("k", kv_heads)):
            rot = t(p + proj + "_rope", -1, nh, -1, hd)
            g.op("rotary_embedding", {"X": heads4[proj]}, {"Y": rot}, name=p + proj + "_rope", theta=theta)
            heads4[proj] = rot
        att, att_t, att_f, o, h1 = (t(p + "att", -1, heads, -1, hd), t(p + "att_t", -1, -1, heads, hd),
                                    t(p + "att_f", -1, -1, dim), t(p + "o", -1, -1, dim), t(p + "h1", -1, -1, dim))
        g.op("attention", {"Q": heads4["q"], "K": heads4["k"], "V": heads4["v"]}, {"Y": att}, name=p + "attn",
             causal=True, num_heads=heads, num_kv_heads=kv_heads)
        g.op("transpose", {"X": att}, {"Y": att_t}, name=p + "attn_transpose", perm=[0, 2, 1, 3])
        g.op("reshape", {"X": att_t}, {"Y": att_f}, name=p + "attn_reshape", shape=[0, 0, -1])
        g.op("linear", {"X": att_f, "W": param(p + "wo", dim, dim)}, {"Y": o}, name=p + "o")
        g.op("add", {"A": h, "B": o}, {"Y": h1}, name=p + "res1")
        x2, gate, up, act, prod, down, h2 = (t(p + "x2", -1, -1, dim), t(p + "gate", -1, -1, ffn), t(p + "up", -1, -1, ffn),
                                             t(p + "act", -1, -1, ffn), t(p + "prod", -1, -1, ffn),
                                             t(p + "down", -1, -1, dim), t(p + "h2", -1, -1, dim))
        g.op("rms_norm", {"X": h1, "Weight": param(p + "ln2", dim)}, {"Y": x2}, name=p + "ln2", epsilon=1e-5)
        g.op("linear", {"X": x2, "W": param(p + "wg", ffn, dim)}, {"Y": gate}, name=p + "gate")
        g.op("linear", {"X": x2, "W": param(p + "wu", ffn, dim)}, {"Y": up}, name=p + "up")
        g.op("silu", {"X": gate}, {"Y": act}, name=p + "silu")
        g.op("mul", {"A": act, "B": up}, {"Y": prod}, name=p + "swiglu")
        g.op("linear", {"X": prod, "W": param(p + "wd", dim, ffn)}, {"Y": down}, name=p + "down")
        g.op("add", {"A": h1, "B": down}, {"Y": h2}, name=p + "res2")
        h = h2
    f, logits = t("final", -1, -1, dim), t("logits", -1, -1, vocab)
    g.op("rms_norm", {"X": h, "Weight": param("norm", dim)}, {"Y": f}, name="final_norm", epsilon=1e-5)
    g.op("linear", {"X": f, "W": param("lm_head", vocab, dim)}, {"Y": logits}, name="lm_head")
    return model(g, inputs=[ids], outputs=[logits], name="tiny-llama"), w


def tiny_bert(vocab: int = 13, dim: int = 12, heads: int = 3, ffn: int = 20, max_pos: int = 16,
              seed: int = 1) -> tuple[ModelStructure, dict[str, np.ndarray]]:
    """A BERT-style encoder layer: word + position + token-type embeddings, LayerNorm, packed
    multi-head attention with a padding mask, GELU MLP, post-norm residuals."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    w: dict[str, np.ndarray] = {}

    def param(name: str, *shape: int, base: float = 0.0) -> str:
        w[name] = (rng.standard_normal(shape) * 0.3 + base).astype(np.float32)
        return g.var(name, "float32", shape, param=True, tensor=name)

    def t(name: str, *shape: int, dtype: str = "float32") -> str:
        return g.var(name, dtype, shape)

    ids, mask = g.var("ids", "int64", (-1, -1)), g.var("mask", "int64", (-1, -1))
    pos, types = t("pos", -1, dtype="int64"), t("types", -1, -1, dtype="int64")
    g.op("arange_like", {"X": ids}, {"Y": pos}, name="positions")
    g.op("fill_like", {"X": ids}, {"Y": types}, name="token_types")
    e_w, e_p, e_t, e1, e2, e3 = (t("e_word", -1, -1, dim), t("e_pos", -1, dim), t("e_type", -1, -1, dim),
                                 t("e1", -1, -1, dim), t("e2", -1, -1, dim), t("e3", -1, -1, dim))
    g.op("embedding", {"X": ids, "W": param("word", vocab, dim)}, {"Y": e_w})
    g.op("gather", {"X": param("position", max_pos, dim), "Indices": pos}, {"Y": e_p})
    g.op("embedding", {"X": types, "W": param("token_type", 2, dim)}, {"Y": e_t})
    g.op("add", {"A": e_w, "B": e_p}, {"Y": e1})
    g.op("add", {"A": e1, "B": e_t}, {"Y": e2})
    g.op("layer_norm", {"X": e2, "Scale": param("emb_ln_w", dim, base=1.0), "Bias": param("emb_ln_b", dim)}, {"Y": e3},
         epsilon=1e-12)
    additive = t("additive", -1, 1, -1, -1)
    g.op("causal_mask", {"X": ids, "PaddingMask": mask}, {"Y": additive}, causal=False)
    q, k, v, att, o, r1, n1 = (t(n, -1, -1, dim) for n in ("q", "k", "v", "att", "o", "r1", "n1"))
    for name, out in (("wq", q), ("wk", k), ("wv", v)):
        g.op("linear", {"X": e3, "W": param(name, dim, dim), "Bias": param(name + "_b", dim)}, {"Y": out})
    g.op("attention", {"Q": q, "K": k, "V": v, "Mask": additive}, {"Y": att}, num_heads=heads)
    g.op("linear", {"X": att, "W": param("wo", dim, dim), "Bias": param("wo_b", dim)}, {"Y": o})
    g.op("add", {"A": o, "B": e3}, {"Y": r1})
    g.op("layer_norm", {"X": r1, "Scale": param("ln1_w", dim, base=1.0), "Bias": param("ln1_b", dim)}, {"Y": n1},
         epsilon=1e-12)
    up, act, down, r2, hidden = (t("up", -1, -1, ffn), t("act", -1, -1, ffn), t("down", -1, -1, dim),
                                 t("r2", -1, -1, dim), t("hidden", -1, -1, dim))
    g.op("linear", {"X": n1, "W": param("w1", ffn, dim), "Bias": param("w1_b", ffn)}, {"Y": up})
    g.op("gelu", {"X": up}, {"Y": act})
    g.op("linear", {"X": act, "W": param("w2", dim, ffn), "Bias": param("w2_b", dim)}, {"Y": down})
    g.op("add", {"A": down, "B": n1}, {"Y": r2})
    g.op("layer_norm", {"X": r2, "Scale": param("ln2_w", dim, base=1.0), "Bias": param("ln2_b", dim)}, {"Y": hidden},
         epsilon=1e-12)
    return model(g, inputs=[ids, mask], outputs=[hidden], name="tiny-bert"), w
