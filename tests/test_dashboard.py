"""The Grafana dashboard and provisioning files: structure, exact queries, units and variables.

tests/test_prometheus.py runs the same queries against Prometheus.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_PATH = ROOT / "grafana" / "dashboards" / "scheduler-bandwidth.json"
PROVISIONING = ROOT / "grafana" / "provisioning"

HTTP = '{instance=~"$instance", endpoint=~"$endpoint"}'
HEALTH = '{instance=~"$instance"}'

# The five panels of the scheduler dashboard's "Scheduler Bandwidth" row:
# title -> (panel type, unit, expressions in refId order).
BANDWIDTH_PANELS = {
    "Bandwidth in and out": (
        "timeseries",
        "Bps",
        [
            f"rate(scheduler_http_request_bytes_total{HTTP}[1m])",
            f"rate(scheduler_http_response_bytes_total{HTTP}[1m])",
        ],
    ),
    "Request and response size P50/P95": (
        "timeseries",
        "bytes",
        [
            f"histogram_quantile(0.5, sum by (le) (rate(scheduler_http_request_size_bytes_bucket{HTTP}[5m])))",
            f"histogram_quantile(0.95, sum by (le) (rate(scheduler_http_request_size_bytes_bucket{HTTP}[5m])))",
            f"histogram_quantile(0.5, sum by (le) (rate(scheduler_http_response_size_bytes_bucket{HTTP}[5m])))",
            f"histogram_quantile(0.95, sum by (le) (rate(scheduler_http_response_size_bytes_bucket{HTTP}[5m])))",
        ],
    ),
    "Total inbound": ("stat", "Bps", [f"sum(rate(scheduler_http_request_bytes_total{HTTP}[1m]))"]),
    "Total outbound": ("stat", "Bps", [f"sum(rate(scheduler_http_response_bytes_total{HTTP}[1m]))"]),
    "Bandwidth by endpoint": (
        "timeseries",
        "Bps",
        [
            f"sum by (endpoint) (rate(scheduler_http_request_bytes_total{HTTP}[1m]))",
            f"sum by (endpoint) (rate(scheduler_http_response_bytes_total{HTTP}[1m]))",
        ],
    ),
}

EXTRA_BANDWIDTH_PANELS = {
    "Size P95 by endpoint": (
        "timeseries",
        "bytes",
        [
            f"histogram_quantile(0.95, sum by (le, endpoint) (rate(scheduler_http_request_size_bytes_bucket{HTTP}[5m])))",
            f"histogram_quantile(0.95, sum by (le, endpoint) (rate(scheduler_http_response_size_bytes_bucket{HTTP}[5m])))",
        ],
    ),
}

HEALTH_PANELS = {
    "Capture drops": (
        "timeseries",
        "pps",
        [f"sum by (instance) (rate(netmon_capture_packets_dropped_total{HEALTH}[$__rate_interval]))"],
    ),
    "Unattributed bytes by reason": (
        "timeseries",
        "Bps",
        [f"sum by (direction, reason) (rate(netmon_unattributed_bytes_total{HEALTH}[$__rate_interval]))"],
    ),
    "HTTP parse errors": (
        "timeseries",
        "cps",
        [f"sum by (reason) (rate(netmon_http_parse_errors_total{HEALTH}[$__rate_interval]))"],
    ),
    "Tracked connections": ("timeseries", "short", [f"sum by (instance) (netmon_connections_tracked{HEALTH})"]),
}


def load_dashboard():
    return json.loads(DASHBOARD_PATH.read_text())


def iter_panels(dashboard):
    """Yield every panel, rows and panels inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_targets(dashboard):
    """Return (panel title, refId, expr) for every query of every panel."""
    return [
        (panel["title"], target["refId"], target["expr"])
        for panel in iter_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def panels_by_title(dashboard):
    panels = {}
    for panel in iter_panels(dashboard):
        assert panel["title"] not in panels, f"two panels are titled {panel['title']!r}"
        panels[panel["title"]] = panel
    return panels


def rows_of(dashboard):
    """Return {row title: [titles of the panels below it, up to the next row]}."""
    rows = {}
    current = None
    for panel in sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], [])
        else:
            assert current is not None, f"panel {panel['title']!r} is above the first row"
            current.append(panel["title"])
    return rows


