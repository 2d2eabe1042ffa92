"""The prediction cache of one model version: identical inputs answered without a replica trip.

An input is identical when its kind, dtype, shape and bytes are (its bytes are
keyed by a 128-bit BLAKE2b digest, so a large input is not kept as its own
key). Outputs are kept in an LRU bounded in bytes (each entry counts its output
bytes, its key and a fixed overhead). While an input's first query is queued
or in flight, identical queries wait for that one model call instead of making
their own (:meth:`PredictionCache.join`).

A cache belongs to one model version (its :class:`~frontend.batching.ModelQueue`),
so a new version never sees an old version's outputs.
"""

from __future__ import annotations

import collections
import hashlib
from typing import Any

ENTRY_OVERHEAD_BYTES = 200  # key tuple, meta and OrderedDict slot, roughly


def _buffer(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame


def cache_key(meta: Any, frame: Any) -> tuple:
    """The key of an input item: its kind, dtype, shape and a digest of its bytes."""
    kind, dtype, shape = meta
    digest = hashlib.blake2b(_buffer(frame), digest_size=16).digest()
    return (kind, dtype, tuple(shape) if shape is not None else None, digest)


class PredictionCache:
    """An LRU of outputs by input, bounded to ``max_bytes``, plus the inputs awaiting their first output."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._lru: collections.OrderedDict[tuple, tuple[Any, bytes]] = collections.OrderedDict()
        self._waiting: dict[tuple, list[tuple[Any, int]]] = {}  # key -> (query, item index) waiting

    def __len__(self) -> int:
        return len(self._lru)

    def get(self, key: tuple) -> tuple[Any, bytes] | None:
        """The (meta, output bytes) kept for ``key``, now most recently used; None if absent."""
        hit = self._lru.get(key)
        if hit is not None:
            self._lru.move_to_end(key)
        return hit

    def put(self, key: tuple, meta: Any, frame: Any) -> bytes:
        """Keep an output (copied to bytes) for ``key``, evicting the least recently used; returns the bytes."""
        data = bytes(_buffer(frame))
        size = len(data) + len(key[3]) + ENTRY_OVERHEAD_BYTES
        old = self._lru.pop(key, None)
        if old is not None:
            self.bytes -= len(old[1]) + len(key[3]) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return data  # larger than the whole cache: answered, not kept
        self._lru[key] = (meta, data)
        self.bytes += size
        while self.bytes > self.max_bytes:
            k, (_, d) = self._lru.popitem(last=False)
            self.bytes -= len(d) + len(k[3]) + ENTRY_OVERHEAD_BYTES
        return data

    def resize(self, max_bytes: int) -> None:
        """Change the bound, evicting the least recently used until it holds."""
        self.max_bytes = max_bytes
        while self.bytes > self.max_bytes and self._lru:
            k, (_, d) = self._lru.popitem(last=False)
            self.bytes -= len(d) + len(k[3]) + ENTRY_OVERHEAD_BYTES

    def pending(self, key: tuple) -> bool:
        """Whether a model call for ``key`` is already queued or in flight."""
        return key in self._waiting

    def start(self, key: tuple) -> None:
        """A model call for ``key`` is about to be queued: later identical queries wait for it."""
        self._waiting.setdefault(key, [])

    def join(self, key: tuple, query: Any, index: int) -> bool:
        """Wait for the model call already running for ``key``; False when there is none (start one)."""
        waiting = self._waiting.get(key)
        if waiting is None:
            self._waiting[key] = []
            return False
        waiting.append((query, index))
        return True

    def waiters(self, key: tuple) -> list[tuple[Any, int]]:
        """The queries waiting for ``key``'s model call, no longer waiting once returned."""
        return self._waiting.pop(key, [])

    def has_waiters(self, key: tuple) -> bool:
        """Whether queries other than the first wait for ``key``'s model call."""
        return bool(self._waiting.get(key))
