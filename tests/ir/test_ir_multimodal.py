"""Multimodal operators (Tables 25-39): shape inference against the kernels; kernels against torch,
closed-form filter-bank and DCT properties, and hand-computed routing and optimizer cases."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st

from ptmpack.errors import GraphError
from ptmpack.ir.ops import multimodal as mm
from tests._support.opcheck import check_infer, randn, run

Case = tuple[dict[str, np.ndarray], dict[str, Any], bool]
Draw = Callable[..., Any]


# ---- shape inference, property-based -----------------------------------------------------------

def _ve(draw: Draw, rng: np.random.Generator) -> Case:
    pp, c, d = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(pp, 7)), draw(st.integers(pp, 7))
    p = {"pixels": randn(rng, 2, c, h, w), "W_patch": randn(rng, d, c, pp, pp)}
    n = (h // pp) * (w // pp)
    if draw(st.booleans()):
        p["cls_token"] = randn(rng, d)
        n += 1
    if draw(st.booleans()):
        p["pos_embedding"] = randn(rng, n, d)
    return p, {}, False


def _roi(draw: Draw, rng: np.random.Generator) -> Case:
    r = draw(st.integers(0, 3))
    rois = np.concatenate([rng.integers(0, 2, (r, 1)), rng.uniform(-2, 12, (r, 4))], axis=1).astype(np.float32)
    return {"features": randn(rng, 2, 3, 6, 5), "rois": rois}, {"pool_size": [draw(st.integers(1, 3)), 2]}, False


def _te(draw: Draw, rng: np.random.Generator) -> Case:
    shape = draw(st.lists(st.integers(0, 3), max_size=2))
    return {"ids": rng.integers(0, 7, shape), "weight": randn(rng, 7, 3)}, {}, False


def _pe(draw: Draw, rng: np.random.Generator) -> Case:
    x = randn(rng, 2, draw(st.integers(1, 6)), draw(st.integers(1, 5)))
    return {"X": x}, {"periodic_function": draw(st.sampled_from(mm.PERIODIC_FUNCTIONS)), "offset": 3}, False


def _audio(draw: Draw, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    n_fft = draw(st.sampled_from([8, 9, 16]))
    center = draw(st.booleans())
    t = draw(st.integers(n_fft if not center else n_fft // 2 + 1, 60))
    attrs = {"n_fft": n_fft, "hop_length": draw(st.integers(0, 5)), "n_mels": draw(st.integers(2, 6)), "center": center,
             "sample_rate": 8000, "mel_scale": draw(st.sampled_from(["htk", "slaney"]))}
    return {"waveform": randn(rng, *draw(st.lists(st.integers(1, 2), max_size=1)), t)}, attrs


def _mel(draw: Draw, rng: np.random.Generator) -> Case:
    return (*_audio(draw, rng), False)


def _mfcc(draw: Draw, rng: np.random.Generator) -> Case:
    x, attrs = _audio(draw, rng)
    return x, attrs | {"n_mfcc": draw(st.integers(1, attrs["n_mels"]))}, False


def _cma(draw: Draw, rng: np.random.Generator) -> Case:
    h, s1, s2 = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    p = {"modality_1": randn(rng, 2, s1, 3), "modality_2": randn(rng, 2, s2, 5), "Wq": randn(rng, 2 * h, 3),
         "Wk": randn(rng, 2 * h, 5), "Wv": randn(rng, 3 * h, 5), "Wo": randn(rng, 4, 3 * h)}
    if draw(st.booleans()):
        p["key_padding_mask"] = np.zeros((2, s2), bool)
    return p, {"N_heads": h, "need_weights": draw(st.booleans())}, False


def _concat(draw: Draw, rng: np.random.Generator) -> Case:
    axis = draw(st.sampled_from([-1, -2, 0]))
    a, b = [2, 3, 4], [2, 3, 4]
    b[axis] = draw(st.integers(1, 3))
    p = {"modality_1": randn(rng, *a), "modality_2": randn(rng, *b)}
    if axis != -1 and draw(st.booleans()):
        p["W"] = randn(rng, 5, 4)
    return p, {"axis": axis}, False


def _es(draw: Draw, rng: np.random.Generator) -> Case:
    e = draw(st.integers(1, 5))
    return {"logits": randn(rng, 3, e)}, {"top_k": draw(st.integers(1, e)), "normalize": draw(st.booleans())}, False


def _ger(draw: Draw, rng: np.random.Generator) -> Case:
    e, d = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    p = {"X": randn(rng, 2, draw(st.integers(0, 3)), d), "W_router": randn(rng, e, d)}
    return p, {"top_k": draw(st.integers(1, e))}, False


def _moe(draw: Draw, rng: np.random.Generator) -> Case:
    e, d, f = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    p = {"X": randn(rng, draw(st.integers(0, 3)), d), "W_router": randn(rng, e, d), "W1": randn(rng, e, f, d), "W2": randn(rng, e, d, f)}
    if draw(st.booleans()):
        p |= {"W_gate": randn(rng, e, f, d), "b2": randn(rng, e, d)}
    return p, {"top_k": draw(st.integers(1, e))}, False


def _align(draw: Draw, rng: np.random.Generator) -> Case:
    n = draw(st.integers(1, 4))
    return {"modality_1": randn(rng, n, 3), "modality_2": randn(rng, n, 5), "W1": randn(rng, 2, 3),
            "W2": randn(rng, 2, 5)}, {}, False


def _mso(draw: Draw, rng: np.random.Generator) -> Case:
    shape = draw(st.lists(st.integers(1, 3), max_size=2))
    p = {"X": randn(rng, *shape), "grad": randn(rng, *shape)}
    if draw(st.booleans()):
        p |= {"m": randn(rng, *shape), "v": np.abs(randn(rng, *shape)), "step": np.array(3)}
    return p, {"modality": "vision"}, draw(st.booleans())


def _mbo(draw: Draw, rng: np.random.Generator) -> Case:
    p = {"X": randn(rng, 3, 2), "grad": randn(rng, 3, 2), "scores": rng.random(3).astype(np.float32)}
    return p, {"modality": draw(st.integers(0, 2))}, draw(st.booleans())


def _reg(draw: Draw, rng: np.random.Generator) -> Case:
    shape = (*draw(st.lists(st.integers(1, 3), max_size=2)), 4)
    return ({"modality_1": randn(rng, *shape), "modality_2": randn(rng, *shape)},
            {"regularization_method": draw(st.sampled_from(["l2", "cosine", "kl"]))}, True)


CASES: dict[str, Callable[..., Case]] = {
    "vision_embedding": _ve, "roi_pooling": _roi, "text_embedding": _te, "positional_encoding": _pe,
    "mel_spectrogram": _mel, "mfcc": _mfcc, "cross_modal_attention": _cma, "concat_fusion": _concat,
    "expert_selection": _es, "gated_expert_routing": _ger, "mixture_of_experts": _moe, "modal_alignment": _align,
    "modality_specific_optimizer": _mso, "modality_balancing_optimizer": _mbo, "cross_modality_regularization": _reg,
}


def test_inference_rejects_bad_configurations() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(GraphError, match="patch"):
        check_infer("vision_embedding", {"pixels": randn(rng, 1, 3, 8, 8), "W_patch": randn(rng, 4, 3, 2, 2),
                                         "pos_embedding": randn(rng, 5, 4)})
    with pytest.raises(GraphError, match="fewer than n_fft"):
        check_infer("mel_spectrogram", {"waveform": randn(rng, 10)}, n_fft=16, center=False)
    with pytest.raises(GraphError, match="n_mfcc"):
        check_infer("mfcc", {"waveform": randn(rng, 100)}, n_fft=16, n_mels=4, n_mfcc=5)
    with pytest.raises(GraphError, match="top_k"):
        check_infer("expert_selection", {"logits": randn(rng, 2, 3)}, top_k=4)
    with pytest.raises(GraphError, match="learning rate"):
        check_infer("modality_specific_optimizer", {"X": randn(rng, 2), "grad": randn(rng, 2)}, modality="smell")
    with pytest.raises(GraphError, match="dim 0"):
        check_infer("concat_fusion", {"modality_1": randn(rng, 2, 3), "modality_2": randn(rng, 3, 3)})


# ---- vision and text ---------------------------------------------------------------------------

@pytest.mark.torch
def test_vision_embedding_matches_torch_conv2d() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    p = {"pixels": randn(rng, 2, 3, 9, 10), "W_patch": randn(rng, 6, 3, 3, 3), "b_patch": randn(rng, 6),
         "cls_token": randn(rng, 6), "pos_embedding": randn(rng, 10, 6)}
    got = run("vision_embedding", p, patch_size=3)["Y"]
    conv = torch.nn.functional.conv2d(torch.from_numpy(p["pixels"]), torch.from_numpy(p["W_patch"]),
                                      torch.from_numpy(p["b_patch"]), stride=3)
    tokens = conv.flatten(2).transpose(1, 2).numpy()  # [2, 9, 6], the 10th column of pixels dropped
    ref = np.concatenate([np.broadcast_to(p["cls_token"], (2, 1, 6)), tokens], axis=1) + p["pos_embedding"]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_roi_pooling_hand_computed() -> None:
    feat = np.stack([np.arange(16, dtype=np.float32).reshape(1, 4, 4), -np.ones((1, 4, 4), np.float32)])
    rois = np.array([[0, 0, 0, 3, 3], [0, 1, 1, 2, 2], [0, 0, 0, 7, 7], [0, 10, 10, 12, 12], [1, 0, 0, 1, 1]],
                    np.float32)
    got = run("roi_pooling", {"features": feat, "rois": rois}, pool_size=[2, 2])["pooled_features"]
    np.testing.assert_array_equal(got[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(got[1, 0], [[5, 6], [9, 10]])
    np.testing.assert_array_equal(got[3, 0], np.zeros((2, 2)))  # outside the map
    np.testing.assert_array_equal(got[4, 0], -np.ones((2, 2)))  # batch 1
    # spatial_scale 0.5: corners 0 and 3.5 → round half away → 4; 5 columns, bins ⌊0⌋..⌈2.5⌉ and ⌊2.5⌋..⌈5⌉
    half = run("roi_pooling", {"features": feat, "rois": rois[2:3]}, pool_size=[2, 2], spatial_scale=0.5)
    np.testing.assert_array_equal(half["pooled_features"][0, 0], [[10, 11], [14, 15]])
    with pytest.raises(GraphError, match="batch 2"):
        run("roi_pooling", {"features": feat, "rois": np.array([[2, 0, 0, 1, 1]], np.float32)})


@pytest.mark.torch
def test_text_embedding_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    ids, table = rng.integers(0, 11, (2, 5)), randn(rng, 11, 4)
    ref = torch.nn.functional.embedding(torch.from_numpy(ids), torch.from_numpy(table)) * 2.0
    np.testing.assert_allclose(run("text_embedding", {"ids": ids, "weight": table}, scale=2.0)["Y"], ref.numpy())
    with pytest.raises(GraphError, match=r"\[0, 11\)"):
        run("text_embedding", {"ids": np.array([3, 11]), "weight": table})


def test_positional_encoding_closed_form() -> None:
    x = np.zeros((1, 6, 4), np.float32)
    y = run("positional_encoding", {"X": x})["Y"][0]
    np.testing.assert_allclose(y[0], [0, 1, 0, 1], atol=1e-7)  # position 0: sin 0, cos 0
    pos = np.arange(6)
    np.testing.assert_allclose(y[:, 0], np.sin(pos), atol=1e-6)
    np.testing.assert_allclose(y[:, 1], np.cos(pos), atol=1e-6)
    np.testing.assert_allclose(y[:, 2], np.sin(pos / 100.0), atol=1e-6)  # 10000^(2/4) = 100
    np.testing.assert_allclose(y[:, 3], np.cos(pos / 100.0), atol=1e-6)
    shifted = run("positional_encoding", {"X": x[:, :2] + 1}, offset=4)["Y"][0]
    np.testing.assert_allclose(shifted, y[4:6] + 1, atol=1e-6)
    only_cos = run("positional_encoding", {"X": x}, periodic_function="cos")["Y"][0]
    np.testing.assert_allclose(only_cos[:, 0], np.cos(pos), atol=1e-6)
    with pytest.raises(GraphError, match="max_len"):
        run("positional_encoding", {"X": x}, max_len=5)


# ---- audio -------------------------------------------------------------------------------------

def test_mel_scales_known_values() -> None:
    assert abs(float(mm.hz_to_mel(1000.0, "htk")) - 1000.0) < 0.05
    assert float(mm.hz_to_mel(0.0, "htk")) == 0.0
    assert float(mm.hz_to_mel(1000.0, "slaney")) == pytest.approx(15.0)
    assert float(mm.hz_to_mel(6400.0, "slaney")) == pytest.approx(42.0)  # 27 log-steps of 6.4^(1/27)
    assert float(mm.hz_to_mel(500.0, "slaney")) == pytest.approx(7.5)
    f = np.array([0.0, 200.0, 999.0, 1000.0, 4000.0, 11025.0])
    for scale in ("htk", "slaney"):
        np.testing.assert_allclose(mm.mel_to_hz(mm.hz_to_mel(f, scale), scale), f, atol=1e-6)


def test_mel_filterbank_triangles() -> None:
    sr, n_fft, n_mels = 16000, 2048, 40
    fb = mm.mel_filterbank(n_fft // 2 + 1, 0.0, sr / 2, n_mels, sr)
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = mm.mel_to_hz(np.linspace(0, mm.hz_to_mel(sr / 2), n_mels + 2))
    assert fb.shape == (n_fft // 2 + 1, n_mels) and fb.min() >= 0 and fb.max() <= 1
    for m in range(n_mels):
        nearest = int(np.argmin(np.abs(freqs - edges[m + 1])))
        assert int(np.argmax(fb[:, m])) == nearest  # each triangle peaks at the bin of its centre
        assert not fb[(freqs <= edges[m]) | (freqs >= edges[m + 2]), m].any()  # and is zero outside its edges
    inside = (freqs >= edges[1]) & (freqs <= edges[n_mels])
    np.testing.assert_allclose(fb[inside].sum(1), 1.0, atol=1e-9)  # neighbouring triangles sum to one
    area = mm.mel_filterbank(n_fft // 2 + 1, 0.0, sr / 2, n_mels, sr, "slaney", "slaney").sum(0) * (freqs[1] - freqs[0])
    np.testing.assert_allclose(area[5:], 1.0, rtol=0.02)  # Slaney norm: unit area per band


def test_pure_sine_energy_lands_in_its_mel_band() -> None:
    sr, n_fft, hop, amp = 16000, 400, 200, 0.5
    t = np.arange(sr // 4) / sr
    wave = (amp * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)  # 1000 Hz is exactly bin 25 (40 Hz bins)
    mel = run("mel_spectrogram", {"waveform": wave}, sample_rate=sr, n_fft=n_fft, hop_length=hop, n_mels=64)["Y"]
    fb = mm.mel_filterbank(n_fft // 2 + 1, 0.0, sr / 2, 64, sr)
    frame = mel[:, 10].astype(np.float64)
    assert int(np.argmax(frame)) == int(np.argmax(fb[25]))
    # periodic Hann on a bin-centred sine: |X| = A·N/4 at the bin, A·N/8 at its neighbours, 0 elsewhere
    power = np.zeros(n_fft // 2 + 1)
    power[25], power[24], power[26] = (amp * n_fft / 4) ** 2, (amp * n_fft / 8) ** 2, (amp * n_fft / 8) ** 2
    np.testing.assert_allclose(frame, power @ fb, rtol=1e-5, atol=1e-3)
    assert mel.shape == (64, 1 + len(wave) // hop)


@pytest.mark.torch
def test_mel_spectrogram_stft_matches_torch_stft() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    wave = randn(rng, 2, 1000)
    attrs = {"sample_rate": 8000, "n_fft": 128, "win_length": 100, "hop_length": 37, "n_mels": 20, "f_min": 50.0,
             "f_max": 3500.0, "power": 1.0, "mel_scale": "slaney", "norm": "slaney"}
    got = run("mel_spectrogram", {"waveform": wave}, **attrs)["Y"]
    spec = torch.stft(torch.from_numpy(wave).double(), 128, hop_length=37, win_length=100,
                      window=torch.hann_window(100, dtype=torch.float64), center=True, pad_mode="reflect",
                      return_complex=True).abs().numpy()  # [2, freqs, frames]
    fb = mm.mel_filterbank(65, 50.0, 3500.0, 20, 8000, "slaney", "slaney")
    np.testing.assert_allclose(got, np.einsum("bft,fm->bmt", spec, fb), rtol=1e-5, atol=1e-5)


def test_dct_is_orthonormal_dct_ii() -> None:
    d = mm.dct_matrix(8, 8)
    np.testing.assert_allclose(d @ d.T, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(d @ np.full(8, 3.0), [3.0 * math.sqrt(8)] + [0.0] * 7, atol=1e-12)
    np.testing.assert_allclose(mm.dct_matrix(2, 2), [[1 / math.sqrt(2)] * 2, [1 / math.sqrt(2), -1 / math.sqrt(2)]])
    # against DCT-II through an FFT of the mirrored signal (Makhoul): X_k = Re(e^{-iπk/2N} FFT(x ⊕ reverse x)_k) / 2
    x = np.random.default_rng(4).standard_normal(8)
    fft = np.fft.fft(np.concatenate([x, x[::-1]]))[:8] * np.exp(-1j * np.pi * np.arange(8) / 16)
    scale = np.full(8, math.sqrt(2 / 8))
    scale[0] = math.sqrt(1 / 8)
    np.testing.assert_allclose(d @ x, fft.real / 2 * scale, atol=1e-12)


def test_mfcc_is_dct_of_clamped_log_mel() -> None:
    rng = np.random.default_rng(5)
    wave = randn(rng, 800)
    wave[:400] *= 1e-6  # a quiet half so the top_db floor bites
    attrs = {"sample_rate": 8000, "n_fft": 64, "n_mels": 16}
    mel = run("mel_spectrogram", {"waveform": wave}, **attrs)["Y"].astype(np.float64)
    db = 10 * np.log10(np.maximum(mel, 1e-10))
    db = np.maximum(db, db.max() - 30.0)
    got = run("mfcc", {"waveform": wave}, n_mfcc=10, top_db=30.0, **attrs)["Y"]
    np.testing.assert_allclose(got, mm.dct_matrix(10, 16) @ db, rtol=1e-4, atol=1e-3)
    logm = run("mfcc", {"waveform": wave}, n_mfcc=16, log_mels=True, **attrs)["Y"].astype(np.float64)
    np.testing.assert_allclose(mm.dct_matrix(16, 16).T @ logm, np.log(mel + 1e-6), rtol=1e-4, atol=1e-3)


# ---- fusion ------------------------------------------------------------------------------------

@pytest.mark.torch
def test_cross_modal_attention_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(6)
    p = {"modality_1": randn(rng, 2, 3, 4), "modality_2": randn(rng, 2, 5, 6), "Wq": randn(rng, 4, 4),
         "bq": randn(rng, 4), "Wk": randn(rng, 4, 6), "bk": randn(rng, 4), "Wv": randn(rng, 4, 6), "bv": randn(rng, 4),
         "Wo": randn(rng, 4, 4), "bo": randn(rng, 4), "key_padding_mask": np.array([[0, 0, 0, 1, 1], [0] * 5], bool)}
    got = run("cross_modal_attention", p, N_heads=2, need_weights=True)
    m = torch.nn.MultiheadAttention(4, 2, kdim=6, vdim=6, batch_first=True, dtype=torch.float64)
    t = {k: torch.from_numpy(v) for k, v in p.items()}
    with torch.no_grad():
        m.q_proj_weight.copy_(t["Wq"])
        m.k_proj_weight.copy_(t["Wk"])
        m.v_proj_weight.copy_(t["Wv"])
        m.in_proj_bias.copy_(torch.cat([t["bq"], t["bk"], t["bv"]]))
        m.out_proj.weight.copy_(t["Wo"])
        m.out_proj.bias.copy_(t["bo"])
    x1, x2 = t["modality_1"].double(), t["modality_2"].double()
    ref, w = m(x1, x2, x2, key_padding_mask=t["key_padding_mask"], average_attn_weights=False)
    np.testing.assert_allclose(got["Y"], ref.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(got["attn_weights"], w.detach().numpy(), atol=1e-6)
    assert not got["attn_weights"][0, :, :, 3:].any()
    # different widths: check against scaled_dot_product_attention over explicit projections
    p2 = p | {"Wq": randn(rng, 6, 4), "bq": randn(rng, 6), "Wk": randn(rng, 6, 6), "bk": randn(rng, 6),
              "Wv": randn(rng, 3, 6), "bv": randn(rng, 3), "Wo": randn(rng, 5, 3), "bo": randn(rng, 5)}
    t = {k: torch.from_numpy(v) for k, v in p2.items() if k != "key_padding_mask"}
    q = F.linear(t["modality_1"], t["Wq"], t["bq"]).reshape(2, 3, 3, 2).transpose(1, 2)
    k = F.linear(t["modality_2"], t["Wk"], t["bk"]).reshape(2, 5, 3, 2).transpose(1, 2)
    v = F.linear(t["modality_2"], t["Wv"], t["bv"]).reshape(2, 5, 3, 1).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=~torch.from_numpy(p["key_padding_mask"])[:, None, None, :])
    ref = F.linear(o.transpose(1, 2).reshape(2, 3, 3), t["Wo"], t["bo"])
    np.testing.assert_allclose(run("cross_modal_attention", p2, N_heads=3)["Y"], ref.numpy(), atol=1e-5)


def test_concat_fusion_both_axes() -> None:
    rng = np.random.default_rng(7)
    a, b, w, bias = randn(rng, 2, 3, 4), randn(rng, 2, 3, 2), randn(rng, 5, 6), randn(rng, 5)
    got = run("concat_fusion", {"modality_1": a, "modality_2": b, "W": w, "b": bias})["Y"]
    np.testing.assert_allclose(got, np.concatenate([a, b], -1) @ w.T + bias, atol=1e-5)
    seq = run("concat_fusion", {"modality_1": a, "modality_2": randn(rng, 2, 1, 4)}, axis=-2)["Y"]
    assert seq.shape == (2, 4, 4) and np.array_equal(seq[:, :3], a)


# ---- routing -----------------------------------------------------------------------------------

def test_expert_selection_hand_computed_ties_to_lower_index() -> None:
    logits = np.log(np.array([[1.0, 3.0, 2.0, 3.0], [4.0, 1.0, 1.0, 2.0]], np.float32))  # probabilities ∝ these
    got = run("expert_selection", {"logits": logits}, top_k=2)
    np.testing.assert_array_equal(got["indices"], [[1, 3], [0, 3]])
    np.testing.assert_allclose(got["weights"], [[3 / 9, 3 / 9], [4 / 8, 2 / 8]], rtol=1e-6)
    norm = run("expert_selection", {"logits": logits}, top_k=2, normalize=True)
    np.testing.assert_allclose(norm["weights"], [[0.5, 0.5], [2 / 3, 1 / 3]], rtol=1e-6)
    assert got["indices"].dtype == np.int64


def test_gated_expert_routing_hand_computed() -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    w = np.log(np.array([[3.0, 1.0], [1.0, 3.0]], np.float32))  # token 0 prefers expert 0 (3:1), token 1 expert 1
    got = run("gated_expert_routing", {"X": x, "W_router": w}, top_k=1)
    probs = np.array([[0.75, 0.25], [0.25, 0.75], [0.5, 0.5]])
    np.testing.assert_allclose(got["gates"], [[0.75, 0], [0, 0.75], [0.5, 0]], rtol=1e-6)  # token 2 ties → expert 0
    np.testing.assert_array_equal(got["load"], [2, 1])
    aux = 2 * np.sum(np.array([2, 1]) / 3 * probs.mean(0))
    np.testing.assert_allclose(got["aux_loss"], aux, rtol=1e-6)
    uniform = run("gated_expert_routing", {"X": x, "W_router": np.zeros((4, 2), np.float32)}, top_k=2)
    np.testing.assert_allclose(uniform["aux_loss"], 1.0, rtol=1e-6)  # uniform router probabilities


def test_mixture_of_experts_hand_computed_and_against_a_loop() -> None:
    e, d = 3, 2
    x = np.array([[1.0, 2.0], [-1.0, 0.5]], np.float32)
    router = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32)
    w1 = np.stack([np.eye(d, dtype=np.float32)] * e)
    w2 = np.stack([(i + 1) * np.eye(d, dtype=np.float32) for i in range(e)])  # expert i multiplies by i+1
    got = run("mixture_of_experts", {"X": x, "W_router": router, "W1": w1, "W2": w2}, top_k=2, activation="identity")
    for t in range(2):
        logit = router @ x[t]
        pr = np.exp(logit) / np.exp(logit).sum()
        top = np.argsort(-pr, kind="stable")[:2]
        np.testing.assert_allclose(got["Y"][t], sum(pr[i] * (i + 1) for i in top) * x[t], rtol=1e-6)
    rng = np.random.default_rng(8)
    p = {"X": randn(rng, 2, 3, 4), "W_router": randn(rng, 4, 4), "b_router": randn(rng, 4), "W1": randn(rng, 4, 5, 4),
         "b1": randn(rng, 4, 5), "W_gate": randn(rng, 4, 5, 4), "W2": randn(rng, 4, 4, 5), "b2": randn(rng, 4, 4)}
    y = run("mixture_of_experts", p, top_k=2, normalize=True, activation="silu")["Y"]
    xs = p["X"].reshape(-1, 4).astype(np.float64)
    for t, xt in enumerate(xs):
        logit = p["W_router"] @ xt + p["b_router"]
        top = np.argsort(-logit, kind="stable")[:2]
        g = np.exp(logit[top] - logit[top].max())
        g /= g.sum()
        expert = [p["W2"][i] @ ((p["W_gate"][i] @ xt) / (1 + np.exp(-(p["W_gate"][i] @ xt))) * (p["W1"][i] @ xt + p["b1"][i]))
                  + p["b2"][i] for i in top]
        np.testing.assert_allclose(y.reshape(-1, 4)[t], g[0] * expert[0] + g[1] * expert[1], atol=1e-5)


# ---- alignment and training operators --------------------------------------------------------

@pytest.mark.torch
def test_modal_alignment_matches_torch_clip_loss() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(9)
    p = {"modality_1": randn(rng, 4, 6), "modality_2": randn(rng, 4, 3), "W1": randn(rng, 5, 6), "W2": randn(rng, 5, 3)}
    got = run("modal_alignment", p, temperature=0.1)
    t = {k: torch.from_numpy(v).double() for k, v in p.items()}
    a1, a2 = F.normalize(t["modality_1"] @ t["W1"].T, dim=-1), F.normalize(t["modality_2"] @ t["W2"].T, dim=-1)
    sim = a1 @ a2.T / 0.1
    loss = (F.cross_entropy(sim, torch.arange(4)) + F.cross_entropy(sim.T, torch.arange(4))) / 2
    np.testing.assert_allclose(got["aligned_1"], a1.numpy(), atol=1e-6)
    np.testing.assert_allclose(got["similarity"], sim.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["loss"], loss.item(), rtol=1e-5)


@pytest.mark.torch
def test_modality_specific_optimizer_matches_torch_adamw_two_steps() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    x, g1, g2 = randn(rng, 3, 4), randn(rng, 3, 4), randn(rng, 3, 4)
    attrs = {"modality": "vision", "modalities": ["text", "vision"], "learning_rates": [0.5, 0.01], "weight_decay": 0.1}
    s1 = run("modality_specific_optimizer", {"X": x, "grad": g1}, training=True, **attrs)
    s2 = run("modality_specific_optimizer", {"X": s1["Y"], "grad": g2, "m": s1["m_out"], "v": s1["v_out"],
                                             "step": s1["step_out"]}, training=True, **attrs)
    param = torch.nn.Parameter(torch.from_numpy(x.copy()))
    opt = torch.optim.AdamW([param], lr=0.01, weight_decay=0.1)
    for g in (g1, g2):
        param.grad = torch.from_numpy(g)
        opt.step()
    np.testing.assert_allclose(s2["Y"], param.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(s2["v_out"], opt.state[param]["exp_avg_sq"].numpy(), rtol=1e-5)
    assert int(s2["step_out"]) == 3
    frozen = run("modality_specific_optimizer", {"X": x, "grad": g1}, **attrs)
    np.testing.assert_array_equal(frozen["Y"], x)


def test_modality_balancing_optimizer_hand_computed() -> None:
    x, g = np.array([1.0, -2.0], np.float32), np.array([0.5, 0.5], np.float32)
    scores = np.array([0.8, 0.4], np.float32)
    dominant = run("modality_balancing_optimizer", {"X": x, "grad": g, "scores": scores}, training=True,
                   modality=0, balance_factor=0.5, lr=0.1)
    k = 1 - math.tanh(0.5 * (2.0 - 1.0))  # rho = 0.8 / 0.4 = 2
    np.testing.assert_allclose(dominant["coefficient"], k, rtol=1e-6)
    np.testing.assert_allclose(dominant["Y"], x - 0.1 * k * g, rtol=1e-6)
    weak = run("modality_balancing_optimizer", {"X": x, "grad": g, "scores": scores}, training=True, modality=1, lr=0.1,
               weight_decay=0.1)
    np.testing.assert_allclose(weak["coefficient"], 1.0)
    np.testing.assert_allclose(weak["Y"], x - 0.1 * (g + 0.1 * x), rtol=1e-6)


@pytest.mark.torch
def test_cross_modality_regularization_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(11)
    a, b = randn(rng, 2, 3, 5), randn(rng, 2, 3, 5)
    ta, tb = torch.from_numpy(a).double(), torch.from_numpy(b).double()

    def loss(method: str, **attrs: Any) -> float:
        return float(run("cross_modality_regularization", {"modality_1": a, "modality_2": b}, training=True,
                         regularization_method=method, **attrs)["Y"])

    assert loss("l2", weight=0.5) == pytest.approx(0.5 * F.mse_loss(ta, tb, reduction="sum").item() / 6, rel=1e-5)
    assert loss("cosine") == pytest.approx((1 - F.cosine_similarity(ta, tb, dim=-1)).mean().item(), rel=1e-5)
    ref = F.kl_div(F.log_softmax(tb / 2, -1).reshape(6, 5), F.log_softmax(ta / 2, -1).reshape(6, 5), log_target=True,
                   reduction="batchmean")
    assert loss("kl", temperature=2.0) == pytest.approx(ref.item(), rel=1e-5)
