"""Prometheus metrics: the dashboard's HTTP families and netmon's own health.

The ``<prefix>_*`` names, labels and default buckets are fixed because
existing dashboards query them. Health metrics use the ``netmon_`` prefix and
are read from the pipeline's plain counters at scrape time, so the packet
path never touches a prometheus-client object.
"""

from bisect import bisect_left

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from .decode import SKIP_REASONS
from .http import PARSE_ERROR_REASONS, UNATTRIBUTED_REASONS
from .routes import normalize_method

# Creation-time series (`*_created`) carry the wall clock, which would make
# two analyses of the same capture differ; netmon's output depends only on
# the packets.
prometheus_client.disable_created_metrics()

DEFAULT_PREFIX = "scheduler_http"
# 100 B to 1 GB, factor 10 (eight buckets plus +Inf).
DEFAULT_BUCKETS = (1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9)

# Label values for transactions whose request was not captured.
UNKNOWN_METHOD = "UNKNOWN"
UNKNOWN_ENDPOINT = "/{unknown}"

EVICTION_REASONS = ("idle", "memory", "table_full")
TRANSACTION_OUTCOMES = ("complete", "incomplete", "no_response", "no_request")


class LabelPolicy:
    """Turn a transaction into its bounded ``method`` and ``endpoint`` label values.

    Methods outside the standard set become ``OTHER``; targets go through the
    endpoint mapper (route templates, id heuristics, cardinality limit).
    Both are computed once per transaction and shared by every output.
    """

    def __init__(self, mapper):
        self.mapper = mapper
        self.other_methods = 0

    def labels(self, transaction):
        """Return (method, endpoint); endpoint is None when the mapper drops the path."""
        request = transaction.request
        if request is None:
            return UNKNOWN_METHOD, UNKNOWN_ENDPOINT
        method = normalize_method(request.method)
        if method == "OTHER":
            self.other_methods += 1
        return method, self.mapper.endpoint(request.target)


class HttpMetrics:
    """The ``<prefix>_*`` families, updated once per transaction.

    Values live in plain per-series lists and become prometheus-client
    metric families at scrape time: a transaction then costs two dictionary
    lookups and a bisect instead of ten locked ``inc()`` calls.
    """

    def __init__(self, registry, prefix=DEFAULT_PREFIX, buckets=DEFAULT_BUCKETS):
        self.prefix = prefix
        self.buckets = tuple(float(bound) for bound in buckets)
        self.bucket_labels = [floatToGoString(bound) for bound in self.buckets] + ["+Inf"]
        # (method, endpoint) -> [bytes, bucket counts..., overflow count]
        self.request_series = {}
        # (method, endpoint, status) -> the same layout
        self.response_series = {}
        self.inbound_bytes = 0
        self.outbound_bytes = 0
        self.request_count = 0
        self.response_count = 0
        self.outcomes = dict.fromkeys(TRANSACTION_OUTCOMES, 0)
        registry.register(self)

    def observe(self, transaction, method, endpoint):
        request = transaction.request
        response = transaction.response
        buckets = self.buckets

        if request is not None:
            size = request.wire_bytes
            self.request_count += 1
            self.inbound_bytes += size
            if endpoint is not None:
                series = self.request_series.get((method, endpoint))
                if series is None:
                    series = self.request_series[(method, endpoint)] = [0] * (len(buckets) + 2)
                series[0] += size
                series[1 + bisect_left(buckets, size)] += 1

        if response is not None:
            size = response.wire_bytes
            self.response_count += 1
            self.outbound_bytes += size
            if endpoint is not None:
                key = (method, endpoint, response.status)
                series = self.response_series.get(key)
                if series is None:
                    series = self.response_series[key] = [0] * (len(buckets) + 2)
                series[0] += size
                series[1 + bisect_left(buckets, size)] += 1

        if response is None:
            outcome = "no_response"
        elif request is None:
            outcome = "no_request"
        elif transaction.complete:
            outcome = "complete"
        else:
            outcome = "incomplete"
        self.outcomes[outcome] += 1

    def collect(self):
        prefix = self.prefix
        request_bytes = CounterMetricFamily(
            f"{prefix}_request_bytes",
            "HTTP request bytes on the wire (start line, headers and body, chunk framing included).",
            labels=["method", "endpoint"],
        )
        request_size = HistogramMetricFamily(
            f"{prefix}_request_size_bytes",
            "Size of HTTP requests on the wire, in bytes.",
            labels=["method", "endpoint"],
        )
        for (method, endpoint), series in self.request_series.items():
            request_bytes.add_metric([method, endpoint], series[0])
            request_size.add_metric([method, endpoint], self._cumulative(series), series[0])

        response_bytes = CounterMetricFamily(
            f"{prefix}_response_bytes",
            "HTTP response bytes on the wire, interim 1xx responses included.",
            labels=["method", "endpoint", "status"],
        )
        response_size = HistogramMetricFamily(
            f"{prefix}_response_size_bytes",
            "Size of HTTP responses on the wire, in bytes.",
            labels=["method", "endpoint", "status"],
        )
        for (method, endpoint, status), series in self.response_series.items():
            labels = [method, endpoint, str(status)]
            response_bytes.add_metric(labels, series[0])
            response_size.add_metric(labels, self._cumulative(series), series[0])

        bandwidth = CounterMetricFamily(
            f"{prefix}_bandwidth_bytes",
            "HTTP bytes by direction: inbound are requests, outbound are responses.",
            labels=["direction"],
        )
        bandwidth.add_metric(["inbound"], self.inbound_bytes)
        bandwidth.add_metric(["outbound"], self.outbound_bytes)
        requests = CounterMetricFamily(f"{prefix}_requests", "HTTP requests seen.", self.request_count)
        transactions = CounterMetricFamily(
            "netmon_http_transactions",
            "HTTP transactions by outcome: complete, incomplete (cut by a gap, reset or end of capture), "
            "no_response, no_request (the request was not captured).",
            labels=["outcome"],
        )
        for outcome, count in self.outcomes.items():
            transactions.add_metric([outcome], count)
        request_avg = GaugeMetricFamily(
            f"{prefix}_request_size_bytes_avg",
            "Mean HTTP request size in bytes since start.",
            self.inbound_bytes / self.request_count if self.request_count else 0.0,
        )
        response_avg = GaugeMetricFamily(
            f"{prefix}_response_size_bytes_avg",
            "Mean HTTP response size in bytes since start.",
            self.outbound_bytes / self.response_count if self.response_count else 0.0,
        )
        yield from (request_bytes, response_bytes, request_size, response_size, bandwidth, requests,
                    transactions, request_avg, response_avg)

    def _cumulative(self, series):
        total = 0
        cumulative = []
        for label, count in zip(self.bucket_labels, series[1:]):
            total += count
            cumulative.append((label, total))
        return cumulative


