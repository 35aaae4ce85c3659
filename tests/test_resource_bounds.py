"""Resource bounds under floods, endless bodies, huge heads, unanswered pipelines and memory pressure.

Each scenario builds raw IPv4 packets with struct and feeds them to the
in-process pipeline, and nothing is sent on a network. The tests assert the
bounds that the flow table and the parsers promise: flows <= max_flows,
reassembly buffer <= max_total_buffer, head buffer <= MAX_HEAD_BYTES and
pending requests <= max_pending. Where a scenario keeps few objects alive,
they also assert a peak of traced memory. They check the counters that
record what happened, and byte conservation.

The default run uses reduced scales, and NETMON_LONG=1 runs the full ones.
Run this file as a script to measure time and traced memory of every
scenario at full scale (the figures in docs/robustness.md):

    python3 tests/test_resource_bounds.py [TEXT]

TEXT selects the scenarios whose name contains it.
"""

import os
import struct
import sys
import time
import tracemalloc
from dataclasses import dataclass

import pytest

from netmon.http import MAX_HEAD_BYTES
from netmon.pipeline import Pipeline
from netmon.stream import Limits

LONG = os.environ.get("NETMON_LONG") == "1"

LINKTYPE_RAW = 101
SYN, FIN, PSH, ACK = 0x02, 0x01, 0x08, 0x10
SERVER_IP = bytes((10, 9, 0, 1))
SERVER_PORT = 80
# IPv4 headers with the client address as an integer: as source, and as destination.
_IPV4_HEADER = struct.Struct("!BBHHHBBHI4s")
_IPV4_HEADER_TO = struct.Struct("!BBHHHBBH4sI")
_TCP_HEADER = struct.Struct("!HHIIBBHHH")
MAX_PAYLOAD = 65495  # largest TCP payload an IPv4 total length of 65535 allows
T0 = 1_700_000_000.0

# Full scales, and the reduced ones of the default run.
SCALES = {
    "syn_flood": (1_000_000, 100_000),
    "half_open": (1_000_000, 100_000),
    "endless_chunked_bytes": (1_000_000_000, 1_000_000_000),
    "header_line_bytes": (10 * 1024 * 1024, 10 * 1024 * 1024),
    "pipelined_requests": (100_000, 100_000),
}


def scale(name):
    full, reduced = SCALES[name]
    return full if LONG else reduced


def client_address(index):
    """Return a distinct (IPv4 address as int, port) for each index: 64,000 ports per address."""
    return 0x0A000000 + index // 64_000, 1024 + index % 64_000


def to_server(client_ip, client_port, seq, ack, flags, payload=b""):
    ip_header = _IPV4_HEADER.pack(0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0, client_ip, SERVER_IP)
    tcp_header = _TCP_HEADER.pack(client_port, SERVER_PORT, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0)
    return ip_header + tcp_header + payload


def to_client(client_ip, client_port, seq, ack, flags, payload=b""):
    ip_header = _IPV4_HEADER_TO.pack(0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0, SERVER_IP, client_ip)
    tcp_header = _TCP_HEADER.pack(SERVER_PORT, client_port, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0)
    return ip_header + tcp_header + payload


class CountingSink:
    """Transaction sink that keeps counts instead of transactions, so that the sink itself adds no memory."""

    def __init__(self):
        self.transactions = 0
        self.no_response = 0
        self.no_request = 0
        self.incomplete = 0
        self.request_bytes = 0
        self.response_bytes = 0
        self.statuses = {}
        self.last = None

    def __call__(self, transaction):
        self.transactions += 1
        request, response = transaction.request, transaction.response
        if response is None:
            self.no_response += 1
        else:
            self.response_bytes += response.wire_bytes
            self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
        if request is None:
            self.no_request += 1
        else:
            self.request_bytes += request.wire_bytes
        if not transaction.complete:
            self.incomplete += 1
        self.last = (
            request and (request.method, request.target, request.wire_bytes, request.complete),
            response and (response.status, response.wire_bytes, response.complete),
        )


