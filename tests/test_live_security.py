"""Security features of `netmon live`: secret masking in --write-pcap, the
privilege drop, and TLS and basic authentication from --web.config.file.

The agent captures on the loopback and all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from live_support import free_port, netmon_command, running, wait_for
from prometheus_client.parser import text_string_to_metric_families

from netmon.capture_live import mask_secret_headers

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "scheduler_http"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="packet capture and the privilege drop need root")


def fetch(url, context=None, headers=None):
    """Return (status, body) for a GET, or (None, None) while the connection fails."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=3, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (OSError, http.client.HTTPException):
        return None, None


def samples(text, prefix):
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(prefix):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


# -- secret masking: frames ----------------------------------------------------


def ethernet_ipv4_frame(payload):
    """Build an Ethernet/IPv4/TCP frame from 127.0.0.1:40000 to port 8080 around ``payload``."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    return bytes(Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / TCP(sport=40000, dport=8080, flags="PA") / payload)


def test_mask_replaces_each_secret_value():
    payload = (
        b"GET /jobs HTTP/1.1\r\nHost: a\r\nCookie: session=s3cr3t\r\nauthorization:  Bearer tok3n\r\n"
        b"PROXY-AUTHORIZATION: Basic cHJveHk=\r\nX-Note: cookie monster\r\n\r\n"
    )
    frame = ethernet_ipv4_frame(payload)
    masked = bytes(mask_secret_headers(1, frame))
    assert len(masked) == len(frame)
    assert masked[:-len(payload)] == frame[:-len(payload)]
    assert b"s3cr3t" not in masked
    assert b"tok3n" not in masked
    assert b"cHJveHk=" not in masked
    assert b"Cookie: %s\r\n" % (b"*" * len(b"session=s3cr3t")) in masked
    assert b"authorization:  %s\r\n" % (b"*" * len(b"Bearer tok3n")) in masked
    # Only header lines are masked, not the word elsewhere.
    assert b"X-Note: cookie monster\r\n" in masked


def test_mask_header_at_segment_start_and_end():
    # A segment that starts with a header line and ends inside a value.
    payload = b"Set-Cookie: id=abc; Path=/\r\nCookie: half-of-the-val"
    masked = bytes(mask_secret_headers(1, ethernet_ipv4_frame(payload)))
    stars = b"*" * len(b"id=abc; Path=/"), b"*" * len(b"half-of-the-val")
    assert masked.endswith(b"Set-Cookie: %s\r\nCookie: %s" % stars)


def test_mask_ipv6_and_cooked_frames():
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import CookedLinux

    payload = b"HTTP/1.1 200 OK\r\nSet-Cookie: v6secret\r\n\r\n"
    frame = bytes(CookedLinux(proto=0x86DD) / IPv6(src="::1", dst="::1") / TCP(sport=8080, dport=40000) / payload)
    masked = bytes(mask_secret_headers(113, frame))
    assert len(masked) == len(frame)
    assert b"v6secret" not in masked


def test_mask_returns_frame_without_secrets_unchanged():
    frame = ethernet_ipv4_frame(b"GET /cookies HTTP/1.1\r\nHost: a\r\n\r\n")
    assert mask_secret_headers(1, frame) is frame
    # The names may appear outside the TCP payload only by chance; a frame
    # that is not TCP is returned as it is.
    assert mask_secret_headers(1, b"\x00" * 14 + b"cookie: x") == b"\x00" * 14 + b"cookie: x"


# -- secret masking: live capture ----------------------------------------------


class SecretHandler(http.server.BaseHTTPRequestHandler):
    """Respond to every GET with a Set-Cookie header whose value the test plants."""

    protocol_version = "HTTP/1.1"
    set_cookie = ""

    def do_GET(self):
        body = b'{"ok": true}\n'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", self.set_cookie)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def secret_server(set_cookie):
    handler = type("Handler", (SecretHandler,), {"set_cookie": set_cookie})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def send_secret_requests(port, planted, count):
    """Send ``count`` GETs on one keep-alive connection, each with the planted request secrets."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for number in range(count):
            connection.request("GET", f"/jobs/{number}", headers={
                "Authorization": f"Bearer {planted['authorization']}",
                "Proxy-Authorization": f"Basic {planted['proxy']}",
                "Cookie": f"session={planted['cookie']}",
            })
            response = connection.getresponse()
            response.read()
            assert response.status == 200
    finally:
        connection.close()


