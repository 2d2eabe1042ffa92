"""The interface every model in the zoo implements."""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from schooner.types import InputType


@runtime_checkable
class Model(Protocol):
    """A model a replica serves.

    ``predict`` gets a whole batch (one call per batch, which must be real
    batched inference) and returns exactly one output per input, in order: a
    numpy array whose first axis is the batch axis, or a list of arrays, bytes or
    strings. Bad inputs raise ``ValueError`` naming the problem; the replica then
    answers the batch with a model error and keeps serving.
    """

    name: str
    input_type: InputType
    input_shape: list[int] | None  # shape of one input, None if any shape is accepted

    def predict(self, inputs: Sequence[Any]) -> Any:
        """Outputs for a batch of inputs (numpy arrays for numeric input types)."""
        ...
