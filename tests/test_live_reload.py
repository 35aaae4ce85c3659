"""SIGHUP makes the live agent re-read its routes file."""

import os
import signal
import subprocess
import sys
import time

import pytest

from live_support import free_port
from test_live_soak import ROOT, scrape, wait_for_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root")


def send_heartbeats(port, count):
    import socket

    for node in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(
                f"POST /nodes/{node}/heartbeat HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            while connection.recv(65536):
                pass


def heartbeat_endpoints(metrics):
    return {
        dict(labels)["endpoint"]
        for (name, labels), _ in metrics.items()
        if name == "scheduler_http_request_bytes_total"
    }


def test_sighup_reloads_routes_file(tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text('routes = ["/jobs/{id}"]\nunmatched = "path"\n')
    server_port = free_port()
    metrics_port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "scheduler_server.py"), "--host", "127.0.0.1", "--port", str(server_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    # The agent stays root so it can read the routes file in pytest's private tmp dir.
    agent = subprocess.Popen(
        [sys.executable, "-m", "netmon", "live", "--iface", "lo", "--port", str(server_port),
         "--metrics-listen", "127.0.0.1", "--metrics-port", str(metrics_port),
         "--routes-file", str(routes), "--no-drop-privileges"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_port(server_port)
        wait_for_port(metrics_port)
        send_heartbeats(server_port, 3)
        time.sleep(1.5)
        assert heartbeat_endpoints(scrape(metrics_port)) == {f"/nodes/{node}/heartbeat" for node in range(3)}

        routes.write_text('routes = ["/nodes/{node}/heartbeat"]\nunmatched = "path"\n')
        agent.send_signal(signal.SIGHUP)
        time.sleep(2.5)
        send_heartbeats(server_port, 3)
        time.sleep(1.5)
        endpoints = heartbeat_endpoints(scrape(metrics_port))
        assert "/nodes/{node}/heartbeat" in endpoints
        assert scrape(metrics_port)[("scheduler_http_requests_total", frozenset())] == 6
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            _, stderr = agent.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            _, stderr = agent.communicate()
        server.terminate()
        server.wait(timeout=10)
    assert agent.returncode == 0
    assert "SIGHUP: reloaded the routes; route templates: 1" in stderr
