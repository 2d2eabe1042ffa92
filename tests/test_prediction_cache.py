"""The prediction cache: on its own (byte bound, LRU, waiting for one model call) and in a live frontend."""

from __future__ import annotations

import numpy as np
import requests
from frontend_support import metric, start_replica
from frontend_support import frontend_thread, procs  # noqa: F401 - fixtures
from prometheus_client.parser import text_string_to_metric_families

from frontend.cache import ENTRY_OVERHEAD_BYTES, PredictionCache, cache_key
from frontend.client import Client
from schooner.types import AppSpec, ModelSpec


def _key(i: int, shape=(4,)) -> tuple:
    return cache_key(["a", "<f4", list(shape)], np.full(shape, i, dtype=np.float32).tobytes())


# ---- the cache on its own -----------------------------------------------------------------------

def test_key_tells_apart_dtype_shape_and_bytes():
    data = np.arange(4, dtype=np.float32).tobytes()
    base = cache_key(["a", "<f4", [4]], data)
    assert base == cache_key(["a", "<f4", [4]], bytes(data))
    assert base != cache_key(["a", "<i4", [4]], data)
    assert base != cache_key(["a", "<f4", [2, 2]], data)
    assert base != cache_key(["a", "<f4", [4]], np.arange(1, 5, dtype=np.float32).tobytes())


def test_byte_bound_holds_and_the_least_recently_used_goes_first():
    out = b"x" * 1000
    per_entry = len(out) + 16 + ENTRY_OVERHEAD_BYTES
    cache = PredictionCache(max_bytes=10 * per_entry)
    for i in range(100):
        cache.put(_key(i), ["s", None, None], out)
        assert cache.bytes <= cache.max_bytes
        if i == 50:
            assert cache.get(_key(45)) is not None  # 45 is now the most recently used
    assert len(cache) == 10
    assert cache.get(_key(99)) is not None and cache.get(_key(0)) is None
    assert cache.get(_key(45)) is None  # used at 50, pushed out by the 10 puts after it
    cache.resize(3 * per_entry)
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    cache.put(_key(1000), ["s", None, None], b"y" * (10 * per_entry))  # bigger than the cache
    assert cache.get(_key(1000)) is None and cache.bytes <= cache.max_bytes


def test_identical_inputs_wait_for_the_first_ones_model_call():
    cache = PredictionCache(1 << 20)
    key = _key(7)
    assert not cache.pending(key)
    assert cache.join(key, "q1", 0) is False  # nobody runs it yet: q1's entry goes to the model
    assert cache.pending(key) and not cache.has_waiters(key)
    assert cache.join(key, "q2", 0) is True and cache.join(key, "q3", 2) is True
    assert cache.waiters(key) == [("q2", 0), ("q3", 2)]
    assert not cache.pending(key)


# ---- in a live frontend -------------------------------------------------------------------------

def _deploy(ft, models) -> None:
    """Serve ``models`` (versions of "m") behind "app", the first one current."""
    ft.deploy([AppSpec("app", "floats", latency_slo_micros=20_000_000)], models, {"app": ["m"]})
    ft.call(ft.fe.set_current_version, "m", models[0].version)


def _predictions(ft, version: str) -> int:
    return int(metric(ft.metrics(), "counters", f"model:m:{version}:num_predictions")["count"])


def test_a_repeated_input_is_answered_without_a_replica_call(frontend_thread, procs):
    ft = frontend_thread
    _deploy(ft, [ModelSpec("m", "1", "floats", cache_enabled=True)])
    procs.append(start_replica(ft.replica_address, "noop", name="m"))
    ft.wait_ready(1)
    x = np.arange(4, dtype=np.float32)
    with Client(ft.client_address, timeout_s=30) as client:
        first = client.predict("app", x)
        again = [client.predict("app", x) for _ in range(2)]
        other = client.predict("app", x + 1)
    assert not first.default and all(not r.default for r in again)
    assert all(np.array_equal(np.asarray(r.output), np.asarray(first.output)) for r in again)
    assert not other.default
    assert _predictions(ft, "1") == 2  # x once, x + 1 once
    ratio = metric(ft.metrics(), "ratio_counters", "model:m:1:cache_hit_ratio")
    assert ratio["ratio"] == 0.5  # 2 hits of 4 lookups
    text = requests.get(f"{ft.http_url}/metrics/prometheus", timeout=10).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    [hits] = [s for s in fams["schooner_model_cache_hits"].samples if s.name.endswith("_total")]
    [looked] = [s for s in fams["schooner_model_cache_lookups"].samples if s.name.endswith("_total")]
    assert hits.labels == {"model": "m", "version": "1"} and (hits.value, looked.value) == (2, 4)


def test_concurrent_identical_queries_share_one_model_call(frontend_thread, procs):
    ft = frontend_thread
    _deploy(ft, [ModelSpec("m", "1", "floats", batch_size=1, cache_enabled=True)])
    procs.append(start_replica(ft.replica_address, "sleep", name="m", opts={"a_ms": 100, "b_ms": 0}))
    ft.wait_ready(1)
    x = np.full(4, 3, dtype=np.float32)
    with Client(ft.client_address, timeout_s=30) as client:
        results = client.predict_many("app", [x] * 6, concurrency=6)
    assert all(not r.default for r in results)
    assert _predictions(ft, "1") == 1


def test_cache_is_off_unless_asked_and_a_new_version_never_sees_old_entries(frontend_thread, procs):
    ft = frontend_thread
    _deploy(ft, [ModelSpec("m", "1", "floats", cache_enabled=True), ModelSpec("m", "2", "floats", cache_enabled=True),
                 ModelSpec("m", "3", "floats")])
    for v in ("1", "2", "3"):
        procs.append(start_replica(ft.replica_address, "noop", name="m", version=v, replica_id=f"r{v}"))
    ft.wait_ready(3)
    x = np.arange(4, dtype=np.float32)
    with Client(ft.client_address, timeout_s=30) as client:
        client.predict("app", x)
        client.predict("app", x)
        assert _predictions(ft, "1") == 1
        ft.call(ft.fe.set_current_version, "m", "2")
        client.predict("app", x)
        assert _predictions(ft, "2") == 1  # version 2 ran the model itself
        ft.call(ft.fe.set_current_version, "m", "3")
        client.predict("app", x)
        client.predict("app", x)
        assert _predictions(ft, "3") == 2  # no cache on version 3
