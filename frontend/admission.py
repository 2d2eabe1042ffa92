"""Admission at the edge: split and validate a message's items, and shed what cannot make its deadline.

Items stay as the frames they arrived in (or zero-copy slices of a stacked
frame); nothing here copies an input. :func:`predict_finish` is the admission
rule: when a query would finish after its deadline given the work queued ahead
of it, it is answered at once (429 ``overloaded`` or the default output, per
app) instead of waiting to be answered late.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import zmq

from schooner.errors import BadInput, ProtocolError
from schooner.protocol import ALLOWED_DTYPES, check_shape, item_metas, parse_dtype, short
from schooner.types import InputType

_KIND_OF = {InputType.BYTES: "b", InputType.STRINGS: "s"}


def _buffer(frame: Any) -> Any:
    return frame.buffer if isinstance(frame, zmq.Frame) else frame


def nbytes(frame: Any) -> int:
    """Size in bytes of a frame, bytes object, memoryview or array."""
    if isinstance(frame, np.ndarray):
        return frame.nbytes
    if isinstance(frame, memoryview):
        return frame.nbytes
    return len(frame)


def split_items(meta: Any, frames: Sequence[Any], max_items: int) -> tuple[list, list]:
    """Per-item ``[kind, dtype, shape]`` metas and payloads of a message's ``items``.

    A stacked batch (one frame) is split into zero-copy slices of that frame.
    Bounded before anything is allocated: at most ``max_items`` items, an
    allowed dtype, and a frame of exactly shape x itemsize bytes. Raises
    :class:`ProtocolError` when meta and frames disagree, :class:`BadInput`
    when there are too many items.
    """
    if isinstance(meta, dict) and "stack" in meta:
        stack = meta["stack"]
        if not isinstance(stack, (list, tuple)) or len(stack) != 2 or len(frames) != 1:
            raise ProtocolError("a stacked items meta is [dtype, shape] with exactly one frame")
        dtype, shape = stack
        dt = parse_dtype(dtype)
        elements = check_shape(shape)
        if not shape:
            raise ProtocolError("stack shape must be a non-empty list of sizes")
        n = shape[0]
        if n > max_items:
            raise BadInput(f"{n} items in one message, more than the limit of {max_items} (max_items_per_query)")
        buf = _buffer(frames[0])
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        if view.nbytes != elements * dt.itemsize:
            raise ProtocolError(f"stacked frame of {view.nbytes} bytes does not hold shape {shape} of {dt.str}")
        if n == 0:
            return [], []
        size = view.nbytes // n
        item_meta = ["a", dt.str, shape[1:]]
        if n == 1:  # a single query's input: the frame itself, no slicing
            return [item_meta], [view]
        return [item_meta] * n, [view[i * size:(i + 1) * size] for i in range(n)]
    if len(frames) > max_items:
        raise BadInput(f"{len(frames)} items in one message, more than the limit of {max_items} "
                       "(max_items_per_query)")
    metas = item_metas(meta, len(frames))
    return metas, list(frames)


def _check_dtype(input_type: InputType, dtype: Any) -> bool:
    # Allow-list lookup only: a dtype string from a peer is never parsed by numpy. (Not `get() ==`:
    # numpy reads `None == dtype` as dtype(None), float64, so an unknown dtype passed for doubles.)
    dt = ALLOWED_DTYPES.get(dtype) if dtype.__class__ is str else None
    return dt is not None and dt == input_type.dtype


def _elements(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


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
            raise BadInput(f"items[{i}]: the app takes {input_type.value} input, got item kind {short(kind)}")
        if want_dtype is None:
            if kind == "s":
                try:
                    bytes(_buffer(frame)).decode("utf-8")
                except UnicodeDecodeError:
                    raise BadInput(f"items[{i}] is not valid UTF-8") from None
            continue
        if not _check_dtype(input_type, meta[1]):
            raise BadInput(f"items[{i}]: the app takes {input_type.value} ({want_dtype.str}), "
                           f"got dtype {short(meta[1])}")
        item_shape = meta[2]
        try:
            elements = check_shape(item_shape)
        except ProtocolError as err:
            raise BadInput(f"items[{i}]: {err}") from None
        # Same number of elements is enough: a model's input_shape fixes how many values it takes, the
        # layout is its own business (vgg's [150528] takes [3, 224, 224] and [224, 224, 3] images too).
        if shape is not None and item_shape != shape and elements != _elements(shape):
            raise BadInput(f"items[{i}]: shape {item_shape} does not match the model's input shape {shape}")
        if size != elements * want_dtype.itemsize:
            raise BadInput(f"items[{i}]: {size} bytes do not hold shape {item_shape} of {want_dtype.str}")


def check_outputs(metas: list, frames: list) -> None:
    """Raise :class:`ProtocolError` unless every output meta is a well-formed item matching its frame.

    Outputs go on to clients (forwarded as they came) and into HTTP JSON, so a
    replica's dtype and shape are held to the same allow list as inputs.
    """
    for i, (meta, frame) in enumerate(zip(metas, frames)):
        if meta.__class__ is not list and meta.__class__ is not tuple or len(meta) != 3:
            raise ProtocolError(f"outputs[{i}] meta must be [kind, dtype, shape]")
        kind = meta[0]
        if kind == "a":
            dt = parse_dtype(meta[1])
            if check_shape(meta[2]) * dt.itemsize != nbytes(frame):
                raise ProtocolError(f"outputs[{i}]: {nbytes(frame)} bytes do not hold shape {short(meta[2])} "
                                    f"of {dt.str}")
        elif kind == "s":
            try:
                bytes(_buffer(frame)).decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(f"outputs[{i}] is not valid UTF-8") from None
        elif kind != "b":
            raise ProtocolError(f"outputs[{i}]: unknown item kind {short(kind)}")


def predict_finish(now: float, ahead: int, items: int, free_at: Sequence[float], target: int,
                   latency: Callable[[int], float], rate: float) -> tuple[float, float, int]:
    """(start, finish, position in it) of the batch holding the last of a query's ``items``.

    This is the admission rule: a query is admitted when ``finish`` is before
    its deadline and before that of the first query in the same batch (the one
    at ``position`` places ahead, whose batch it makes longer).

    ``ahead`` items are queued before it; ``free_at`` says when each live
    replica takes its next batch (soonest first, at least ``now``); batches
    hold up to ``target`` items and a batch of ``n`` takes ``latency(n)``.
    Batch ``j`` of the queue goes to the ``j mod R``-th replica to free, after
    ``j div R`` full batches there. Its own batch holds what is ahead of it in
    that batch, itself, and what arrives (at ``rate`` items/s) before it starts.
    """
    last = ahead + items - 1
    j, pos = divmod(last, target)
    rounds, slot = divmod(j, len(free_at))
    start = max(now, free_at[slot]) + rounds * latency(target)
    size = min(target, pos + 1 + math.ceil(rate * (start - now)))
    return start, start + latency(size), pos
