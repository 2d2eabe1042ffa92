"""Every default of Schooner in one place, with its unit in the name.

Config resolves flag -> environment variable (``SCHOONER_<NAME>``) -> the value
here; see :func:`resolve`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

T = TypeVar("T")

HOST = "127.0.0.1"
CLIENT_PORT = 4455  # ZMQ ROUTER for client queries
REPLICA_PORT = 7000  # ZMQ ROUTER for replica RPC
HTTP_PORT = 1337  # HTTP query endpoint, /metrics, /health
MANAGEMENT_PORT = 1338  # REST admin API
REDIS_URL = ""  # empty: start an embedded Redis on a free loopback port

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # larger client messages are refused (BadInput)
MAX_INPUT_BYTES = 16 * 1024 * 1024  # one input; larger is refused (BadInput)
# Bounds on the work one message can cause, checked before anything is allocated (docs/LIMITS.md).
MAX_HEADER_BYTES = 1024 * 1024  # a message's msgpack header frame
MAX_ITEMS_PER_QUERY = 1024  # inputs in one query (ZMQ items, HTTP input_batch)
MAX_ARRAY_DIMS = 32  # dimensions of one array item
MAX_JSON_DEPTH = 32  # nesting of an HTTP request body
# Larger HTTP bodies are parsed on a worker thread. The parsers (simdjson, orjson) hold the GIL through a
# whole parse, so a thread does not free the loop meanwhile; it only adds the hops and a GIL convoy. At
# 64 KiB, elastic-net's 80 KB bodies went to threads: goodput at 1,330-1,500 q/s 152-452 q/s, against
# 528-737 parsed inline (shed answers in ~11 against ~6 ms).
HTTP_PARSE_INLINE_BYTES = 1024 * 1024

DEFAULT_OUTPUT = "None"
LATENCY_SLO_MICROS = 100_000
BATCH_SIZE = -1  # schooner.types.BatchSize.ADAPTIVE: the goodput controller picks the batch cap
MAX_BATCH_SIZE = 64
BATCH_WAIT_TIMEOUT_MICROS = 0
MAX_QUEUE_SIZE = 10_000
LATENCY_EWMA_WEIGHT = 0.1  # weight of the newest batch in the per-size latency estimate
LATENCY_RECENCY = 0.9  # weight of a batch size in the latency curve's fit, per batch since it was last seen
OVERHEAD_WINDOW_S = 10.0  # a batch's overhead beyond the replica's service time: the least seen in this window
ARRIVAL_HORIZON_S = 0.5  # the arrival rate forgets with this time constant
SLO_MARGIN_FRACTION = 0.10  # the controller plans for this much less than the objective (noise, overheads)
CAPACITY_HEADROOM_FRACTION = 0.20  # a batch cap counts as keeping up when its capacity is this much over the load
RETUNE_INTERVAL_S = 0.02  # the batch cap is re-chosen at most this often
ADMISSION_GUARD_MICROS = 1000  # admission wants a query done this long before its deadline
ENTRY_AGE_WEIGHT = 0.05  # EWMA weight of how old queries are when queued (the batch cap plans for what is left)
LOOP_LAG_FLOOR_S = 0.001  # a query that waited less than this for the frontend's loop to read it is not checked
FRONTEND_WAIT_SHARE = 0.20  # a query that waited longer than this share of its objective for the frontend (to be
# read, for a parsing thread) is refused: overload control that keeps the frontend's own queue short. Over HTTP at
FRONTEND_STANDING_SLOS = 1.0  # once; over ZMQ when every read has waited that long for this many objectives
CACHE_SIZE_BYTES = 64 * 1024 * 1024  # prediction cache bound per model version (when enabled)
ON_OVERLOAD = "reject"  # what an app answers a query that cannot make its deadline: reject (429) | default

# Retries and backoff, everywhere they happen.
MAX_BATCH_RETRIES = 2  # a batch whose replica died is retried this many times
REPLICA_RESTART_BACKOFF_MIN_S = 0.5  # a crashed replica restarts after min * 2**(failures-1) s ...
REPLICA_RESTART_BACKOFF_MAX_S = 30.0  # ... capped here
REPLICA_HEALTHY_RUN_S = 30.0  # a replica that ran this long before dying restarts with the shortest backoff
REDIS_RETRY_INTERVAL_S = 0.5  # the frontend tries Redis again this often while it is down
REPLICA_RECONNECT_INTERVAL_MS = 100  # ZMQ reconnect of a replica to the frontend, first interval ...
REPLICA_RECONNECT_INTERVAL_MAX_MS = 1000  # ... doubling up to this


# Busy-poll windows after handling a message (see docs/ARCHITECTURE.md, "Latency"); 0 = block at once.
REPLICA_SPIN_US = 1000  # covers a c=1 round trip (~400-500 µs here); only on owned cores (containers/spin.py)
FRONTEND_SPIN_US = 0
PIPELINE_DEPTH = 2  # batches a frontend keeps in flight to one replica: a full one waits behind the running one
CLIENT_SPIN_US = 0

HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TIMEOUT_S = 5.0  # a replica silent this long is dead
# A batch in flight this long marks its replica dead (stuck in predict) and is retried elsewhere.
# Generous: a VGG batch of 16 on one core takes ~7 s, and a slow batch must not be taken for a stuck one.
BATCH_TIMEOUT_S = 30.0
# A frontend re-announces itself in Redis this often; its record expires after FRONTEND_TTL_S without one.
FRONTEND_ANNOUNCE_INTERVAL_S = 1.0
FRONTEND_TTL_S = 5.0
RETRY_AFTER_S = 1  # Retry-After on 429
# A dead or stopped replica stays listed (state dead/stopped) this long, then the frontend forgets it.
GONE_REPLICA_FORGET_AFTER_S = 60.0

MAX_UPLOAD_BYTES = 1024 * 1024 * 1024  # a model file or archive uploaded to the management API
# set_num_replicas for a model version not registered yet (Clipper's deploy order) is kept this long.
PENDING_SCALE_S = 300.0
# A model version whose replicas exit this many times in a row before ever serving is marked failed.
MODEL_FAILED_AFTER_STARTS = 3

REDIS_KEY_PREFIX = "schooner"
STATE_DIR = os.path.expanduser("~/.schooner")
MODEL_DIR = os.path.join(STATE_DIR, "models")  # classic-model artifacts (build_models --out)
MODEL_CACHE_DIR = os.path.join(MODEL_DIR, "cache")  # classic models trained on demand


def resolve(flag: T | None, name: str, default: T, cast: Callable[[str], Any] = str) -> T:
    """Return ``flag`` if given, else ``$SCHOONER_<NAME>`` cast, else ``default``."""
    if flag is not None:
        return flag
    raw = os.environ.get(f"SCHOONER_{name.upper()}")
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError as err:
        raise ValueError(f"SCHOONER_{name.upper()}={raw!r} is not a valid {name}") from err
