"""`netmon live` under faults and load: the capture interface goes down or is
deleted and re-created, and many scrapers hit /metrics during capture and at
SIGTERM.

The interface tests build two network namespaces joined by a veth pair
(10.232.0.1 server side, 10.232.0.2 client side) and skip without them. The
load tests use the loopback. All traffic stays inside those namespaces or
on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from live_support import free_port, netmon_command, running, wait_for
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = str(ROOT / "scripts" / "scheduler_server.py")
CLIENT_SCRIPT = str(ROOT / "scripts" / "scheduler_client.py")
SERVER_ADDRESS = "10.232.0.1"
CLIENT_ADDRESS = "10.232.0.2"
SERVER_PORT = 18080
METRICS_PORT = 19469
PREFIX = "scheduler_http"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="packet capture and network namespaces need root")


def metric_values(text):
    """Return {(sample name, sorted labels): value} for the agent's exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def client_totals(output):
    """Parse the summary of scheduler_client.py: (requests, request bytes, response bytes)."""
    numbers = {}
    for name in ("requests", "request bytes", "response bytes"):
        match = re.search(rf"^{name}: (\d+)$", output, re.MULTILINE)
        assert match, f"no '{name}' line in the client's output:\n{output}"
        numbers[name] = int(match.group(1))
    return numbers["requests"], numbers["request bytes"], numbers["response bytes"]


class Totals:
    """What the clients sent so far, to compare with the agent's counters."""

    def __init__(self):
        self.requests = self.inbound = self.outbound = 0

    def add(self, output):
        requests, inbound, outbound = client_totals(output)
        self.requests += requests
        self.inbound += inbound
        self.outbound += outbound

    def check(self, values):
        assert values[(f"{PREFIX}_requests_total", ())] == self.requests
        assert values[(f"{PREFIX}_bandwidth_bytes_total", (("direction", "inbound"),))] == self.inbound
        assert values[(f"{PREFIX}_bandwidth_bytes_total", (("direction", "outbound"),))] == self.outbound


# -- interface faults -----------------------------------------------------------


