"""AffineQuant on a tiny synthetic LLaMA block with grouped-query attention (hidden 48, 6 query / 2 kv heads)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ptmpack.compress.quant.affine.block import AffineOptions, affine_quantize_block  # noqa: E402
from ptmpack.compress.quant.affine.model import deployed_params  # noqa: E402
from ptmpack.compress.quant.affine.quantizer import QuantFormat, fake_quantize, quantize  # noqa: E402
from ptmpack.compress.quant.affine.torch_llama import LINEARS, DecoderLayer, LlamaConfig  # noqa: E402
from ptmpack.compress.quant.affine.transforms import (  # noqa: E402
    AffineTransform,
    band_width,
    gradual_mask,
    strictly_dominant,
)
from ptmpack.compress.quant.rtn import quantize_rtn  # noqa: E402

CFG = LlamaConfig(hidden_size=48, num_heads=6, num_kv_heads=2, head_dim=8, intermediate_size=96, num_layers=1,
                  rms_norm_eps=1e-5, rope_theta=10000.0)


def tiny_layer(seed: int = 0) -> DecoderLayer:
    g = torch.Generator().manual_seed(seed)
    d, i, kv = CFG.hidden_size, CFG.intermediate_size, CFG.kv_dim
    shapes = {"self_attn.q_proj": (d, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d),
              "self_attn.o_proj": (d, d), "mlp.gate_proj": (i, d), "mlp.up_proj": (i, d), "mlp.down_proj": (d, i)}
    params = {f"{n}.weight": torch.randn(*s, generator=g) / s[1] ** 0.5 for n, s in shapes.items()}
    # a few outlier input channels, as real LLM activations have, so smoothing has something to do
    gamma = 1 + 0.1 * torch.randn(d, generator=g)
    gamma[[3, 17]] = 8.0
    params["input_layernorm.weight"] = gamma
    params["post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(d, generator=g)
    return DecoderLayer(params, CFG, 0)


def tiny_inputs(n: int = 8, seq: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, seq, CFG.hidden_size, generator=torch.Generator().manual_seed(seed))


def rtn_reference(w: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent numpy RTN: asymmetric min/max per group (range including 0), signed codes."""
    rows, cols = w.shape
    g = w.reshape(rows, cols // group, group).astype(np.float32)
    hi, lo = np.maximum(g.max(-1), 0), np.minimum(g.min(-1), 0)
    scale = np.maximum((hi - lo) / (2**bits - 1), 1e-8).astype(np.float32)
    zero = np.clip(np.round(-lo / scale), 0, 2**bits - 1)
    q = np.clip(np.round(g / scale[..., None]) + zero[..., None], 0, 2**bits - 1) - 2 ** (bits - 1)
    return q.reshape(rows, cols).astype(np.int8), scale, (zero - 2 ** (bits - 1)).astype(np.int8)


def test_identity_transform_equals_rtn():
    layer, x = tiny_layer(), tiny_inputs(4)
    opts = AffineOptions(bits=3, group_size=16, epochs=0, transform="identity", lwc=False, batch_size=2)
    res = affine_quantize_block(layer, x, opts)
    assert not res.transforms and not res.floats
    for name in LINEARS:
        q, scale, zero = rtn_reference(layer.params[f"{name}.weight"].numpy(), 3, 16)
        got = res.quantized[name]
        np.testing.assert_array_equal(got.q.numpy(), q)
        np.testing.assert_array_equal(got.zero_point.numpy(), zero)
        np.testing.assert_allclose(got.scale.numpy(), scale, rtol=1e-6)
        project = quantize_rtn(layer.params[f"{name}.weight"].numpy(), 3, 16)   # ptmpack's own --quant rtn
        np.testing.assert_array_equal(got.q.numpy(), project.codes)
        np.testing.assert_array_equal(got.zero_point.numpy(), project.zero_point)
    # training with A fixed to the identity and no clipping has nothing to learn: still RTN
    trained = affine_quantize_block(layer, x, AffineOptions(bits=3, group_size=16, epochs=2, transform="identity",
                                                            lwc=False, batch_size=2))
    for name in LINEARS:
        assert torch.equal(trained.quantized[name].q, res.quantized[name].q)


@pytest.mark.parametrize("symmetric", [False, True])
def test_quantize_matches_fake_quantize(symmetric):
    w = torch.randn(12, 32, generator=torch.Generator().manual_seed(3))
    fmt = QuantFormat(4, 16, symmetric)
    qt = quantize(w, fmt)
    torch.testing.assert_close(qt.dequantize(), fake_quantize(w, fmt), rtol=0, atol=1e-6)
    assert int(qt.q.min()) >= fmt.qmin and int(qt.q.max()) <= fmt.qmax
    assert (qt.zero_point is None) == symmetric


def test_band_width_and_mask():
    assert [band_width(10, e, 4) for e in range(4)] == [1, 4, 7, 10]
    assert band_width(7, 0, 1) == 7
    m = gradual_mask(5, 2, 0.01)
    assert torch.equal(m.diagonal(), torch.ones(5))
    assert m[0, 1] == pytest.approx(0.01) and m[0, 2] == 0 and m[3, 2] == pytest.approx(0.01)
    assert torch.equal(gradual_mask(4, 1, 0.5), torch.eye(4))


def test_dominance_check_restores_last_dominant_matrix():
    t = AffineTransform(torch.ones(1, 3), shift=False)
    mask = gradual_mask(3, 3, 1.0)
    with torch.no_grad():
        t.A[0, 0, 1] = 0.4
    assert t.enforce_dominance(mask)
    kept = t.A.detach().clone()
    with torch.no_grad():
        t.A[0, 0, 2] = 0.7                     # row 0: 0.4 + 0.7 > 1
    assert not strictly_dominant(t.matrix(mask))
    assert not t.enforce_dominance(mask)
    assert torch.equal(t.A.detach(), kept) and t.violations == 1 and t.checks == 2


def deployed_layer(layer: DecoderLayer, res) -> DecoderLayer:
    """The block as a compressed package stores it: dequantized weights, merged floats, explicit transforms."""
    return DecoderLayer(deployed_params(layer, res), layer.config, layer.index)


@pytest.mark.parametrize("transform", ["block", "full", "diagonal"])
def test_merged_transforms_preserve_block_outputs(transform):
    layer, x = tiny_layer(), tiny_inputs(8)
    opts = AffineOptions(bits=4, group_size=16, epochs=3, transform=transform, block_size=16, batch_size=4, lr=2e-2)
    res = affine_quantize_block(layer, x, opts)
    with torch.no_grad():
        out = deployed_layer(layer, res)(x)
    torch.testing.assert_close(out, res.outputs, rtol=1e-4, atol=1e-4)
    if transform == "diagonal":
        assert not res.transforms                  # every inverse merged into norms and v_proj
        assert "self_attn.o_proj.bias" in res.floats  # the value→output shift merges into biases
        return
    assert set(res.transforms) == {"input_layernorm", "post_attention_layernorm"}
    m, shift = res.transforms["input_layernorm"]
    assert shift.shape == (48,)
    if transform == "block":  # only the three 16-by-16 diagonal blocks are stored, and they are not diagonal
        assert m.shape == (3, 16, 16)
        assert all((b - torch.diag(b.diagonal())).abs().max() > 0 for b in m)
        m = torch.block_diag(*m)
    assert m.shape == (48, 48)
    assert torch.allclose(torch.linalg.inv(m).diagonal(), torch.ones(48))  # diagonal part is in the norm


def test_block_mask_keeps_the_transform_block_diagonal_and_fills_each_block_by_the_last_epoch():
    mask = gradual_mask(12, band_width(4, 2, 3), 0.5, block=4)
    blocks = torch.block_diag(*[torch.ones(4, 4)] * 3)
    assert torch.equal(mask != 0, blocks != 0)                     # the last epoch opens each block fully
    assert torch.equal(mask.diagonal(), torch.ones(12))
    first = gradual_mask(12, band_width(4, 0, 3), 0.5, block=4)
    assert torch.equal(first, torch.eye(12))
    assert AffineOptions(transform="block", block_size=64).block_of(576) == 64
    assert AffineOptions(transform="block", block_size=64).block_of(48) == 16     # gcd where 64 does not divide
    assert AffineOptions(transform="full").block_of(576) is None


def test_gqa_value_output_transform_lives_at_kv_width():
    layer, x = tiny_layer(2), tiny_inputs(4)
    res = affine_quantize_block(layer, x, AffineOptions(bits=4, group_size=16, epochs=2, batch_size=2, lr=2e-2))
    assert res.stats["dominance_checks"]["attn_vo"] == 4
    # v_proj stays [kv_dim, hidden]; o_proj [hidden, q_dim]; both quantized in the transformed space
    assert tuple(res.quantized["self_attn.v_proj"].q.shape) == (CFG.kv_dim, 48)
    assert res.floats["self_attn.v_proj.bias"].shape == (CFG.kv_dim,)


def test_affinequant_beats_rtn_on_block_error():
    layer, x = tiny_layer(4), tiny_inputs(16, 24)
    rtn = affine_quantize_block(layer, x, AffineOptions(bits=3, group_size=16, epochs=0, transform="identity",
                                                        lwc=False, batch_size=4))
    init = affine_quantize_block(layer, x, AffineOptions(bits=3, group_size=16, epochs=0, batch_size=4))
    aq = affine_quantize_block(layer, x, AffineOptions(bits=3, group_size=16, epochs=6, batch_size=4, lr=1e-3))
    assert aq.stats["final_mse"] < 0.8 * rtn.stats["final_mse"]
    assert aq.stats["final_mse"] < init.stats["final_mse"]          # learning improves on the SmoothQuant start
    assert aq.stats["loss_per_epoch"][-1] < aq.stats["loss_per_epoch"][0]


def test_smoothquant_start_merges_completely():
    """Before any epoch A is diagonal (SmoothQuant scales act_max^0.5 / w_max^0.5) and δ = 0: all of it merges."""
    layer, x = tiny_layer(5), tiny_inputs(4)
    res = affine_quantize_block(layer, x, AffineOptions(bits=4, group_size=16, epochs=0, batch_size=2))
    assert not res.transforms and not any(k.endswith(".bias") for k in res.floats)
    with torch.no_grad():
        act = torch.nn.functional.rms_norm(x, (48,), layer.params["input_layernorm.weight"], 1e-5)
        wmax = torch.cat([layer.params[f"self_attn.{p}_proj.weight"] for p in "qkv"]).abs().amax(0)
        want = layer.params["input_layernorm.weight"] / (act.abs().amax((0, 1)).sqrt() / wmax.sqrt())
    torch.testing.assert_close(res.floats["input_layernorm.weight"], want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(deployed_layer(layer, res)(x), res.outputs, rtol=1e-4, atol=1e-4)


def test_checkpoint_path_reads_each_block_when_its_turn_comes_and_equals_the_in_memory_path():
    """affine_quantize_checkpoint reads block i+1's tensors only after block i was handed over, and learns
    exactly what affine_quantize_model learns on the same model held in memory."""
    from ptmpack.compress.quant.affine.model import affine_quantize_checkpoint, affine_quantize_model
    from ptmpack.compress.quant.affine.torch_llama import CausalLM

    cfg = dataclasses.replace(CFG, num_layers=3)
    g = torch.Generator().manual_seed(7)
    tensors = {"model.embed_tokens.weight": torch.randn(40, 48, generator=g), "model.norm.weight": torch.ones(48)}
    for i in range(3):
        tensors.update({f"model.layers.{i}.{k}": v for k, v in tiny_layer(i).params.items()})
    windows = torch.randint(0, 40, (4, 16), generator=g).numpy()
    opts = AffineOptions(bits=4, group_size=16, epochs=2, batch_size=2, lr=2e-2)
    events: list[tuple[str, object]] = []

    def read(name: str) -> torch.Tensor:
        events.append(("read", name))
        return tensors[name]

    streamed = affine_quantize_checkpoint(read, list(tensors), cfg, windows, opts,
                                          finished=lambda layer, r: events.append(("done", layer.index)))
    for i in range(2):
        handed = events.index(("done", i))
        assert all(not (kind == "read" and str(n).startswith(f"model.layers.{i + 1}.")) for kind, n in events[:handed])
        assert all(not (kind == "read" and str(n).startswith(f"model.layers.{i}.")) for kind, n in events[handed:])
    assert sum(kind == "read" for kind, _ in events) == len(tensors) - 1     # each once; the final norm never
    held = affine_quantize_model(CausalLM.from_tensors(tensors, cfg), windows, opts)
    for i in range(3):
        assert streamed.layers[i].stats["final_mse"] == pytest.approx(held.layers[i].stats["final_mse"], rel=1e-5)
        for name, q in held.layers[i].quantized.items():
            assert torch.equal(streamed.layers[i].quantized[name].q, q.q)
