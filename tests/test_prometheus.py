"""netmon's metrics in a real Prometheus: alert rules, scrape configs and every dashboard query.

The offline tests backfill a bundled capture with `promtool tsdb
create-blocks-from openmetrics`, start Prometheus on those blocks and run
each query of grafana/dashboards/scheduler-bandwidth.json at the capture's
end. The live test lets Prometheus scrape `netmon live` once a second while
the scheduler client sends known traffic on the loopback interface.

Prometheus listens on 127.0.0.1 on a free port, keeps its data in a
temporary directory and is stopped when the test ends, also on failure. The
tests need Debian's prometheus package (prometheus and promtool) and skip
without it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml

from corpus import parse_exposition
from live_support import free_port, wait_for
from netmon.routes import EndpointMapper, load_routes_file, normalize_method
from test_dashboard import dashboard_targets, load_dashboard

ROOT = Path(__file__).resolve().parent.parent
CAPTURE = ROOT / "pcaps" / "scheduler-mixed.pcap"
ROUTES_FILE = ROOT / "examples" / "scheduler-routes.toml"
RULES = ROOT / "prometheus" / "rules" / "netmon.rules.yml"
RULE_TESTS = ROOT / "prometheus" / "rules" / "netmon.rules.test.yml"
SCRAPE_CONFIG = ROOT / "prometheus" / "prometheus.yml"
KUBERNETES_SCRAPE_CONFIG = ROOT / "prometheus" / "prometheus-kubernetes.yml"
BACKFILL_CONFIG = ROOT / "prometheus" / "backfill.yml"

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus and promtool are not installed (Debian package prometheus)",
)
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)")

# The bundled capture lasts under a second, and a rate needs two samples in
# its window. So the backfill samples it every 0.1 s of packet time.
SAMPLE_INTERVAL_S = 0.1
# Values that replace Grafana's variables in the dashboard queries. ".*" is
# the dashboard's "All" value of both query variables.
VARIABLE_VALUES = {
    "instance": ".*",
    "endpoint": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}
# Dashboard panels that have no data in a backfilled capture, with the reason.
ABSENT_OFFLINE = {
    "Capture drops": "netmon_capture_* comes from the kernel's capture statistics, which only the live agent has",
}
BYTE_COUNTERS = ("scheduler_http_request_bytes_total", "scheduler_http_response_bytes_total")
# Relative error allowed when a rate times its window is compared with a
# count of bytes: float rounding only.
FLOAT_TOLERANCE = 1e-9

# `promtool check metrics` findings that the fixed scheduler_http_* names
# force, as (metric name, text of the finding), because the scheduler's
# existing dashboards query those names. promtool 2.42 finds nothing in
# netmon's exposition, so the set is empty.
ACCEPTED_LINT_FINDINGS: set[tuple[str, str]] = set()


# -- PromQL helpers -----------------------------------------------------------------


def substitute_variables(expr):
    """Replace $name and ${name} Grafana variables with VARIABLE_VALUES."""

    def value(match):
        name = match.group(1) or match.group(2)
        assert name in VARIABLE_VALUES, f"no test value for Grafana variable ${name} in {expr}"
        return VARIABLE_VALUES[name]

    result = re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)
    assert "$" not in result, result
    return result


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


class Prometheus:
    """A Prometheus server on 127.0.0.1 with its data in ``data_dir``."""

    def __init__(self, config, data_dir, log_path):
        self.config = config
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.process = None

    def start(self):
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.data_dir}",
                # Time retention counts back from the newest block
                # (BeyondTimeRetention in Prometheus's tsdb/db.go), and a
                # backfilled capture may be years old. A long retention keeps
                # it whatever else is in the data directory.
                "--storage.tsdb.retention.time=100y",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited with status {self.process.returncode}:\n{self.read_log()}")
            with contextlib.suppress(OSError):
                if http_get(f"{self.url}/-/ready", timeout=1).startswith("Prometheus Server is Ready"):
                    return
            time.sleep(0.2)
        raise AssertionError(f"prometheus on port {self.port} was not ready after 30 s:\n{self.read_log()}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()

    def read_log(self):
        self.log.flush()
        return Path(self.log_path).read_text()[-4000:]

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def api(self, path, **parameters):
        query = urllib.parse.urlencode(parameters, doseq=True)
        try:
            body = json.loads(http_get(f"{self.url}/api/v1/{path}?{query}", timeout=10))
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{path} {parameters} failed: {error.read().decode()}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr, at):
        """Evaluate ``expr`` at ``at`` (epoch seconds) and return the result list."""
        return self.api("query", query=expr, time=f"{at:.3f}")["result"]

    def vector(self, expr, at, key):
        """Return {key(labels): value} of an instant vector result."""
        values = {}
        for series in self.query(expr, at):
            label = key(series["metric"])
            assert label not in values, f"{expr}: two series for {label}"
            values[label] = float(series["value"][1])
        return values

    def raw_samples(self, selector, window, at):
        """Return {sorted labels: [(ts, value), ...]} of the samples in ``selector[window]`` at ``at``."""
        data = self.query(f"{selector}[{window}]", at)
        return {
            tuple(sorted(series["metric"].items())): [(float(ts), float(value)) for ts, value in series["values"]]
            for series in data
        }

    def label_values(self, variable_query, at_start, at_end):
        """Evaluate a Grafana label_values(selector, label) variable query."""
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", substitute_variables(variable_query))
        assert match, f"not a label_values query: {variable_query}"
        selector, label = match.groups()
        return self.api(f"label/{label}/values", **{"match[]": selector, "start": at_start, "end": at_end})


@contextlib.contextmanager
def running_prometheus(config, data_dir, log_path):
    server = Prometheus(config, data_dir, log_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def counter_bounds(samples_by_series, group):
    """Bound what rate() or increase() over the windows of ``samples_by_series`` can return, per group.

    Prometheus takes last minus first sample of each series with two samples
    or more, then extrapolates it toward the window's ends. It extends by at
    most half the mean sample spacing, and never past the point where the
    counter would have been zero. So for a window ending on the last sample,
    the result is at least last - first and at most last. Returns
    {group: (low, high)}.
    """
    bounds = defaultdict(lambda: [0.0, 0.0])
    for labels, points in samples_by_series.items():
        values = [value for _, value in points]
        assert values == sorted(values), f"counter {dict(labels)} went down (reset) inside the window: {values}"
        if len(values) < 2:
            continue
        entry = bounds[group(dict(labels))]
        entry[0] += values[-1] - values[0]
        entry[1] += values[-1]
    return {key: tuple(value) for key, value in bounds.items()}


def assert_within(name, value, low, high):
    slack = FLOAT_TOLERANCE * max(1.0, abs(high))
    assert low - slack <= value <= high + slack, f"{name}: {value} is outside [{low}, {high}]"


def last_values(samples_by_series, group):
    """Sum the last raw sample of every series per group."""
    totals = Counter()
    for labels, points in samples_by_series.items():
        totals[group(dict(labels))] += points[-1][1]
    return dict(totals)


def bucket_containing(quantile, cumulative):
    """Return the (lower, upper] histogram bucket that contains ``quantile`` of the observations."""
    bounds = sorted(cumulative)
    rank = quantile * cumulative[math.inf]
    lower = 0.0
    for bound in bounds:
        if cumulative[bound] >= rank:
            return lower, bound
        lower = bound
    raise AssertionError(f"no bucket contains rank {rank}: {dict(cumulative)}")


def run_netmon(*arguments, timeout=120):
    result = subprocess.run(
        [sys.executable, "-m", "netmon", *arguments], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )
    assert result.returncode == 0, f"netmon {' '.join(arguments)} failed:\n{result.stderr}"
    return result.stdout


def promtool(*arguments, stdin=None):
    return subprocess.run([PROMTOOL, *arguments], input=stdin, capture_output=True, text=True, timeout=60)


def lint_findings(exposition):
    """Run `promtool check metrics` and return the set of (metric, finding) it reports."""
    result = promtool("check", "metrics", stdin=exposition)
    findings = set()
    for line in (result.stdout + result.stderr).splitlines():
        if not line.strip():
            continue
        metric, _, text = line.partition(" ")
        findings.add((metric, text.strip()))
    if result.returncode != 0:
        assert findings, f"promtool check metrics failed without a finding: status {result.returncode}"
    return findings


# -- promtool ---------------------------------------------------------------------------


@needs_promtool
def test_rules_pass_promtool_check():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests_pass():
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_tests_cover_every_alert():
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = set()
    silent = set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else silent).add(case["alertname"])
    assert alerts - firing == set(), "alerts without a test where they fire"
    assert alerts - silent == set(), "alerts without a test where they stay silent"


@needs_promtool
@pytest.mark.parametrize("config", [SCRAPE_CONFIG, BACKFILL_CONFIG], ids=lambda path: path.name)
def test_prometheus_config_is_valid(config):
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_scrape_config_names_netmon_job():
    # Debian's Prometheus is built without Kubernetes service discovery, so
    # promtool cannot check this file here. The live test runs its
    # relabeling rules, and this test checks the rest.
    config = yaml.safe_load(KUBERNETES_SCRAPE_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "netmon"
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["netmon"]}}]
    assert config["rule_files"] == ["rules/netmon.rules.yml"]


@needs_promtool
def test_offline_exposition_passes_promtool_lint():
    exposition = run_netmon("analyze", str(CAPTURE), "--port", "8080", "--format", "prometheus")
    assert lint_findings(exposition) - ACCEPTED_LINT_FINDINGS == set()


# -- offline: a backfilled capture ------------------------------------------------------


@pytest.fixture(scope="module")
def backfill(tmp_path_factory):
    """Prometheus serving the bundled capture, with netmon's own totals for it."""
    if PROMETHEUS is None or PROMTOOL is None:
        pytest.skip("prometheus and promtool are not installed (Debian package prometheus)")
    directory = tmp_path_factory.mktemp("backfill")
    common = [str(CAPTURE), "--port", "8080", "--routes-file", str(ROUTES_FILE)]
    openmetrics = directory / "capture.om"
    openmetrics.write_text(
        run_netmon("analyze", *common, "--format", "openmetrics", "--sample-interval", str(SAMPLE_INTERVAL_S))
    )
    totals = parse_exposition(run_netmon("analyze", *common, "--format", "prometheus"))

    data = directory / "data"
    result = promtool("tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(data))
    assert result.returncode == 0, f"promtool rejected the OpenMetrics file:\n{result.stdout}{result.stderr}"

    with running_prometheus(BACKFILL_CONFIG, data, directory / "prometheus.log") as server:
        # Find the capture's first and last sample times in the database.
        stamps = [float(line.rsplit(" ", 1)[1]) for line in openmetrics.read_text().splitlines() if not line.startswith("#")]
        probe = server.raw_samples("netmon_packets_read_total", "1d", max(stamps) + 1)
        ((_, points),) = probe.items()
        yield {
            "prometheus": server,
            "totals": totals,
            "start": points[0][0],
            "end": points[-1][0],
        }


@needs_prometheus
def test_backfill_holds_every_final_sample(backfill):
    server, totals, end = backfill["prometheus"], backfill["totals"], backfill["end"]
    stored = server.raw_samples('{__name__=~"scheduler_http_.+|netmon_.+"}', "1d", end)
    last = {
        (dict(labels)["__name__"], frozenset((k, v) for k, v in labels if k != "__name__")): points[-1][1]
        for labels, points in stored.items()
    }
    assert set(last) == set(totals), "series differ between the backfill and --format prometheus"
    differing = {key: (last[key], totals[key]) for key in totals if last[key] != totals[key]}
    assert differing == {}, "final backfilled values differ from --format prometheus (backfill, prometheus)"


@needs_prometheus
@pytest.mark.parametrize("metric", BYTE_COUNTERS)
def test_backfill_byte_totals(backfill, metric):
    server, totals, end = backfill["prometheus"], backfill["totals"], backfill["end"]
    expected = sum(value for (name, _), value in totals.items() if name == metric)
    direction = "inbound" if "request" in metric else "outbound"
    assert expected == totals[("scheduler_http_bandwidth_bytes_total", frozenset({("direction", direction)}))]

    # The last raw samples add up exactly.
    assert server.vector(f"sum({metric})", end, key=lambda labels: "all") == {"all": expected}

    # increase() over the whole capture extrapolates from the first sample.
    window = "1h"
    raw = server.raw_samples(metric, window, end)
    assert max(points[-1][0] for points in raw.values()) == end
    (low, high) = counter_bounds(raw, group=lambda labels: "all")["all"]
    assert high == expected, "some series has a single sample, so increase() cannot see all bytes"
    (increase,) = server.vector(f"sum(increase({metric}[{window}]))", end, key=lambda labels: "all").values()
    assert_within(f"sum(increase({metric}[{window}]))", increase, low, high)


@needs_prometheus
def test_backfill_dashboard_queries_return_series(backfill):
    server, end = backfill["prometheus"], backfill["end"]
    empty = []
    for title, ref_id, expr in dashboard_targets(load_dashboard()):
        result = server.query(substitute_variables(expr), end)
        if title in ABSENT_OFFLINE:
            assert result == [], f"{title} has data offline now; remove it from ABSENT_OFFLINE"
            continue
        if not result:
            empty.append(f"{title} {ref_id}: {expr}")
        for series in result:
            assert math.isfinite(float(series["value"][1])), f"{title} {ref_id} returned {series}"
    assert empty == [], "dashboard queries without data at the capture's end"


@needs_prometheus
def test_backfill_endpoint_variable(backfill):
    server = backfill["prometheus"]
    variables = {variable["name"]: variable for variable in load_dashboard()["templating"]["list"]}
    endpoints = server.label_values(variables["endpoint"]["query"], backfill["start"], backfill["end"])
    expected = {dict(labels)["endpoint"] for name, labels in backfill["totals"] if name == BYTE_COUNTERS[1]}
    assert set(endpoints) == expected
    # A backfilled capture has no scrape target, so no instance label.
    assert server.label_values(variables["instance"]["query"], backfill["start"], backfill["end"]) == []


def panel_query(title, ref_id):
    """Return a dashboard query with its variables replaced by the test values."""
    for panel_title, panel_ref_id, expr in dashboard_targets(load_dashboard()):
        if (panel_title, panel_ref_id) == (title, ref_id):
            return substitute_variables(expr)
    raise AssertionError(f"dashboard has no query {title} {ref_id}")


def by_endpoint(labels):
    return labels["endpoint"]


def by_series(labels):
    return tuple(sorted((name, value) for name, value in labels.items() if name not in ("__name__", "job", "instance")))


def everything(labels):
    return "all"


# The rate panels: (title, refId) -> (counter, grouping of its result).
RATE_PANELS = {
    ("Bandwidth in and out", "A"): (BYTE_COUNTERS[0], by_series),
    ("Bandwidth in and out", "B"): (BYTE_COUNTERS[1], by_series),
    ("Total inbound", "A"): (BYTE_COUNTERS[0], everything),
    ("Total outbound", "A"): (BYTE_COUNTERS[1], everything),
    ("Bandwidth by endpoint", "A"): (BYTE_COUNTERS[0], by_endpoint),
    ("Bandwidth by endpoint", "B"): (BYTE_COUNTERS[1], by_endpoint),
}
# The quantile panels: (title, refId) -> (histogram, quantile, grouping).
QUANTILE_PANELS = {
    ("Request and response size P50/P95", "A"): ("scheduler_http_request_size_bytes", 0.5, everything),
    ("Request and response size P50/P95", "B"): ("scheduler_http_request_size_bytes", 0.95, everything),
    ("Request and response size P50/P95", "C"): ("scheduler_http_response_size_bytes", 0.5, everything),
    ("Request and response size P50/P95", "D"): ("scheduler_http_response_size_bytes", 0.95, everything),
    ("Size P95 by endpoint", "A"): ("scheduler_http_request_size_bytes", 0.95, by_endpoint),
    ("Size P95 by endpoint", "B"): ("scheduler_http_response_size_bytes", 0.95, by_endpoint),
}


def check_rate_panels(server, at, expected):
    """Check the rate panels at ``at`` against the raw samples of their own 1m windows.

    ``expected`` maps each byte counter to {series labels: bytes}, which the
    last raw samples must equal. Each rate times 60 s must then lie within
    the bounds that extrapolation allows.
    """
    for metric in BYTE_COUNTERS:
        raw = server.raw_samples(metric, "1m", at)
        assert last_values(raw, by_series) == expected[metric], f"last {metric} samples differ from the expected bytes"

    for (title, ref_id), (metric, group) in RATE_PANELS.items():
        raw = server.raw_samples(metric, "1m", at)
        bounds = counter_bounds(raw, group)
        measured = server.vector(panel_query(title, ref_id), at, key=group)
        assert set(measured) == set(bounds), f"{title} {ref_id}: series differ from the raw samples"
        for key, rate in measured.items():
            assert_within(f"{title} {ref_id} {key} x 60 s", rate * 60, *bounds[key])


def check_quantile_panels(server, at, samples):
    """Check that each size quantile lies in the histogram bucket that contains it in the final counts."""
    for (title, ref_id), (family, quantile, group) in QUANTILE_PANELS.items():
        cumulative = defaultdict(Counter)
        for (name, labels), value in samples.items():
            if name == f"{family}_bucket":
                labels = dict(labels)
                cumulative[group(labels)][float(labels["le"])] += value
        measured = server.vector(panel_query(title, ref_id), at, key=group)
        assert set(measured) == set(cumulative), f"{title} {ref_id}: series differ from the histogram"
        for key, value in measured.items():
            low, high = bucket_containing(quantile, cumulative[key])
            assert low < value <= high, f"{title} {ref_id} {key}: {value} is outside the bucket ({low}, {high}]"


def series_totals(samples):
    """Group parsed exposition samples as {byte counter: {series labels: bytes}}."""
    return {
        metric: {tuple(sorted(labels)): value for (name, labels), value in samples.items() if name == metric}
        for metric in BYTE_COUNTERS
    }


@needs_prometheus
def test_backfill_panel_values(backfill):
    server, totals, end = backfill["prometheus"], backfill["totals"], backfill["end"]
    # The 1m rate windows at the end hold the whole capture.
    assert end - backfill["start"] < 60
    check_rate_panels(server, end, series_totals(totals))
    check_quantile_panels(server, end, totals)


# -- live: Prometheus scrapes netmon live ------------------------------------------------

# Requests per burst of client traffic. The pause between bursts leaves time
# for at least one scrape. The small first burst creates most series, so that
# increase(), which cannot count what a series held at its first sample,
# misses little.
LIVE_BURST_SIZES = (50, 300, 300, 350)
LIVE_BURST_PAUSE_S = 1.5
LIVE_NODE = "node-a"


def live_unavailable_reason():
    if os.geteuid() != 0:
        return "the live test captures packets, which needs root"
    if PROMETHEUS is None or PROMTOOL is None:
        return "prometheus and promtool are not installed (Debian package prometheus)"
    result = subprocess.run(
        [sys.executable, "-m", "netmon", "live", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=30
    )
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        return f"`netmon live --help` failed, so the live agent is unavailable: {last_line}"
    return None


@contextlib.contextmanager
def running(command, **options):
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, **options)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def live_scrape_config(metrics_port):
    """The netmon job of prometheus-kubernetes.yml, with a static target standing in for the pod.

    The target carries the labels that Kubernetes pod discovery would set
    for a netmon pod on node "node-a", and a wrong port that only the
    prometheus.io/port annotation corrects, so the scrape works only if the
    file's relabeling rules do.
    """
    job = yaml.safe_load(KUBERNETES_SCRAPE_CONFIG.read_text())["scrape_configs"][0]
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [
        {
            "targets": ["127.0.0.1:1"],
            "labels": {
                "__meta_kubernetes_pod_label_app_kubernetes_io_name": "netmon",
                "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
                "__meta_kubernetes_pod_annotation_prometheus_io_port": str(metrics_port),
                "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
                "__meta_kubernetes_pod_node_name": LIVE_NODE,
            },
        }
    ]
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [job],
    }


