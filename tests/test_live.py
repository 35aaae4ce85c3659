"""End-to-end tests of `netmon live`: real server, real client, real capture.

The load test builds two network namespaces joined by a veth pair
(10.231.0.1 server side, 10.231.0.2 client side) and captures on the server's
veth. Where `ip netns add` fails, or NETMON_LIVE_TEST_LOOPBACK is set, it uses
the loopback interface instead and prints why. All traffic stays inside those namespaces or on
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from live_support import free_port, netmon_command
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from netmon.metrics import DEFAULT_BUCKETS  # noqa: E402
from netmon.routes import EndpointMapper, normalize_method  # noqa: E402

REQUESTS = 3000
SEED = 11
SERVER_ADDRESS = "10.231.0.1"
CLIENT_ADDRESS = "10.231.0.2"
# A VLAN on top of the veth pair: the agent still captures on the server's
# veth, where these frames carry an 802.1Q tag.
VLAN_ID = 100
VLAN_SERVER_ADDRESS = "10.231.1.1"
VLAN_CLIENT_ADDRESS = "10.231.1.2"
PREFIX = "scheduler_http"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="packet capture needs root")


# -- namespaces -------------------------------------------------------------


class Network:
    """Where the server, agent and client run: two namespaces, or the loopback."""

    def __init__(self):
        suffix = os.getpid()
        self.server_ns = f"netmon-test-srv-{suffix}"
        self.client_ns = f"netmon-test-cli-{suffix}"
        self.server_veth = f"nmt{suffix % 100000}s"
        self.client_veth = f"nmt{suffix % 100000}c"
        self.namespaces = []
        self.fallback_reason = None
        self.vlan_missing_reason = None
        # Fixed inside the namespaces; on the shared loopback, free ones.
        self.server_port = 18080
        self.metrics_port = 19469

    def setup(self):
        if os.environ.get("NETMON_LIVE_TEST_LOOPBACK"):
            self.fallback_reason = "NETMON_LIVE_TEST_LOOPBACK is set; testing on the loopback"
            self.server_port, self.metrics_port = free_port(), free_port()
            return
        try:
            for namespace in (self.server_ns, self.client_ns):
                _ip("netns", "add", namespace)
                self.namespaces.append(namespace)
            _ip("link", "add", self.server_veth, "netns", self.server_ns,
                "type", "veth", "peer", "name", self.client_veth, "netns", self.client_ns)
            for namespace, veth, address in (
                (self.server_ns, self.server_veth, SERVER_ADDRESS),
                (self.client_ns, self.client_veth, CLIENT_ADDRESS),
            ):
                _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", veth)
                _ip("-n", namespace, "link", "set", veth, "up")
                _ip("-n", namespace, "link", "set", "lo", "up")
        except (OSError, subprocess.CalledProcessError) as error:
            self.teardown()
            detail = error.stderr.strip() if isinstance(error, subprocess.CalledProcessError) else error
            self.fallback_reason = f"network namespaces unavailable ({detail}); testing on the loopback"
            print(self.fallback_reason, file=sys.stderr)
            self.server_port, self.metrics_port = free_port(), free_port()
            return
        try:
            for namespace, veth, address in (
                (self.server_ns, self.server_veth, VLAN_SERVER_ADDRESS),
                (self.client_ns, self.client_veth, VLAN_CLIENT_ADDRESS),
            ):
                vlan = f"{veth}.{VLAN_ID}"
                _ip("-n", namespace, "link", "add", "link", veth, "name", vlan, "type", "vlan", "id", str(VLAN_ID))
                _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", vlan)
                _ip("-n", namespace, "link", "set", vlan, "up")
        except subprocess.CalledProcessError as error:
            self.vlan_missing_reason = f"creating a VLAN interface failed ({error.stderr.strip()}); 8021q module missing?"

    def teardown(self):
        for namespace in self.namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self.namespaces = []

    @property
    def isolated(self):
        return bool(self.namespaces)

    def server_host(self, vlan=False):
        if not self.isolated:
            return "127.0.0.1"
        return VLAN_SERVER_ADDRESS if vlan else SERVER_ADDRESS

    @property
    def capture_interface(self):
        return self.server_veth if self.isolated else "lo"

    def in_server(self, command):
        return ["ip", "netns", "exec", self.server_ns, *command] if self.isolated else command

    def in_client(self, command):
        return ["ip", "netns", "exec", self.client_ns, *command] if self.isolated else command


def _ip(*arguments):
    subprocess.run(["ip", *arguments], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture(scope="module")
def network():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the live tests need root and the ip command")
    network = Network()
    network.setup()
    try:
        yield network
    finally:
        network.teardown()


# -- processes --------------------------------------------------------------


@contextlib.contextmanager
def running(command, **options):
    """Run ``command`` in the background; its stderr goes to a file, not a pipe that could fill."""
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, text=True, **options)
        process.read_stderr = lambda: _read_from_start(stderr)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)


def _read_from_start(file):
    file.flush()
    file.seek(0)
    return file.read()


def wait_for(condition, timeout, message):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(message)


def scrape(network, path="/metrics"):
    """Return the agent's response body, or None while the request fails."""
    script = (
        "import sys, urllib.request\n"
        f"body = urllib.request.urlopen('http://127.0.0.1:{network.metrics_port}{path}', timeout=2).read()\n"
        "sys.stdout.write(body.decode())\n"
    )
    result = subprocess.run(network.in_server([sys.executable, "-c", script]), capture_output=True, text=True, timeout=10)
    return result.stdout if result.returncode == 0 else None


