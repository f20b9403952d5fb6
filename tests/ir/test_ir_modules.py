"""Module operators (Tables 15-24): shape inference against the kernels, and each kernel against an
independent implementation (torch, FFT, dense matrices, hand computation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st

from ptmpack.errors import GraphError
from ptmpack.ir.ops import adapters, modules
from tests._support.opcheck import check_infer, randn, run

Arrays = dict[str, np.ndarray]


def mha_params(rng: np.random.Generator, d: int, prefix: str = "", e: int | None = None, bias: bool = True) -> Arrays:
    e = e or d
    p = {f"{prefix}Wq": randn(rng, e, d, scale=0.3), f"{prefix}Wk": randn(rng, e, d, scale=0.3),
         f"{prefix}Wv": randn(rng, e, d, scale=0.3), f"{prefix}Wo": randn(rng, d, e, scale=0.3)}
    if bias:
        p |= {f"{prefix}b{n}": randn(rng, d if n == "o" else e, scale=0.1) for n in "qkvo"}
    return p


def block_params(rng: np.random.Generator, d: int, f: int, prefix: str = "") -> Arrays:
    p = mha_params(rng, d, prefix)
    p |= {f"{prefix}ln1_weight": 1 + randn(rng, d, scale=0.1), f"{prefix}ln1_bias": randn(rng, d, scale=0.1),
          f"{prefix}ln2_weight": 1 + randn(rng, d, scale=0.1), f"{prefix}ln2_bias": randn(rng, d, scale=0.1),
          f"{prefix}W1": randn(rng, f, d, scale=0.3), f"{prefix}b1": randn(rng, f, scale=0.1),
          f"{prefix}W2": randn(rng, d, f, scale=0.3), f"{prefix}b2": randn(rng, d, scale=0.1)}
    return p


def rep_params(rng: np.random.Generator, d: int, c: int, k: int, up: str = "W_up", up_bias: str = "b_up") -> Arrays:
    return {"W_down": randn(rng, c, d, scale=0.3), "b_down": randn(rng, c, scale=0.1),
            up: randn(rng, k, d // k, c // k, scale=0.3), up_bias: randn(rng, d, scale=0.1)}


# ---- shape inference, property-based -----------------------------------------------------------

Case = tuple[Arrays, dict[str, Any], bool]


def _case_mha(draw: Callable[..., Any], rng: np.random.Generator) -> Case:
    h, dh, s, b = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 3))
    d = draw(st.integers(1, 6))
    p = mha_params(rng, d, e=h * dh, bias=draw(st.booleans())) | {"X": randn(rng, b, s, d)}
    return p, {"N_heads": h, "causal": draw(st.booleans()), "need_weights": draw(st.booleans())}, False


def _case_ffn(draw: Callable[..., Any], rng: np.random.Generator) -> Case:
    d, f = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    p = {"X": randn(rng, *draw(st.lists(st.integers(1, 3), max_size=2)), d), "W1": randn(rng, f, d), "W2": randn(rng, d, f)}
    if draw(st.booleans()):
        p["W_gate"] = randn(rng, f, d)
    return p, {"activation": draw(st.sampled_from(["gelu", "relu", "silu", "gelu_tanh"]))}, False


def _case_tnt(draw: Callable[..., Any], rng: np.random.Generator) -> Case:
    b, n, m, cls = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 1))
    dy, dz = 2 * draw(st.integers(1, 2)), 2 * draw(st.integers(1, 3))
    p = block_params(rng, dy, 3, "inner_") | block_params(rng, dz, 5, "outer_")
    p |= {"Z": randn(rng, b, n + cls, dz), "Y": randn(rng, b, n, m, dy), "proj_weight": randn(rng, dz, m * dy)}
    return p, {"inner_heads": 2, "outer_heads": 2}, False


def _case_circ(draw: Callable[..., Any], rng: np.random.Generator) -> Case:
    q, pp, k = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 6))
    p = {"X": randn(rng, draw(st.integers(1, 3)), pp * k), "C": randn(rng, q, pp, k)}
    if draw(st.booleans()):
        p["bias"] = randn(rng, q * k)
    return p, {}, False


def _case_aug(draw: Callable[..., Any], rng: np.random.Generator) -> Case:
    k, blocks, t = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 2))
    d = k * blocks * 2
    p = block_params(rng, d, 4) | {"Z": randn(rng, 2, draw(st.integers(1, 4)), d),
                                   "attn_shortcuts": randn(rng, t, d // k, d // k, k),
                                   "mlp_shortcuts": randn(rng, 1, d // k, d // k, k), "mlp_shortcut_bias": randn(rng, 1, d)}
    return p, {"N_heads": 2}, False


def _case_un(draw: Callable[..., Any], rng: np.random.Generator) -> Case:
    c, m = draw(st.integers(1, 5)), draw(st.integers(0, 3))
    p = {"X": randn(rng, 2, draw(st.integers(1, 4)), c), "running_var": np.abs(randn(rng, c)) + 0.5,
         "gamma": randn(rng, c), "beta": randn(rng, c)}
    if draw(st.booleans()):
        p["history"] = np.abs(randn(rng, m, c)) + 0.5
    return p, {}, draw(st.booleans())


def _case_tf(draw: Callable[..., Any], rng: np.random.Generator) -> Case:
    n, d1, d2 = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    p = {"x1": randn(rng, 2, n, d1), "x2": randn(rng, 2, n, d2), "score1": rng.random((2, n)).astype(np.float32),
         "score2": rng.random((2, n)).astype(np.float32), "proj2to_1": randn(rng, d1, d2)}
    if draw(st.booleans()):
        p["proj1to_2"] = randn(rng, d2, d1)
    return p, {"threshold": 0.5}, False


def _case_adapter(draw: Callable[..., Any], rng: np.random.Generator) -> Case:
    d, r = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    p = {"X": randn(rng, 3, d), "W_down": randn(rng, r, d), "W_up": randn(rng, d, r), "b_up": randn(rng, d)}
    return p, {"residual": draw(st.booleans())}, False


def _case_rep(draw: Callable[..., Any], rng: np.random.Generator) -> Case:
    k = draw(st.integers(1, 3))
    d, c = k * draw(st.integers(1, 3)), k * draw(st.integers(1, 2))
    return rep_params(rng, d, c, k) | {"X": randn(rng, 2, 3, d)}, {"scale": 0.5}, False


def _case_mma(draw: Callable[..., Any], rng: np.random.Generator) -> Case:
    k, b = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    d, c = 2 * k, k
    p = rep_params(rng, d, c, k, "W_up1", "b_up1") | rep_params(rng, d, c, k, "W_up2", "b_up2")
    p |= {"Z": randn(rng, b, draw(st.integers(1, 4)), d), "modality": rng.integers(0, 2, b),
          "modality_embedding": randn(rng, 2, d), "W_router": randn(rng, 2, d)}
    return p, {"temperature": 2.0}, False


def _case_tca(draw: Callable[..., Any], rng: np.random.Generator) -> Case:
    d = draw(st.integers(1, 6))
    p = {"X": randn(rng, 2, 3, d), "scale": randn(rng, d)}
    if draw(st.booleans()):
        p["shift"] = randn(rng, d)
    return p, {}, False


CASES: dict[str, Callable[..., Case]] = {
    "MHA": _case_mha, "FFN": _case_ffn, "nested_transformer": _case_tnt, "circulant_linear": _case_circ,
    "augmented_shortcut_transformer": _case_aug, "unified_norm": _case_un, "token_fusion": _case_tf,
    "adapter": _case_adapter, "rep_adapter": _case_rep, "mixture_of_modality_adapter": _case_mma,
    "transfer_compression_adapter": _case_tca,
}


def test_inference_rejects_mismatched_shapes() -> None:
    rng = np.random.default_rng(0)
    p = mha_params(rng, 4, e=6) | {"X": randn(rng, 1, 3, 4)}
    with pytest.raises(GraphError, match="not divisible"):
        check_infer("MHA", p, N_heads=4)
    p = {"X": randn(rng, 3, 8), "C": randn(rng, 2, 3, 4)}
    with pytest.raises(GraphError, match="circulant_linear"):
        check_infer("circulant_linear", p)
    p = rep_params(rng, 6, 4, 2) | {"X": randn(rng, 2, 5)}
    with pytest.raises(GraphError, match="dimension D"):
        check_infer("rep_adapter", p)


# ---- kernels against torch ---------------------------------------------------------------------

def _torch_mha(p: Arrays, d: int, heads: int) -> Any:
    torch = pytest.importorskip("torch")
    m = torch.nn.MultiheadAttention(d, heads, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        m.in_proj_weight.copy_(torch.from_numpy(np.concatenate([p["Wq"], p["Wk"], p["Wv"]])))
        m.in_proj_bias.copy_(torch.from_numpy(np.concatenate([p["bq"], p["bk"], p["bv"]])))
        m.out_proj.weight.copy_(torch.from_numpy(p["Wo"]))
        m.out_proj.bias.copy_(torch.from_numpy(p["bo"]))
    return m


@pytest.mark.torch
@pytest.mark.parametrize("causal", [False, True])
def test_mha_matches_torch_multihead_attention(causal: bool) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    p = mha_params(rng, 8) | {"X": randn(rng, 2, 5, 8)}
    mask = randn(rng, 5, 5) * (0 if causal else 1)
    got = run("MHA", p | {"attn_mask": mask}, N_heads=2, causal=causal, need_weights=True)
    x = torch.from_numpy(p["X"]).double()
    tmask = torch.from_numpy(mask).double()
    if causal:
        tmask = tmask.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    ref, w = _torch_mha({k: v.astype(np.float64) for k, v in p.items()}, 8, 2)(
        x, x, x, attn_mask=tmask, need_weights=True, average_attn_weights=False)
    np.testing.assert_allclose(got["Y"], ref.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(got["attn_weights"], w.detach().numpy(), atol=1e-6)


@pytest.mark.torch
def test_ffn_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(2)
    p = {"X": randn(rng, 2, 3, 6), "W1": randn(rng, 10, 6), "b1": randn(rng, 10), "W2": randn(rng, 6, 10),
         "b2": randn(rng, 6), "W_gate": randn(rng, 10, 6)}
    t = {k: torch.from_numpy(v) for k, v in p.items()}
    plain = run("FFN", {k: v for k, v in p.items() if k != "W_gate"})["Y"]
    ref = F.linear(F.gelu(F.linear(t["X"], t["W1"], t["b1"])), t["W2"], t["b2"])
    np.testing.assert_allclose(plain, ref.numpy(), atol=1e-5)
    gated = run("FFN", p, activation="silu")["Y"]
    ref = F.linear(F.silu(F.linear(t["X"], t["W_gate"])) * F.linear(t["X"], t["W1"], t["b1"]), t["W2"], t["b2"])
    np.testing.assert_allclose(gated, ref.numpy(), rtol=1e-5, atol=1e-5)
    tanh = run("FFN", {k: v for k, v in p.items() if k != "W_gate"}, activation="gelu_tanh")["Y"]
    ref = F.linear(F.gelu(F.linear(t["X"], t["W1"], t["b1"]), approximate="tanh"), t["W2"], t["b2"])
    np.testing.assert_allclose(tanh, ref.numpy(), atol=1e-5)


def _torch_block(x: Any, p: Arrays, prefix: str, heads: int, eps: float) -> tuple[Any, Any]:
    """Pre-norm block halves with torch primitives: (x + MHA(LN(x)), then + FFN(LN(.)))."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    t = {k[len(prefix):]: torch.from_numpy(v).double() for k, v in p.items() if k.startswith(prefix)}
    d = x.shape[-1]
    mha = _torch_mha({k: v.numpy() for k, v in t.items()}, d, heads)
    h = F.layer_norm(x, (d,), t["ln1_weight"], t["ln1_bias"], eps)
    x = x + mha(h, h, h, need_weights=False)[0]
    h = F.layer_norm(x, (d,), t["ln2_weight"], t["ln2_bias"], eps)
    return x, x + F.linear(F.gelu(F.linear(h, t["W1"], t["b1"])), t["W2"], t["b2"])


