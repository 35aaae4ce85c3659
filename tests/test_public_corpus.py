"""netmon on the public captures beside the project, checked against tshark's truth."""

import json

import pytest

import corpus

pytestmark = pytest.mark.skipif(not corpus.CORPUS.exists(), reason=f"public captures not found at {corpus.CORPUS}")

ENTRIES = corpus.load_manifest() if corpus.CORPUS.exists() else []
# Files netmon must reject with exit status 1 and a message (unsupported link types).
EXPECTED_EXIT = {
    "tcpdump/arcnet-rfc1201-arp-icmp-http.pcap": 1,
    "zeek/nflog-http.pcap": 0,
    "suricata-verify/decode-chdlc-01/hdlc-http_1tx.pcap": 0,
}


@pytest.fixture(scope="module")
def runs():
    """Run netmon once per capture in both jsonl and prometheus formats."""
    results = {}
    for entry in ENTRIES:
        path = corpus.CORPUS / entry["file"]
        ports = corpus.ports_of(entry)
        jsonl = corpus.run_netmon(path, ports, "jsonl")
        exposition = corpus.run_netmon(path, ports, "prometheus")
        results[entry["file"]] = (jsonl, exposition)
    return results


@pytest.mark.parametrize("name", [entry["file"] for entry in ENTRIES])
def test_capture_reads_without_crash(runs, name):
    jsonl, exposition = runs[name]
    assert "Traceback" not in jsonl.stderr
    assert "Traceback" not in exposition.stderr
    assert jsonl.returncode == EXPECTED_EXIT.get(name, 0), jsonl.stderr


@pytest.mark.parametrize("name", [entry["file"] for entry in ENTRIES])
def test_capture_conserves_bytes(runs, name):
    samples = corpus.parse_exposition(runs[name][1].stdout)
    assert corpus.conservation_problems(samples) == []
    for direction in ("inbound", "outbound"):
        bandwidth = samples[("scheduler_http_bandwidth_bytes_total", frozenset({("direction", direction)}))]
        attributed = samples[("netmon_http_message_bytes_total", frozenset({("direction", direction)}))]
        assert bandwidth == attributed, direction


def test_clean_truth_lines_match(runs):
    expectations = corpus.load_expectations()
    failures = []
    used_expectations = set()
    for entry in ENTRIES:
        name = entry["file"]
        transactions = [json.loads(line) for line in runs[name][0].stdout.splitlines() if line.strip()]
        for line, _, problems in corpus.compare(corpus.load_truth(name), transactions):
            if not corpus.is_clean(line) or not problems:
                continue
            key = corpus.line_id(name, line)
            if key in expectations:
                used_expectations.add(key)
                continue
            failures.append(f"{key}: {', '.join(problems)}")
    assert failures == []
    # An expectation that no longer fails should be removed from the file.
    assert set(expectations) == used_expectations