class VethNetwork:
    """Two namespaces joined by a veth pair that the test can take down, delete and re-create."""

    def __init__(self):
        suffix = os.getpid()
        self.server_ns = f"netmon-fault-srv-{suffix}"
        self.client_ns = f"netmon-fault-cli-{suffix}"
        self.server_veth = f"nmf{suffix % 100000}s"
        self.client_veth = f"nmf{suffix % 100000}c"
        self.namespaces = []

    def setup(self):
        for namespace in (self.server_ns, self.client_ns):
            ip("netns", "add", namespace)
            self.namespaces.append(namespace)
            ip("-n", namespace, "link", "set", "lo", "up")
        self.create_veth()

    def create_veth(self):
        ip("link", "add", self.server_veth, "netns", self.server_ns,
           "type", "veth", "peer", "name", self.client_veth, "netns", self.client_ns)
        for namespace, veth, address in (
            (self.server_ns, self.server_veth, SERVER_ADDRESS),
            (self.client_ns, self.client_veth, CLIENT_ADDRESS),
        ):
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", veth)
            ip("-n", namespace, "link", "set", veth, "up")

    def set_server_veth(self, state):
        ip("-n", self.server_ns, "link", "set", self.server_veth, state)

    def delete_veth(self):
        # Deleting one end deletes its peer too.
        ip("-n", self.server_ns, "link", "del", self.server_veth)

    def teardown(self):
        for namespace in self.namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=10)
        self.namespaces = []

    def in_server(self, command):
        return ["ip", "netns", "exec", self.server_ns, *command]

    def scrape(self, path="/metrics"):
        """Return (status, body) from the agent inside the server namespace; (None, None) on failure."""
        script = (
            "import sys, urllib.error, urllib.request\n"
            "try:\n"
            f"    response = urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}{path}', timeout=2)\n"
            "except urllib.error.HTTPError as error:\n"
            "    response = error\n"
            "sys.stdout.write(f'{response.status}\\n' + response.read().decode())\n"
        )
        result = subprocess.run(self.in_server([sys.executable, "-c", script]), capture_output=True, text=True,
                                timeout=10)
        if result.returncode != 0:
            return None, None
        status, _, body = result.stdout.partition("\n")
        return int(status), body

    def run_client(self, requests, seed):
        result = subprocess.run(
            ["ip", "netns", "exec", self.client_ns, sys.executable, CLIENT_SCRIPT, "--host", SERVER_ADDRESS,
             "--port", str(SERVER_PORT), "--requests", str(requests), "--seed", str(seed)],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, f"client failed:\n{result.stderr}"
        return result.stdout


def ip(*arguments):
    subprocess.run(["ip", *arguments], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture
def veth_network():
    if shutil.which("ip") is None:
        pytest.skip("the ip command is not installed")
    network = VethNetwork()
    try:
        network.setup()
    except (OSError, subprocess.CalledProcessError) as error:
        network.teardown()
        detail = error.stderr.strip() if isinstance(error, subprocess.CalledProcessError) else error
        pytest.skip(f"network namespaces unavailable: {detail}")
    try:
        yield network
    finally:
        network.teardown()


def capture_up(network):
    """Return the agent's netmon_capture_up, or None while /metrics fails."""
    status, body = network.scrape()
    if status != 200:
        return None
    return metric_values(body)[("netmon_capture_up", ())]


def settled_values(network, totals):
    """Wait until the agent counted every request the clients sent; return its samples."""

    def counted():
        status, body = network.scrape()
        if status != 200:
            return None
        values = metric_values(body)
        return values if values.get((f"{PREFIX}_requests_total", ())) == totals.requests else None

    return wait_for(counted, 15, f"the agent never counted {totals.requests} requests")


@pytest.mark.parametrize("backend, extra", [
    ("pcap", ()),
    ("afpacket", ()),
    # A socket in a fan-out group cannot be bound again, so workers open a
    # new one after a re-create, which needs the privileges of the start.
    ("pcap", ("--workers", "2", "--no-drop-privileges")),
], ids=["pcap", "afpacket", "pcap-2-workers"])
def test_capture_survives_interface_faults(veth_network, backend, extra):
    if backend == "pcap":
        pytest.importorskip("pcapy", reason="the pcap backend needs pcapy-ng")
    network = veth_network
    workers = int(extra[1]) if extra else 1
    interface = network.server_veth
    agent_command = netmon_command(
        "live", "--iface", interface, "--port", str(SERVER_PORT), "--metrics-listen", "127.0.0.1",
        "--metrics-port", str(METRICS_PORT), "--capture-backend", backend, *extra,
    )
    server_command = [sys.executable, SERVER_SCRIPT, "--host", "0.0.0.0", "--port", str(SERVER_PORT),
                      "--log-level", "WARNING"]
    totals = Totals()
    with running(network.in_server(server_command)), running(network.in_server(agent_command)) as agent:
        wait_for(lambda: network.scrape("/healthz")[0] == 200, 15, "agent /healthz never returned 200")
        totals.add(network.run_client(100, seed=1))
        totals.check(settled_values(network, totals))

        # Down long enough for several retries: one warning per capture process.
        network.set_server_veth("down")
        wait_for(lambda: capture_up(network) == 0, 10, "netmon_capture_up stayed 1 with the interface down")
        assert network.scrape("/healthz")[0] == 503
        time.sleep(2)
        assert agent.read_stderr().count(f"capture on {interface} lost") == workers
        network.set_server_veth("up")
        wait_for(lambda: capture_up(network) == 1, 15, "the capture did not resume after the interface came up")
        totals.add(network.run_client(100, seed=2))
        totals.check(settled_values(network, totals))

        network.delete_veth()
        wait_for(lambda: capture_up(network) == 0, 10, "netmon_capture_up stayed 1 with the interface deleted")
        network.create_veth()
        wait_for(lambda: capture_up(network) == 1, 15, "the capture did not resume on the re-created interface")
        totals.add(network.run_client(100, seed=3))
        values = settled_values(network, totals)
        totals.check(values)
        assert values[("netmon_capture_packets_dropped_total", ())] == 0

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0
        stderr = agent.read_stderr()
    assert stderr.count(f"capture on {interface} lost") == 2 * workers
    assert stderr.count(f"capture on {interface} resumed") == 2 * workers
    assert "still down" not in stderr
    assert "Traceback" not in stderr


# -- concurrent scrapes -----------------------------------------------------------

SCRAPERS = 20
LOAD_REQUESTS = 2000


class Scrapers:
    """Threads that fetch /metrics in a loop until stopped, counting successes and errors."""

    def __init__(self, url, count):
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.scrapes = 0
        self.errors = []
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(count)]

    def _loop(self):
        # Bounded in count as well as by the stop event.
        for _ in range(100_000):
            if self.stop.is_set():
                return
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    body = response.read()
                    ok = response.status == 200 and b"netmon_capture_up" in body
            except (OSError, http.client.HTTPException) as error:
                with self.lock:
                    self.errors.append(repr(error))
                continue
            with self.lock:
                if ok:
                    self.scrapes += 1
                else:
                    self.errors.append("response without netmon_capture_up")

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)


