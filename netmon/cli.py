"""Command line: ``netmon analyze`` (capture files) and ``netmon live`` (an interface).

One error boundary in ``main``: expected failures become a one-line message
and an exit status; a traceback appears only with ``--log-level debug``.
"""

import argparse
import logging
import os
import re
import sys
import time

from . import __version__
from .capture import CaptureError, CaptureFile
from .decode import linktype_name
from prometheus_client import generate_latest

from .metrics import DEFAULT_BUCKETS, DEFAULT_PREFIX, HealthCollector, HttpMetrics, LabelPolicy, new_registry
from .openmetrics import OpenMetricsRecorder
from .pipeline import Pipeline, PortDiscovery
from .report import EndpointTable, JsonlWriter
from .routes import UNMATCHED_MODES, EndpointMapper, RouteConfigError, load_openapi, load_routes_file
from .stream import Limits

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2

log = logging.getLogger("netmon")


class UsageError(Exception):
    """A command-line value that is invalid; exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a two-line error instead of the whole usage block."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\nTry '{self.prog} --help' for more information.\n")


class LowercaseLevelFormatter(logging.Formatter):
    """Format level names in lower case, matching the CLI's "netmon: error:" lines."""

    def format(self, record):
        record.levelname_lower = record.levelname.lower()
        return super().format(record)


def main(argv=None):
    sys.exit(run(sys.argv[1:] if argv is None else argv))


def run(argv):
    parser = build_parser()
    if argv and argv[0].startswith("--iface"):
        # `netmon --iface eth0 --port 8080` is the live agent's short form.
        argv = ["live"] + list(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    configure_logging(args.log_level)
    try:
        return args.handler(args)
    except UsageError as error:
        print(f"netmon: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`), so stop quietly.
        sys.stderr.close()
        return EXIT_OK


def configure_logging(level_name):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LowercaseLevelFormatter("netmon: %(levelname_lower)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level_name.upper()))


def build_parser():
    parser = ArgumentParser(
        prog="netmon",
        description="Passive HTTP/1.x bandwidth monitor: TCP packets in, Prometheus metrics out.",
    )
    parser.add_argument("--version", action="version", version=f"netmon {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)

    analyze = commands.add_parser(
        "analyze",
        help="analyse pcap/pcapng files (gzip allowed) and report HTTP traffic per endpoint",
        description="Read capture files in order, as one capture, and report their HTTP/1.x transactions.",
    )
    analyze.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng file, optionally gzip-compressed")
    add_common_options(analyze)
    analyze.add_argument(
        "--format",
        choices=("table", "jsonl", "prometheus", "openmetrics"),
        default="table",
        help="table: per endpoint and status; jsonl: one JSON object per transaction; "
        "prometheus: the text exposition the live agent would serve; "
        "openmetrics: every metric sampled over capture time, for promtool tsdb create-blocks-from "
        "openmetrics (default: table)",
    )
    analyze.add_argument(
        "--sample-interval",
        type=positive_float,
        default=15.0,
        metavar="SECONDS",
        help="with --format openmetrics: seconds of capture time between samples (default: 15)",
    )
    analyze.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr; auto shows it on a terminal once a file takes over 2 s",
    )
    analyze.add_argument(
        "--show-endpoint-map",
        action="store_true",
        help="also print which raw paths went to which endpoint label, to tune --route templates",
    )
    analyze.set_defaults(handler=cmd_analyze)

    from .live import add_live_parser

    add_live_parser(commands, add_common_options)
    return parser


def add_common_options(parser):
    parser.add_argument(
        "--port",
        action="append",
        type=port_number,
        default=[],
        metavar="N",
        help="server TCP port to monitor (repeatable); analyze detects the ports when none is given",
    )
    parser.add_argument(
        "--metric-prefix",
        type=metric_prefix,
        default=DEFAULT_PREFIX,
        help=f"prefix of the HTTP metric names (default: {DEFAULT_PREFIX})",
    )
    parser.add_argument(
        "--buckets",
        type=bucket_list,
        default=DEFAULT_BUCKETS,
        metavar="B1,B2,...",
        help="size histogram bucket bounds in bytes (default: 100,1e3,...,1e9)",
    )
    routes = parser.add_argument_group("endpoint labels")
    routes.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="TEMPLATE",
        help="route template such as /nodes/{id}/heartbeat or /static/* (repeatable); "
        "the most specific match is the endpoint label",
    )
    routes.add_argument(
        "--routes-file",
        metavar="FILE",
        help="TOML file with routes = [...], unmatched, max_endpoints and overflow_label "
        "(see examples/scheduler-routes.toml)",
    )
    routes.add_argument(
        "--routes-from",
        action="append",
        default=[],
        metavar="OPENAPI",
        help="OpenAPI 3 document (YAML or JSON) whose paths become route templates (repeatable)",
    )
    routes.add_argument(
        "--unmatched",
        choices=UNMATCHED_MODES,
        help="label of paths no template matches: heuristic replaces id-like segments with {id}, "
        "path keeps the path, wildcard gives /*, drop leaves them out of per-endpoint series "
        "(default: heuristic)",
    )
    routes.add_argument(
        "--max-endpoints",
        type=positive_int,
        metavar="N",
        help="distinct endpoint labels from unmatched paths before new ones go to /{other} (default: 100)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=positive_float,
        default=300.0,
        metavar="SECONDS",
        help="close a connection after this much capture time without packets (default: 300)",
    )
    parser.add_argument(
        "--max-memory-mb",
        type=positive_float,
        default=256.0,
        metavar="MB",
        help="total out-of-order reassembly buffer; past it the oldest holes are declared lost (default: 256)",
    )
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        default=1_000_000,
        metavar="N",
        help="connections tracked at once; past it the oldest is closed and counted (default: 1000000)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="log verbosity on stderr (default: warning)",
    )


def port_number(text):
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected a number from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}: expected a number from 1 to 65535")
    return port


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be greater than 0")
    return value


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be greater than 0")
    return value