@pytest.mark.torch
def test_nested_transformer_matches_torch_composition() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    b, n, m, dy, dz = 2, 4, 3, 4, 6
    p = block_params(rng, dy, 8, "inner_") | block_params(rng, dz, 12, "outer_")
    p |= {"Z": randn(rng, b, n + 1, dz), "Y": randn(rng, b, n, m, dy), "proj_weight": randn(rng, dz, m * dy, scale=0.2),
          "proj_bias": randn(rng, dz)}
    got = run("nested_transformer", p, inner_heads=2, outer_heads=3, n=n, m=m)
    words = torch.from_numpy(p["Y"]).double().reshape(b * n, m, dy)
    _, words = _torch_block(words, p, "inner_", 2, 1e-5)
    z = torch.from_numpy(p["Z"]).double().clone()
    proj = torch.nn.functional.linear(words.reshape(b, n, m * dy), torch.from_numpy(p["proj_weight"]).double(),
                                      torch.from_numpy(p["proj_bias"]).double())
    z[:, 1:] = z[:, 1:] + proj
    _, z = _torch_block(z, p, "outer_", 3, 1e-5)
    np.testing.assert_allclose(got["Y_out"], words.reshape(b, n, m, dy).detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(got["Z_out"], z.detach().numpy(), atol=1e-4)
    with pytest.raises(GraphError, match="attribute n"):
        check_infer("nested_transformer", p, inner_heads=2, outer_heads=3, n=3)


def _dense_circulant(c: np.ndarray) -> np.ndarray:
    """Block matrix of circulant blocks, built element by element from the definition (first column c)."""
    q, p, k = c.shape
    w = np.zeros((q * k, p * k))
    for i in range(q):
        for j in range(p):
            for r in range(k):
                for s in range(k):
                    w[i * k + r, j * k + s] = c[i, j, (r - s) % k]
    return w


@pytest.mark.torch
@pytest.mark.parametrize("k", [1, 4, 5])
def test_circulant_linear_matches_torch_fft_and_dense_matrix(k: int) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    q, pp = 3, 2
    p = {"X": randn(rng, 2, 7, pp * k), "C": randn(rng, q, pp, k), "bias": randn(rng, q * k)}
    got = run("circulant_linear", p)["Y"]
    dense = _dense_circulant(p["C"].astype(np.float64))
    np.testing.assert_allclose(modules.circulant_matrix(p["C"].astype(np.float64)), dense)
    np.testing.assert_allclose(got, p["X"] @ dense.T + p["bias"], atol=1e-5)
    xf = torch.fft.fft(torch.from_numpy(p["X"]).double().reshape(2, 7, 1, pp, k), dim=-1)
    cf = torch.fft.fft(torch.from_numpy(p["C"]).double(), dim=-1)
    ref = torch.fft.ifft((xf * cf).sum(-2), dim=-1).real.reshape(2, 7, q * k) + torch.from_numpy(p["bias"])
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)


