"""Test model ``noop``: a tiny output per input, any input type.

A numeric input gives a float32 ``[first element]`` (``[0.0]`` when empty), so
tests can check outputs come back in input order; bytes and strings give
``"ok"``. An input whose first element is ``-999`` (numeric) or that equals
``"raise"`` (bytes/str) raises ValueError: the fault-injection hook.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from schooner.types import InputType

FAULT_NUMBER = -999
FAULT_TEXT = "raise"


def check_fault(inputs: Sequence[Any]) -> None:
    """Raise ValueError if any input is the fault-injection value."""
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            hit = item == FAULT_TEXT
        elif isinstance(item, (bytes, bytearray, memoryview)):
            hit = bytes(item) == FAULT_TEXT.encode()
        else:
            arr = np.asarray(item)
            hit = arr.size > 0 and arr.reshape(-1)[0] == FAULT_NUMBER
        if hit:
            raise ValueError(f"input {i} is the fault-injection value")


def tiny_outputs(inputs: Sequence[Any]) -> np.ndarray | list[Any]:
    """One small output per input: a stacked float32 (n, 1) array, or a list when any is text."""
    if all(not isinstance(x, (str, bytes, bytearray, memoryview)) for x in inputs):
        out = np.zeros((len(inputs), 1), dtype=np.float32)
        for i, item in enumerate(inputs):
            flat = np.asarray(item).reshape(-1)
            if flat.size:
                out[i, 0] = flat[0]
        return out
    return [_tiny(x) for x in inputs]


def _tiny(item: Any) -> Any:
    if isinstance(item, (str, bytes, bytearray, memoryview)):
        return "ok"
    flat = np.asarray(item).reshape(-1)
    return np.array([flat[0] if flat.size else 0.0], dtype=np.float32)


class NoopModel:
    """Returns at once with a tiny output per input."""

    def __init__(self, input_type: str | InputType = InputType.FLOATS) -> None:
        self.name = "noop"
        self.input_type = InputType.parse(input_type)
        self.input_shape: list[int] | None = None

    def predict(self, inputs: Sequence[Any]) -> np.ndarray | list[Any]:
        """Tiny outputs; ValueError on the fault-injection input."""
        check_fault(inputs)
        return tiny_outputs(inputs)


def load_noop(model_path: str = "", num_threads: int = 1, gpu: int | None = None,
              input_type: str = InputType.FLOATS.value) -> NoopModel:
    """Loader for the registry (model_path, num_threads and gpu are not used)."""
    return NoopModel(input_type=input_type)
