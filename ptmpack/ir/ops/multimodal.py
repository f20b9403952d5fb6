# ruff: noqa: RUF002 - formulas quote the standard's symbols
"""Input-layer operators of multimodal models, GB/T 42382.2 §6.2.3 (Tables 25–30): image patch
embedding, RoI pooling, text embedding, sinusoidal positional encoding, mel spectrogram and MFCC.

The fusion, routing, alignment and training operators of Tables 31–39 live in
:mod:`.multimodal_fusion`, registered from here. Audio features follow torchaudio's layout
``[..., n_mels, frames]`` and its defaults where the standard is silent (HTK mel scale, no filter
normalisation, periodic Hann window, centred reflect-padded frames).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ptmpack.errors import GraphError
from ptmpack.ir.model import AttrType
from ptmpack.ir.ops import multimodal_fusion  # noqa: F401  (registers the operators of Tables 31-39)
from ptmpack.ir.ops.blocks import Shapes, known, linear, prepared
from ptmpack.ir.ops.numeric import FLOAT_DTYPES, INDEX_DTYPES, out
from ptmpack.ir.registry import AttrDef, ExecContext, Slot, TensorType, op

A = AttrType
F = FLOAT_DTYPES


# ---- vision --------------------------------------------------------------------------------

def _ve_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("vision_embedding", inputs)
    c.bind("pixels", "B C H W")
    c.bind("W_patch", "D C P P")
    c.bind("b_patch", "D")
    c.equal("P", attrs["patch_size"] if attrs["patch_size"] > 0 else -1, "attribute patch_size")
    n = c["H"] // c["P"] * (c["W"] // c["P"]) if known(c["H"], c["W"], c["P"]) else -1
    total = n + 1 if n != -1 and inputs.get("cls_token") is not None else n
    c.bind("cls_token", "D")
    c.bind("pos_embedding", "N D")
    c.equal("N", total, "number of patches (+1 with cls_token)")
    return {"Y": c.out("B N D")}


@op("vision_embedding", table="Table 25",
    inputs=[Slot("pixels", "images [B, C, H, W]", dtypes=F),
            Slot("W_patch", "patch projection, a conv kernel [D, C, P, P]", dtypes=F),
            Slot("b_patch", "[D]", optional=True, dtypes=F),
            Slot("cls_token", "class token [D], prepended", optional=True, dtypes=F),
            Slot("pos_embedding", "learned positions [N, D] added after the cls token", optional=True, dtypes=F)],
    outputs=[Slot("Y", "[B, N, D]")],
    attributes=[AttrDef("patch_size", A.INT, -1, "P; -1 takes it from W_patch")],
    infer=_ve_infer)
def ve_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """ViT patch embedding: a stride-P, P×P convolution written as a matmul over flattened patches.

    Patch (i, j) covers rows ``i·P … i·P+P-1`` and columns ``j·P … j·P+P-1``; patches are numbered
    row-major (``N = ⌊H/P⌋·⌊W/P⌋``, trailing pixels that do not fill a patch are dropped, as by
    ``conv2d``), and each is flattened channel-major to ``C·P·P`` values before ``W_patch`` (reshaped
    to ``[D, C·P·P]``). The class token, when given, becomes token 0; ``pos_embedding`` must then
    have N+1 rows (no interpolation).
    """
    p = prepared(ctx, inputs)
    x, w = p["pixels"], p["W_patch"]
    b, ch, h, wd = x.shape
    d, patch = w.shape[0], w.shape[-1]
    hp, wp = h // patch, wd // patch
    tiles = x[:, :, :hp * patch, :wp * patch].reshape(b, ch, hp, patch, wp, patch)
    tiles = tiles.transpose(0, 2, 4, 1, 3, 5).reshape(b, hp * wp, ch * patch * patch)
    y = linear(tiles, w.reshape(d, -1), p.get("b_patch"))
    if "cls_token" in p:
        y = np.concatenate([np.broadcast_to(p["cls_token"], (b, 1, d)), y], axis=1)
    if "pos_embedding" in p:
        y = y + p["pos_embedding"]
    return {"Y": out(ctx, y)}


def _c_round(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)  # half away from zero, as C's round()


def _roi_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("roi_pooling", inputs)
    c.bind("features", "B C H W")
    c.bind("rois", "R 5")
    ps = attrs["pool_size"]
    if len(ps) != 2 or min(ps) < 1:
        c.fail(f"pool_size must be two positive ints [height, width], got {list(ps)}")
    return {"pooled_features": c.out(["R", "C", ps[0], ps[1]])}


@op("roi_pooling", table="Table 26",
    inputs=[Slot("features", "feature map [B, C, H, W]", dtypes=F),
            Slot("rois", "regions [R, 5]: batch index, x1, y1, x2, y2 in image coordinates", dtypes=F)],
    outputs=[Slot("pooled_features", "[R, C, pool_h, pool_w]")],
    attributes=[AttrDef("pool_size", A.INTS, (7, 7), "[pool_h, pool_w]"),
                AttrDef("spatial_scale", A.FLOAT, 1.0, "feature-map cells per image pixel (1/stride)")],
    infer=_roi_infer)
def roi_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """RoI max pooling (Fast R-CNN, as ``torchvision.ops.roi_pool``).

    Box corners are scaled by ``spatial_scale`` and rounded half away from zero; the box spans
    ``max(x2 - x1 + 1, 1)`` columns (inclusive corners) and likewise rows. Bin (i, j) covers rows
    ``⌊i·h/ph⌋ … ⌈(i+1)·h/ph⌉ - 1`` offset by y1 (columns likewise), clipped to the map; its output
    is the maximum there, or 0 for a bin entirely outside the map.

    Raises:
        GraphError: a batch index outside ``[0, B)``.
    """
    p = prepared(ctx, inputs)
    feat, rois = p["features"], p["rois"]
    ph, pw = attrs["pool_size"]
    bsz, ch, h, w = feat.shape
    result = np.zeros((rois.shape[0], ch, ph, pw), feat.dtype)
    for r, roi in enumerate(rois):
        bi = int(roi[0])
        if not 0 <= bi < bsz:
            raise GraphError(f"roi_pooling: RoI {r} names batch {bi}, but the feature map has {bsz}")
        x1, y1, x2, y2 = (int(v) for v in _c_round(roi[1:].astype(np.float64) * attrs["spatial_scale"]))
        bin_h, bin_w = max(y2 - y1 + 1, 1) / ph, max(x2 - x1 + 1, 1) / pw
        for i in range(ph):
            hs = min(max(math.floor(i * bin_h) + y1, 0), h)
            he = min(max(math.ceil((i + 1) * bin_h) + y1, 0), h)
            for j in range(pw):
                ws = min(max(math.floor(j * bin_w) + x1, 0), w)
                we = min(max(math.ceil((j + 1) * bin_w) + x1, 0), w)
                if he > hs and we > ws:
                    result[r, :, i, j] = feat[bi, :, hs:he, ws:we].max(axis=(1, 2))
    return {"pooled_features": out(ctx, result)}


# ---- text ----------------------------------------------------------------------------------

def _te_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("text_embedding", inputs)
    c.bind("ids", "...")
    c.bind("weight", "V D")
    return {"Y": c.out("... D", inputs["weight"].dtype)}


@op("text_embedding", table="Table 27",
    inputs=[Slot("ids", "token ids [...]", dtypes=INDEX_DTYPES), Slot("weight", "embedding table [V, D]", dtypes=F)],
    outputs=[Slot("Y", "[..., D]")],
    attributes=[AttrDef("scale", A.FLOAT, 1.0, "multiplies the embeddings (√D in the original Transformer)")],
    infer=_te_infer)
def te_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Token embedding lookup: ``Y[..., :] = scale · weight[ids[...], :]``.

    Raises:
        GraphError: an id outside ``[0, V)`` (negative ids are not wrapped around).
    """
    p = prepared(ctx, inputs)
    ids, table = p["ids"], p["weight"]
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise GraphError(f"text_embedding: token ids must be in [0, {table.shape[0]}), got {ids.min()}..{ids.max()}")
    y = table[ids]
    return {"Y": out(ctx, y * attrs["scale"] if attrs["scale"] != 1.0 else y)}