def expected_from_client(transactions):
    """Compute what netmon should count for the client's transactions: {byte counter: {series labels: bytes}}."""
    mapper = EndpointMapper(**load_routes_file(ROUTES_FILE))
    expected = {metric: Counter() for metric in BYTE_COUNTERS}
    for transaction in transactions:
        labels = {"method": normalize_method(transaction.method), "endpoint": mapper.endpoint(transaction.path)}
        expected[BYTE_COUNTERS[0]][tuple(sorted(labels.items()))] += transaction.request_bytes
        labels["status"] = str(transaction.status)
        expected[BYTE_COUNTERS[1]][tuple(sorted(labels.items()))] += transaction.response_bytes
    return {metric: dict(values) for metric, values in expected.items()}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    reason = live_unavailable_reason()
    if reason:
        pytest.skip(reason)
    sys.path.insert(0, str(ROOT / "scripts"))
    from scheduler_client import run_mix

    directory = tmp_path_factory.mktemp("live")
    metrics_port = free_port()
    server_command = [sys.executable, str(ROOT / "scripts" / "scheduler_server.py"), "--host", "127.0.0.1",
                      "--port", "0", "--log-level", "WARNING"]
    with running(server_command) as server:
        listening = server.stdout.readline()
        match = re.fullmatch(r"listening on 127\.0\.0\.1 port (\d+)\n", listening)
        assert match, f"scheduler server did not start: {listening!r} {server.stderr.read() if server.poll() else ''}"
        server_port = int(match.group(1))

        agent_command = [sys.executable, "-m", "netmon", "live", "--iface", "lo", "--port", str(server_port),
                         "--routes-file", str(ROUTES_FILE), "--metrics-listen", "127.0.0.1",
                         "--metrics-port", str(metrics_port), "--log-level", "warning"]
        with running(agent_command) as agent:
            metrics_url = f"http://127.0.0.1:{metrics_port}"

            def agent_healthy():
                assert agent.poll() is None, f"netmon live exited:\n{agent.stderr.read()}"
                with contextlib.suppress(OSError):
                    return http_get(f"{metrics_url}/healthz", timeout=1) == "ok\n"
                return False

            wait_for(agent_healthy, 15, "netmon live never answered /healthz")

            config = directory / "prometheus.yml"
            config.write_text(yaml.safe_dump(live_scrape_config(metrics_port)))
            with running_prometheus(config, directory / "data", directory / "prometheus.log") as prometheus:
                def target_up():
                    result = prometheus.query('up{job="netmon"}', time.time())
                    return result and result[0]["value"][1] == "1"

                wait_for(target_up, 15, f"Prometheus never scraped the agent:\n{prometheus.read_log()}")
                started = time.time()

                transactions = []
                for burst, size in enumerate(LIVE_BURST_SIZES):
                    if burst:
                        time.sleep(LIVE_BURST_PAUSE_S)
                    transactions += run_mix("127.0.0.1", server_port, size, seed=burst + 1)
                requests = len(transactions)

                def agent_counted_all():
                    samples = parse_exposition(http_get(f"{metrics_url}/metrics"))
                    return samples.get(("scheduler_http_requests_total", frozenset())) == requests

                wait_for(agent_counted_all, 15, "the agent never counted all requests")
                # The agent reads the kernel's drop counters once a second.
                time.sleep(1.5)
                exposition = http_get(f"{metrics_url}/metrics")

                def prometheus_has_all():
                    raw = prometheus.raw_samples("scheduler_http_requests_total", "1m", time.time())
                    points = [point for series in raw.values() for point in series]
                    return points and points[-1][1] == requests and points[-1][0]

                wait_for(prometheus_has_all, 15, "Prometheus never scraped the final request count")
                # One more scrape, so that the drop counter read above is in too.
                time.sleep(1.5)
                at = prometheus_has_all()
                yield {
                    "prometheus": prometheus,
                    "transactions": transactions,
                    "exposition": exposition,
                    "start": started,
                    "at": at,
                }