def bucket_list(text):
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"invalid bucket list {text!r}: expected numbers separated by commas")
    try:
        buckets = tuple(float(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid bucket list {text!r}: expected numbers separated by commas") from None
    if not all(0 < bound < float("inf") for bound in buckets):
        raise argparse.ArgumentTypeError(f"invalid bucket list {text!r}: bounds must be finite sizes above 0 bytes")
    if list(buckets) != sorted(set(buckets)):
        raise argparse.ArgumentTypeError(f"invalid bucket list {text!r}: bounds must be distinct and ascending")
    return buckets


def metric_prefix(text):
    # Prometheus metric names: [a-zA-Z_:][a-zA-Z0-9_:]*
    if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        raise argparse.ArgumentTypeError(
            f"invalid metric prefix {text!r}: use letters, digits, '_' and ':', not starting with a digit"
        )
    return text


def endpoint_mapper_from(args):
    """Build the endpoint mapper from --routes-file, --routes-from and --route."""
    try:
        arguments = load_routes_file(args.routes_file) if args.routes_file else {"templates": []}
        templates = list(arguments.pop("templates"))
        for document in args.routes_from:
            templates.extend(load_openapi(document))
        templates.extend(args.route)
        if args.unmatched:
            arguments["unmatched"] = args.unmatched
        if args.max_endpoints:
            arguments["max_endpoints"] = args.max_endpoints
        # The same template from two sources is one route.
        return EndpointMapper(templates=list(dict.fromkeys(templates)), **arguments)
    except RouteConfigError as error:
        raise UsageError(str(error)) from None


def limits_from(args):
    return Limits(
        max_total_buffer=int(args.max_memory_mb * (1 << 20)),
        max_flows=args.max_connections,
        idle_timeout=args.idle_timeout,
        # A closed connection is kept a while to absorb late retransmissions,
        # but never longer than an idle one.
        closed_linger=min(30.0, args.idle_timeout),
    )


# -- analyze ---------------------------------------------------------------


def cmd_analyze(args):
    status = EXIT_OK
    mapper = endpoint_mapper_from(args)
    ports = sorted(set(args.port))
    port_note = None
    if not ports:
        # Errors in this first pass are reported by the analysis pass below.
        discovery = PortDiscovery()
        for path in args.files:
            read_file(path, discovery.packet, progress=args.progress, report=False, label="finding ports in ")
        ports = discovery.ports()
        port_note = discovery.describe()
        if args.format != "table":
            print(f"netmon: {port_note}", file=sys.stderr)

    policy = LabelPolicy(mapper)
    registry = new_registry()
    metrics = HttpMetrics(registry, prefix=args.metric_prefix, buckets=args.buckets)
    consumers = [metrics.observe]
    table = None
    if args.format == "jsonl":
        consumers.append(JsonlWriter(sys.stdout, mapper.path))
    elif args.format == "table":
        table = EndpointTable()
        consumers.append(table)

    def sink(transaction):
        method, endpoint = policy.labels(transaction)
        for consumer in consumers:
            consumer(transaction, method, endpoint)

    recorder = None
    if args.format == "openmetrics":
        recorder = OpenMetricsRecorder(registry)
        pipeline = Pipeline(ports, sink, limits_from(args), recorder.snapshot, args.sample_interval)
    else:
        pipeline = Pipeline(ports, sink, limits_from(args))
    registry.register(HealthCollector(pipeline, policy))
    problems = []
    for path in args.files:
        problem = read_file(path, pipeline.packet, progress=args.progress)
        if problem is not None:
            problems.append(problem)
            status = EXIT_INCOMPLETE
    pipeline.finish()

    if args.format == "prometheus":
        sys.stdout.write(generate_latest(registry).decode("utf-8"))
    elif args.format == "openmetrics":
        sys.stdout.write(recorder.render())
    elif args.format == "table":
        if port_note:
            print(port_note)
        else:
            print("server ports: " + ", ".join(str(port) for port in ports))
        sys.stdout.write(table.render())
        if table.dropped:
            print(f"not in the table: {table.dropped} requests whose paths --unmatched drop left out")
        sys.stdout.write(summary(pipeline, args.files, problems))
    if args.show_endpoint_map:
        out = sys.stdout if args.format == "table" else sys.stderr
        out.write(endpoint_map_text(mapper))
    sys.stdout.flush()
    return status


def read_file(path, handle_packet, progress, report=True, label=""):
    """Feed every packet of one file to ``handle_packet``; return an error text or None.

    With ``report`` the error is also printed on stderr.
    """
    capture = CaptureFile(path)
    message = None
    try:
        capture.open()
        bar = Progress(label + os.path.basename(str(path)), capture, progress)
        check_every = 1 << 14
        countdown = check_every
        for ts, linktype, data, wirelen in capture:
            handle_packet(ts, linktype, data, wirelen)
            countdown -= 1
            if countdown == 0:
                countdown = check_every
                bar.update()
        bar.done()
    except CaptureError as error:
        message = error.describe()
        if capture.gzip_truncated and "gzip" not in message:
            message += " (the gzip stream is cut short)"
        if capture.packets:
            message += f"; the {capture.packets} packets before it are counted"
    finally:
        capture.close()
    if message is None:
        for linktype, first_packet in sorted(capture.unsupported_linktypes.items()):
            message = (
                f"{path} (packet {first_packet}): {linktype_name(linktype)} is not supported; "
                "its packets are counted in netmon_packets_skipped_total{reason=\"unsupported_link\"}"
            )
            break
    if message is not None and report:
        print(f"netmon: error: {message}", file=sys.stderr)
    return message


def endpoint_map_text(mapper):
    mapping = mapper.endpoint_map()
    width = max((len(path) for path in mapping), default=4)
    lines = ["", f"{'PATH'.ljust(width)}  ENDPOINT"]
    for path, endpoint in sorted(mapping.items()):
        lines.append(f"{path.ljust(width)}  {endpoint}")
    return "\n".join(lines) + "\n"


def summary(pipeline, files, problems):
    table = pipeline.table
    unattributed = sum(table.inbound.unattributed.values()) + sum(table.outbound.unattributed.values())
    skipped = sum(table.skipped.values())
    lines = [
        "",
        f"files: {len(files)}, packets: {pipeline.packets}, skipped: {skipped}, "
        f"connections: {table.flows_created}, transactions: {table.transactions}",
        f"payload bytes: inbound {table.inbound.payload}, outbound {table.outbound.payload}; "
        f"unattributed: {unattributed}",
    ]
    if skipped:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(table.skipped.items()) if count)
        lines.append(f"skipped packets: {reasons}")
    if not table.transactions and table.skipped.get("other_port"):
        lines.append(
            f"note: {table.skipped['other_port']} TCP packets were on other ports; "
            "run without --port to detect the server ports"
        )
    for problem in problems:
        lines.append(f"incomplete input: {problem}")
    return "\n".join(lines) + "\n"


class Progress:
    """A one-line progress bar on stderr for files that take a while.

    ``auto`` shows it on a terminal once a file has taken 2 s; ``always``
    shows it from the start, terminal or not.
    """

    DELAY_S = 2.0

    def __init__(self, title, capture, mode):
        self.title = title
        self.capture = capture
        self.enabled = mode == "always" or (mode == "auto" and sys.stderr.isatty())
        self.delay = 0.0 if mode == "always" else self.DELAY_S
        self.started = time.monotonic()
        self.size = capture.size() if self.enabled else 0
        self.shown = False

    def update(self, final=False):
        if not self.enabled or not self.size:
            return
        elapsed = time.monotonic() - self.started
        if elapsed < self.delay and not final:
            return
        fraction = min(1.0, self.capture.position() / self.size)
        width = 30
        filled = int(fraction * width)
        sys.stderr.write(
            f"\r{self.title}: [{'#' * filled}{'.' * (width - filled)}] {fraction:6.1%} "
            f"{self.capture.packets} packets {elapsed:.0f}s"
        )
        sys.stderr.flush()
        self.shown = True

    def done(self):
        # Redraw once so the bar ends at the final packet count.
        if self.shown or (self.enabled and self.delay == 0):
            self.update(final=True)
            sys.stderr.write("\n")
            sys.stderr.flush()


if __name__ == "__main__":
    main()
