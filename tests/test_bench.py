"""Smoke tests of scripts/bench and an exactness test of `netmon live --workers 2`.

The offline test times the bundled 2,000-request capture for one round and
checks that the harness prints its ratios and passes its totals check. The
fan-out test runs nginx and the paced client of scripts/bench on the loopback
(127.0.0.1 only) and compares the merged /metrics with the client's counts.
No test asserts a timing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from live_support import free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench"
MIXED = ROOT / "pcaps" / "scheduler-mixed.pcap"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="packet capture needs root")


def run_bench(*arguments, timeout=120):
    return subprocess.run([sys.executable, str(BENCH), *arguments], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.skipif(shutil.which("tshark") is None or shutil.which("tcpdump") is None,
                    reason="tshark and tcpdump are needed (scripts/setup installs them)")
def test_offline_smoke(tmp_path):
    results = tmp_path / "BENCHMARKS.md"
    completed = run_bench("offline", "--capture", str(MIXED), "--rounds", "1", "--work-dir", str(tmp_path),
                          "--results-file", str(results), "--micro-number", "200")

    assert completed.returncode == 0, completed.stderr
    output = completed.stdout
    assert "totals check: netmon's bandwidth and request totals equal the client's truth" in output
    for ratio in ("netmon/tshark", "netmon/tcpdump", "netmon/reference-loop"):
        assert f"ratio {ratio}:" in output
    assert "labels + observe:" in output
    assert "endpoint, cache miss:" in output
    assert "## Offline" in results.read_text()


def test_offline_totals_mismatch_fails(tmp_path):
    capture = tmp_path / "mixed.pcap"
    shutil.copy(MIXED, capture)
    truth = json.loads(MIXED.with_suffix(".truth.json").read_text())
    truth["totals"]["requests"] += 1
    capture.with_suffix(".truth.json").write_text(json.dumps(truth))

    completed = run_bench("offline", "--capture", str(capture), "--rounds", "1", "--skip-tshark",
                          "--skip-micro", "--work-dir", str(tmp_path), "--results-file", "")

    assert completed.returncode == 1
    assert "totals check: FAILED: requests: netmon 2000.0, client 2001" in completed.stdout


def test_reference_loop_counts_packets():
    completed = run_bench("reference-loop", str(MIXED))

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("16488 packets, 510 flows")


@needs_root
@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is needed (apt-get install nginx-light)")
def test_live_two_workers_exact(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    server_port, metrics_port = free_port(), free_port()
    directory = tmp_path / "nginx"
    directory.mkdir()
    bench = _load_bench_module()
    config = directory / "nginx.conf"
    config.write_text(bench.NGINX_CONFIG.format(dir=directory, address="127.0.0.1", port=server_port,
                                                jobs='[{"id":1}]'))
    nginx = subprocess.Popen([shutil.which("nginx"), "-c", str(config), "-e", str(directory / "error.log")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    agent = subprocess.Popen(
        [sys.executable, "-m", "netmon", "live", "--iface", "lo", "--port", str(server_port),
         "--metrics-listen", "127.0.0.1", "--metrics-port", str(metrics_port), "--workers", "2",
         "--no-drop-privileges"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        _wait_for_line(agent, "2 workers joined in fan-out group")
        load = run_bench("load", "--host", "127.0.0.1", "--port", str(server_port), "--rate", "400",
                         "--requests", "600", "--processes", "2", "--connections", "8", "--time-limit", "20")
        assert load.returncode == 0, load.stderr
        counts = json.loads(load.stdout)
        time.sleep(1.5)
        samples = bench.parse_exposition(
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        )
    finally:
        agent.send_signal(signal.SIGTERM)
        agent_log = agent.communicate(timeout=30)[1]
        nginx.send_signal(signal.SIGQUIT)
        nginx.communicate(timeout=10)

    assert counts["answered"] == 600
    totals = bench.http_totals(samples)
    assert totals["requests"] == counts["sent"]
    assert totals["request_bytes"] == counts["request_bytes"]
    assert totals["response_bytes"] == counts["response_bytes"]
    assert samples["netmon_capture_packets_dropped_total"] == 0
    assert samples['netmon_http_transactions_total{outcome="complete"}'] == 600
    assert agent.returncode == 0, agent_log


def _load_bench_module():
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("bench", str(BENCH))
    spec = importlib.util.spec_from_loader("bench", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _wait_for_line(process, text, timeout=20.0):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return
    raise AssertionError(f"{text!r} not logged; output: {''.join(lines)}")