@needs_prometheus
def test_live_dashboard_queries_return_series(live):
    server, at = live["prometheus"], live["at"]
    empty = []
    for title, ref_id, expr in dashboard_targets(load_dashboard()):
        result = server.query(substitute_variables(expr), at)
        if not result:
            empty.append(f"{title} {ref_id}: {expr}")
        for series in result:
            assert math.isfinite(float(series["value"][1])), f"{title} {ref_id} returned {series}"
    assert empty == [], "dashboard queries without data"

    # The capture drops panel has a series for the agent. Its value is not
    # checked here: a loaded machine may drop packets, which the exact counts
    # below would show.
    drops = server.vector("netmon_capture_packets_dropped_total", at, key=lambda labels: labels["instance"])
    assert list(drops) == [LIVE_NODE]


@needs_prometheus
def test_live_variables_and_instance_filter(live):
    server, at = live["prometheus"], live["at"]
    variables = {variable["name"]: variable for variable in load_dashboard()["templating"]["list"]}
    # The instance is the node name, set by the relabeling rules of
    # prometheus-kubernetes.yml.
    assert server.label_values(variables["instance"]["query"], live["start"], at) == [LIVE_NODE]
    endpoints = server.label_values(variables["endpoint"]["query"], live["start"], at)
    expected = expected_from_client(live["transactions"])[BYTE_COUNTERS[1]]
    assert set(endpoints) == {dict(labels)["endpoint"] for labels in expected}

    # A concrete instance and endpoint select data too.
    expr = 'sum(rate(scheduler_http_request_bytes_total{instance=~"node-a", endpoint=~"/jobs"}[1m]))'
    assert server.query(expr, at) != []


