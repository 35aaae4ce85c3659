"""Live agent: capture from an interface and serve /metrics (in progress)."""


def add_live_parser(commands, add_common_options):
    live = commands.add_parser("live", help="capture from an interface and serve Prometheus metrics")
    live.add_argument("--iface", required=True, help="interface to capture on, or 'any'")
    add_common_options(live)
    live.set_defaults(handler=lambda args: 2)
