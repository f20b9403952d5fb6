"""Quantized linear weights in the compressed-tensors ``pack-quantized`` layout (SPEC §7).

A linear ``prefix`` whose float ``prefix.weight`` ``[out, in]`` was quantized to ``bits``
bits in groups of ``group_size`` input columns is stored as:

* ``prefix.weight_packed`` int32 ``[out, ceil(in·bits/32)]``: the codes ``q + 2^(bits-1)``
  (unsigned), 32 codes densely in ``bits`` words, code ``i`` of a run of 32 at bit ``i·bits``
  (little-endian; a code may straddle two words at 3 bits): compressed-tensors'
  ``pack_to_int32`` (0.20) bit for bit;
* ``prefix.weight_scale`` ``[out, in/group_size]`` in the float dtype of the original weight;
* ``prefix.weight_zero_point`` (asymmetric only) int32 ``[ceil(out·bits/32), in/group_size]``:
  the signed zero points packed the same way along the *output* dimension;
* ``prefix.weight_shape`` int64 ``[2]`` = ``[out, in]``;
* ``prefix.weight_g_idx`` int32 ``[in]`` (optional): the group of each input column; read when
  present (older GPTQ checkpoints), never written (act-order uses static groups, so the
  groups of the columns stay contiguous and ``g_idx`` would be ``arange(in) // group_size``).

Dequantization is compressed-tensors' ``(q - zero_point) · scale`` per group, so a package
unpacked by ptmpack loads in transformers and vLLM with the ``quantization_config`` that
:func:`quantization_config` writes into ``config.json``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass

import numpy as np

from ptmpack.compress.tree.weights import TensorSpec
from ptmpack.errors import IntegrityError, UsageError
from ptmpack.quant.packing import pack_int, qrange, unpack_int
from ptmpack.quant.scheme import FORMAT, QUANT_METHOD, WeightScheme, scheme_of

PACKED = "weight_packed"
SCALE = "weight_scale"
ZERO_POINT = "weight_zero_point"
SHAPE = "weight_shape"
G_IDX = "weight_g_idx"
__all__ = ["FORMAT", "QUANT_METHOD", "WeightScheme", "pack_int", "qrange", "scheme_of", "unpack_int"]
SUFFIXES = (PACKED, SCALE, ZERO_POINT, SHAPE, G_IDX)


@dataclass(frozen=True)
class QuantizedWeight:
    """One quantized ``[out, in]`` linear weight: signed codes, per-group scales and zero points."""

    codes: np.ndarray
    """int8 ``[out, in]`` in ``qrange(bits)``."""
    scale: np.ndarray
    """float ``[out, in/group_size]`` (the dtype the scale is stored in)."""
    zero_point: np.ndarray | None
    """int8 ``[out, in/group_size]`` for asymmetric quantization, None for symmetric."""
    bits: int
    group_size: int
    g_idx: np.ndarray | None = None
    """The group of each input column; None: contiguous groups (``arange(in) // group_size``)."""

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    def group_of_columns(self) -> np.ndarray:
        return self.g_idx if self.g_idx is not None else np.arange(self.shape[1]) // self.group_size

    def dequantize(self, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """``(q - zero_point) · scale`` per group, computed in float32 and returned as ``dtype``."""
        out, width = self.shape
        groups = self.scale.shape[1]
        if self.g_idx is None and groups * self.group_size == width:  # contiguous whole groups: broadcast, no gather
            q = self.codes.astype(np.float32).reshape(out, groups, self.group_size)
            if self.zero_point is not None:
                q -= self.zero_point.astype(np.float32)[:, :, None]
            q *= self.scale.astype(np.float32)[:, :, None]
            return q.reshape(out, width).astype(dtype, copy=False)
        cols = self.group_of_columns()
        q = self.codes.astype(np.float32)
        if self.zero_point is not None:
            q -= self.zero_point.astype(np.float32)[:, cols]
        q *= self.scale.astype(np.float32)[:, cols]
        return q.astype(dtype, copy=False)


def write_quantized_linear(tensors: MutableMapping[str, np.ndarray], prefix: str, q: QuantizedWeight) -> None:
    """Put ``q`` into ``tensors`` under ``prefix.weight_*`` and drop ``prefix.weight``.

    Raises:
        UsageError: inconsistent shapes or codes outside the bit width's range.
    """
    out, cols = q.shape
    groups = math.ceil(cols / q.group_size)
    if q.scale.shape != (out, groups):
        raise UsageError(f"{prefix}: scale shape {list(q.scale.shape)} is not [{out}, {groups}]")
    if q.zero_point is not None and q.zero_point.shape != (out, groups):
        raise UsageError(f"{prefix}: zero point shape {list(q.zero_point.shape)} is not [{out}, {groups}]")
    tensors.pop(f"{prefix}.weight", None)
    tensors[f"{prefix}.{PACKED}"] = pack_int(q.codes, q.bits)
    tensors[f"{prefix}.{SCALE}"] = np.ascontiguousarray(q.scale)
    if q.zero_point is not None:
        tensors[f"{prefix}.{ZERO_POINT}"] = pack_int(q.zero_point, q.bits, packed_dim=0)
    tensors[f"{prefix}.{SHAPE}"] = np.asarray([out, cols], np.int64)
    if q.g_idx is not None:
        tensors[f"{prefix}.{G_IDX}"] = np.asarray(q.g_idx, np.int32)


def quantized_layout(prefix: str, shape: tuple[int, int], bits: int, group_size: int, scale_dtype: np.dtype,
                     *, symmetric: bool, g_idx: bool = False) -> list[TensorSpec]:
    """The tensors :func:`write_quantized_linear` stores for a ``[out, in]`` weight, before it is quantized.

    Lets a writer lay out a safetensors file's header ahead of the data (see
    :meth:`ptmpack.compress.tree.weights.WeightFiles.rewrite`, which checks every produced tensor against it).
    """
    out, cols = shape
    groups = math.ceil(cols / group_size)
    specs = [TensorSpec(f"{prefix}.{PACKED}", np.dtype(np.int32), (out, math.ceil(cols * bits / 32))),
             TensorSpec(f"{prefix}.{SCALE}", np.dtype(scale_dtype), (out, groups))]
    if not symmetric:
        specs.append(TensorSpec(f"{prefix}.{ZERO_POINT}", np.dtype(np.int32), (math.ceil(out * bits / 32), groups)))
    specs.append(TensorSpec(f"{prefix}.{SHAPE}", np.dtype(np.int64), (2,)))
    if g_idx:
        specs.append(TensorSpec(f"{prefix}.{G_IDX}", np.dtype(np.int32), (cols,)))
    return specs


def quantized_tensors(prefix: str, q: QuantizedWeight) -> dict[str, np.ndarray]:
    """The tensors :func:`write_quantized_linear` stores for ``q``, in a dict of their own."""
    tensors: dict[str, np.ndarray] = {}
    write_quantized_linear(tensors, prefix, q)
    return tensors


def quantized_prefixes(names: Iterable[str]) -> list[str]:
    """The linear prefixes stored quantized among tensor names (those with ``.weight_packed``)."""
    tail = f".{PACKED}"
    return sorted(n[: -len(tail)] for n in names if n.endswith(tail))


def read_quantized_linear(tensors: Mapping[str, np.ndarray], prefix: str, bits: int) -> QuantizedWeight:
    """The :class:`QuantizedWeight` stored under ``prefix`` (the inverse of :func:`write_quantized_linear`).

    Raises:
        IntegrityError: a missing or inconsistent tensor.
    """
    try:
        packed, scale = tensors[f"{prefix}.{PACKED}"], tensors[f"{prefix}.{SCALE}"]
    except KeyError as exc:
        raise IntegrityError(f"{prefix}: quantized linear lacks {exc.args[0]}") from None
    shape = tensors.get(f"{prefix}.{SHAPE}")
    if shape is not None:
        out, cols = (int(v) for v in np.asarray(shape).reshape(-1)[:2])
    else:  # group strategy: the scale pins the input width
        out, cols = int(packed.shape[0]), 0
    if scale.ndim != 2 or scale.shape[0] != out:
        raise IntegrityError(f"{prefix}: scale shape {list(scale.shape)} does not fit weight [{out}, {cols}]")
    groups = int(scale.shape[1])
    if not cols:
        cols = packed.shape[1] * 32 // bits
    group_size = cols // groups if groups and cols % groups == 0 else cols
    codes = unpack_int(np.asarray(packed), bits, cols)
    if codes.shape[0] != out:
        raise IntegrityError(f"{prefix}: packed rows {codes.shape[0]} differ from weight_shape {out}")
    zp = tensors.get(f"{prefix}.{ZERO_POINT}")
    zero = None
    if zp is not None:
        zp = np.asarray(zp)
        zero = unpack_int(zp, bits, out, packed_dim=0) if zp.dtype == np.int32 and zp.shape[0] != out \
            else zp.astype(np.int8)
        if zero.shape != (out, groups):
            raise IntegrityError(f"{prefix}: zero point shape {list(zero.shape)} is not [{out}, {groups}]")
    g_idx = tensors.get(f"{prefix}.{G_IDX}")
    if g_idx is not None:
        g_idx = np.asarray(g_idx).astype(np.int64)
        if g_idx.shape != (cols,) or (g_idx.size and (g_idx.min() < 0 or g_idx.max() >= groups)):
            raise IntegrityError(f"{prefix}: weight_g_idx does not map {cols} columns to {groups} groups")
    return QuantizedWeight(codes, np.asarray(scale), zero, bits, group_size, g_idx)


def weights_config(bits: int, group_size: int | None, symmetric: bool, *, actorder: str | None = None) -> dict:
    """The ``weights`` quantization arguments of one compressed-tensors config group (``group_size`` None: per channel)."""
    return {"num_bits": bits, "type": "int", "symmetric": symmetric, "group_size": group_size,
            "strategy": "group" if group_size else "channel",
            "dynamic": False, "actorder": actorder, "block_structure": None, "observer": "minmax",
            "observer_kwargs": {}}


def quantization_config(bits: int, group_size: int | None, symmetric: bool, ignore: Iterable[str] = (),
                        *, actorder: str | None = None, targets: Iterable[str] = ("Linear",)) -> dict:
    """The ``quantization_config`` block for ``config.json`` (compressed-tensors, pack-quantized).

    ``ignore`` lists the Linear modules left in float (the LM head, a pooler).
    """
    return {
        "quant_method": QUANT_METHOD,
        "format": FORMAT,
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": list(targets), "input_activations": None,
                                      "output_activations": None, "format": FORMAT,
                                      "weights": weights_config(bits, group_size, symmetric, actorder=actorder)}},
        "ignore": sorted(set(ignore)),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
    }