@needs_root
@pytest.mark.parametrize("keep_secrets", [False, True], ids=["masked", "kept"])
def test_write_pcap_masks_secrets(keep_secrets):
    planted = {name: secrets.token_hex(12) for name in ("authorization", "proxy", "cookie", "set_cookie")}
    requests = 40
    pcap_dir = Path(tempfile.mkdtemp(prefix="netmon-secrets-"))
    # The agent writes the file as nobody.
    pcap_dir.chmod(0o777)
    pcap_path = pcap_dir / "live.pcap"
    metrics_port = free_port()
    try:
        with secret_server(f"id={planted['set_cookie']}; HttpOnly") as server_port:
            command = netmon_command(
                "live", "--iface", "lo", "--port", str(server_port), "--metrics-listen", "127.0.0.1",
                "--metrics-port", str(metrics_port), "--write-pcap", str(pcap_path),
                *(["--keep-secrets"] if keep_secrets else []),
            )
            with running(command) as agent:
                url = f"http://127.0.0.1:{metrics_port}"
                wait_for(lambda: fetch(url + "/healthz")[0] == 200, 10, "agent /healthz never returned 200")
                send_secret_requests(server_port, planted, requests)

                def counted():
                    status, body = fetch(url + "/metrics")
                    if status != 200:
                        return None
                    found = samples(body, PREFIX)
                    return found if found.get((f"{PREFIX}_requests_total", ())) == requests else None

                live = wait_for(counted, 10, f"the agent never counted {requests} requests")
                agent.send_signal(signal.SIGTERM)
                assert agent.wait(timeout=10) == 0, agent.read_stderr()
        written = pcap_path.read_bytes()
        for name, value in planted.items():
            if keep_secrets:
                assert value.encode() in written, f"{name} value missing with --keep-secrets"
            else:
                assert value.encode() not in written, f"{name} value written despite masking"
        analyzed = subprocess.run(
            netmon_command("analyze", str(pcap_path), "--port", str(server_port), "--format", "prometheus"),
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )
        assert analyzed.returncode == 0, analyzed.stderr
        offline = samples(analyzed.stdout, PREFIX)
        assert offline[(f"{PREFIX}_requests_total", ())] == requests
        assert offline == live
    finally:
        shutil.rmtree(pcap_dir, ignore_errors=True)


# -- privilege drop ------------------------------------------------------------

CAPABILITY_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def process_status(pid):
    """Return the fields of /proc/PID/status as {name: value text}."""
    fields = {}
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return fields


def child_pids(pid):
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as file:
            children.extend(int(child) for child in file.read().split())
    return children


