"""Hugging Face checkpoints (``config.json`` + safetensors) → chapter-6 IR models.

Three families are understood, which cover most text transformers in use:

* **BERT** (``model_type`` bert; MiniLM and sentence-transformers encoders are BERTs):
  word + token-type + absolute position embeddings, post-LayerNorm blocks with biased
  projections and exact GELU; output ``last_hidden_state``.
* **GPT-2**: learned positions, pre-LayerNorm blocks whose ``Conv1D`` weights are stored
  ``[in, out]`` (so they run as ``matmul`` + ``add``), fused QKV split in three, causal
  attention, tanh-GELU, LM head tied to the token embedding; output ``logits``.
* **LLaMA** and its relatives (llama, mistral, qwen2 — SmolLM is a llama): RMSNorm,
  rotate-half RoPE, grouped-query attention, SwiGLU MLP, optional QKV biases (Qwen2),
  LM head tied to the embedding when the checkpoint has no ``lm_head.weight``.

Every operator is added through the registry: its attributes are typed from the operator's
definition and its output variables declared with the types its shape inference gives, so
the model passes :func:`ptmpack.ir.validate.validate` by construction. Parameters are
variables named after their tensors, with a :class:`TensorRef` into the package file.
Sequence and batch dimensions are -1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptmpack.errors import GraphError, InvalidTreeError, UnsupportedError
from ptmpack.ir.model import Attribute, Graph, ModelStructure, OperatorNode, TensorRef, VariableNode
from ptmpack.ir.registry import TensorType, lookup
from ptmpack.ir.validate import GRAPH_FILE
from ptmpack.jsonio import read_object_file
from ptmpack.tensors.safetensors_index import index_safetensors_file

PRODUCER = "ptmpack.ir.convert_hf"
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_LLAMA_TYPES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class TensorMeta:
    """A checkpoint tensor as the IR needs it: IR dtype, shape, and the package file holding it."""

    dtype: str
    shape: tuple[int, ...]
    file: str


def checkpoint_tensors(model_dir: Path, *, file_prefix: str = "Model/") -> dict[str, TensorMeta]:
    """Every tensor of the ``*.safetensors`` files directly in ``model_dir`` (headers only).

    Sub-folders (a sentence-transformers ``2_Dense/``, adapters) are not the base model
    and are skipped. ``file`` is ``file_prefix`` + the file name.

    Raises:
        UnsupportedError: no safetensors file directly in ``model_dir``.
        InvalidTreeError: an unreadable header, or a tensor name in two files.
    """
    found: dict[str, TensorMeta] = {}
    files = sorted(p for p in Path(model_dir).glob("*.safetensors") if p.is_file())
    if not files:
        raise UnsupportedError(f"{model_dir}: no *.safetensors weights at its top level to build a graph from")
    for path in files:
        for t in index_safetensors_file(str(path)).tensors:
            if t.name in found:
                raise InvalidTreeError(f"{path}: tensor {t.name!r} is also in {found[t.name].file}")
            dtype = _ST_DTYPES.get(t.dtype)
            if dtype is not None:
                found[t.name] = TensorMeta(dtype, tuple(t.shape), f"{file_prefix}{path.name}")
    return found


class _Builder:
    """One graph under construction: parameters, inputs and type-inferred operator outputs."""

    def __init__(self, tensors: Mapping[str, TensorMeta]) -> None:
        self.tensors = tensors
        self.variables: dict[str, VariableNode] = {}
        self.types: dict[str, TensorType] = {}
        self.operators: list[OperatorNode] = []

    def has(self, name: str) -> bool:
        return name in self.tensors

    def param(self, name: str) -> str:
        """Declare the checkpoint tensor ``name`` as a parameter (once) and return its variable name."""
        if name not in self.variables:
            meta = self.tensors.get(name)
            if meta is None:
                raise UnsupportedError(f"checkpoint has no tensor {name!r}, which this architecture needs")
            self._declare(VariableNode(name, meta.dtype, meta.shape, True, TensorRef(meta.file, name)))
        return name

    def input(self, name: str, dtype: str, shape: Sequence[int]) -> str:
        self._declare(VariableNode(name, dtype, tuple(shape)))
        return name

    def _declare(self, v: VariableNode) -> None:
        self.variables[v.name] = v
        self.types[v.name] = TensorType(v.dtype, v.shape)

    def op(self, op_type: str, name: str, inputs: Mapping[str, str | Sequence[str] | None],
           outputs: Sequence[str] = ("Y",), **attrs: Any) -> list[str]:
        """Add an operator; declare one output variable per requested slot (``name`` or ``name.slot``).

        A variadic output slot is requested as ``"Y*3"`` (three variables ``name.0`` …).
        """
        opdef = lookup(op_type)
        assert opdef is not None
        slots = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in inputs.items() if v is not None}
        typed = {k: Attribute(_attr_type(opdef, k), tuple(v) if isinstance(v, (list, tuple)) else v)
                 for k, v in attrs.items()}
        resolved = opdef.resolve_attributes(attrs, f"operator {name!r}")
        args = {s.name: ([self.types[n] for n in slots.get(s.name, ())] if s.variadic else
                         (self.types[slots[s.name][0]] if s.name in slots else None)) for s in opdef.inputs}
        inferred = opdef.infer(args, resolved)
        out_slots: dict[str, tuple[str, ...]] = {}
        made: list[str] = []
        for spec in outputs:
            slot, _, count = spec.partition("*")
            got = inferred[slot]
            if count:
                names = tuple(f"{name}.{i}" for i in range(int(count)))
                types = list(got)
            else:
                names = (name if len(outputs) == 1 else f"{name}.{slot}",)
                types = [got]
            for n, t in zip(names, types, strict=True):
                self._declare(VariableNode(n, t.dtype, tuple(t.shape)))
            out_slots[slot] = names
            made.extend(names)
        self.operators.append(OperatorNode(op_type, name, slots, out_slots, typed))
        return made

    def graph(self) -> Graph:
        return Graph(0, -1, -1, tuple(self.variables.values()), tuple(self.operators))


def _attr_type(opdef: Any, key: str) -> Any:
    a = opdef.attribute(key)
    if a is None:
        raise GraphError(f"{opdef.name} has no attribute {key}")
    return a.type


def _num(cfg: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    if default is None:
        raise UnsupportedError(f"config.json lacks {' / '.join(keys)}")
    return default


def _prefix(b: _Builder, probe: str, candidates: Sequence[str]) -> str:
    for p in candidates:
        if b.has(p + probe):
            return p
    raise UnsupportedError(f"checkpoint has no {probe!r} under any of the prefixes {list(candidates)}")


def _linear(b: _Builder, cfg: Mapping[str, Any], name: str, x_in: str, prefix: str, bias: str | None) -> str:
    """A ``linear`` on ``prefix.weight``, or a ``quantized_linear`` when the checkpoint stores it
    compressed-tensors ``pack-quantized`` (``prefix.weight_packed`` …, see docs/COMPRESSION.md)."""
    if not b.has(f"{prefix}.weight_packed"):
        return b.op("linear", name, {"X": x_in, "W": b.param(f"{prefix}.weight"),
                                     "Bias": b.param(bias) if bias else None})[0]
    from ptmpack.quant.scheme import scheme_of

    scheme = scheme_of(cfg)
    if scheme is None:
        raise UnsupportedError(f"{prefix} is stored quantized but config.json has no quantization_config")
    if scheme.strategy not in ("group", "channel"):
        raise UnsupportedError(f"compressed-tensors strategy {scheme.strategy!r} is not supported (group or channel)")
    cols = b.types[x_in].shape[-1]
    if cols < 1:
        raise UnsupportedError(f"{prefix}: the input width of a quantized linear must be known")
    group = scheme.group_size if scheme.strategy == "group" and scheme.group_size else cols
    inputs = {"X": x_in, "Packed": b.param(f"{prefix}.weight_packed"), "Scale": b.param(f"{prefix}.weight_scale"),
              "Bias": b.param(bias) if bias else None}
    for slot, tail in (("ZeroPoint", "weight_zero_point"), ("GIdx", "weight_g_idx")):
        if b.has(f"{prefix}.{tail}"):
            inputs[slot] = b.param(f"{prefix}.{tail}")
    return b.op("quantized_linear", name, inputs, bits=scheme.bits, group_size=int(group), in_features=int(cols))[0]


def _out_features(b: _Builder, prefix: str) -> int:
    """Rows of the linear ``prefix``: its ``weight`` or compressed-tensors ``weight_packed`` ``[out, …]``."""
    for tail in ("weight", "weight_packed"):
        meta = b.tensors.get(f"{prefix}.{tail}")
        if meta is not None and len(meta.shape) == 2:
            return int(meta.shape[0])
    raise UnsupportedError(f"checkpoint has no 2-D {prefix}.weight, which this architecture needs")


def _layer_heads(b: _Builder, prefix: str, head_dim: int, configured: int) -> int:
    """Heads of one layer's projection ``prefix``, from its rows (a head-pruned layer keeps fewer).

    config.json has one head count for all layers; a pruned checkpoint (``compress --prune heads``,
    or transformers 4.x ``prune_heads``) keeps the head width and drops rows, so the tensors are the
    truth. Raises UnsupportedError when the rows are not a positive multiple of the head width
    or exceed the configured count.
    """
    rows = _out_features(b, prefix)
    if rows % head_dim or not 0 < rows // head_dim <= configured:
        raise UnsupportedError(f"{prefix} has {rows} output rows, not 1..{configured} heads of width {head_dim}")
    return rows // head_dim


def _bert(b: _Builder, cfg: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    p = _prefix(b, "embeddings.word_embeddings.weight", ("", "bert.", "model."))
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise UnsupportedError(f"BERT position_embedding_type {cfg['position_embedding_type']!r} is not supported")
    act = cfg.get("hidden_act", "gelu")
    if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise UnsupportedError(f"BERT hidden_act {act!r} is not supported")
    heads, eps = int(_num(cfg, "num_attention_heads")), float(_num(cfg, "layer_norm_eps", default=1e-12))
    head_dim = int(_num(cfg, "hidden_size")) // heads
    ids = b.input("input_ids", "int64", (-1, -1))
    mask = b.input("attention_mask", "int64", (-1, -1))
    inputs = [ids, mask]
    e = b.op("embedding", "embeddings.word", {"X": ids, "W": b.param(f"{p}embeddings.word_embeddings.weight")})[0]
    if b.has(f"{p}embeddings.token_type_embeddings.weight"):
        tt = b.input("token_type_ids", "int64", (-1, -1))
        inputs.append(tt)
        te = b.op("embedding", "embeddings.token_type",
                  {"X": tt, "W": b.param(f"{p}embeddings.token_type_embeddings.weight")})[0]
        e = b.op("add", "embeddings.sum_type", {"A": e, "B": te})[0]
    pos = b.op("arange_like", "embeddings.position_ids", {"X": ids}, axis=-1)[0]
    pe = b.op("embedding", "embeddings.position", {"X": pos, "W": b.param(f"{p}embeddings.position_embeddings.weight")})[0]
    e = b.op("add", "embeddings.sum", {"A": e, "B": pe})[0]
    x = b.op("layer_norm", "embeddings.norm", {"X": e, "Scale": b.param(f"{p}embeddings.LayerNorm.weight"),
                                               "Bias": b.param(f"{p}embeddings.LayerNorm.bias")}, epsilon=eps)[0]
    keep = b.op("cast", "attention.keep", {"X": mask}, dtype="bool")[0]
    keep = b.op("unsqueeze", "attention.keep4d", {"X": keep}, axes=[1, 2])[0]
    gelu = "none" if act == "gelu" else "tanh"
    layers = int(_num(cfg, "num_hidden_layers"))
    for i in range(layers):
        w, n = f"{p}encoder.layer.{i}.", f"layers.{i}."

        def lin(part: str, x_in: str, tag: str, w: str = w, n: str = n) -> str:
            return _linear(b, cfg, f"{n}{tag}", x_in, f"{w}{part}", f"{w}{part}.bias")

        def norm(part: str, x_in: str, op_name: str, w: str = w) -> str:
            return b.op("layer_norm", op_name, {"X": x_in, "Scale": b.param(f"{w}{part}.weight"),
                                                "Bias": b.param(f"{w}{part}.bias")}, epsilon=eps)[0]

        layer_heads = _layer_heads(b, f"{w}attention.self.query", head_dim, heads)
        q, k, v = (lin(f"attention.self.{s}", x, s[0]) for s in ("query", "key", "value"))
        a = b.op("attention", f"{n}attn", {"Q": q, "K": k, "V": v, "Mask": keep}, num_heads=layer_heads)[0]
        o = lin("attention.output.dense", a, "attn_out")
        x = norm("attention.output.LayerNorm", b.op("add", f"{n}attn_res", {"A": o, "B": x})[0], f"{n}attn_norm")
        h = b.op("gelu", f"{n}mlp_act", {"X": lin("intermediate.dense", x, "mlp_in")}, approximate=gelu)[0]
        o = lin("output.dense", h, "mlp_out")
        last = "last_hidden_state" if i == layers - 1 else f"{n}mlp_norm"
        x = norm("output.LayerNorm", b.op("add", f"{n}mlp_res", {"A": o, "B": x})[0], last)
    return inputs, [x]


def _gpt2(b: _Builder, cfg: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    p = _prefix(b, "wte.weight", ("", "transformer."))
    heads, eps = int(_num(cfg, "n_head", "num_attention_heads")), float(_num(cfg, "layer_norm_epsilon", default=1e-5))
    hidden = int(_num(cfg, "n_embd", "hidden_size"))
    act = cfg.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu", "gelu_pytorch_tanh"):
        raise UnsupportedError(f"GPT-2 activation_function {act!r} is not supported")
    ids = b.input("input_ids", "int64", (-1, -1))
    pos = b.op("arange_like", "embeddings.position_ids", {"X": ids}, axis=-1)[0]
    x = b.op("add", "embeddings.sum", {
        "A": b.op("embedding", "embeddings.token", {"X": ids, "W": b.param(f"{p}wte.weight")})[0],
        "B": b.op("embedding", "embeddings.position", {"X": pos, "W": b.param(f"{p}wpe.weight")})[0]})[0]
    for i in range(int(_num(cfg, "n_layer", "num_hidden_layers"))):
        w, n = f"{p}h.{i}.", f"layers.{i}."

        def conv1d(part: str, x_in: str, tag: str, w: str = w, n: str = n) -> str:
            if b.has(f"{w}{part}.weight_packed"):  # quantized Conv1D: stored as its [out, in] transpose
                return _linear(b, cfg, f"{n}{tag}", x_in, f"{w}{part}", f"{w}{part}.bias")
            y = b.op("matmul", f"{n}{tag}", {"A": x_in, "B": b.param(f"{w}{part}.weight")})[0]
            return b.op("add", f"{n}{tag}_bias", {"A": y, "B": b.param(f"{w}{part}.bias")})[0]

        def norm(part: str, x_in: str, tag: str, w: str = w, n: str = n) -> str:
            return b.op("layer_norm", f"{n}{tag}", {"X": x_in, "Scale": b.param(f"{w}{part}.weight"),
                                                    "Bias": b.param(f"{w}{part}.bias")}, epsilon=eps)[0]

        qkv = conv1d("attn.c_attn", norm("ln_1", x, "attn_norm"), "qkv")
        q, k, v = b.op("split", f"{n}qkv_split", {"X": qkv}, outputs=("Y*3",), axis=-1, sections=[hidden] * 3)
        a = b.op("attention", f"{n}attn", {"Q": q, "K": k, "V": v}, causal=True, num_heads=heads)[0]
        x = b.op("add", f"{n}attn_res", {"A": x, "B": conv1d("attn.c_proj", a, "attn_out")})[0]
        h = conv1d("mlp.c_fc", norm("ln_2", x, "mlp_norm"), "mlp_in")
        h = b.op("gelu", f"{n}mlp_act", {"X": h}, approximate="none" if act == "gelu" else "tanh")[0]
        x = b.op("add", f"{n}mlp_res", {"A": x, "B": conv1d("mlp.c_proj", h, "mlp_out")})[0]
    x = b.op("layer_norm", "final_norm", {"X": x, "Scale": b.param(f"{p}ln_f.weight"),
                                          "Bias": b.param(f"{p}ln_f.bias")}, epsilon=eps)[0]
    head = "lm_head.weight" if b.has("lm_head.weight") else f"{p}wte.weight"
    return [ids], [b.op("linear", "logits", {"X": x, "W": b.param(head)})[0]]


def _rope_theta(cfg: Mapping[str, Any]) -> float:
    params = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    scaling = cfg.get("rope_scaling") if isinstance(cfg.get("rope_scaling"), dict) else params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", None):
        raise UnsupportedError(f"RoPE scaling {kind!r} is not supported (plain RoPE only)")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def _llama(b: _Builder, cfg: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    p = _prefix(b, "embed_tokens.weight", ("model.", ""))
    heads = int(_num(cfg, "num_attention_heads"))
    kv = int(_num(cfg, "num_key_value_heads", default=heads))
    hidden = int(_num(cfg, "hidden_size"))
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    eps, theta = float(_num(cfg, "rms_norm_eps", default=1e-6)), _rope_theta(cfg)
    if cfg.get("hidden_act", "silu") != "silu":
        raise UnsupportedError(f"hidden_act {cfg['hidden_act']!r} is not supported (SwiGLU with silu only)")
    ids = b.input("input_ids", "int64", (-1, -1))
    pos = b.op("arange_like", "position_ids", {"X": ids}, axis=-1)[0]
    x = b.op("embedding", "embeddings.token", {"X": ids, "W": b.param(f"{p}embed_tokens.weight")})[0]
    for i in range(int(_num(cfg, "num_hidden_layers"))):
        w, n = f"{p}layers.{i}.", f"layers.{i}."

        def lin(part: str, x_in: str, tag: str, w: str = w, n: str = n) -> str:
            bias = f"{w}{part}.bias"
            return _linear(b, cfg, f"{n}{tag}", x_in, f"{w}{part}", bias if b.has(bias) else None)

        def rope(t: str, count: int, tag: str, n: str = n) -> str:
            t4 = b.op("reshape", f"{n}{tag}_heads", {"X": t}, shape=[0, 0, count, head_dim])[0]
            r = b.op("rotary_embedding", f"{n}{tag}_rope", {"X": t4, "Positions": pos}, theta=theta, seq_axis=-3)[0]
            return b.op("reshape", f"{n}{tag}_packed", {"X": r}, shape=[0, 0, count * head_dim])[0]

        layer_heads = _layer_heads(b, f"{w}self_attn.q_proj", head_dim, heads)
        layer_kv = _layer_heads(b, f"{w}self_attn.k_proj", head_dim, kv)
        h = b.op("rms_norm", f"{n}attn_norm", {"X": x, "Weight": b.param(f"{w}input_layernorm.weight")}, epsilon=eps)[0]
        q = rope(lin("self_attn.q_proj", h, "q"), layer_heads, "q")
        k = rope(lin("self_attn.k_proj", h, "k"), layer_kv, "k")
        v = lin("self_attn.v_proj", h, "v")
        a = b.op("attention", f"{n}attn", {"Q": q, "K": k, "V": v}, causal=True, num_heads=layer_heads,
                 num_kv_heads=layer_kv)[0]
        x = b.op("add", f"{n}attn_res", {"A": x, "B": lin("self_attn.o_proj", a, "attn_out")})[0]
        h = b.op("rms_norm", f"{n}mlp_norm", {"X": x, "Weight": b.param(f"{w}post_attention_layernorm.weight")},
                 epsilon=eps)[0]
        gate = b.op("silu", f"{n}mlp_gate_act", {"X": lin("mlp.gate_proj", h, "mlp_gate")})[0]
        m = b.op("mul", f"{n}mlp_glu", {"A": gate, "B": lin("mlp.up_proj", h, "mlp_up")})[0]
        x = b.op("add", f"{n}mlp_res", {"A": x, "B": lin("mlp.down_proj", m, "mlp_out")})[0]
    x = b.op("rms_norm", "final_norm", {"X": x, "Weight": b.param(f"{p}norm.weight")}, epsilon=eps)[0]
    head = "lm_head.weight" if b.has("lm_head.weight") else f"{p}embed_tokens.weight"
    return [ids], [b.op("linear", "logits", {"X": x, "W": b.param(head)})[0]]


FAMILIES: dict[str, Callable[[_Builder, Mapping[str, Any]], tuple[list[str], list[str]]]] = {
    "bert": _bert, "gpt2": _gpt2, **{t: _llama for t in _LLAMA_TYPES}}
"""``model_type`` → graph builder."""


def model_type_of(config: Mapping[str, Any]) -> str:
    """``model_type`` from config.json, or guessed from ``architectures`` for old configs."""
    mt = config.get("model_type")
    if isinstance(mt, str) and mt:
        return mt
    for arch in config.get("architectures") or ():
        for name, family in (("Bert", "bert"), ("GPT2", "gpt2"), ("Llama", "llama"), ("Qwen2", "qwen2")):
            if isinstance(arch, str) and arch.startswith(name):
                return family
    return "unknown"


def build_model(config: Mapping[str, Any], tensors: Mapping[str, TensorMeta], *, name: str = "model") -> ModelStructure:
    """The IR model of a checkpoint from its config and tensor table.

    Raises:
        UnsupportedError: an architecture or a setting (activation, RoPE scaling, …) not handled,
            or a tensor the architecture needs is missing.
    """
    mt = model_type_of(config)
    family = FAMILIES.get(mt)
    if family is None:
        raise UnsupportedError(f"no IR converter for model_type {mt!r} (supported: {', '.join(sorted(FAMILIES))})")
    b = _Builder(tensors)
    inputs, outputs = family(b, config)
    decoder = mt != "bert"
    meta = {"source": "huggingface", "model_type": mt, "structure": "decoder-only" if decoder else "encoder-only",
            "architectures": ",".join(a for a in config.get("architectures") or () if isinstance(a, str))}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(config.get(key), int):
            meta[key] = str(config[key])
    model = ModelStructure(name=name, graphs=(b.graph(),), inputs=tuple(inputs), outputs=tuple(outputs),
                           producer=PRODUCER, metadata=meta)
    # transforms AffineQuant could not merge are tensors beside their norm: describe them as operators
    from ptmpack.ir.ops.affine import insert_affine_transforms

    return insert_affine_transforms(model, tensors)


def _read_config(path: Path) -> dict[str, Any]:
    return read_object_file(path)


def model_from_dir(model_dir: Path, *, name: str | None = None, file_prefix: str = "Model/") -> ModelStructure:
    """The IR model of a Hugging Face checkpoint directory (``config.json`` + ``*.safetensors``).

    Raises:
        InvalidTreeError: no config.json, or unreadable config or weights.
        UnsupportedError: an architecture this converter does not know, or no top-level weights.
    """
    model_dir = Path(model_dir)
    config = _read_config(model_dir / "config.json")
    return build_model(config, checkpoint_tensors(model_dir, file_prefix=file_prefix), name=name or model_dir.name)


def write_graph(tree_dir: Path, *, name: str | None = None) -> Path:
    """Add ``Model/graph.json`` to a package tree whose ``Model/`` is a Hugging Face checkpoint.

    The model's name is ``name``, else the ``name`` in ``Meta-info/managementinfo.json``,
    else the tree directory's name. Returns the path written.

    Raises:
        InvalidTreeError: no config.json under ``Model/``, unreadable files, or graph.json already exists.
        UnsupportedError: an architecture this converter does not know, or no weights directly in ``Model/``.
    """
    tree_dir = Path(tree_dir)
    if name is None:
        mgmt = tree_dir / "Meta-info" / "managementinfo.json"
        doc = _read_config(mgmt) if mgmt.is_file() else {}
        name = doc.get("name") if isinstance(doc.get("name"), str) else tree_dir.name
    model = model_from_dir(tree_dir / "Model", name=name)
    target = tree_dir / GRAPH_FILE
    try:
        with open(target, "xb") as f:
            f.write(model.dumps())
    except FileExistsError:
        raise InvalidTreeError(f"{target} already exists") from None
    return target


def write_graph_if_supported(tree_dir: Path, *, name: str | None = None) -> Path | None:
    """:func:`write_graph`, or None (nothing written) when the architecture is not supported.

    What ``init --from-hf`` calls: a checkpoint of an architecture the converter does not
    know still makes a package, only without ``Model/graph.json``.

    Raises:
        InvalidTreeError: as :func:`write_graph` (unreadable config or weights).
    """
    try:
        return write_graph(tree_dir, name=name)
    except UnsupportedError:
        return None
