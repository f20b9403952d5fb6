"""Kernels of the basic and transformer operators against closed forms (numpy only) and against
torch.nn.functional (marked ``torch``); shape inference against what the kernels make."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptmpack.errors import GraphError
from ptmpack.ir.ops.numeric import broadcast_shapes, erf
from ptmpack.ir.registry import ExecContext, TensorType, lookup
from tests._support.irbuild import run_op

RNG = np.random.default_rng(1234)


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def y(op: str, inputs: dict, **attrs: object) -> np.ndarray:
    return run_op(op, inputs, **attrs)["Y"]


# ---- closed forms -----------------------------------------------------------------------

def test_arithmetic_broadcasts_and_keeps_int_dtypes() -> None:
    a, b = np.arange(6, dtype=np.int64).reshape(2, 3), np.array([10, 20, 30], np.int64)
    assert y("add", {"A": a, "B": b}).tolist() == [[10, 21, 32], [13, 24, 35]]
    assert y("sub", {"A": a, "B": b}).dtype == np.int64
    assert y("mul", {"A": a, "B": np.float32(2.0) * np.ones(1, np.float32)}).dtype == np.float32
    np.testing.assert_allclose(y("div", {"A": a, "B": b}), a / b, rtol=1e-6)
    assert y("pow", {"A": np.array([2.0, 3.0], np.float32), "B": np.array([3.0], np.float32)}).tolist() == [8.0, 27.0]


def test_matmul_numpy_semantics() -> None:
    a, b = randn(2, 1, 3, 4), randn(5, 4, 6)
    np.testing.assert_allclose(y("matmul", {"A": a, "B": b}), a @ b, rtol=1e-5)
    bt = randn(1, 6, 4)
    np.testing.assert_allclose(y("matmul", {"A": a, "B": bt}, transpose_b=True), a @ bt.transpose(0, 2, 1), rtol=1e-5)
    v = randn(4)
    assert y("matmul", {"A": v, "B": randn(4, 2)}).shape == (2,)
    assert y("matmul", {"A": randn(3, 4), "B": v}).shape == (3,)
    assert y("matmul", {"A": v, "B": v}).shape == ()
    with pytest.raises(GraphError, match="inner dims"):
        lookup("matmul").infer({"A": TensorType("float32", (2, 3)), "B": TensorType("float32", (4, 2))},
                               {"transpose_a": False, "transpose_b": False})


def test_activations_known_values() -> None:
    x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0], np.float32)
    assert y("relu", {"X": x}).tolist() == [0, 0, 0, 1, 2]
    np.testing.assert_allclose(y("sigmoid", {"X": x}), 1 / (1 + np.exp(-x)), rtol=1e-6)
    np.testing.assert_allclose(y("silu", {"X": x}), x / (1 + np.exp(-x)), rtol=1e-6, atol=1e-7)
    gelu_exact = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()]
    np.testing.assert_allclose(y("gelu", {"X": x}), gelu_exact, atol=1e-6)
    assert abs(y("gelu", {"X": np.array([1.0], np.float32)})[0] - 0.8413447) < 1e-6
    tanh_form = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(y("gelu", {"X": x}, approximate="tanh"), tanh_form, rtol=1e-6)
    with pytest.raises(GraphError, match="approximate"):
        y("gelu", {"X": x}, approximate="fast")
    np.testing.assert_allclose(y("sqrt", {"X": np.abs(x)}), np.sqrt(np.abs(x)))
    np.testing.assert_allclose(y("exp", {"X": x}), np.exp(x), rtol=1e-6)


def test_erf_matches_math_erf() -> None:
    xs = np.linspace(-6, 6, 2001)
    assert np.max(np.abs(erf(xs) - np.array([math.erf(v) for v in xs]))) < 2e-7


def test_softmax_and_log_softmax() -> None:
    x = randn(3, 7) * 30  # large values: the max shift keeps exp finite
    p = y("softmax", {"X": x})
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(y("softmax", {"X": np.array([[0.0, math.log(3.0)]], np.float32)}), [[0.25, 0.75]], rtol=1e-6)
    x64 = x.astype(np.float64)
    want = x64 - x64.max(axis=-1, keepdims=True)
    want -= np.log(np.exp(want).sum(axis=-1, keepdims=True))
    np.testing.assert_allclose(y("log_softmax", {"X": x}), want, rtol=1e-5, atol=1e-5)  # finite where exp underflows
    np.testing.assert_allclose(y("softmax", {"X": x}, axis=0).sum(axis=0), 1.0, rtol=1e-6)


def test_rms_norm_closed_form() -> None:
    x, w = randn(2, 5, 8), randn(8)
    want = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(y("rms_norm", {"X": x, "Weight": w}), want, rtol=1e-5)
    np.testing.assert_allclose(y("rms_norm", {"X": x, "Weight": w}, weight_offset=1.0),
                               want / w * (w + 1), rtol=1e-4)


def test_rotary_embedding_properties() -> None:
    q, k = randn(1, 2, 6, 8), randn(1, 2, 6, 8)
    rq = y("rotary_embedding", {"X": q})
    np.testing.assert_allclose(rq[:, :, 0], q[:, :, 0], rtol=1e-6)  # position 0 is the identity
    np.testing.assert_allclose(np.linalg.norm(rq, axis=-1), np.linalg.norm(q, axis=-1), rtol=1e-5)  # rotation
    # relative positions: <R(m) q, R(n) k> depends on m - n only
    qq, kk = np.repeat(q[:, :, :1], 6, axis=2), np.repeat(k[:, :, :1], 6, axis=2)
    rqq, rkk = y("rotary_embedding", {"X": qq}), y("rotary_embedding", {"X": kk})
    dots = np.einsum("bhsd,bhtd->bhst", rqq, rkk)
    np.testing.assert_allclose(dots[..., 1, 0], dots[..., 5, 4], rtol=1e-4)
    # an Offset shifts positions exactly like explicit Positions
    off = y("rotary_embedding", {"X": q, "Offset": np.array(3, np.int64)})
    pos = y("rotary_embedding", {"X": q, "Positions": np.arange(3, 9)})
    np.testing.assert_allclose(off, pos, rtol=1e-6)
    # partial rotation leaves the tail alone; [b, s, h, d] layout agrees with [b, h, s, d]
    part = y("rotary_embedding", {"X": q}, rotary_dim=4)
    np.testing.assert_array_equal(part[..., 4:], q[..., 4:])
    bshd = y("rotary_embedding", {"X": q.transpose(0, 2, 1, 3)}, seq_axis=-3)
    np.testing.assert_allclose(bshd.transpose(0, 2, 1, 3), rq, rtol=1e-6)
    per_batch = y("rotary_embedding", {"X": np.concatenate([q, q]), "Positions": np.stack([np.arange(6), np.arange(6) + 3])})
    np.testing.assert_allclose(per_batch[1], off[0], rtol=1e-6)


def test_rotary_interleaved_is_a_permuted_rotate_half() -> None:
    q = randn(1, 1, 4, 8)
    perm = np.concatenate([np.arange(0, 8, 2), np.arange(1, 8, 2)])  # pairs (0,1),(2,3).. → halves
    inter = y("rotary_embedding", {"X": q}, interleaved=True)
    half = y("rotary_embedding", {"X": q[..., perm]})
    np.testing.assert_allclose(inter[..., perm], half, rtol=1e-5, atol=1e-6)


def test_causal_mask_values() -> None:
    m = y("causal_mask", {"X": np.zeros((1, 3), np.int64)})
    low = np.finfo(np.float32).min
    assert m.tolist() == [[0, low, low], [0, 0, low], [0, 0, 0]]
    cached = y("causal_mask", {"X": np.zeros((1, 2), np.int64), "Key": np.zeros((1, 4), np.int64)})
    assert (cached == 0).tolist() == [[True, True, True, False], [True, True, True, True]]
    pad = y("causal_mask", {"X": np.zeros((2, 3), np.int64), "PaddingMask": np.array([[1, 1, 1], [0, 1, 1]])})
    assert pad.shape == (2, 1, 3, 3) and pad[1, 0, 2, 0] == low and pad[1, 0, 2, 1] == 0


def test_shape_ops() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert y("reshape", {"X": x}, shape=[0, -1]).shape == (2, 12)
    assert y("reshape", {"X": x}, shape=[-1, 0, 2]).shape == (4, 3, 2)
    with pytest.raises(GraphError):
        y("reshape", {"X": x}, shape=[5, -1])
    np.testing.assert_array_equal(y("transpose", {"X": x}, perm=[2, 0, 1]), x.transpose(2, 0, 1))
    np.testing.assert_array_equal(y("transpose", {"X": x}), x.T)
    np.testing.assert_array_equal(y("concat", {"X": [x, x[:, :1]]}, axis=1), np.concatenate([x, x[:, :1]], axis=1))
    parts = run_op("split", {"X": x}, axis=2, sections=[1, -1])["Y"]
    assert [p.shape for p in parts] == [(2, 3, 1), (2, 3, 3)]
    assert len(run_op("split", {"X": x}, axis=-1, num=2)["Y"]) == 2
    np.testing.assert_array_equal(y("gather", {"X": x, "Indices": np.array([[2, 0]])}, axis=1), x[:, [[2, 0]]])
    with pytest.raises(GraphError, match="out of range"):
        y("gather", {"X": x, "Indices": np.array([3])}, axis=1)
    np.testing.assert_array_equal(y("slice", {"X": x}, starts=[1, -1], ends=[2**62, 0], axes=[1, 2], steps=[1, -1]),
                                  x[:, 1:, -1:0:-1])
    assert y("unsqueeze", {"X": x}, axes=[0, -1]).shape == (1, 2, 3, 4, 1)
    assert run_op("squeeze", {"X": x[:, :1, None]}, unknown=False)["Y"].shape == (2, 4)
    assert y("squeeze", {"X": x[:, :1]}, axes=[1]).shape == (2, 4)
    assert y("cast", {"X": np.array([1.7, -1.7])}, dtype="int32").tolist() == [1, -1]
    assert y("constant", {}, value=[1.0, 2.0], shape=[2, 1], dtype="int64").tolist() == [[1], [2]]
    assert y("constant", {}, value=[0.5], shape=[2]).tolist() == [0.5, 0.5]
    assert y("fill_like", {"X": np.zeros((2, 3), np.int64)}).dtype == np.int64
    assert y("arange_like", {"X": np.zeros((2, 5), np.int64)}, start=2).tolist() == [2, 3, 4, 5, 6]
    assert y("reduce_mean", {"X": x}, axes=[1], keepdims=True).shape == (2, 1, 4)
    assert y("reduce_sum", {"X": x}).tolist() == float(x.sum())
    np.testing.assert_array_equal(y("where", {"Condition": x > 10, "A": x, "B": -x}), np.where(x > 10, x, -x))
    np.testing.assert_allclose(y("scale", {"X": x}, scale=2.0, bias=1.0), x * 2 + 1)
    np.testing.assert_allclose(y("scale", {"X": x}, scale=2.0, bias=1.0, bias_after_scale=False), (x + 1) * 2)


def test_transformer_ops_closed_forms() -> None:
    ids, w = np.array([[0, 2], [1, 2]]), randn(3, 4)
    np.testing.assert_array_equal(y("embedding", {"X": ids, "W": w}), w[ids])
    padded = y("embedding", {"X": ids, "W": w}, padding_idx=2)
    assert not padded[:, 1].any() and (padded[0, 0] == w[0]).all()
    with pytest.raises(GraphError, match="out of range"):
        y("embedding", {"X": np.array([3]), "W": w})
    x = randn(2, 3, 8)
    ln = run_op("layer_norm", {"X": x})
    np.testing.assert_allclose(ln["Y"].mean(axis=-1), 0, atol=1e-6)
    np.testing.assert_allclose(ln["Y"].var(axis=-1), 1, rtol=1e-3)
    np.testing.assert_allclose(ln["Mean"], x.mean(axis=-1), rtol=1e-5, atol=1e-6)
    lin_w, lin_b = randn(5, 8), randn(5)
    np.testing.assert_allclose(y("linear", {"X": x, "W": lin_w, "Bias": lin_b}), x @ lin_w.T + lin_b, rtol=1e-5, atol=1e-5)


def _attention_numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
    """Per-head loops, the textbook formula (GQA: Q head h uses K/V head h // group)."""
    b, hq, sq, d = q.shape
    group = hq // k.shape[1]
    out = np.zeros((b, hq, sq, v.shape[-1]), np.float64)
    for i in range(b):
        for h in range(hq):
            s = q[i, h].astype(np.float64) @ k[i, h // group].T / math.sqrt(d)
            if causal:
                s = s + np.triu(np.full(s.shape, -np.inf), k=1 + s.shape[1] - s.shape[0])
            p = np.exp(s - s.max(axis=-1, keepdims=True))
            out[i, h] = (p / p.sum(axis=-1, keepdims=True)) @ v[i, h // group]
    return out


@pytest.mark.parametrize(("hq", "hkv", "sq", "sk", "causal"), [(4, 4, 5, 5, False), (6, 2, 5, 5, True), (4, 1, 2, 6, True)])
def test_attention_textbook(hq: int, hkv: int, sq: int, sk: int, causal: bool) -> None:
    q, k, v = randn(2, hq, sq, 8), randn(2, hkv, sk, 8), randn(2, hkv, sk, 3)
    want = _attention_numpy(q, k, v, causal)
    np.testing.assert_allclose(y("attention", {"Q": q, "K": k, "V": v}, causal=causal), want, rtol=1e-4, atol=1e-5)
    packed = run_op("attention", {"Q": q.transpose(0, 2, 1, 3).reshape(2, sq, -1), "K": k.transpose(0, 2, 1, 3).reshape(2, sk, -1),
                                  "V": v.transpose(0, 2, 1, 3).reshape(2, sk, -1)},
                    causal=causal, num_heads=hq, num_kv_heads=hkv, need_weights=True)
    np.testing.assert_allclose(packed["Y"], want.transpose(0, 2, 1, 3).reshape(2, sq, -1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(packed["Weights"].sum(axis=-1), 1.0, rtol=1e-5)


def test_attention_masks_match_causal_flag() -> None:
    q, k, v = randn(1, 2, 4, 8), randn(1, 2, 4, 8), randn(1, 2, 4, 8)
    causal = y("attention", {"Q": q, "K": k, "V": v}, causal=True)
    additive = y("causal_mask", {"X": q}, seq_axis=-2)
    np.testing.assert_allclose(y("attention", {"Q": q, "K": k, "V": v, "Mask": additive}), causal, rtol=1e-6)
    keep = np.tril(np.ones((4, 4), bool))
    np.testing.assert_allclose(y("attention", {"Q": q, "K": k, "V": v, "Mask": keep}), causal, rtol=1e-6)
    everything_masked = y("attention", {"Q": q, "K": k, "V": v, "Mask": np.zeros((4, 4), bool)})
    assert np.isfinite(everything_masked).all()


def test_float16_compute_rounds_at_op_boundaries() -> None:
    ctx = ExecContext(compute_dtype="float16")
    x, w = randn(4, 16), randn(8, 16)
    got = run_op("linear", {"X": x, "W": w}, ctx)["Y"]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, x @ w.T, rtol=1e-2, atol=1e-2)
    assert run_op("softmax", {"X": x}, ctx)["Y"].dtype == np.float16
    assert run_op("add", {"A": np.arange(3), "B": np.arange(3)}, ctx)["Y"].dtype == np.int64


# ---- torch.nn.functional as the independent reference ----------------------------------

@pytest.mark.torch
def test_against_torch_functional() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    t = torch.from_numpy
    x = randn(2, 5, 16)

    def close(a: np.ndarray, b: object, tol: float = 1e-5) -> None:
        np.testing.assert_allclose(a, b.numpy(), rtol=tol, atol=tol)  # type: ignore[attr-defined]

    close(y("gelu", {"X": x}), F.gelu(t(x)))
    close(y("gelu", {"X": x}, approximate="tanh"), F.gelu(t(x), approximate="tanh"))
    close(y("silu", {"X": x}), F.silu(t(x)))
    close(y("relu", {"X": x}), F.relu(t(x)))
    close(y("sigmoid", {"X": x}), torch.sigmoid(t(x)))
    close(y("tanh", {"X": x}), torch.tanh(t(x)))
    close(y("softmax", {"X": x}, axis=1), F.softmax(t(x), dim=1))
    close(y("log_softmax", {"X": x}), F.log_softmax(t(x), dim=-1))
    w, b = randn(16), randn(16)
    close(y("layer_norm", {"X": x, "Scale": w, "Bias": b}), F.layer_norm(t(x), (16,), t(w), t(b), eps=1e-5))
    close(y("layer_norm", {"X": x, "Scale": np.tile(w, 5), "Bias": np.tile(b, 5)}, begin_norm_axis=1),
          F.layer_norm(t(x), (5, 16), t(np.tile(w, 5).reshape(5, 16)), t(np.tile(b, 5).reshape(5, 16))), 1e-4)
    close(y("rms_norm", {"X": x, "Weight": w}, epsilon=1e-5), F.rms_norm(t(x), (16,), t(w), eps=1e-5))
    lw, lb = randn(7, 16), randn(7)
    close(y("linear", {"X": x, "W": lw, "Bias": lb}), F.linear(t(x), t(lw), t(lb)), 1e-4)
    close(y("linear", {"X": x, "W": lw}), F.linear(t(x), t(lw)), 1e-4)
    ids, table = np.array([[1, 0, 3], [2, 2, 1]]), randn(4, 6)
    table[0] = 0  # torch keeps W[padding_idx] (zero in a trained model); ptmpack writes zeros
    close(y("embedding", {"X": ids, "W": table}, padding_idx=0), F.embedding(t(ids), t(table), padding_idx=0))
    a, bm = randn(3, 1, 4, 5), randn(2, 5, 6)
    close(y("matmul", {"A": a, "B": bm}), torch.matmul(t(a), t(bm)), 1e-4)


@pytest.mark.torch
@pytest.mark.parametrize(("hq", "hkv", "causal"), [(4, 4, False), (4, 4, True), (8, 2, True), (6, 1, False)])
def test_attention_against_torch_sdpa(hq: int, hkv: int, causal: bool) -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    q, k, v = randn(2, hq, 7, 16), randn(2, hkv, 7, 16), randn(2, hkv, 7, 16)
    rep = hq // hkv
    want = F.scaled_dot_product_attention(torch.from_numpy(q), torch.from_numpy(k).repeat_interleave(rep, dim=1),
                                          torch.from_numpy(v).repeat_interleave(rep, dim=1), is_causal=causal)
    np.testing.assert_allclose(y("attention", {"Q": q, "K": k, "V": v}, causal=causal), want.numpy(), rtol=1e-4, atol=1e-5)
    mask = randn(2, 1, 7, 7)
    want = F.scaled_dot_product_attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
                                          attn_mask=torch.from_numpy(mask), scale=0.3, enable_gqa=True)
    np.testing.assert_allclose(y("attention", {"Q": q, "K": k, "V": v, "Mask": mask}, scale=0.3), want.numpy(),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.torch
def test_rotary_against_hugging_face_formula() -> None:
    """LLaMA's rotate_half form, written out in torch as Hugging Face's modeling code does."""
    torch = pytest.importorskip("torch")
    q, theta = randn(2, 3, 5, 8), 500000.0
    inv_freq = 1.0 / (theta ** (torch.arange(0, 8, 2, dtype=torch.int64).float() / 8))
    pos = torch.arange(2, 7)[None].float()
    freqs = (inv_freq[None, :, None] @ pos[:, None, :]).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    tq = torch.from_numpy(q)
    rotate_half = torch.cat((-tq[..., 4:], tq[..., :4]), dim=-1)
    want = tq * cos + rotate_half * sin
    got = y("rotary_embedding", {"X": q, "Offset": np.array(2)}, theta=theta)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


# ---- inference against kernels, for random shapes ---------------------------------------

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)


@given(shapes, shapes)
def test_broadcast_inference_matches_numpy(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    try:
        want = np.broadcast_shapes(a, b)
    except ValueError:
        with pytest.raises(GraphError):
            broadcast_shapes(a, b)
        return
    assert broadcast_shapes(a, b) == want
    unknown = tuple(-1 if i % 2 else d for i, d in enumerate(a))
    assert all(g in (-1, w) for g, w in zip(broadcast_shapes(unknown, b), want, strict=True))


@given(shapes, st.data())
def test_inference_matches_kernels(shape: tuple[int, ...], data: st.DataObject) -> None:
    x = RNG.standard_normal(shape).astype(np.float32)
    rank = len(shape)
    axis = data.draw(st.integers(-rank, rank - 1))
    for op in ("relu", "gelu", "silu", "tanh", "sigmoid", "exp", "scale"):
        run_op(op, {"X": x})
    run_op("softmax", {"X": x}, axis=axis)
    run_op("log_softmax", {"X": x}, axis=axis)
    run_op("rms_norm", {"X": x, "Weight": np.ones(shape[axis:], np.float32)},
           begin_norm_axis=axis)
    run_op("layer_norm", {"X": x}, begin_norm_axis=axis)
    run_op("reduce_sum", {"X": x}, axes=[axis], keepdims=data.draw(st.booleans()))
    run_op("transpose", {"X": x}, perm=data.draw(st.permutations(range(rank))))
    run_op("reshape", {"X": x}, shape=[-1])
    run_op("unsqueeze", {"X": x}, axes=[axis])
    run_op("concat", {"X": [x, x]}, axis=axis)
    run_op("split", {"X": np.concatenate([x, x], axis=axis)}, axis=axis, num=2)
    run_op("gather", {"X": x, "Indices": np.zeros((2, 1), np.int64)}, axis=axis)
    start, end = data.draw(st.integers(-5, 5)), data.draw(st.integers(-5, 5))
    run_op("slice", {"X": x}, starts=[start], ends=[end], axes=[axis])
    other = tuple(data.draw(st.sampled_from([1, d])) for d in shape[data.draw(st.integers(0, rank - 1)):])
    run_op("add", {"A": x, "B": RNG.standard_normal(other).astype(np.float32)})
    run_op("where", {"Condition": x > 0, "A": x, "B": np.zeros(other, np.float32)})
    run_op("matmul", {"A": x, "B": RNG.standard_normal((shape[-1], 3)).astype(np.float32)})
    run_op("linear", {"X": x, "W": RNG.standard_normal((2, shape[-1])).astype(np.float32)})
    if rank >= 2 and shape[-1] % 2 == 0:
        run_op("rotary_embedding", {"X": x})
