"""Endpoint labels on whole captures: ids collapse into templates, garbage stays bounded."""

import random
import struct
import subprocess
import sys
from pathlib import Path

from corpus import conservation_problems, parse_exposition

ROOT = Path(__file__).resolve().parent.parent
LINKTYPE_RAW = 101
CLIENT = bytes([10, 0, 0, 1])
SERVER = bytes([10, 0, 0, 2])
PORT = 8080


def tcp_packet(src, dst, sport, dport, seq, ack, flags, payload=b""):
    """Build a raw IPv4/TCP packet; checksums are left zero (netmon does not check them)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 6, 0, src, dst)
    return ip + tcp + payload


def write_conversations(path, exchanges, per_connection=100):
    """Write (request, response) byte pairs as keep-alive connections to a pcap."""
    records = []
    ts = 1_700_000_000.0

    def add(packet):
        nonlocal ts
        ts += 0.0001
        records.append(struct.pack("<IIII", int(ts), int(ts % 1 * 1e6), len(packet), len(packet)) + packet)

    for start in range(0, len(exchanges), per_connection):
        sport = 20000 + start // per_connection
        client_seq, server_seq = 1000, 5000
        add(tcp_packet(CLIENT, SERVER, sport, PORT, client_seq, 0, 0x02))
        add(tcp_packet(SERVER, CLIENT, PORT, sport, server_seq, client_seq + 1, 0x12))
        client_seq += 1
        server_seq += 1
        for request, response in exchanges[start:start + per_connection]:
            add(tcp_packet(CLIENT, SERVER, sport, PORT, client_seq, server_seq, 0x18, request))
            client_seq += len(request)
            add(tcp_packet(SERVER, CLIENT, PORT, sport, server_seq, client_seq, 0x18, response))
            server_seq += len(response)
        add(tcp_packet(CLIENT, SERVER, sport, PORT, client_seq, server_seq, 0x11))
        add(tcp_packet(SERVER, CLIENT, PORT, sport, server_seq, client_seq + 1, 0x11))
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW)
    path.write_bytes(header + b"".join(records))


def exchange(method, target, status, body=b""):
    request = f"{method} {target} HTTP/1.1\r\nHost: scheduler:8080\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    response_body = b'{"ok":true}'
    response = (
        f"HTTP/1.1 {status} X\r\nContent-Length: {len(response_body)}\r\n\r\n".encode() + response_body
    )
    return request, response


def analyze_prometheus(capture, *args):
    result = subprocess.run(
        [sys.executable, "-m", "netmon", "analyze", str(capture), "--port", str(PORT), "--format", "prometheus", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return parse_exposition(result.stdout)


def series(samples, name):
    return {labels: value for (sample_name, labels), value in samples.items() if sample_name == name}


def test_node_ids_collapse_into_template(tmp_path):
    rng = random.Random(7)
    node_ids = rng.sample(range(10**6, 10**7), 10_000)
    exchanges = [exchange("POST", f"/nodes/{node}/heartbeat", 200, b'{"load":0.5}') for node in node_ids]
    capture = tmp_path / "heartbeats.pcap"
    write_conversations(capture, exchanges)

    samples = analyze_prometheus(capture, "--route", "/nodes/{id}/heartbeat")
    assert conservation_problems(samples) == []

    request_series = series(samples, "scheduler_http_request_bytes_total")
    expected_label = frozenset({("method", "POST"), ("endpoint", "/nodes/{id}/heartbeat")})
    assert list(request_series) == [expected_label]
    assert request_series[expected_label] == sum(len(request) for request, _ in exchanges)
    response_series = series(samples, "scheduler_http_response_bytes_total")
    assert len(response_series) == 1
    assert sum(response_series.values()) == sum(len(response) for _, response in exchanges)
    assert samples[("scheduler_http_requests_total", frozenset())] == 10_000
    assert samples[("netmon_endpoint_overflow_total", frozenset())] == 0


def test_node_ids_collapse_by_heuristic(tmp_path):
    exchanges = [exchange("POST", f"/nodes/{node}/heartbeat", 200) for node in range(5_000)]
    capture = tmp_path / "heartbeats.pcap"
    write_conversations(capture, exchanges)

    samples = analyze_prometheus(capture)
    request_series = series(samples, "scheduler_http_request_bytes_total")
    assert list(request_series) == [frozenset({("method", "POST"), ("endpoint", "/nodes/{id}/heartbeat")})]


def test_garbage_paths_stay_under_limit(tmp_path):
    rng = random.Random(11)
    alphabet = "abcdefghijklmnopqrstuvwxyz-_.~"
    exchanges = []
    for _ in range(5_000):
        depth = rng.randint(1, 4)
        path = "/" + "/".join("".join(rng.choice(alphabet) for _ in range(rng.randint(3, 12))) for _ in range(depth))
        method = rng.choice(["GET", "POST", "PUT", "BREW", "get"])
        exchanges.append(exchange(method, path + "?q=" + str(rng.random()), rng.choice([200, 404, 500])))
    capture = tmp_path / "garbage.pcap"
    write_conversations(capture, exchanges)

    samples = analyze_prometheus(capture, "--max-endpoints", "50")
    assert conservation_problems(samples) == []
    request_series = series(samples, "scheduler_http_request_bytes_total")
    endpoints = {dict(labels)["endpoint"] for labels in request_series}
    methods = {dict(labels)["method"] for labels in request_series}
    # 50 labels from unmatched paths plus the overflow label.
    assert len(endpoints) <= 51
    assert "/{other}" in endpoints
    assert methods == {"GET", "POST", "PUT", "OTHER"}
    # Grouped, not lost: the series add up to every byte sent.
    assert sum(request_series.values()) == sum(len(request) for request, _ in exchanges)
    response_series = series(samples, "scheduler_http_response_bytes_total")
    assert sum(response_series.values()) == sum(len(response) for _, response in exchanges)
    count_series = series(samples, "scheduler_http_request_size_bytes_count")
    assert sum(count_series.values()) == 5_000
    overflow = samples[("netmon_endpoint_overflow_total", frozenset())]
    assert overflow == sum(
        value for labels, value in count_series.items() if dict(labels)["endpoint"] == "/{other}"
    )
    sent_methods = [request.split(b" ", 1)[0] for request, _ in exchanges]
    nonstandard = sum(1 for method in sent_methods if method not in (b"GET", b"POST", b"PUT"))
    assert samples[("netmon_method_other_total", frozenset())] == nonstandard