def run_client(network, host):
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'scripts')!r})\n"
        "from dataclasses import asdict\n"
        "from scheduler_client import run_mix\n"
        f"transactions = run_mix({host!r}, {network.server_port}, {REQUESTS}, {SEED})\n"
        "json.dump([asdict(t) for t in transactions], sys.stdout)\n"
    )
    result = subprocess.run(network.in_client([sys.executable, "-c", script]), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"client failed:\n{result.stderr}"
    return json.loads(result.stdout)


# -- expected metrics ---------------------------------------------------------


def samples(text, prefix):
    """Return {(sample name, sorted labels): value} for families starting with ``prefix``."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(prefix):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def expected_samples(transactions):
    """Compute every ``scheduler_http_*`` sample from the client's own byte counts."""
    mapper = EndpointMapper()
    expected = Counter()
    buckets = [*DEFAULT_BUCKETS, float("inf")]

    def histogram(name, labels, size):
        key = tuple(sorted(labels.items()))
        expected[(f"{name}_count", key)] += 1
        expected[(f"{name}_sum", key)] += size
        for bound in buckets:
            bucket_key = tuple(sorted({**labels, "le": _bound_text(bound)}.items()))
            expected[(f"{name}_bucket", bucket_key)] += 1 if size <= bound else 0

    for transaction in transactions:
        method = normalize_method(transaction["method"])
        endpoint = mapper.endpoint(transaction["path"])
        request_labels = {"method": method, "endpoint": endpoint}
        response_labels = {**request_labels, "status": str(transaction["status"])}
        expected[(f"{PREFIX}_requests_total", ())] += 1
        expected[(f"{PREFIX}_request_bytes_total", tuple(sorted(request_labels.items())))] += transaction["request_bytes"]
        expected[(f"{PREFIX}_response_bytes_total", tuple(sorted(response_labels.items())))] += transaction["response_bytes"]
        expected[(f"{PREFIX}_bandwidth_bytes_total", (("direction", "inbound"),))] += transaction["request_bytes"]
        expected[(f"{PREFIX}_bandwidth_bytes_total", (("direction", "outbound"),))] += transaction["response_bytes"]
        histogram(f"{PREFIX}_request_size_bytes", request_labels, transaction["request_bytes"])
        histogram(f"{PREFIX}_response_size_bytes", response_labels, transaction["response_bytes"])

    count = len(transactions)
    expected[(f"{PREFIX}_request_size_bytes_avg", ())] = sum(t["request_bytes"] for t in transactions) / count
    expected[(f"{PREFIX}_response_size_bytes_avg", ())] = sum(t["response_bytes"] for t in transactions) / count
    return dict(expected)


def _bound_text(bound):
    return floatToGoString(bound)


def compare(actual, expected):
    """Return a description of every sample that differs, one per line."""
    problems = []
    for key in sorted(set(actual) | set(expected)):
        if key[0].endswith("_avg"):
            if abs(actual.get(key, 0) - expected.get(key, 0)) > 1e-6 * max(1.0, expected.get(key, 0)):
                problems.append(f"{key}: agent {actual.get(key)} != expected {expected.get(key)}")
        elif actual.get(key) != expected.get(key):
            problems.append(f"{key}: agent {actual.get(key)} != expected {expected.get(key)}")
    return "\n".join(problems)


# -- end to end ---------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("backend", ["pcap", "afpacket"])
@pytest.mark.parametrize("tagged", [False, True], ids=["untagged", "vlan"])
def test_live_counts_match_client(network, backend, tagged):
    if backend == "pcap":
        pytest.importorskip("pcapy", reason="the pcap backend needs pcapy-ng")
    if tagged and not network.isolated:
        pytest.skip(network.fallback_reason + ", which has no VLAN")
    if tagged and network.vlan_missing_reason:
        pytest.skip(network.vlan_missing_reason)
    host = network.server_host(tagged)
    # World-writable because the agent writes the pcap files as nobody.
    pcap_dir = Path(tempfile.mkdtemp(prefix="netmon-live-"))
    pcap_dir.chmod(0o777)
    pcap_path = pcap_dir / "live.pcap"
    server_command = [sys.executable, str(ROOT / "scripts" / "scheduler_server.py"),
                      "--host", host, "--port", str(network.server_port)]
    agent_command = netmon_command(
        "live", "--iface", network.capture_interface, "--port", str(network.server_port),
        "--metrics-listen", "127.0.0.1", "--metrics-port", str(network.metrics_port),
        "--capture-backend", backend, "--write-pcap", str(pcap_path),
        "--write-pcap-max-mb", "1", "--write-pcap-files", "50",
    )
    try:
        with running(network.in_server(server_command)) as server, \
                running(network.in_server(agent_command), cwd=ROOT) as agent:
            wait_for(lambda: scrape(network, "/healthz") == "ok\n", 10, "agent /healthz never returned ok")
            assert server.poll() is None, server.read_stderr()

            transactions = run_client(network, host)
            assert len(transactions) == REQUESTS
            expected = expected_samples(transactions)

            def settled():
                text = scrape(network)
                if text is None:
                    return None
                current = samples(text, PREFIX)
                return text if current.get((f"{PREFIX}_requests_total", ())) == REQUESTS else None

            wait_for(settled, 15, "the agent never counted all requests")
            # The capture loop reads the kernel drop counters once a second.
            time.sleep(1.5)
            exposition = scrape(network)
            live = samples(exposition, PREFIX)
            health = samples(exposition, "netmon_capture_")

            assert compare(live, expected) == ""
            assert health[("netmon_capture_packets_dropped_total", ())] == 0
            # Read after the switch to nobody, so counter reads survive it.
            assert health[("netmon_capture_packets_received_total", ())] > 0

            agent.send_signal(signal.SIGTERM)
            started = time.monotonic()
            status = agent.wait(timeout=5)
            stderr = agent.read_stderr()
            assert status == 0, stderr
            assert time.monotonic() - started < 5
            assert "running as nobody" in stderr
            assert "stopped: packets" in stderr

        # Oldest first: live.pcap.N, ..., live.pcap.1, then live.pcap.
        rotated = sorted(pcap_dir.glob("live.pcap.*"), key=lambda path: int(path.suffix[1:]), reverse=True)
        files = [*rotated, pcap_path]
        assert len(files) > 1, "--write-pcap-max-mb 1 should have rotated the file"
        analyzed = subprocess.run(
            netmon_command("analyze", *map(str, files), "--port", str(network.server_port), "--format", "prometheus"),
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )
        assert analyzed.returncode == 0, analyzed.stderr
        assert compare(samples(analyzed.stdout, PREFIX), live) == ""
    finally:
        shutil.rmtree(pcap_dir, ignore_errors=True)


# -- error paths ----------------------------------------------------------------


def run_netmon(*arguments, prefix=()):
    return subprocess.run([*prefix, *netmon_command(*arguments)], capture_output=True, text=True, cwd=ROOT, timeout=30)


def test_live_without_port_is_usage_error():
    result = run_netmon("live", "--iface", "lo")
    assert result.returncode == 2
    assert "needs at least one --port" in result.stderr
    assert "Traceback" not in result.stderr


@needs_root
@pytest.mark.parametrize("backend", ["pcap", "afpacket"])
def test_live_unknown_interface(backend):
    result = run_netmon("live", "--iface", "no-such-if0", "--port", "80", "--capture-backend", backend)
    assert result.returncode == 1
    assert "interface 'no-such-if0' not found" in result.stderr
    assert "lo" in result.stderr.split("available interfaces:")[1]
    assert "Traceback" not in result.stderr


@needs_root
def test_live_metrics_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_netmon("live", "--iface", "lo", "--port", "80",
                            "--metrics-listen", "127.0.0.1", "--metrics-port", str(port))
    assert result.returncode == 1
    assert f"metrics port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv is not installed")
