"""Every metric name the frontend records, in Clipper's naming (``app:<a>:...``, ``model:<m>:<v>:...``).

The frontend registers its metrics under these names; the driver, the
dashboard and the tests read them back from ``/metrics`` by the same names.
"""

from __future__ import annotations

AGGREGATE_THROUGHPUT = "internal:aggregate_model_throughput"  # meter, every model
AGGREGATE_NUM_PREDICTIONS = "internal:aggregate_num_predictions"  # counter, every model (Clipper's name)
QUEUEING_DELAY = "internal:rpc_request_queueing_delay"  # histogram, µs from enqueue to dispatch

# Per app, after app_prefix(app):
APP_LATENCY = "prediction_latency"  # histogram, µs arrival -> answer
APP_THROUGHPUT = "prediction_throughput"  # meter
APP_NUM_PREDICTIONS = "num_predictions"  # counter
APP_DEFAULT_RATIO = "default_prediction_ratio"  # ratio counter
APP_ERRORS = "errors_{code}"  # counter per error code (overloaded = the 429s), created on the first error

# Per model version, after model_prefix(name, version):
MODEL_LATENCY = "prediction_latency"  # histogram, µs PREDICT sent -> RESULT received
MODEL_BATCH_SIZE = "batch_size"  # histogram, queries per batch
MODEL_THROUGHPUT = "prediction_throughput"  # meter
MODEL_NUM_PREDICTIONS = "num_predictions"  # counter
MODEL_QUEUE_SIZE = "queue_size"  # histogram, queue depth when a batch fired
MODEL_FIRED = "batch_fired_{reason}"  # counter per FireReason (full, timeout, idle)
MODEL_LATE_OUTPUTS = "late_outputs"  # counter, outputs that came after their query's deadline
MODEL_BATCH_TIMEOUTS = "batch_timeouts"  # counter, batches held past the batch timeout
MODEL_DROPPED_AT_DISPATCH = "dropped_at_dispatch"  # counter, defaulted before dispatch (would be late)
MODEL_SHED_AT_ARRIVAL = "shed_at_arrival"  # counter, answered at arrival (would finish after its deadline)
MODEL_BATCH_SIZE_TARGET = "batch_size_target"  # gauge, the batch cap the controller chose
MODEL_CACHE_HIT_RATIO = "cache_hit_ratio"  # ratio counter, inputs answered by the prediction cache / looked up
MODEL_CACHE_LOOKUPS = "cache_lookups"  # counter, inputs looked up in the prediction cache
MODEL_CACHE_BYTES = "cache_bytes"  # gauge, bytes the prediction cache holds


def app_prefix(app: str) -> str:
    """Prefix of every metric of ``app``."""
    return f"app:{app}:"


def model_prefix(name: str, version: str) -> str:
    """Prefix of every metric of model version ``name:version``."""
    return f"model:{name}:{version}:"


def bad_messages(endpoint: str) -> str:
    """Counter of malformed or refused messages on an endpoint (``client``, ``replica``, ``http``)."""
    return f"internal:{endpoint}:bad_messages"
