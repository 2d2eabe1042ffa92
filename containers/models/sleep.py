"""Test model ``sleep``: a batch of n takes ``a_ms + b_ms * n`` milliseconds.

Outputs and the fault-injection hook are those of ``noop``.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from containers.models.noop import check_fault, tiny_outputs
from schooner.types import InputType


class SleepModel:
    """Sleeps like a model whose cost is a fixed part plus a per-input part."""

    def __init__(self, a_ms: float = 1.0, b_ms: float = 0.5,
                 input_type: str | InputType = InputType.FLOATS) -> None:
        for arg, value in (("a_ms", a_ms), ("b_ms", b_ms)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{arg} must be a number >= 0, got {value!r}")
        self.name = "sleep"
        self.a_ms = float(a_ms)
        self.b_ms = float(b_ms)
        self.input_type = InputType.parse(input_type)
        self.input_shape: list[int] | None = None

    def batch_cost_s(self, n: int) -> float:
        """Seconds a batch of ``n`` takes."""
        return (self.a_ms + self.b_ms * n) / 1000.0

    def predict(self, inputs: Sequence[Any]) -> np.ndarray | list[Any]:
        """Sleep for the batch's cost, then tiny outputs; ValueError on the fault-injection input."""
        check_fault(inputs)
        time.sleep(self.batch_cost_s(len(inputs)))
        return tiny_outputs(inputs)


def load_sleep(model_path: str = "", num_threads: int = 1, gpu: int | None = None,
               a_ms: float = 1.0, b_ms: float = 0.5, input_type: str = InputType.FLOATS.value) -> SleepModel:
    """Loader for the registry (model_path, num_threads and gpu are not used)."""
    return SleepModel(a_ms=a_ms, b_ms=b_ms, input_type=input_type)
