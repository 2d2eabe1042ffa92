"""HTTP predict bodies: numbers-only bodies convert in one step, with the same results and errors."""

from __future__ import annotations

import numpy as np
import pytest

from frontend.http import _numbers_only, _to_item, parse_body
from schooner.errors import BadInput
from schooner.types import InputType


@pytest.mark.parametrize("body, fast", [
    (b'{"input": [1, 2.5, -3e2, 4E-1]}', True),
    (b'{"input_batch": [[1, 2], [3, 4]]}', True),
    (b'{"input": [true, 1.0]}', False),
    (b'{"input": ["1.5", 2]}', False),
    (b'{"input": [null]}', False),
    (b'{"input": [1], "version": "2"}', False),
])
def test_only_bodies_of_plain_numbers_take_the_one_step_conversion(body, fast):
    assert _numbers_only(body, InputType.FLOATS) is fast
    assert _numbers_only(body, InputType.INTS) is False  # ints keep the checked path (no silent truncation)


@pytest.mark.parametrize("value", [[1, 2.5, -300.0], [[1.0, 2.0], [3.0, 4.0]], [], [0.1] * 4096])
@pytest.mark.parametrize("input_type", [InputType.FLOATS, InputType.DOUBLES])
def test_one_step_conversion_equals_the_inferring_one(value, input_type):
    fast_meta, fast = _to_item(value, input_type, "input", numbers=True)
    slow_meta, slow = _to_item(value, input_type, "input", numbers=False)
    assert fast_meta == slow_meta and fast.dtype == slow.dtype and np.array_equal(fast, slow)


@pytest.mark.parametrize("body, message", [
    (b'{"input": [1e39]}', "outside the range of floats"),
    (b'{"input": [[1, 2], [3]]}', "rectangular"),
])
def test_one_step_conversion_keeps_the_named_errors(body, message):
    with pytest.raises(BadInput, match=message):
        parse_body(body, InputType.FLOATS, 64)