@needs_root
@pytest.mark.parametrize("workers", [1, 2])
def test_agent_runs_unprivileged(workers):
    nobody = __import__("pwd").getpwnam("nobody")
    metrics_port = free_port()
    command = netmon_command("live", "--iface", "lo", "--port", str(free_port()), "--metrics-listen", "127.0.0.1",
                             "--metrics-port", str(metrics_port), "--workers", str(workers))
    with running(command) as agent:
        wait_for(lambda: "running as nobody" in agent.read_stderr(), 15, "the agent never logged its start line")
        pids = [agent.pid]
        if workers > 1:
            pids += wait_for(lambda: child_pids(agent.pid) if len(child_pids(agent.pid)) == workers else None,
                             10, f"the agent never had {workers} worker processes")
            # The workers log no start line of their own: wait until each has switched.
            wait_for(lambda: all(process_status(pid)["Uid"].split()[0] == str(nobody.pw_uid) for pid in pids),
                     10, "a worker still runs as root")
        for pid in pids:
            status = process_status(pid)
            assert status["Uid"].split() == [str(nobody.pw_uid)] * 4, f"pid {pid}"
            assert status["Gid"].split() == [str(nobody.pw_gid)] * 4, f"pid {pid}"
            assert status["Groups"] == "", f"pid {pid}"
            for field in CAPABILITY_FIELDS:
                assert int(status[field], 16) == 0, f"pid {pid} {field} {status[field]}"
            assert status["NoNewPrivs"] == "1", f"pid {pid}"
        # The agent still serves and reads the kernel counters as nobody.
        status, body = fetch(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        assert "netmon_capture_up 1.0" in body
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0, agent.read_stderr()


# -- --web.config.file ---------------------------------------------------------

USER = "prometheus"
PASSWORD = "scrape-pass-1"


def make_certificate(directory):
    """Create a self-signed certificate for 127.0.0.1 with the openssl command; return (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=netmon-test",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def bcrypt_hash(password):
    import bcrypt

    # 4 rounds, the minimum, keeps the test fast; real files use 10 or more.
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def basic_auth(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def tls_files():
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    directory = Path(tempfile.mkdtemp(prefix="netmon-tls-"))
    try:
        yield make_certificate(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@needs_root
def test_web_config_tls_and_basic_auth(tls_files, tmp_path):
    pytest.importorskip("bcrypt")
    cert, key = tls_files
    config = tmp_path / "web.yml"
    config.write_text(
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        f"basic_auth_users:\n  {USER}: '{bcrypt_hash(PASSWORD)}'\n"
    )
    metrics_port = free_port()
    command = netmon_command("live", "--iface", "lo", "--port", str(free_port()), "--metrics-listen", "127.0.0.1",
                             "--metrics-port", str(metrics_port), "--web.config.file", str(config))
    with running(command) as agent:
        wait_for(lambda: "running as nobody" in agent.read_stderr(), 15, "the agent never logged its start line")
        assert "(HTTPS, basic auth for 1 users)" in agent.read_stderr()
        context = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{metrics_port}/metrics"

        status, _ = fetch(url, context)
        assert status == 401
        status, _ = fetch(url, context, basic_auth(USER, "wrong-password"))
        assert status == 401
        status, _ = fetch(url, context, basic_auth("someone-else", PASSWORD))
        assert status == 401
        status, _ = fetch(url, context, {"Authorization": "Bearer " + PASSWORD})
        assert status == 401
        status, _ = fetch(f"https://127.0.0.1:{metrics_port}/healthz", context)
        assert status == 401

        status, body = fetch(url, context, basic_auth(USER, PASSWORD))
        assert status == 200
        assert "netmon_capture_up 1.0" in body
        # The second request is checked against the cache of accepted credentials.
        status, _ = fetch(url, context, basic_auth(USER, PASSWORD))
        assert status == 200

        # Plain HTTP to the TLS port gets no HTTP response.
        status, _ = fetch(f"http://127.0.0.1:{metrics_port}/metrics", headers=basic_auth(USER, PASSWORD))
        assert status is None
        # Nor does a client that does not trust the certificate.
        status, _ = fetch(url, ssl.create_default_context(), basic_auth(USER, PASSWORD))
        assert status is None
        # The server still responds after those failed handshakes.
        status, _ = fetch(url, context, basic_auth(USER, PASSWORD))
        assert status == 200

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0
        assert PASSWORD not in agent.read_stderr()


@needs_root
def test_web_config_auth_without_tls(tmp_path):
    pytest.importorskip("bcrypt")
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  {USER}: {bcrypt_hash(PASSWORD)}\n")
    metrics_port = free_port()
    command = netmon_command("live", "--iface", "lo", "--port", str(free_port()), "--metrics-listen", "127.0.0.1",
                             "--metrics-port", str(metrics_port), "--web.config.file", str(config))
    with running(command) as agent:
        wait_for(lambda: "running as nobody" in agent.read_stderr(), 15, "the agent never logged its start line")
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        assert fetch(url)[0] == 401
        assert fetch(url, headers=basic_auth(USER, PASSWORD))[0] == 200
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0


INVALID_CONFIGS = {
    "not_yaml": ("basic_auth_users: [unclosed\n", "is not valid YAML"),
    "not_mapping": ("- a\n- b\n", "expected a mapping at the top level"),
    "unknown_key": ("http_server_config:\n  http2: false\n", "http_server_config is not supported"),
    "unknown_tls_key": ("tls_server_config:\n  client_auth_type: RequireAndVerifyClientCert\n",
                        "tls_server_config.client_auth_type is not supported"),
    "no_key_file": ("tls_server_config:\n  cert_file: cert.pem\n", "needs both cert_file and key_file"),
    "missing_cert": ("tls_server_config:\n  cert_file: /nonexistent/cert.pem\n  key_file: /nonexistent/key.pem\n",
                     "tls_server_config.cert_file /nonexistent/cert.pem not found"),
    "unreadable_cert": ("tls_server_config:\n  cert_file: garbage.pem\n  key_file: garbage.pem\n",
                        "loading cert_file"),
    "plain_password": ("basic_auth_users:\n  prometheus: secret\n", "basic_auth_users.prometheus is not a bcrypt hash"),
    "bad_min_version": ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: SSL3\n",
                        "min_version 'SSL3' is invalid"),
}


@pytest.mark.parametrize("case", sorted(INVALID_CONFIGS))
def test_web_config_invalid_file(case, tmp_path):
    text, message = INVALID_CONFIGS[case]
    config = tmp_path / "web.yml"
    config.write_text(text)
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    result = subprocess.run(
        netmon_command("live", "--iface", "lo", "--port", "80", "--web.config.file", str(config)),
        capture_output=True, text=True, cwd=ROOT, timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"netmon: error: --web.config.file {config}")
    assert message in lines[0]


def test_web_config_missing_file(tmp_path):
    result = subprocess.run(
        netmon_command("live", "--iface", "lo", "--port", "80", "--web.config.file", str(tmp_path / "none.yml")),
        capture_output=True, text=True, cwd=ROOT, timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"netmon: error: reading --web.config.file {tmp_path / 'none.yml'} failed: " \
        "No such file or directory"