@dataclass
class Outcome:
    """What a scenario left behind: the pipeline, the sink and the maxima observed while feeding it."""

    pipeline: Pipeline
    sink: CountingSink
    max_flows_seen: int = 0
    max_buffered_seen: int = 0
    max_head_seen: int = 0
    max_pending_seen: int = 0
    packets: int = 0
    transactions_before_finish: int = 0
    flows_before_finish: int = 0
    # Fields that one scenario sets: bytes it sent, and for huge_header_line
    # the request and response sizes of the follow-up transaction.
    chunked_body_bytes: int = 0
    big_request_bytes: int = 0
    too_large_bytes: int = 0
    follow_up: tuple = ()
    request_bytes: int = 0
    # Wall-clock seconds of the scenario's main phase, for measure() only. No test reads it.
    phase_seconds: float = 0.0
    phase_packets: int = 0


def assert_conserved(table):
    for name, counters in (("inbound", table.inbound), ("outbound", table.outbound)):
        unattributed = sum(counters.unattributed.values())
        assert counters.payload == counters.attributed + unattributed, (
            f"{name}: payload {counters.payload} != attributed {counters.attributed} + "
            f"unattributed {dict(counters.unattributed)}"
        )


# -- scenarios -------------------------------------------------------------------


def syn_flood(count, limits):
    """Send one SYN from each of `count` distinct client addresses and ports, 100,000 per second."""
    sink = CountingSink()
    pipeline = Pipeline([SERVER_PORT], sink, limits)
    outcome = Outcome(pipeline, sink)
    flows = pipeline.table.flows
    max_flows = 0
    for index in range(count):
        client_ip, client_port = client_address(index)
        frame = to_server(client_ip, client_port, index * 7919, 0, SYN)
        pipeline.packet(T0 + index * 1e-5, LINKTYPE_RAW, frame, len(frame))
        if len(flows) > max_flows:
            max_flows = len(flows)
    outcome.max_flows_seen = max_flows
    outcome.packets = count
    pipeline.finish()
    return outcome


HALF_OPEN_HEAD = b"GET /nodes/4711/heartbeat HTTP/1.1\r\nHost: scheduler.example\r\nUser-Agent: flood\r\n"


def half_open(count, limits):
    """Open `count` connections (SYN, SYN-ACK) that each send the first part of a request head and stop."""
    sink = CountingSink()
    pipeline = Pipeline([SERVER_PORT], sink, limits)
    outcome = Outcome(pipeline, sink)
    table = pipeline.table
    max_flows = max_head = 0
    ts = T0
    for index in range(count):
        client_ip, client_port = client_address(index)
        isn = index * 7919
        for frame in (
            to_server(client_ip, client_port, isn, 0, SYN),
            to_client(client_ip, client_port, 5000, isn + 1, SYN | ACK),
            to_server(client_ip, client_port, isn + 1, 5001, PSH | ACK, HALF_OPEN_HEAD),
        ):
            pipeline.packet(ts, LINKTYPE_RAW, frame, len(frame))
            ts += 1e-5
        if len(table.flows) > max_flows:
            max_flows = len(table.flows)
    outcome.max_flows_seen = max_flows
    # Every flow buffers the same head, so one sample gives the largest head buffer.
    for flow in table.flows.values():
        head = flow.requests.parser.head
        max_head = max(max_head, len(head) if head else 0)
        break
    outcome.max_head_seen = max_head
    outcome.packets = 3 * count
    pipeline.finish()
    return outcome


CHUNK_DATA = 65480
# One segment carries one whole chunk: size line, data and CRLF.
CHUNK_SEGMENT = b"%x\r\n" % CHUNK_DATA + b"c" * CHUNK_DATA + b"\r\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n"
DOWNLOAD_REQUEST = b"GET /jobs/4711/log?follow=1 HTTP/1.1\r\nHost: scheduler.example\r\n\r\n"


