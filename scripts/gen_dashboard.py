#!/usr/bin/env python3
"""Generate grafana/dashboards/scheduler-bandwidth.json, the netmon Grafana dashboard.

The dashboard is written from code so that panel ids and grid positions stay
consistent when a panel is added. tests/test_dashboard.py fails when the
committed file differs from what this script writes. Run it after a change:

    python3 scripts/gen_dashboard.py           # rewrite the JSON file
    python3 scripts/gen_dashboard.py --check   # exit 1 if the file is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent.parent / "grafana" / "dashboards" / "scheduler-bandwidth.json"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Label matchers of the template variables. Both variables are multi-value
# with "All" as ".*", which also matches series without the label. Series
# backfilled from a capture file carry no instance label, for example.
INSTANCE = 'instance=~"$instance"'
ENDPOINT = 'endpoint=~"$endpoint"'
HTTP_SELECTOR = "{" + INSTANCE + ", " + ENDPOINT + "}"
HEALTH_SELECTOR = "{" + INSTANCE + "}"

# The five panels of the "Scheduler Bandwidth" row in the scheduler's own
# dashboard use 1m rate windows, and 5m for quantiles. These panels keep
# both and add the template variables as label matchers.
RATE_WINDOW = "1m"
QUANTILE_WINDOW = "5m"

PANEL_WIDTH = 12
PANEL_HEIGHT = 8


def rate(metric: str, selector: str = HTTP_SELECTOR, window: str = RATE_WINDOW) -> str:
    return f"rate({metric}{selector}[{window}])"


def size_quantile(quantile: float, direction: str, by: str = "le") -> str:
    buckets = rate(f"scheduler_http_{direction}_size_bytes_bucket", window=QUANTILE_WINDOW)
    return f"histogram_quantile({quantile}, sum by ({by}) ({buckets}))"


def target(ref_id: str, expr: str, legend: str) -> dict:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": True,
        "refId": ref_id,
    }


def timeseries(title: str, description: str, unit: str, targets: list[dict]) -> dict:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "color": {"mode": "palette-classic"},
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 10,
                    "showPoints": "never",
                    "spanNulls": False,
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {
                "calcs": ["mean", "max", "lastNotNull"],
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
    }


def stat(title: str, description: str, unit: str, targets: list[dict]) -> dict:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
            },
            "overrides": [],
        },
        "options": {
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        },
        "targets": targets,
    }


def bandwidth_panels() -> list[dict]:
    request_bytes = "scheduler_http_request_bytes_total"
    response_bytes = "scheduler_http_response_bytes_total"
    return [
        timeseries(
            "Bandwidth in and out",
            "HTTP bytes per second on the wire (start line, headers and body), one line per series: "
            "in = requests, out = responses.",
            "Bps",
            [
                target("A", rate(request_bytes), "in {{instance}} {{method}} {{endpoint}}"),
                target("B", rate(response_bytes), "out {{instance}} {{method}} {{endpoint}} {{status}}"),
            ],
        ),
        timeseries(
            "Request and response size P50/P95",
            "Size quantiles of HTTP messages over 5 minutes, interpolated inside the histogram buckets "
            "(100 B, 1 kB, 10 kB, ... by default), across all selected instances and endpoints.",
            "bytes",
            [
                target("A", size_quantile(0.5, "request"), "request p50"),
                target("B", size_quantile(0.95, "request"), "request p95"),
                target("C", size_quantile(0.5, "response"), "response p50"),
                target("D", size_quantile(0.95, "response"), "response p95"),
            ],
        ),
        stat(
            "Total inbound",
            "HTTP request bytes per second, all selected instances and endpoints together.",
            "Bps",
            [target("A", f"sum({rate(request_bytes)})", "inbound")],
        ),
        stat(
            "Total outbound",
            "HTTP response bytes per second, all selected instances and endpoints together.",
            "Bps",
            [target("A", f"sum({rate(response_bytes)})", "outbound")],
        ),
        timeseries(
            "Bandwidth by endpoint",
            "HTTP bytes per second by endpoint label: in = requests, out = responses.",
            "Bps",
            [
                target("A", f"sum by (endpoint) ({rate(request_bytes)})", "in {{endpoint}}"),
                target("B", f"sum by (endpoint) ({rate(response_bytes)})", "out {{endpoint}}"),
            ],
        ),
        timeseries(
            "Size P95 by endpoint",
            "95th percentile of request and response sizes over 5 minutes, per endpoint label.",
            "bytes",
            [
                target("A", size_quantile(0.95, "request", by="le, endpoint"), "request {{endpoint}}"),
                target("B", size_quantile(0.95, "response", by="le, endpoint"), "response {{endpoint}}"),
            ],
        ),
    ]


def health_panels() -> list[dict]:
    def health_rate(metric: str) -> str:
        return rate(metric, HEALTH_SELECTOR, "$__rate_interval")

    return [
        timeseries(
            "Capture drops",
            "Packets the kernel dropped because the agent's capture buffer was full. Their bytes are "
            "missing from every other panel. Only the live agent exports this, so the panel is empty "
            "for data backfilled from a capture file.",
            "pps",
            [target("A", f"sum by (instance) ({health_rate('netmon_capture_packets_dropped_total')})", "{{instance}}")],
        ),
        timeseries(
            "Unattributed bytes by reason",
            "TCP payload bytes on the server ports that belong to no HTTP message: midstream, not_http, "
            "tunnel, gap or truncated (see README, How bytes are counted).",
            "Bps",
            [
                target(
                    "A",
                    f"sum by (direction, reason) ({health_rate('netmon_unattributed_bytes_total')})",
                    "{{direction}} {{reason}}",
                )
            ],
        ),
        timeseries(
            "HTTP parse errors",
            "Messages netmon could not frame, by reason. The bytes from such an error up to the next "
            "message start count as unattributed.",
            "cps",
            [target("A", f"sum by (reason) ({health_rate('netmon_http_parse_errors_total')})", "{{reason}}")],
        ),
        timeseries(
            "Tracked connections",
            "TCP connections the agent holds state for.",
            "short",
            [target("A", f"sum by (instance) (netmon_connections_tracked{HEALTH_SELECTOR})", "{{instance}}")],
        ),
    ]


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def layout(sections: list[tuple[dict, list[dict]]]) -> list[dict]:
    """Number the panels and place them two per line below their row."""
    panels = []
    y = 0
    for row_panel, members in sections:
        row_panel["gridPos"] = {"h": 1, "w": 24, "x": 0, "y": y}
        panels.append(row_panel)
        y += 1
        for index, panel in enumerate(members):
            panel["gridPos"] = {
                "h": PANEL_HEIGHT,
                "w": PANEL_WIDTH,
                "x": (index % 2) * PANEL_WIDTH,
                "y": y + (index // 2) * PANEL_HEIGHT,
            }
            panels.append(panel)
        y += ((len(members) + 1) // 2) * PANEL_HEIGHT
    for number, panel in enumerate(panels, start=1):
        panel["id"] = number
    return panels


def variables() -> list[dict]:
    def query_variable(name: str, label: str, query: str) -> dict:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "query": query,
            "definition": query,
            "refresh": 2,
            "multi": True,
            "includeAll": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [],
            "regex": "",
            "sort": 1,
            "hide": 0,
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "options": [],
            "regex": "",
            "refresh": 1,
            "hide": 0,
            "includeAll": False,
            "multi": False,
        },
        # netmon_packets_read_total exists from the agent's start, before any
        # HTTP traffic creates the scheduler_http_* series.
        query_variable("instance", "Instance", "label_values(netmon_packets_read_total, instance)"),
        # Responses carry the endpoint labels of all answered requests, plus
        # /{unknown} for responses whose request was not captured.
        query_variable(
            "endpoint",
            "Endpoint",
            'label_values(scheduler_http_response_bytes_total{instance=~"$instance"}, endpoint)',
        ),
    ]


def build_dashboard() -> dict:
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "HTTP bandwidth of the scheduler API measured by netmon from packets, and netmon's own health.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "liveNow": False,
        "panels": layout(
            [
                (row("Scheduler Bandwidth"), bandwidth_panels()),
                (row("netmon health"), health_panels()),
            ]
        ),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["netmon", "scheduler"],
        "templating": {"list": variables()},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": "Scheduler Bandwidth",
        "uid": "netmon-scheduler-bandwidth",
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    return json.dumps(build_dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file differs instead of writing it")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date. Run python3 scripts/gen_dashboard.py to rewrite it.", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