@pytest.mark.torch
def test_augmented_shortcut_transformer_matches_torch_composition() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    d, k = 8, 4
    p = block_params(rng, d, 16) | {"Z": randn(rng, 2, 5, d), "attn_shortcuts": randn(rng, 2, d // k, d // k, k, scale=0.3),
                                    "attn_shortcut_bias": randn(rng, 2, d), "mlp_shortcuts": randn(rng, 1, d // k, d // k, k)}
    got = run("augmented_shortcut_transformer", p, N_heads=2)["Z_out"]

    def shortcuts(x: Any, c: np.ndarray, b: np.ndarray | None) -> Any:
        return sum(F.gelu(F.linear(x, torch.from_numpy(_dense_circulant(c[i])),
                                   None if b is None else torch.from_numpy(b[i]).double())) for i in range(len(c)))

    z = torch.from_numpy(p["Z"]).double()
    after_attn, _ = _torch_block(z, p, "", 2, 1e-5)
    z1 = after_attn + shortcuts(z, p["attn_shortcuts"], p["attn_shortcut_bias"])
    t = {k2: torch.from_numpy(v).double() for k2, v in p.items()}
    h = F.layer_norm(z1, (d,), t["ln2_weight"], t["ln2_bias"], 1e-5)
    z2 = z1 + F.linear(F.gelu(F.linear(h, t["W1"], t["b1"])), t["W2"], t["b2"]) + shortcuts(z1, p["mlp_shortcuts"], None)
    np.testing.assert_allclose(got, z2.detach().numpy(), atol=1e-4)


# ---- unified normalization -------------------------------------------------------------------

def test_unified_norm_inference_is_a_foldable_affine() -> None:
    rng = np.random.default_rng(6)
    c = 5
    p = {"X": randn(rng, 2, 3, c), "running_var": np.abs(randn(rng, c)) + 0.1, "gamma": randn(rng, c), "beta": randn(rng, c)}
    got = run("unified_norm", p, eps=1e-3)
    expected = p["gamma"] * p["X"] / np.sqrt(p["running_var"].astype(np.float64) + 1e-3) + p["beta"]
    np.testing.assert_allclose(got["Y"], expected, atol=1e-5)
    np.testing.assert_array_equal(got["running_var_out"], p["running_var"])
    scale, shift = modules.unified_norm_affine(p["running_var"], p["gamma"], p["beta"], 1e-3)
    np.testing.assert_allclose(p["X"] * scale + shift, got["Y"], atol=1e-5)
    w, b = randn(rng, 4, c), randn(rng, 4)
    w2, b2 = modules.fold_affine_into_linear(scale, shift, w, b)
    np.testing.assert_allclose(p["X"] @ w2.T + b2, got["Y"] @ w.T + b, atol=1e-5)


def test_unified_norm_training_smooths_with_geometric_mean_and_updates_state() -> None:
    x = np.array([[[1.0, 2.0]], [[3.0, -2.0]]], np.float32)  # per-channel mean of squares: [5, 4]
    hist = np.array([[1.25, 1.0], [20.0, 16.0]], np.float32)
    p = {"X": x, "running_var": np.array([1.0, 2.0], np.float32), "gamma": np.array([2.0, 1.0], np.float32),
         "beta": np.array([0.5, 0.0], np.float32), "history": hist}
    got = run("unified_norm", p, training=True, eps=0.0, momentum=0.25)
    smooth = np.array([5.0, 4.0])  # cube roots of 1.25·20·5 = 125 and 1·16·4 = 64
    np.testing.assert_allclose(got["Y"], p["gamma"] * x / np.sqrt(smooth) + p["beta"], rtol=1e-5)
    np.testing.assert_allclose(got["running_var_out"], 0.75 * p["running_var"] + 0.25 * smooth, rtol=1e-6)
    np.testing.assert_allclose(got["history_out"], [[20.0, 16.0], [5.0, 4.0]])
    first = run("unified_norm", {k: v for k, v in p.items() if k != "history"}, training=True, eps=0.0)
    assert "history_out" not in first
    np.testing.assert_allclose(first["Y"], p["gamma"] * x / np.sqrt([5.0, 4.0]) + p["beta"], rtol=1e-5)


# ---- token fusion ------------------------------------------------------------------------------

def test_token_fusion_substitutes_low_score_tokens_by_projections() -> None:
    x1 = np.arange(6, dtype=np.float32).reshape(1, 3, 2)
    x2 = np.array([[[7.0], [2.0], [3.0]]], np.float32)
    p = {"x1": x1, "x2": x2, "score1": np.array([[0.5, 0.001, 0.02]], np.float32),
         "score2": np.array([[0.0, 0.9, 0.9]], np.float32), "proj2to_1": np.array([[10.0], [-1.0]], np.float32),
         "proj2to_1_bias": np.array([0.0, 0.5], np.float32), "proj1to_2": np.array([[1.0, 1.0]], np.float32)}
    got = run("token_fusion", p)
    np.testing.assert_allclose(got["Y1"], [[[0, 1], [20, -1.5], [4, 5]]])
    np.testing.assert_allclose(got["Y2"], [[[1.0], [2.0], [3.0]]])
    only1 = run("token_fusion", {k: v for k, v in p.items() if k != "proj1to_2"})
    np.testing.assert_array_equal(only1["Y2"], x2)


# ---- adapters ----------------------------------------------------------------------------------

@pytest.mark.torch
def test_adapter_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(7)
    p = {"X": randn(rng, 2, 3, 6), "W_down": randn(rng, 2, 6), "b_down": randn(rng, 2), "W_up": randn(rng, 6, 2),
         "b_up": randn(rng, 6)}
    t = {k: torch.from_numpy(v) for k, v in p.items()}
    branch = F.linear(F.gelu(F.linear(t["X"], t["W_down"], t["b_down"])), t["W_up"], t["b_up"])
    np.testing.assert_allclose(run("adapter", p, activation="gelu", scale=0.5)["Y"], (t["X"] + 0.5 * branch).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(run("adapter", p, activation="gelu", residual=False)["Y"], branch.numpy(), atol=1e-5)


@pytest.mark.torch
def test_rep_adapter_matches_torch_block_diagonal() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    d, c, k = 12, 6, 3
    p = rep_params(rng, d, c, k) | {"X": randn(rng, 2, 4, d)}
    t = {n: torch.from_numpy(v).double() for n, v in p.items()}
    w_sparse = torch.block_diag(*t["W_up"])
    ref = t["X"] + 0.7 * (torch.nn.functional.linear(t["X"], t["W_down"], t["b_down"]) @ w_sparse.T + t["b_up"])
    np.testing.assert_allclose(run("rep_adapter", p, scale=0.7)["Y"], ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(adapters.group_weight(p["W_up"]), w_sparse.numpy())


def test_rep_adapter_reparameterises_into_the_following_linear() -> None:
    rng = np.random.default_rng(9)
    d, c, k, o = 8, 4, 2, 5
    p = rep_params(rng, d, c, k) | {"X": randn(rng, 3, d)}
    w, b = randn(rng, o, d), randn(rng, o)
    unmerged = run("rep_adapter", p, scale=1.3)["Y"].astype(np.float64) @ w.T + b
    w_rep, b_rep = adapters.merge_rep_adapter(w, b, p["W_down"], p["b_down"], p["W_up"], p["b_up"], 1.3)
    np.testing.assert_allclose(p["X"] @ w_rep.T + b_rep, unmerged, atol=1e-5)
    wa, ba = adapters.rep_adapter_linear(p["W_down"], None, p["W_up"], None, 1.3)
    np.testing.assert_allclose(p["X"] @ wa.T + ba, run("rep_adapter", {**p, "b_down": None, "b_up": None}, scale=1.3)["Y"],
                               atol=1e-5)


def test_mixture_of_modality_adapter_routes_by_modality_token() -> None:
    rng = np.random.default_rng(10)
    d, c, k = 6, 4, 2
    p = rep_params(rng, d, c, k, "W_up1", "b_up1") | rep_params(rng, d, c, k, "W_up2", "b_up2")
    p |= {"Z": randn(rng, 2, 3, d), "modality": np.array([0, 1]), "modality_embedding": randn(rng, 2, d),
          "W_router": randn(rng, 2, d), "b_router": randn(rng, 2)}
    got = run("mixture_of_modality_adapter", p, scale=0.5, temperature=3.0)
    logits = p["modality_embedding"][[0, 1]].astype(np.float64) @ p["W_router"].T + p["b_router"]
    w = np.exp(logits / 3.0) / np.exp(logits / 3.0).sum(-1, keepdims=True)
    np.testing.assert_allclose(got["route_weights"], w, rtol=1e-5)
    h = p["Z"].astype(np.float64) @ p["W_down"].T + p["b_down"]
    f1 = h @ adapters.group_weight(p["W_up1"]).T + p["b_up1"]
    f2 = h @ adapters.group_weight(p["W_up2"]).T + p["b_up2"]
    np.testing.assert_allclose(got["Y"], p["Z"] + 0.5 * (w[:, None, :1] * f1 + w[:, None, 1:] * f2), atol=1e-5)
    # a near-zero temperature turns the router into a switch: each sample gets one RepAdapter
    hard = run("mixture_of_modality_adapter", p, scale=0.5, temperature=1e-6)["Y"]
    for i in range(2):
        pick = "1" if logits[i, 0] > logits[i, 1] else "2"
        single = {"X": p["Z"][i], "W_down": p["W_down"], "b_down": p["b_down"], "W_up": p[f"W_up{pick}"], "b_up": p[f"b_up{pick}"]}
        np.testing.assert_allclose(hard[i], run("rep_adapter", single, scale=0.5)["Y"], atol=1e-5)
    with pytest.raises(GraphError, match="modality ids"):
        run("mixture_of_modality_adapter", p | {"modality": np.array([0, 2])})


def test_transfer_compression_adapter_folds_into_preceding_linear() -> None:
    rng = np.random.default_rng(11)
    z, w, b = randn(rng, 4, 5), randn(rng, 6, 5), randn(rng, 6)
    s, beta = randn(rng, 6), randn(rng, 6)
    s[[1, 4]] = 0.0
    x = z @ w.T + b
    y = run("transfer_compression_adapter", {"X": x, "scale": s, "shift": beta})["Y"]
    np.testing.assert_allclose(y, s * x + beta, atol=1e-6)
    w2, b2 = adapters.fold_linear_adapter(w, b, s, beta)
    np.testing.assert_allclose(z @ w2.T + b2, y, atol=1e-5)
    assert not w2[[1, 4]].any()  # zero scales prune whole output channels
