"""netmon against the bundled scheduler captures, whose truth the client recorded."""

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest

from corpus import conservation_problems, parse_exposition
from netmon.routes import EndpointMapper, load_routes_file

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = sorted((ROOT / "pcaps").glob("scheduler-*.pcap"))
ROUTES_FILE = ROOT / "examples" / "scheduler-routes.toml"


def analyze(capture, *args):
    result = subprocess.run(
        [sys.executable, "-m", "netmon", "analyze", str(capture), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def load_truth(capture):
    with open(capture.with_suffix(".truth.json")) as handle:
        return json.load(handle)


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda path: path.name)
def test_transactions_match_client_truth(capture):
    truth = load_truth(capture)
    output = analyze(capture, "--port", str(truth["port"]), "--format", "jsonl")
    rows = collections.defaultdict(lambda: [0, 0, 0])
    for line in output.splitlines():
        record = json.loads(line)
        assert record["complete"] is True
        row = rows[(record["method"], record["path"], record["status"])]
        row[0] += 1
        row[1] += record["request_bytes"]
        row[2] += record["response_bytes"]
    expected = {
        (item["method"], item["path"], item["status"]): [item["requests"], item["request_bytes"], item["response_bytes"]]
        for item in truth["by_key"]
    }
    assert dict(rows) == expected


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda path: path.name)
def test_metrics_match_client_truth_by_route(capture):
    truth = load_truth(capture)
    exposition = analyze(
        capture, "--port", str(truth["port"]), "--format", "prometheus", "--routes-file", str(ROUTES_FILE)
    )
    samples = parse_exposition(exposition)
    assert conservation_problems(samples) == []

    mapper = EndpointMapper(**load_routes_file(ROUTES_FILE))
    request_bytes = collections.Counter()
    response_bytes = collections.Counter()
    response_counts = collections.Counter()
    for item in truth["transactions"]:
        endpoint = mapper.endpoint(item["path"])
        request_bytes[(item["method"], endpoint)] += item["request_bytes"]
        key = (item["method"], endpoint, str(item["status"]))
        response_bytes[key] += item["response_bytes"]
        response_counts[key] += 1

    measured_requests = {
        (dict(labels)["method"], dict(labels)["endpoint"]): value
        for (name, labels), value in samples.items()
        if name == "scheduler_http_request_bytes_total"
    }
    measured_responses = {
        (dict(labels)["method"], dict(labels)["endpoint"], dict(labels)["status"]): value
        for (name, labels), value in samples.items()
        if name == "scheduler_http_response_bytes_total"
    }
    measured_counts = {
        (dict(labels)["method"], dict(labels)["endpoint"], dict(labels)["status"]): value
        for (name, labels), value in samples.items()
        if name == "scheduler_http_response_size_bytes_count"
    }
    assert measured_requests == dict(request_bytes)
    assert measured_responses == dict(response_bytes)
    assert measured_counts == dict(response_counts)
    assert samples[("scheduler_http_requests_total", frozenset())] == truth["totals"]["requests"]
    inbound = samples[("scheduler_http_bandwidth_bytes_total", frozenset({("direction", "inbound")}))]
    outbound = samples[("scheduler_http_bandwidth_bytes_total", frozenset({("direction", "outbound")}))]
    assert inbound == truth["totals"]["request_bytes"]
    assert outbound == truth["totals"]["response_bytes"]


def test_port_detection_finds_scheduler_port():
    capture = CAPTURES[0]
    truth = load_truth(capture)
    output = analyze(capture)
    assert f"server ports detected: {truth['port']} " in output
    assert f"TOTAL" in output
