"""Steady-state memory of the live agent under many short connections."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpus import parse_exposition
from live_support import free_port

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 5
CONNECTIONS_PER_ROUND = 300
# Bound on RSS growth from the end of the first round to the end of the last:
# with idle expiry every connection of a round is gone before the next, so
# the agent should not grow with the number of connections served.
RSS_GROWTH_LIMIT_KB = 8 * 1024

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root")


def wait_for_port(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def scrape(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    return parse_exposition(data.split(b"\r\n\r\n", 1)[1].decode())


def rss_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def one_request(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"GET /jobs/1 HTTP/1.1\r\nHost: scheduler\r\nConnection: close\r\n\r\n")
        while connection.recv(65536):
            pass


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs the capture stack installed by scripts/setup")
def test_memory_flat_over_short_connections():
    server_port = free_port()
    metrics_port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "scheduler_server.py"), "--host", "127.0.0.1", "--port", str(server_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "netmon", "live", "--iface", "lo", "--port", str(server_port),
         "--metrics-listen", "127.0.0.1", "--metrics-port", str(metrics_port), "--idle-timeout", "2"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_port(server_port)
        wait_for_port(metrics_port)
        samples = []
        for _ in range(ROUNDS):
            for _ in range(CONNECTIONS_PER_ROUND):
                one_request(server_port)
            # Idle expiry sweeps at least once a second of packet or wall time.
            time.sleep(3.5)
            metrics = scrape(metrics_port)
            samples.append((rss_kb(agent.pid), metrics[("netmon_connections_tracked", frozenset())]))

        final = scrape(metrics_port)
        requests = final[("scheduler_http_requests_total", frozenset())]
        print(f"RSS (KiB) and tracked connections after each round: {samples}")
        assert requests == ROUNDS * CONNECTIONS_PER_ROUND
        assert final[("netmon_capture_packets_dropped_total", frozenset())] == 0
        for _, tracked in samples:
            assert tracked < CONNECTIONS_PER_ROUND / 2
        assert samples[-1][0] - samples[0][0] < RSS_GROWTH_LIMIT_KB
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
        server.terminate()
        server.wait(timeout=10)