@pytest.mark.parametrize("backend", ["pcap", "afpacket"])
def test_live_without_cap_net_raw(backend):
    # Root without CAP_NET_RAW in its bounding set gets the error an ordinary
    # user gets. Running as nobody would fail before netmon starts where
    # Python is installed under /root.
    result = run_netmon("live", "--iface", "lo", "--port", "80", "--capture-backend", backend,
                        prefix=("setpriv", "--bounding-set=-net_raw"))
    assert result.returncode == 1
    assert "permission denied (needs root or CAP_NET_RAW)" in result.stderr
    assert "setcap cap_net_raw,cap_net_admin=eip" in result.stderr
    assert "Traceback" not in result.stderr


@needs_root
def test_live_sigterm_exits_zero():
    port = free_port()
    with running(netmon_command("live", "--iface", "lo", "--port", "80", "--metrics-listen", "127.0.0.1",
                                "--metrics-port", str(port), "--log-format", "json"), cwd=ROOT) as agent:
        def healthy():
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                    connection.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                    return connection.recv(100).startswith(b"HTTP/1.0 200")
            return False

        wait_for(healthy, 10, "agent /healthz never returned 200")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=5) == 0
        lines = agent.read_stderr().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["logger"] == "netmon.live"
    assert records[0]["message"].startswith("capturing on lo")
    assert records[-1]["message"].startswith("stopped: packets")