@needs_prometheus
def test_live_last_values_match_client(live):
    server, at = live["prometheus"], live["at"]
    expected = expected_from_client(live["transactions"])
    for metric in BYTE_COUNTERS:
        raw = server.raw_samples(metric, "5m", at)
        drops = server.query("netmon_capture_packets_dropped_total", at)
        assert last_values(raw, by_series) == expected[metric], f"{metric} differs; capture drops: {drops}"


@needs_prometheus
def test_live_increase_matches_client(live):
    server, at = live["prometheus"], live["at"]
    expected = expected_from_client(live["transactions"])
    # Whole seconds that reach back past the first scrape after traffic began.
    window = f"{math.ceil(at - live['start']) + 5}s"
    for metric in BYTE_COUNTERS:
        client = Counter()
        for labels, value in expected[metric].items():
            client[dict(labels)["endpoint"]] += value
        raw = server.raw_samples(metric, window, at)
        assert last_values(raw, by_endpoint) == dict(client)

        bounds = counter_bounds(raw, by_endpoint)
        increases = server.vector(f"sum by (endpoint) (increase({metric}[{window}]))", at, key=by_endpoint)
        assert set(increases) == set(client)
        for endpoint, increase in increases.items():
            low, high = bounds[endpoint]
            assert high == client[endpoint], f"{endpoint} has a series with a single sample in the window"
            assert_within(f"{metric} increase of {endpoint}", increase, low, high)


@needs_prometheus
def test_live_panel_values(live):
    server, at = live["prometheus"], live["at"]
    # The whole test runs within the 1m rate window.
    assert at - live["start"] < 55
    check_rate_panels(server, at, expected_from_client(live["transactions"]))
    check_quantile_panels(server, at, parse_exposition(live["exposition"]))


@needs_prometheus
def test_live_rules_evaluate(live):
    server = live["prometheus"]

    def evaluated():
        groups = server.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        # Rules not evaluated yet have Go's zero time.
        return rules if not any(rule["lastEvaluation"].startswith("0001-") for rule in rules) else None

    rules = wait_for(evaluated, 10, "Prometheus never evaluated the rules")
    assert {rule["name"]: rule["health"] for rule in rules} == {rule["name"]: "ok" for rule in rules}
    assert [alert for alert in server.api("alerts")["alerts"] if alert["state"] == "firing"] == []


@needs_prometheus
def test_live_exposition_passes_promtool_lint(live):
    assert lint_findings(live["exposition"]) - ACCEPTED_LINT_FINDINGS == set()