def endless_chunked(body_bytes, limits):
    """Send one request and a chunked response of at least `body_bytes` body bytes whose last chunk never comes."""
    sink = CountingSink()
    pipeline = Pipeline([SERVER_PORT], sink, limits)
    outcome = Outcome(pipeline, sink)
    table = pipeline.table
    client_ip, client_port = client_address(0)
    client_isn, server_isn = 1000, 5000
    ts = T0

    request_end = client_isn + 1 + len(DOWNLOAD_REQUEST)
    for frame in (
        to_server(client_ip, client_port, client_isn, 0, SYN),
        to_client(client_ip, client_port, server_isn, client_isn + 1, SYN | ACK),
        to_server(client_ip, client_port, client_isn + 1, server_isn + 1, PSH | ACK, DOWNLOAD_REQUEST),
        to_client(client_ip, client_port, server_isn + 1, request_end, PSH | ACK, CHUNKED_HEAD),
    ):
        pipeline.packet(ts, LINKTYPE_RAW, frame, len(frame))
        ts += 1e-4

    seq = server_isn + 1 + len(CHUNKED_HEAD)
    segments = -(-body_bytes // len(CHUNK_SEGMENT))
    max_buffered = 0
    for _ in range(segments):
        frame = to_client(client_ip, client_port, seq, request_end, ACK, CHUNK_SEGMENT)
        pipeline.packet(ts, LINKTYPE_RAW, frame, len(frame))
        seq += len(CHUNK_SEGMENT)
        ts += 5e-4  # about 1 Gbit/s
        max_buffered = max(max_buffered, table.buffered)

    outcome.max_buffered_seen = max_buffered
    outcome.packets = 4 + segments
    outcome.chunked_body_bytes = segments * len(CHUNK_SEGMENT)
    outcome.transactions_before_finish = sink.transactions
    pipeline.finish()
    return outcome


def huge_header_line(line_bytes, limits):
    """Send a request with a header line of `line_bytes` bytes, then a normal one.

    The server responds 431 to the first and 200 to the second.
    """
    sink = CountingSink()
    pipeline = Pipeline([SERVER_PORT], sink, limits)
    outcome = Outcome(pipeline, sink)
    table = pipeline.table
    client_ip, client_port = client_address(0)
    key = None
    client_seq, server_seq = 1001, 5001
    ts = T0

    def send(frame):
        nonlocal ts
        pipeline.packet(ts, LINKTYPE_RAW, frame, len(frame))
        ts += 1e-4

    send(to_server(client_ip, client_port, 1000, 0, SYN))
    send(to_client(client_ip, client_port, 5000, 1001, SYN | ACK))
    key = next(iter(table.flows))
    parser = table.flows[key].requests.parser
    start = b"GET /big HTTP/1.1\r\nHost: scheduler.example\r\nX-Fill: "
    filler = b"a" * MAX_PAYLOAD
    end = b"\r\n\r\n"
    sent = 0
    max_head = 0
    pieces = [start]
    remaining = line_bytes
    while remaining > 0:
        size = min(remaining, MAX_PAYLOAD)
        pieces.append(filler[:size])
        remaining -= size
    pieces.append(end)
    for piece in pieces:
        send(to_server(client_ip, client_port, client_seq, server_seq, ACK, piece))
        client_seq += len(piece)
        sent += len(piece)
        head = parser.head
        max_head = max(max_head, len(head) if head else 0)
    outcome.big_request_bytes = sent
    too_large = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n"
    send(to_client(client_ip, client_port, server_seq, client_seq, PSH | ACK, too_large))
    server_seq += len(too_large)
    follow_up = b"GET /next HTTP/1.1\r\nHost: scheduler.example\r\n\r\n"
    send(to_server(client_ip, client_port, client_seq, server_seq, PSH | ACK, follow_up))
    client_seq += len(follow_up)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    send(to_client(client_ip, client_port, server_seq, client_seq, PSH | ACK, ok))
    outcome.follow_up = (len(follow_up), len(ok))
    outcome.too_large_bytes = len(too_large)
    outcome.max_head_seen = max_head
    outcome.packets = len(pieces) + 5
    pipeline.finish()
    return outcome


def pipelined_without_response(count, limits):
    """Send `count` pipelined requests on one connection, which the server only acknowledges."""
    sink = CountingSink()
    pipeline = Pipeline([SERVER_PORT], sink, limits)
    outcome = Outcome(pipeline, sink)
    table = pipeline.table
    client_ip, client_port = client_address(0)
    ts = T0
    pipeline.packet(ts, LINKTYPE_RAW, to_server(client_ip, client_port, 1000, 0, SYN), 40)
    pipeline.packet(ts, LINKTYPE_RAW, to_client(client_ip, client_port, 5000, 1001, SYN | ACK), 40)
    flow = next(iter(table.flows.values()))
    seq = 1001
    buffer = bytearray()
    request_bytes = 0
    max_pending = 0
    packets = 2

    def flush():
        nonlocal seq, ts, packets, max_pending
        frame = to_server(client_ip, client_port, seq, 5001, PSH | ACK, bytes(buffer))
        pipeline.packet(ts, LINKTYPE_RAW, frame, len(frame))
        seq += len(buffer)
        ts += 1e-3
        ack = to_client(client_ip, client_port, 5001, seq, ACK)
        pipeline.packet(ts, LINKTYPE_RAW, ack, len(ack))
        packets += 2
        buffer.clear()
        max_pending = max(max_pending, len(flow.pending))

    for index in range(count):
        request = b"GET /jobs/%d HTTP/1.1\r\nHost: scheduler.example\r\n\r\n" % index
        request_bytes += len(request)
        if len(buffer) + len(request) > MAX_PAYLOAD:
            flush()
        buffer += request
    flush()
    outcome.request_bytes = request_bytes
    outcome.max_pending_seen = max_pending
    outcome.packets = packets
    pipeline.finish()
    return outcome


def memory_pressure(idle, limits, segments=2000):
    """Open `idle` keep-alive connections with one transaction each, then send sparse out-of-order data.

    The last connection loses every other 1000-byte segment, so each of its
    `segments` segments is buffered behind a hole.
    """
    sink = CountingSink()
    pipeline = Pipeline([SERVER_PORT], sink, limits)
    outcome = Outcome(pipeline, sink)
    table = pipeline.table
    ts = T0

    def send(frame):
        nonlocal ts
        pipeline.packet(ts, LINKTYPE_RAW, frame, len(frame))
        ts += 1e-5

    request = b"GET /jobs HTTP/1.1\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    for index in range(idle):
        client_ip, client_port = client_address(index)
        send(to_server(client_ip, client_port, 1000, 0, SYN))
        send(to_client(client_ip, client_port, 5000, 1001, SYN | ACK))
        send(to_server(client_ip, client_port, 1001, 5001, PSH | ACK, request))
        send(to_client(client_ip, client_port, 5001, 1001 + len(request), PSH | ACK, response))

    client_ip, client_port = client_address(idle)
    send(to_server(client_ip, client_port, 1000, 0, SYN))
    max_buffered = 0
    started = time.perf_counter()
    for index in range(segments):
        send(to_server(client_ip, client_port, 1001 + 1000 + 2000 * index, 5001, ACK, b"z" * 1000))
        max_buffered = max(max_buffered, table.buffered)
    outcome.phase_seconds = time.perf_counter() - started
    outcome.phase_packets = segments
    outcome.max_buffered_seen = max_buffered
    outcome.flows_before_finish = len(table.flows)
    outcome.transactions_before_finish = sink.transactions
    outcome.packets = 4 * idle + 1 + segments
    pipeline.finish()
    return outcome


def traced(scenario, *args):
    """Run a scenario under tracemalloc and return (outcome, peak traced bytes)."""
    tracemalloc.start()
    try:
        outcome = scenario(*args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return outcome, peak


# -- tests -----------------------------------------------------------------------


def test_syn_flood_bounded_by_max_flows():
    count = scale("syn_flood")
    limits = Limits(max_flows=count // 10)
    outcome = syn_flood(count, limits)
    table = outcome.pipeline.table

    assert outcome.max_flows_seen == limits.max_flows
    assert table.flows_created == count
    assert table.evicted["table_full"] == count - limits.max_flows
    assert table.evicted["idle"] == 0
    assert not table.flows
    assert outcome.sink.transactions == 0
    assert table.inbound.payload == 0
    assert table.buffered == 0
    assert_conserved(table)


def test_half_open_heads_bounded():
    count = scale("half_open")
    limits = Limits(max_flows=count // 4)
    outcome = half_open(count, limits)
    table = outcome.pipeline.table
    sink = outcome.sink

    assert outcome.max_flows_seen == limits.max_flows
    assert outcome.max_head_seen == len(HALF_OPEN_HEAD)
    assert table.evicted["table_full"] == count - limits.max_flows
    # Each connection's cut head proves a request start, so each becomes a
    # request without response, whether its flow was evicted or ended with the capture.
    assert sink.transactions == count
    assert sink.no_response == count
    assert sink.incomplete == count
    assert sink.request_bytes == count * len(HALF_OPEN_HEAD)
    assert table.inbound.payload == count * len(HALF_OPEN_HEAD)
    assert table.inbound.attributed == table.inbound.payload
    assert sum(table.parse_errors.values()) == 0
    assert_conserved(table)


def test_endless_chunked_body_constant_memory():
    body_bytes = scale("endless_chunked_bytes")
    outcome, peak = traced(endless_chunked, body_bytes, Limits())
    table = outcome.pipeline.table
    sink = outcome.sink

    # Body bytes are counted and never stored, so the peak is a few frames and the flow state.
    assert peak < 4 * 1024 * 1024, f"traced memory peak {peak} bytes"
    assert outcome.max_buffered_seen == 0
    assert outcome.transactions_before_finish == 0
    assert sink.transactions == 1
    (method, target, request_bytes, request_complete), (status, response_bytes, response_complete) = sink.last
    assert (method, target, request_bytes, request_complete) == ("GET", "/jobs/4711/log?follow=1", len(DOWNLOAD_REQUEST), True)
    assert status == 200
    assert response_bytes == len(CHUNKED_HEAD) + outcome.chunked_body_bytes
    assert response_bytes >= body_bytes
    assert not response_complete
    assert table.outbound.payload == response_bytes
    assert sum(table.parse_errors.values()) == 0
    assert_conserved(table)


def test_huge_header_line_bounded():
    line_bytes = scale("header_line_bytes")
    outcome, peak = traced(huge_header_line, line_bytes, Limits())
    table = outcome.pipeline.table
    sink = outcome.sink

    assert outcome.max_head_seen <= MAX_HEAD_BYTES
    assert peak < 4 * 1024 * 1024, f"traced memory peak {peak} bytes"
    assert table.parse_errors["head_too_large"] == 1
    # The oversized request never became a message: its bytes are not_http,
    # so the 431 has no request, and the next request is paired normally.
    assert table.inbound.unattributed["not_http"] == outcome.big_request_bytes
    assert sink.transactions == 2
    assert sink.no_request == 1
    assert sink.statuses == {431: 1, 200: 1}
    follow_up_request, follow_up_response = outcome.follow_up
    assert sink.last == (("GET", "/next", follow_up_request, True), (200, follow_up_response, True))
    assert table.inbound.attributed == follow_up_request
    assert table.outbound.attributed == outcome.too_large_bytes + follow_up_response
    assert_conserved(table)


def test_pipelined_requests_without_response_bounded():
    count = scale("pipelined_requests")
    limits = Limits()
    # Not traced, because tracemalloc makes this scenario about seven times slower.
    outcome = pipelined_without_response(count, limits)
    table = outcome.pipeline.table
    sink = outcome.sink

    assert outcome.max_pending_seen == limits.max_pending
    assert table.unmatched_evicted == count - limits.max_pending
    assert sink.transactions == count
    assert sink.no_response == count
    assert sink.request_bytes == outcome.request_bytes
    assert table.inbound.payload == outcome.request_bytes
    assert table.inbound.attributed == outcome.request_bytes
    assert table.outbound.payload == 0
    assert_conserved(table)


def test_buffer_released_when_fin_closes_stream():
    sink = CountingSink()
    pipeline = Pipeline([SERVER_PORT], sink, Limits(max_total_buffer=100))
    table = pipeline.table
    client_ip, client_port = client_address(0)
    request = b"GET /a HTTP/1.1\r\n\r\n"
    stray = b"x" * 60
    frames = [
        to_server(client_ip, client_port, 1000, 0, SYN),
        to_client(client_ip, client_port, 5000, 1001, SYN | ACK),
        # 60 bytes past a hole, then a FIN that ends the stream before them.
        to_server(client_ip, client_port, 1001 + len(request) + 100, 5001, ACK, stray),
        to_server(client_ip, client_port, 1001, 5001, PSH | ACK, request),
        to_server(client_ip, client_port, 1001 + len(request), 5001, FIN | ACK),
    ]
    for index, frame in enumerate(frames):
        pipeline.packet(T0 + index * 1e-3, LINKTYPE_RAW, frame, len(frame))

    assert table.buffered == 0
    pipeline.finish()
    assert table.buffered == 0


def test_segment_at_fin_sequence_while_draining():
    sink = CountingSink()
    pipeline = Pipeline([SERVER_PORT], sink, Limits())
    table = pipeline.table
    client_ip, client_port = client_address(0)
    request = b"GET /a HTTP/1.1\r\n\r\n"
    fin_seq = 1001 + len(request)
    frames = [
        to_server(client_ip, client_port, 1000, 0, SYN),
        # The capture shows the FIN first, then 5 bytes at the FIN's sequence
        # number, then the request's second half and, last, its first half.
        to_server(client_ip, client_port, fin_seq, 5001, FIN | ACK),
        to_server(client_ip, client_port, fin_seq, 5001, PSH | ACK, b"xxxxx"),
        to_server(client_ip, client_port, 1011, 5001, PSH | ACK, request[10:]),
        to_server(client_ip, client_port, 1001, 5001, PSH | ACK, request[:10]),
    ]
    for index, frame in enumerate(frames):
        pipeline.packet(T0 + index * 1e-3, LINKTYPE_RAW, frame, len(frame))

    assert table.buffered == 0
    assert table.inbound.payload == len(request)
    assert table.inbound.attributed == len(request)
    assert table.skipped["after_close"] == 1
    pipeline.finish()
    assert table.buffered == 0
    assert sink.last == (("GET", "/a", len(request), True), None)
    assert_conserved(table)


def test_memory_pressure_spares_flows_without_buffer():
    idle = 50
    limits = Limits(max_total_buffer=10_000)
    outcome = memory_pressure(idle, limits, segments=30)
    table = outcome.pipeline.table

    assert outcome.max_buffered_seen <= limits.max_total_buffer
    assert outcome.flows_before_finish == idle + 1
    assert outcome.transactions_before_finish == idle
    assert table.evicted["memory"] > 0
    assert_conserved(table)


# -- measurement -------------------------------------------------------------------


def measure(selected=""):
    """Print time and traced memory peak of each scenario at full scale, as Markdown table rows.

    Only scenarios whose name contains `selected` run.
    """
    runs = [
        ("SYN flood, 1,000,000 clients, max_flows 100,000", syn_flood, 1_000_000, Limits(max_flows=100_000)),
        ("SYN flood, 1,000,000 clients, default limits", syn_flood, 1_000_000, Limits()),
        ("half-open heads, 1,000,000 connections, max_flows 250,000", half_open, 1_000_000, Limits(max_flows=250_000)),
        ("half-open heads, 1,000,000 connections, default limits", half_open, 1_000_000, Limits()),
        ("endless chunked body, 1 GB", endless_chunked, 1_000_000_000, Limits()),
        ("10 MiB header line", huge_header_line, 10 * 1024 * 1024, Limits()),
        ("100,000 pipelined requests, no response", pipelined_without_response, 100_000, Limits()),
        (
            "memory pressure: 2,000 sparse segments beside 1,000 idle connections, max_total_buffer 100 kB",
            memory_pressure,
            1_000,
            Limits(max_total_buffer=100_000),
        ),
        (
            "memory pressure: 2,000 sparse segments beside 100,000 idle connections, max_total_buffer 100 kB",
            memory_pressure,
            100_000,
            Limits(max_total_buffer=100_000),
        ),
    ]
    print("| scenario | packets | seconds | traced peak (MiB) | untraced seconds | untraced µs per packet of the main phase |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, scenario, size, limits in runs:
        if selected not in name:
            continue
        started = time.perf_counter()
        outcome = scenario(size, limits)
        untraced = time.perf_counter() - started
        if outcome.phase_packets:
            per_packet = outcome.phase_seconds / outcome.phase_packets
        else:
            per_packet = untraced / outcome.packets
        started = time.perf_counter()
        outcome, peak = traced(scenario, size, limits)
        seconds = time.perf_counter() - started
        print(
            f"| {name} | {outcome.packets:,} | {seconds:.1f} | {peak / 2**20:.1f} | {untraced:.1f} "
            f"| {per_packet * 1e6:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    measure(" ".join(sys.argv[1:]))