@pytest.fixture(scope="module")
def dashboard():
    return load_dashboard()


def test_dashboard_file_matches_generator():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_dashboard.py"), "--check"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_dashboard_metadata(dashboard):
    assert dashboard["title"] == "Scheduler Bandwidth"
    assert dashboard["uid"] == "netmon-scheduler-bandwidth"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None, "an id would make the import overwrite another dashboard"


@pytest.mark.parametrize(
    "title, spec",
    [*BANDWIDTH_PANELS.items(), *EXTRA_BANDWIDTH_PANELS.items(), *HEALTH_PANELS.items()],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_panel_queries_and_unit(dashboard, title, spec):
    panel_type, unit, expressions = spec
    panel = panels_by_title(dashboard).get(title)
    assert panel is not None, f"panel {title!r} is missing"
    assert panel["type"] == panel_type
    assert panel["fieldConfig"]["defaults"]["unit"] == unit
    assert [target["expr"] for target in panel["targets"]] == expressions
    ref_ids = [target["refId"] for target in panel["targets"]]
    assert len(set(ref_ids)) == len(ref_ids), f"duplicate refId in {title!r}"


def test_quantiles_aggregate_by_le(dashboard):
    for title, ref_id, expr in dashboard_targets(dashboard):
        if "histogram_quantile" in expr:
            assert "sum by (le" in expr, f"{title} {ref_id} does not aggregate buckets by le: {expr}"


def test_rows_hold_their_panels(dashboard):
    rows = rows_of(dashboard)
    assert list(rows) == ["Scheduler Bandwidth", "netmon health"]
    assert sorted(rows["Scheduler Bandwidth"]) == sorted([*BANDWIDTH_PANELS, *EXTRA_BANDWIDTH_PANELS])
    assert sorted(rows["netmon health"]) == sorted(HEALTH_PANELS)


def test_panels_do_not_overlap(dashboard):
    cells = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, f"{panel['title']!r} starts left of the grid"
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']!r} reaches past the grid's 24 columns"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_panel_ids_unique(dashboard):
    ids = [panel["id"] for panel in iter_panels(dashboard)]
    assert len(set(ids)) == len(ids)


def test_queries_use_datasource_variable(dashboard):
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for panel in iter_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, f"{panel['title']} {target['refId']}"


def test_template_variables(dashboard):
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "instance", "endpoint"]

    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"

    assert variables["instance"]["query"] == "label_values(netmon_packets_read_total, instance)"
    assert variables["endpoint"]["query"] == (
        'label_values(scheduler_http_response_bytes_total{instance=~"$instance"}, endpoint)'
    )
    for name in ("instance", "endpoint"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variable["multi"] is True
        assert variable["includeAll"] is True
        # ".*" also matches series without the label, such as backfilled ones
        # without an instance.
        assert variable["allValue"] == ".*"
        assert variable["current"]["value"] == ["$__all"]


def test_every_query_filters_by_instance(dashboard):
    for title, ref_id, expr in dashboard_targets(dashboard):
        assert 'instance=~"$instance"' in expr, f"{title} {ref_id} ignores the instance variable: {expr}"


def test_provisioned_datasource():
    config = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    assert config["apiVersion"] == 1
    (datasource,) = config["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://127.0.0.1:9090"
    # Grafana's $__rate_interval is at least 4 times this scrape interval.
    assert datasource["jsonData"]["timeInterval"] == "15s"


def test_provisioned_dashboard_provider():
    config = yaml.safe_load((PROVISIONING / "dashboards" / "netmon.yaml").read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
