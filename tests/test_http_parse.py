"""HTTP predict bodies: numbers-only bodies convert in one step, with the same results and errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontend.http import _flat_numbers, _numbers_only, _to_item, parse_body
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


def _general(body: bytes, input_type: InputType, max_items: int):
    """parse_body without the simdjson path: orjson and _to_item."""
    import orjson
    data = orjson.loads(body)
    values = [data["input"]] if "input" in data else data["input_batch"]
    items = [_to_item(v, input_type, "input", numbers=True) for v in values]
    return [m for m, _ in items], [f for _, f in items], "input" not in data, None


_floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
_ints = st.integers(min_value=-(2 ** 53), max_value=2 ** 53)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.lists(st.one_of(_floats, _ints), max_size=40), min_size=1, max_size=5),
       batch=st.booleans(), input_type=st.sampled_from([InputType.FLOATS, InputType.DOUBLES]),
       spaces=st.booleans())
def test_simdjson_flat_arrays_decode_to_what_the_general_path_gives(values, batch, input_type, spaces):
    import json
    if not batch:
        values = values[:1]
    doc = {"input_batch": values} if batch else {"input": values[0]}
    body = json.dumps(doc, separators=(", ", ": ") if spaces else (",", ":")).encode()
    try:
        want = _general(body, input_type, 64)
    except BadInput as err:  # a double beyond float32's range
        with pytest.raises(BadInput, match="outside the range"):
            _flat_numbers(body, input_type, 64)
        assert "outside the range" in str(err)
        return
    got = _flat_numbers(body, input_type, 64)
    assert got is not None  # the fast path took it
    assert got[0] == want[0] and got[2] == batch and got[3] is None
    for a, b in zip(got[1], want[1]):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("body", [
    b'{"input": [[1, 2], [3, 4]]}',  # nested: simdjson would flatten it
    b'{"input_batch": [[[1]], [[2]]]}',
    b'{"input": [1], "input": [2]}',  # a repeated key: orjson keeps the last, as before
    b'{"input": [1, NaN]}',
    b'{"input": [1e400]}',
    b'{"input": [123456789012345678901234567890]}',
    b'{"input_batch": [[1], [2], [3]]}',  # over the limit below: the general path names it
])
def test_bodies_the_simdjson_path_must_not_take_go_the_general_way(body):
    assert _flat_numbers(body, InputType.FLOATS, 2) is None
