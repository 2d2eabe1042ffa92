"""Prometheus exposition of the frontend's metrics, through ``prometheus_client``.

A custom collector reads the :class:`~frontend.metrics.MetricsRegistry` when
scraped, so the hot path keeps its plain attribute increments. Clipper's names
(``app:<a>:prediction_latency``) become one family per kind of metric with the
app, model and version as labels (``schooner_app_prediction_latency_seconds
{app="a"}``); latencies are histograms in seconds; counts are ``_total``
counters; meters and ratios are left out because their counts are already
counters and PromQL computes rates (``rate(schooner_app_predictions_total[1m])``).
Series go away with their app or model because the registry drops their
metrics (``remove_prefix``) and the collector exports only what is there.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from frontend.metrics import Counter, Gauge, Histogram, Meter, MetricsRegistry, RatioCounter
from schooner import metric_names as names

PREFIX = "schooner_"

# Clipper metric suffix -> (family name without prefix, help). A suffix ending in "_" is a
# family of counters whose remainder becomes a label: (family, help, label name).
_APP = {
    names.APP_LATENCY: ("app_prediction_latency", "Time from a query's arrival to its answer, per app."),
    names.APP_NUM_PREDICTIONS: ("app_predictions", "Predictions answered (outputs and defaults), per app."),
    names.APP_DEFAULT_RATIO: ("app_default_predictions",
                              "Predictions answered with the app's default output, per app."),
}
_MODEL = {
    names.MODEL_LATENCY: ("model_batch_latency",
                          "Time from sending a batch to a replica to receiving its result, per model version."),
    names.MODEL_BATCH_SIZE: ("model_batch_size", "Queries per batch sent to a replica, per model version."),
    names.MODEL_NUM_PREDICTIONS: ("model_predictions", "Outputs returned by replicas, per model version."),
    names.MODEL_QUEUE_SIZE: ("model_queue_size_at_dispatch",
                             "Queries waiting in the model's queue when a batch was dispatched."),
    names.MODEL_LATE_OUTPUTS: ("model_late_outputs",
                               "Outputs that arrived after their query had been answered with a default."),
    names.MODEL_BATCH_TIMEOUTS: ("model_batch_timeouts", "Batches held by a replica past the batch timeout."),
    names.MODEL_DROPPED_AT_DISPATCH: ("model_dropped_at_dispatch",
                                      "Queries defaulted before dispatch because they could not finish in time."),
    names.MODEL_SHED_AT_ARRIVAL: ("model_shed_at_arrival",
                                  "Queries answered at arrival because they could not finish in time."),
    names.MODEL_BATCH_SIZE_TARGET: ("model_batch_size_target", "The batch cap the frontend chose, per model version."),
    names.MODEL_CACHE_HIT_RATIO: ("model_cache_hits", "Inputs answered by the prediction cache without a "
                                  "replica call (hit ratio: divide by model_cache_lookups)."),
    names.MODEL_CACHE_LOOKUPS: ("model_cache_lookups", "Inputs looked up in the prediction cache."),
    names.MODEL_CACHE_BYTES: ("model_cache_bytes", "Bytes held by the prediction cache."),
}
_INTERNAL = {
    names.AGGREGATE_NUM_PREDICTIONS.partition(":")[2]: ("predictions",
                                                        "Outputs returned by replicas, every model together."),
    names.QUEUEING_DELAY.partition(":")[2]: ("queueing_delay", "Time a query waited in a model queue before dispatch."),
}
_LABELLED = {  # metric suffix prefix -> (scope, family, help, label)
    "errors_": ("app", "app_errors", "Queries answered with an error, per app and error code.", "code"),
    names.MODEL_FIRED.split("{")[0]: ("model", "model_batches", "Batches dispatched, per model version and "
                                      "the reason the batch fired (full, timeout, idle).", "reason"),
}
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def _split(name: str) -> tuple[str, dict[str, str], str] | None:
    """(scope, labels, suffix) of a Clipper metric name; None for a name of no known scope."""
    scope, _, rest = name.partition(":")
    if scope == "internal":
        return scope, {}, rest
    if ":" not in rest or scope not in ("app", "model"):
        return None
    owner, suffix = rest.rsplit(":", 1)
    if scope == "app":
        return scope, {"app": owner}, suffix
    if ":" not in owner:
        return None
    model, version = owner.rsplit(":", 1)
    return scope, {"model": model, "version": version}, suffix


def _family_of(scope: str, suffix: str) -> tuple[str, str, dict[str, str]]:
    """(family name, help, extra labels) for ``suffix`` in ``scope``."""
    table = {"app": _APP, "model": _MODEL, "internal": _INTERNAL}[scope]
    if suffix in table:
        family, help_text = table[suffix]
        return family, help_text, {}
    for start, (owner, family, help_text, label) in _LABELLED.items():
        if owner == scope and suffix.startswith(start):
            return family, help_text, {label: suffix[len(start):]}
    family = _INVALID.sub("_", f"{'' if scope == 'internal' else scope + '_'}{suffix}")
    return family, f"Schooner metric {suffix!r} ({scope}).", {}


class _Families:
    """Families built in one scrape, one per name, created on first use."""

    def __init__(self) -> None:
        self.by_name: dict[str, Any] = {}

    def get(self, cls: type, name: str, help_text: str, labels: list[str], **kw: Any) -> Any:
        family = self.by_name.get(name)
        if family is None:
            family = self.by_name[name] = cls(PREFIX + name, help_text, labels=labels, **kw)
        elif not isinstance(family, cls) or getattr(family, "_labelnames", None) != tuple(labels):
            # Two metrics of different kinds (or label sets) under one family name: keep the
            # exposition valid by giving the newcomer a family of its own.
            return self.get(cls, f"{name}_{cls.__name__[:-len('MetricFamily')].lower()}", help_text, labels)
        return family


def _seconds(unit: str) -> float:
    return 1e-6 if unit == "microseconds" else 1.0


class RegistryCollector(Collector):
    """Reads a MetricsRegistry (and optional live gauges) into Prometheus families at scrape time."""

    def __init__(self, registry: MetricsRegistry,
                 gauges: Callable[[], Iterator[tuple[str, str, dict[str, str], float]]] | None = None) -> None:
        self.registry = registry
        self.gauges = gauges

    def collect(self) -> Iterator[Any]:
        """One family per kind of metric; app, model, version (and code/reason) as labels."""
        families = _Families()
        for name, metric in self.registry.items():
            parts = _split(name)
            if parts is None:
                continue
            scope, labels, suffix = parts
            family, help_text, extra = _family_of(scope, suffix)
            labels = {**labels, **extra}
            keys, values = list(labels), list(labels.values())
            if isinstance(metric, Histogram):
                scale = _seconds(metric.unit)
                fam_name = family + ("_seconds" if scale != 1.0 else "")
                fam = families.get(HistogramMetricFamily, fam_name, help_text, keys)
                buckets = [(_le(bound * scale), n) for bound, n in metric.cumulative_buckets()]
                fam.add_metric(values, buckets, metric.sum * scale)
            elif isinstance(metric, Counter):
                families.get(CounterMetricFamily, family, help_text, keys).add_metric(values, metric.value)
            elif isinstance(metric, RatioCounter):
                # The numerator is the count; the denominator is the predictions counter already exported.
                families.get(CounterMetricFamily, family, help_text, keys).add_metric(values, metric.numerator)
            elif isinstance(metric, Meter):
                continue  # its count is a counter already; PromQL computes the rates
            elif isinstance(metric, Gauge):
                families.get(GaugeMetricFamily, family, help_text, keys).add_metric(values, metric.value)
        if self.gauges is not None:
            for family, help_text, labels, value in self.gauges():
                families.get(GaugeMetricFamily, family, help_text, list(labels)).add_metric(
                    list(labels.values()), value)
        yield from families.by_name.values()


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(f"{bound:.9g}"))


class Exposition:
    """A prometheus_client registry holding one RegistryCollector; renders per the scraper's Accept."""

    def __init__(self, collector: RegistryCollector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, Content-Type): the text format 0.0.4, or OpenMetrics when the scraper asks for it."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