PERIODIC_FUNCTIONS = ("sin_cos", "sin", "cos")


def sinusoid_table(length: int, dim: int, periodic_function: str = "sin_cos", base: float = 10000.0,
                   offset: int = 0) -> np.ndarray:
    """Positions ``offset … offset+length-1`` encoded as ``[length, dim]`` (float64).

    Frequencies ``ω_i = base^(-2i/dim)``; feature j uses ``ω_⌊j/2⌋``. ``sin_cos``: sin on even
    features, cos on odd ones (Vaswani et al.); ``sin`` / ``cos``: that function on every feature.

    Raises:
        GraphError: unknown periodic function.
    """
    if periodic_function not in PERIODIC_FUNCTIONS:
        raise GraphError(f"positional_encoding: periodic_function must be one of {', '.join(PERIODIC_FUNCTIONS)}, "
                         f"not {periodic_function!r}")
    pos = np.arange(offset, offset + length, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angle = pos * base ** (-2.0 * (j // 2) / dim)
    if periodic_function == "sin":
        return np.sin(angle)
    if periodic_function == "cos":
        return np.cos(angle)
    return np.where(j % 2 == 0, np.sin(angle), np.cos(angle))


def _pe_infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    c = Shapes("positional_encoding", inputs)
    c.bind("X", "... S D")
    if attrs["periodic_function"] not in PERIODIC_FUNCTIONS:
        c.fail(f"periodic_function must be one of {', '.join(PERIODIC_FUNCTIONS)}")
    if c["S"] != -1 and attrs["offset"] + c["S"] > attrs["max_len"]:
        c.fail(f"positions up to {attrs['offset'] + c['S']} exceed max_len {attrs['max_len']}")
    return {"Y": c.out("... S D")}


@op("positional_encoding", table="Table 28",
    inputs=[Slot("X", "token embeddings [..., S, D]", dtypes=F)],
    outputs=[Slot("Y", "[..., S, D]")],
    attributes=[AttrDef("max_len", A.INT, 5000, "largest position + 1 the model accepts"),
                AttrDef("periodic_function", A.STRING, "sin_cos", "sin_cos (interleaved), sin or cos"),
                AttrDef("base", A.FLOAT, 10000.0, "wavelength base"),
                AttrDef("offset", A.INT, 0, "position of the first token (tokens already decoded)")],
    infer=_pe_infer)
def pe_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Adds fixed sinusoidal position codes: ``Y = X + PE[offset : offset+S]``.

    ``PE[pos, 2i] = sin(pos / base^(2i/D))`` and ``PE[pos, 2i+1] = cos(pos / base^(2i/D))`` for
    ``sin_cos``; ``sin`` and ``cos`` apply one function to every feature (``ptmpack.ir.ops.
    multimodal.sinusoid_table``). Positions past ``max_len`` are rejected.

    Raises:
        GraphError: offset + S > max_len.
    """
    x = prepared(ctx, inputs)["X"]
    s, d = x.shape[-2:]
    if attrs["offset"] + s > attrs["max_len"]:
        raise GraphError(f"positional_encoding: positions up to {attrs['offset'] + s} exceed max_len {attrs['max_len']}")
    pe = sinusoid_table(s, d, attrs["periodic_function"], attrs["base"], attrs["offset"])
    return {"Y": out(ctx, x + pe.astype(x.dtype))}


# ---- audio ---------------------------------------------------------------------------------

def hz_to_mel(f: Any, scale: str = "htk") -> np.ndarray:
    """Hz to mel: HTK ``2595·log10(1 + f/700)``; Slaney linear ``3f/200`` below 1 kHz, logarithmic above."""
    f = np.asarray(f, np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    logstep = math.log(6.4) / 27.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / logstep, 3.0 * f / 200.0)


def mel_to_hz(m: Any, scale: str = "htk") -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(m, np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    logstep = math.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), 200.0 * m / 3.0)


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int,
                   mel_scale: str = "htk", norm: str = "none") -> np.ndarray:
    """Triangular mel filters ``[n_freqs, n_mels]`` over the FFT bin frequencies ``0 … sample_rate/2``.

    Band m rises linearly from ``f[m]`` to 1 at its centre ``f[m+1]`` and falls to 0 at ``f[m+2]``,
    where ``f`` are ``n_mels + 2`` points equally spaced on the mel scale from f_min to f_max.
    ``norm = "slaney"`` divides band m by half its width in Hz (``2 / (f[m+2] - f[m])``) for
    constant energy per band.

    Raises:
        GraphError: unknown mel scale or norm.
    """
    if mel_scale not in ("htk", "slaney") or norm not in ("none", "slaney"):
        raise GraphError(f"mel filters: mel_scale must be htk|slaney and norm none|slaney, got {mel_scale!r}, {norm!r}")
    freqs = np.linspace(0.0, sample_rate / 2.0, n_freqs)
    pts = mel_to_hz(np.linspace(hz_to_mel(f_min, mel_scale), hz_to_mel(f_max, mel_scale), n_mels + 2), mel_scale)
    width = np.diff(pts)
    rise = (freqs[:, None] - pts[None, :-2]) / width[None, :-1]
    fall = (pts[None, 2:] - freqs[:, None]) / width[None, 1:]
    fb = np.maximum(0.0, np.minimum(rise, fall))
    return fb * (2.0 / (pts[2:] - pts[:-2]))[None, :] if norm == "slaney" else fb


def _window(kind: str, length: int) -> np.ndarray:
    n = np.arange(length)
    if kind == "hann":
        return 0.5 - 0.5 * np.cos(2.0 * math.pi * n / length)
    if kind == "hamming":
        return 0.54 - 0.46 * np.cos(2.0 * math.pi * n / length)
    if kind == "rectangular":
        return np.ones(length)
    raise GraphError(f"mel_spectrogram: window must be hann, hamming or rectangular, not {kind!r}")


def _stft_params(attrs: Mapping[str, Any]) -> tuple[int, int, int]:
    n_fft = attrs["n_fft"]
    win = attrs["win_length"] if attrs["win_length"] > 0 else n_fft
    hop = attrs["hop_length"] if attrs["hop_length"] > 0 else win // 2
    if n_fft < 1 or not 1 <= win <= n_fft or hop < 1:
        raise GraphError(f"mel_spectrogram: need n_fft ≥ win_length ≥ 1 and hop_length ≥ 1, got {n_fft}, {win}, {hop}")
    return n_fft, win, hop


def n_frames(samples: int, attrs: Mapping[str, Any]) -> int:
    """Frames of a ``samples``-long signal (-1 when unknown).

    Raises:
        GraphError: a signal too short to frame (or to reflect-pad when centred).
    """
    n_fft, _, hop = _stft_params(attrs)
    if samples == -1:
        return -1
    if attrs["center"] and samples <= n_fft // 2:
        raise GraphError(f"mel_spectrogram: {samples} samples cannot be reflect-padded by n_fft // 2 = {n_fft // 2}")
    length = samples + 2 * (n_fft // 2) if attrs["center"] else samples
    if length < n_fft:
        raise GraphError(f"mel_spectrogram: {samples} samples are fewer than n_fft = {n_fft}")
    return 1 + (length - n_fft) // hop


def mel_power(x: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """The mel spectrogram ``[..., n_mels, frames]`` of waveforms ``x`` ``[..., T]`` (float64)."""
    n_fft, win, hop = _stft_params(attrs)
    frames = n_frames(x.shape[-1], attrs)
    x = np.asarray(x, np.float64)
    if attrs["center"]:
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)], mode="reflect")
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left:left + win] = _window(attrs["window"], win)
    idx = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
    spec = np.abs(np.fft.rfft(x[..., idx] * window, axis=-1)) ** attrs["power"]  # [..., frames, freqs]
    f_max = attrs["f_max"] if attrs["f_max"] > 0 else attrs["sample_rate"] / 2.0
    fb = mel_filterbank(n_fft // 2 + 1, attrs["f_min"], f_max, attrs["n_mels"], attrs["sample_rate"],
                        attrs["mel_scale"], attrs["norm"])
    return np.swapaxes(spec @ fb, -1, -2)


def dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Orthonormal DCT-II ``[n_out, n_in]``: ``D[k, n] = √(2/N)·cos(π/N·(n + ½)·k)``, row 0 scaled by 1/√2."""
    n, k = np.arange(n_in)[None, :], np.arange(n_out)[:, None]
    d = np.sqrt(2.0 / n_in) * np.cos(math.pi / n_in * (n + 0.5) * k)
    d[0] /= math.sqrt(2.0)
    return d


_MEL_ATTRS = [
    AttrDef("sample_rate", A.INT, 16000, "samples per second"),
    AttrDef("n_fft", A.INT, 400, "FFT size; n_fft // 2 + 1 frequency bins"),
    AttrDef("win_length", A.INT, 0, "window length; 0 means n_fft (shorter windows are centred in n_fft)"),
    AttrDef("hop_length", A.INT, 0, "frame step; 0 means win_length // 2"),
    AttrDef("f_min", A.FLOAT, 0.0, "lowest mel band edge in Hz"),
    AttrDef("f_max", A.FLOAT, 0.0, "highest mel band edge in Hz; 0 means sample_rate / 2"),
    AttrDef("n_mels", A.INT, 128, "number of mel bands"),
    AttrDef("window", A.STRING, "hann", "periodic hann, hamming, or rectangular"),
    AttrDef("power", A.FLOAT, 2.0, "exponent of the magnitude: 2 power, 1 magnitude"),
    AttrDef("center", A.BOOL, True, "reflect-pad n_fft // 2 samples on both sides so frame t is centred at t·hop"),
    AttrDef("mel_scale", A.STRING, "htk", "htk or slaney"),
    AttrDef("norm", A.STRING, "none", "filter normalisation: none or slaney (area)"),
]


def _audio_infer(name: str, bands: str) -> Any:
    def infer(inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
        c = Shapes(name, inputs)
        c.bind("waveform", "... T")
        frames = n_frames(c["T"], attrs)
        _window(attrs["window"], 1)
        mel_filterbank(2, 0.0, 1.0, 1, 2, attrs["mel_scale"], attrs["norm"])
        if attrs["n_mels"] < 1 or attrs["sample_rate"] < 1:
            c.fail(f"n_mels and sample_rate must be positive, got {attrs['n_mels']}, {attrs['sample_rate']}")
        if name == "mfcc" and attrs["n_mfcc"] > attrs["n_mels"]:
            c.fail(f"n_mfcc {attrs['n_mfcc']} exceeds n_mels {attrs['n_mels']}")
        return {"Y": TensorType(c.dtype or "float32", (*(c.lead or ()), attrs[bands], frames))}

    return infer


@op("mel_spectrogram", table="Table 29",
    inputs=[Slot("waveform", "audio samples [..., T]", dtypes=F)],
    outputs=[Slot("Y", "[..., n_mels, frames]")],
    attributes=_MEL_ATTRS, infer=_audio_infer("mel_spectrogram", "n_mels"))
def mel_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Mel spectrogram: ``Y = melᵀ · |STFT(waveform)|^power``.

    The STFT frames the (centred, reflect-padded) signal every ``hop_length`` samples, multiplies
    by the window and takes an ``n_fft``-point real FFT (no normalisation). ``mel`` is
    ``ptmpack.ir.ops.multimodal.mel_filterbank``: triangular filters equally spaced on the HTK mel
    scale by default (Slaney's scale and area normalisation on request), so the defaults reproduce
    ``torchaudio.transforms.MelSpectrogram`` and ``mel_scale=slaney, norm=slaney`` librosa's.
    Frames: ``1 + (T + 2·(n_fft // 2) - n_fft) // hop`` when centred, ``1 + (T - n_fft) // hop``
    otherwise.
    """
    x = inputs["waveform"]
    return {"Y": out(ctx, mel_power(np.asarray(x, np.float64), attrs))}


@op("mfcc", table="Table 30",
    inputs=[Slot("waveform", "audio samples [..., T]", dtypes=F)],
    outputs=[Slot("Y", "[..., n_mfcc, frames]")],
    attributes=[AttrDef("n_mfcc", A.INT, 40, "coefficients kept (≤ n_mels)"),
                AttrDef("log_mels", A.BOOL, False, "ln(mel + 1e-6) instead of decibels"),
                AttrDef("top_db", A.FLOAT, 80.0, "decibel floor below each example's peak; ≤ 0 disables"),
                *_MEL_ATTRS],
    infer=_audio_infer("mfcc", "n_mfcc"))
def mfcc_kernel(ctx: ExecContext, inputs: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Mel-frequency cepstral coefficients: ``Y = DCT · log(mel_spectrogram(waveform))``.

    The log is ``10·log10(max(mel, 1e-10))`` clamped to at most ``top_db`` below the example's
    maximum (over all bands and frames of one leading index), or ``ln(mel + 1e-6)`` with
    ``log_mels``. The DCT is the orthonormal DCT-II over the mel axis keeping the first ``n_mfcc``
    coefficients (``ptmpack.ir.ops.multimodal.dct_matrix``) — torchaudio's ``MFCC`` defaults.
    """
    mel = mel_power(np.asarray(inputs["waveform"], np.float64), attrs)
    if attrs["log_mels"]:
        logmel = np.log(mel + 1e-6)
    else:
        logmel = 10.0 * np.log10(np.maximum(mel, 1e-10))
        if attrs["top_db"] > 0:
            peak = logmel.max(axis=(-2, -1), keepdims=True) if logmel.size else 0.0
            logmel = np.maximum(logmel, peak - attrs["top_db"])
    return {"Y": out(ctx, np.swapaxes(np.swapaxes(logmel, -1, -2) @ dct_matrix(attrs["n_mfcc"], attrs["n_mels"]).T, -1, -2))}
