"""Validation at the edge: split a message's items and check them against the model's input type.

Items stay as the frames they arrived in (or zero-copy slices of a stacked
frame); nothing here copies an input.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import zmq

from schooner.errors import BadInput, ProtocolError
from schooner.protocol import item_metas
from schooner.types import InputType

_KIND_OF = {InputType.BYTES: "b", InputType.STRINGS: "s"}
_dtype_ok: dict[tuple[InputType, Any], bool] = {}


def _buffer(frame: Any) -> Any:
    return frame.buffer if isinstance(frame, zmq.Frame) else frame


def nbytes(frame: Any) -> int:
    """Size in bytes of a frame, bytes object, memoryview or array."""
    if isinstance(frame, np.ndarray):
        return frame.nbytes
    if isinstance(frame, memoryview):
        return frame.nbytes
    return len(frame)


def split_items(meta: Any, frames: Sequence[Any]) -> tuple[list, list]:
    """Per-item ``[kind, dtype, shape]`` metas and payloads of a message's ``items``.

    A stacked batch (one frame) is split into zero-copy slices of that frame.
    Raises :class:`ProtocolError` when meta and frames disagree.
    """
    if isinstance(meta, dict) and "stack" in meta:
        stack = meta["stack"]
        if not isinstance(stack, (list, tuple)) or len(stack) != 2 or len(frames) != 1:
            raise ProtocolError("a stacked items meta is [dtype, shape] with exactly one frame")
        dtype, shape = stack
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ProtocolError(f"stack shape must be a non-empty list of sizes, got {shape!r}")
        n = shape[0]
        buf = _buffer(frames[0])
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        if n == 0:
            return [], []
        size, rest = divmod(view.nbytes, n)
        if rest:
            raise ProtocolError(f"stacked frame of {view.nbytes} bytes does not split into {n} items")
        item_meta = ["a", dtype, shape[1:]]
        return [item_meta] * n, [view[i * size:(i + 1) * size] for i in range(n)]
    metas = item_metas(meta, len(frames))
    return metas, list(frames)


def _check_dtype(input_type: InputType, dtype: Any) -> bool:
    key = (input_type, dtype)
    ok = _dtype_ok.get(key)
    if ok is None:
        try:
            ok = np.dtype(dtype) == input_type.dtype
        except (TypeError, ValueError):
            ok = False
        if len(_dtype_ok) < 1024:  # bounded: dtype strings come from clients
            _dtype_ok[key] = ok
    return ok


def validate_items(metas: list, frames: list, input_type: InputType, shape: list[int] | None,
                   max_input_bytes: int) -> None:
    """Raise :class:`BadInput` naming the first item whose kind, dtype, shape or size is wrong."""
    want_dtype = input_type.dtype
    want_kind = "a" if want_dtype is not None else _KIND_OF[input_type]
    for i, (meta, frame) in enumerate(zip(metas, frames)):
        if not isinstance(meta, (list, tuple)) or len(meta) != 3:
            raise ProtocolError(f"items[{i}] meta must be [kind, dtype, shape]")
        size = nbytes(frame)
        if size > max_input_bytes:
            raise BadInput(f"items[{i}] is {size} bytes, more than the limit of {max_input_bytes}")
        kind = meta[0]
        if kind != want_kind:
            raise BadInput(f"items[{i}]: the app takes {input_type.value} input, got item kind {kind!r}")
        if want_dtype is None:
            if kind == "s":
                try:
                    bytes(_buffer(frame)).decode("utf-8")
                except UnicodeDecodeError:
                    raise BadInput(f"items[{i}] is not valid UTF-8") from None
            continue
        if not _check_dtype(input_type, meta[1]):
            raise BadInput(f"items[{i}]: the app takes {input_type.value} ({want_dtype.str}), "
                           f"got dtype {meta[1]!r}")
        item_shape = meta[2]
        if not isinstance(item_shape, list) or not all(isinstance(d, int) and d >= 0 for d in item_shape):
            raise BadInput(f"items[{i}]: shape must be a list of sizes, got {item_shape!r}")
        if shape is not None and item_shape != shape:
            raise BadInput(f"items[{i}]: shape {item_shape} does not match the model's input shape {shape}")
        if size != math.prod(item_shape) * want_dtype.itemsize:
            raise BadInput(f"items[{i}]: {size} bytes do not hold shape {item_shape} of {want_dtype.str}")
