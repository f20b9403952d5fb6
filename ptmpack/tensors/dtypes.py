"""Map safetensors dtype names to numpy dtypes, using ml_dtypes for bf16 and fp8."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ptmpack.errors import UnsupportedError

_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"), "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}

FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"})


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype for a safetensors dtype name.

    Raises:
        UnsupportedError: the name is not a safetensors dtype.
    """
    try:
        return _NUMPY[name]
    except KeyError:
        raise UnsupportedError(f"unsupported tensor dtype {name!r}") from None


def to_float32(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A float32 copy of ``a`` (into ``out``, a float32 array of ``a``'s shape, when given: a caller converting
    block after block reuses one buffer instead of mapping fresh pages for every block).

    bfloat16 is the top half of a float32, so it is widened exactly by shifting its bits 16 places:
    numpy's integer kernels release the GIL, where the ml_dtypes cast holds it, so the threads that
    quantize layers in parallel (RTN) no longer take turns converting (measured on a 4096 x 4096
    weight: 0.24 s serial and 0.18 s on two threads, against 0.32 s and 0.38 s for ``astype``).
    """
    target = np.empty(a.shape, np.float32) if out is None else out
    if a.dtype == _NUMPY["BF16"]:
        np.left_shift(a.view(np.uint16), 16, out=target.view(np.uint32), dtype=np.uint32)
    else:
        np.copyto(target, a, casting="unsafe")
    return target