@pytest.mark.parametrize("backend", ["pcap", "afpacket"])
def test_concurrent_scrapes_during_capture(backend):
    if backend == "pcap":
        pytest.importorskip("pcapy", reason="the pcap backend needs pcapy-ng")
    server_port, metrics_port = free_port(), free_port()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    server_command = [sys.executable, SERVER_SCRIPT, "--port", str(server_port), "--log-level", "WARNING"]
    agent_command = netmon_command("live", "--iface", "lo", "--port", str(server_port), "--metrics-listen",
                                   "127.0.0.1", "--metrics-port", str(metrics_port), "--capture-backend", backend)
    totals = Totals()
    with running(server_command), running(agent_command) as agent:
        wait_for(lambda: "running as nobody" in agent.read_stderr(), 15, "the agent never logged its start line")
        with Scrapers(url, SCRAPERS) as scrapers:
            client = subprocess.run(
                [sys.executable, CLIENT_SCRIPT, "--port", str(server_port), "--requests", str(LOAD_REQUESTS)],
                capture_output=True, text=True, timeout=120,
            )
            assert client.returncode == 0, client.stderr
            totals.add(client.stdout)

            def counted():
                with urllib.request.urlopen(url, timeout=10) as response:
                    values = metric_values(response.read().decode())
                return values if values[(f"{PREFIX}_requests_total", ())] == totals.requests else None

            wait_for(counted, 15, f"the agent never counted {totals.requests} requests")
            # The capture loop reads the kernel drop counter once a second.
            time.sleep(1.5)
        assert scrapers.errors == []
        assert scrapers.scrapes >= SCRAPERS
        with urllib.request.urlopen(url, timeout=10) as response:
            values = metric_values(response.read().decode())
        totals.check(values)
        assert values[("netmon_capture_packets_dropped_total", ())] == 0
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0


def test_sigterm_under_load_and_scrapes():
    server_port, metrics_port = free_port(), free_port()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    server_command = [sys.executable, SERVER_SCRIPT, "--port", str(server_port), "--log-level", "WARNING"]
    agent_command = netmon_command("live", "--iface", "lo", "--port", str(server_port), "--metrics-listen",
                                   "127.0.0.1", "--metrics-port", str(metrics_port))
    # More requests than the test waits for; the client is killed at the end.
    client_command = [sys.executable, CLIENT_SCRIPT, "--port", str(server_port), "--requests", "50000"]
    with running(server_command), running(agent_command) as agent:
        wait_for(lambda: "running as nobody" in agent.read_stderr(), 15, "the agent never logged its start line")
        with Scrapers(url, SCRAPERS) as scrapers, running(client_command):

            def busy():
                with urllib.request.urlopen(url, timeout=10) as response:
                    values = metric_values(response.read().decode())
                return values[(f"{PREFIX}_requests_total", ())] >= 500

            wait_for(busy, 20, "the agent never counted 500 requests")
            agent.send_signal(signal.SIGTERM)
            # A generous bound: the agent stops within a second here.
            assert agent.wait(timeout=5) == 0
            assert scrapers.scrapes > 0
        stderr = agent.read_stderr()
    assert "stopped: packets" in stderr
    assert "Traceback" not in stderr
