"""Input checks shared by the zoo models: turn a batch into one float32 array or say why not."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _as_float_array(x: Any, index: int, model: str) -> np.ndarray:
    """One input as a numpy array of a floating dtype; ValueError naming the dtype otherwise."""
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.dtype.kind != "f":
        raise ValueError(f"{model}: input {index} must be floats, got dtype {a.dtype}")
    return a


def flat_float_batch(inputs: Sequence[Any], width: int, model: str) -> np.ndarray:
    """Stack flat float inputs of ``width`` values into a C-contiguous float32 array [n, width]."""
    out = np.empty((len(inputs), width), dtype=np.float32)
    for i, x in enumerate(inputs):
        a = _as_float_array(x, i, model)
        if a.ndim != 1 and a.size == width:  # the frontend checks counts; the layout is ours to flatten
            a = a.reshape(-1)
        if a.ndim != 1 or a.shape[0] != width:
            raise ValueError(
                f"{model}: input {i} must be a flat array of {width} floats, got shape {tuple(a.shape)}")
        out[i] = a
    return out


def image_batch(inputs: Sequence[Any], size: int, model: str) -> np.ndarray:
    """Stack RGB images of ``size`` x ``size`` into a float32 array [n, 3, size, size].

    Each input is a flat array of ``3*size*size`` floats in channel-first (CHW)
    order, as clients send them, or an array shaped [3, size, size] (CHW) or
    [size, size, 3] (HWC, transposed here).
    """
    flat = 3 * size * size
    out = np.empty((len(inputs), 3, size, size), dtype=np.float32)
    for i, x in enumerate(inputs):
        a = _as_float_array(x, i, model)
        if a.shape == (flat,):
            out[i] = a.reshape(3, size, size)
        elif a.shape == (3, size, size):
            out[i] = a
        elif a.shape == (size, size, 3):
            out[i] = a.transpose(2, 0, 1)
        elif a.size == flat:  # any other layout of the right count: taken as flat CHW
            out[i] = a.reshape(3, size, size)
        else:
            raise ValueError(
                f"{model}: input {i} must be {flat} floats (flat CHW), [3, {size}, {size}] or "
                f"[{size}, {size}, 3], got shape {tuple(a.shape)}")
    return out