class HealthCollector:
    """netmon's own ``netmon_*`` metrics, read from a pipeline at scrape time."""

    def __init__(self, pipeline, label_policy):
        self.pipeline = pipeline
        self.label_policy = label_policy

    def collect(self):
        pipeline = self.pipeline
        table = pipeline.table
        policy = self.label_policy

        yield _counter("netmon_packets_read", "Packets read from the capture source.", pipeline.packets)
        yield _counter("netmon_bytes_read", "Bytes read from the capture source, as on the wire.", pipeline.wire_bytes)
        yield _counter(
            "netmon_packets_skipped",
            "Packets netmon read but could not use, by reason.",
            None,
            ["reason"],
            [((reason,), table.skipped.get(reason, 0)) for reason in SKIP_REASONS],
        )
        yield _counter(
            "netmon_tso_packets",
            "Frames captured before segmentation offload (IP length 0), decoded from the captured length.",
            pipeline.tso_packets,
        )

        directions = (("inbound", table.inbound), ("outbound", table.outbound))
        yield _counter(
            "netmon_tcp_payload_bytes",
            "TCP payload bytes proven by sequence numbers, lost bytes included, retransmissions once.",
            None,
            ["direction"],
            [((name, ), counters.payload) for name, counters in directions],
        )
        yield _counter(
            "netmon_http_message_bytes",
            "TCP payload bytes attributed to HTTP messages.",
            None,
            ["direction"],
            [((name, ), counters.attributed) for name, counters in directions],
        )
        yield _counter(
            "netmon_unattributed_bytes",
            "TCP payload bytes attributed to no HTTP message, by reason.",
            None,
            ["direction", "reason"],
            [
                ((name, reason), counters.unattributed[reason])
                for name, counters in directions
                for reason in UNATTRIBUTED_REASONS
            ],
        )
        yield _counter(
            "netmon_tcp_retransmitted_bytes",
            "TCP payload bytes seen more than once (retransmissions and overlaps), counted once in payload.",
            None,
            ["direction"],
            [((name, ), counters.retransmitted) for name, counters in directions],
        )
        yield _counter(
            "netmon_tcp_gaps",
            "Holes in TCP sequence space declared lost.",
            None,
            ["direction"],
            [((name, ), counters.gaps) for name, counters in directions],
        )
        yield _counter(
            "netmon_http_parse_errors",
            "HTTP protocol errors, by reason.",
            None,
            ["reason"],
            [((reason,), table.parse_errors.get(reason, 0)) for reason in PARSE_ERROR_REASONS],
        )
        yield _counter("netmon_connections", "TCP connections tracked since start.", table.flows_created)
        yield _counter(
            "netmon_connections_evicted",
            "Connections closed early, by reason: idle (past --idle-timeout), table_full (past "
            "--max-connections), memory (reassembly buffer flushed, holes declared lost, to stay "
            "under --max-memory-mb; the connection stays tracked).",
            None,
            ["reason"],
            [((reason,), table.evicted.get(reason, 0)) for reason in EVICTION_REASONS],
        )
        yield _counter(
            "netmon_http_unmatched_evicted",
            "Requests or responses given up on because too many were waiting for a partner.",
            table.unmatched_evicted,
        )
        yield _counter(
            "netmon_endpoint_overflow",
            "Requests labelled with the overflow endpoint because the distinct endpoint limit was reached.",
            policy.mapper.overflow_total,
        )
        yield _counter(
            "netmon_method_other",
            "Requests whose method is outside the standard set, labelled OTHER.",
            policy.other_methods,
        )
        tracked = GaugeMetricFamily("netmon_connections_tracked", "TCP connections currently tracked.")
        tracked.add_metric([], len(table.flows))
        yield tracked
        buffered = GaugeMetricFamily(
            "netmon_reassembly_buffer_bytes", "Bytes held in out-of-order reassembly buffers."
        )
        buffered.add_metric([], table.buffered)
        yield buffered


def _counter(name, documentation, value, labels=None, samples=()):
    family = CounterMetricFamily(name, documentation, labels=labels)
    if labels is None:
        family.add_metric([], value)
    else:
        for label_values, sample in samples:
            family.add_metric(list(label_values), sample)
    return family


def new_registry():
    return CollectorRegistry(auto_describe=False)
