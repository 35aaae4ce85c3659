"""Live agent: capture from an interface and serve Prometheus metrics.

``netmon live --iface IFACE --port N`` feeds captured packets through the same
pipeline and metric families as ``netmon analyze --format prometheus``, and
serves them on ``/metrics``. The capture loop runs in the main thread. The
HTTP server runs in its own threads and only reads counters.
"""

import ctypes
import datetime
import errno
import json
import logging
import os
import pwd
import select
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .capture_live import BACKENDS, CaptureLostError, LiveCaptureError, PcapWriter, open_capture
from .decode import linktype_name
from .metrics import HealthCollector, HttpMetrics, LabelPolicy, new_registry
from .pipeline import Pipeline
from .webconfig import WebConfigError, load_web_config

log = logging.getLogger("netmon.live")

EXIT_OK = 0
EXIT_FAILURE = 1

# Not 9090, which is Prometheus itself. NOTE: the exporter port list on the
# Prometheus wiki covers all of 9100-9999, so a registered exporter may use
# this number too. It was not checked against that list.
DEFAULT_METRICS_PORT = 9469
DEFAULT_BUFFER_MB = 32
SUMMARY_INTERVAL_S = 60.0
TICK_S = 1.0
# Minimum seconds between two "packets dropped" warnings; drops in between
# are summed into the next one.
DROP_WARNING_INTERVAL_S = 10.0
# /healthz fails when the capture loop has not run for this long.
STALL_LIMIT_S = 10.0
# Packets read before the loop checks the clock and the stop flag.
BATCH_PACKETS = 4096
# Seconds between attempts to resume a lost capture: doubled after each
# failed attempt, from the first value up to the second.
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 5.0
# Minimum seconds between two "still down" warnings.
RETRY_LOG_INTERVAL_S = 60.0


def add_live_parser(commands, add_common_options):
    live = commands.add_parser(
        "live",
        help="capture from an interface and serve Prometheus metrics",
        description="Capture the TCP traffic of the --port servers on an interface and serve the "
        "metrics of `netmon analyze --format prometheus` on /metrics, plus /healthz.",
    )
    live.add_argument("--iface", required=True, help="interface to capture on, or 'any' for all")
    add_common_options(live)
    # A service should log its start and a periodic summary, so live logs at
    # info unless --log-level sets another level.
    for action in live._actions:
        if action.dest == "log_level":
            action.default = "info"
            action.help = "log verbosity on stderr (default: info)"
        elif action.dest == "port":
            action.help = "server port to monitor (repeatable, at least one)"

    serve = live.add_argument_group("metrics endpoint")
    serve.add_argument(
        "--metrics-listen",
        default="0.0.0.0",
        metavar="ADDRESS",
        help="address to serve /metrics and /healthz on; '::' for IPv6 (default: 0.0.0.0)",
    )
    serve.add_argument(
        "--metrics-port",
        type=_port_number,
        default=DEFAULT_METRICS_PORT,
        metavar="PORT",
        help=f"TCP port to serve /metrics and /healthz on (default: {DEFAULT_METRICS_PORT})",
    )

    serve.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="YAML file in the Prometheus exporter format with tls_server_config (cert_file, key_file) "
        "and basic_auth_users (user: bcrypt hash) for /metrics and /healthz",
    )

    capture = live.add_argument_group("capture")
    capture.add_argument(
        "--buffer-mb",
        type=_positive_float,
        default=DEFAULT_BUFFER_MB,
        metavar="MB",
        help=f"kernel capture buffer in MiB; raise it when packets are dropped (default: {DEFAULT_BUFFER_MB})",
    )
    capture.add_argument(
        "--capture-backend",
        choices=BACKENDS,
        default="auto",
        help="pcap: libpcap through the pcapy-ng package; afpacket: a packet socket, standard library "
        "only, about 5 times the cost per packet; auto: pcap when pcapy-ng is installed (default: auto)",
    )
    capture.add_argument(
        "--write-pcap",
        metavar="FILE",
        help="also write the captured packets to this pcap file, rotated to FILE.1, FILE.2, ...",
    )
    capture.add_argument(
        "--write-pcap-max-mb",
        type=_positive_float,
        default=100.0,
        metavar="MB",
        help="size in MiB at which --write-pcap starts a new file (default: 100)",
    )
    capture.add_argument(
        "--write-pcap-files",
        type=_positive_int,
        default=10,
        metavar="N",
        help="number of --write-pcap files kept, the current one included; older ones are deleted (default: 10)",
    )
    capture.add_argument(
        "--keep-secrets",
        action="store_true",
        help="write Authorization, Proxy-Authorization, Cookie and Set-Cookie values to --write-pcap "
        "unchanged; by default they are overwritten with '*' of the same length",
    )

    process = live.add_argument_group("process")
    process.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="capture processes; above 1 the kernel splits packets among them by flow (PACKET_FANOUT_HASH) "
        "and the parent process serves their summed metrics (default: 1)",
    )
    process.add_argument(
        "--user",
        default="nobody",
        help="user to switch to after opening the capture, when started as root (default: nobody)",
    )
    process.add_argument(
        "--no-drop-privileges",
        action="store_true",
        help="keep running as root after the capture is open",
    )
    process.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text: one line per message; json: one JSON object per line (default: text)",
    )
    live.set_defaults(handler=run_live)


def _port_number(text):
    from .cli import port_number

    return port_number(text)


def _positive_float(text):
    from .cli import positive_float

    return positive_float(text)


def _positive_int(text):
    from .cli import positive_int

    return positive_int(text)


# -- run ------------------------------------------------------------------


def run_live(args):
    from .cli import UsageError, endpoint_mapper_from, limits_from

    if not args.port:
        raise UsageError("live needs at least one --port: the TCP port of the HTTP server to monitor")
    if args.log_format == "json":
        use_json_logging()
    web_config = None
    if args.web_config_file:
        try:
            web_config = load_web_config(args.web_config_file)
        except WebConfigError as error:
            raise UsageError(str(error)) from None
    args.web_config = web_config
    drop_to = None
    if os.geteuid() == 0 and not args.no_drop_privileges:
        try:
            drop_to = pwd.getpwnam(args.user)
        except KeyError:
            raise UsageError(
                f"user {args.user!r} not found; name an existing one with --user, or keep root with "
                "--no-drop-privileges"
            ) from None

    if args.workers > 1:
        if args.write_pcap:
            raise UsageError("--write-pcap works with one capture process only; remove it or use --workers 1")
        from .fanout import run_fanout

        return run_fanout(args, drop_to)

    mapper = endpoint_mapper_from(args)
    policy = LabelPolicy(mapper)
    registry = new_registry()
    # The collectors are registered behind the agent's lock (below), because
    # the capture loop changes the dicts they iterate over.
    metrics = HttpMetrics(new_registry(), prefix=args.metric_prefix, buckets=args.buckets)

    def sink(transaction):
        method, endpoint = policy.labels(transaction)
        metrics.observe(transaction, method, endpoint)

    pipeline = Pipeline(args.port, sink, limits_from(args))

    try:
        capture = open_capture(args.capture_backend, args.iface, args.port, int(args.buffer_mb * (1 << 20)))
    except LiveCaptureError as error:
        return _fail(str(error))

    agent = Agent(args, capture, pipeline)
    agent.reload = lambda: reload_routes(args, policy, agent.lock)
    registry.register(LockedCollector(metrics, agent.lock))
    registry.register(LockedCollector(HealthCollector(pipeline, policy), agent.lock))
    registry.register(LockedCollector(CaptureCollector(agent), agent.lock))
    try:
        try:
            server = start_metrics_server(args.metrics_listen, args.metrics_port, registry, agent, web_config)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return _fail(
                    f"metrics port {args.metrics_port} on {args.metrics_listen} is already in use; "
                    "choose another with --metrics-port"
                )
            return _fail(f"serving metrics on {args.metrics_listen} port {args.metrics_port} failed: {error}")
        try:
            if drop_to is not None:
                drop_privileges(drop_to)
            if args.write_pcap:
                agent.writer = open_writer(args, capture.linktype, drop_to)
            return agent.run(server)
        except LiveCaptureError as error:
            return _fail(str(error))
        finally:
            server.shutdown()
            server.server_close()
    finally:
        capture.close()


def _fail(message):
    log.error("%s", message)
    return EXIT_FAILURE


def open_writer(args, linktype, user):
    writer = PcapWriter(
        args.write_pcap,
        linktype,
        max_bytes=int(args.write_pcap_max_mb * (1 << 20)),
        max_files=args.write_pcap_files,
        mask_secrets=not args.keep_secrets,
    )
    try:
        writer.open()
    except OSError as error:
        hint = ""
        if user is not None:
            hint = (
                f"; the agent runs as user {user.pw_name} by now, which needs write access to the "
                "directory; choose another --write-pcap directory or use --no-drop-privileges"
            )
        raise LiveCaptureError(f"opening --write-pcap file {args.write_pcap} failed: {error.strerror}{hint}") from None
    return writer


def describe_access(web_config):
    """Return the start line's note on TLS and basic authentication, empty without --web.config.file."""
    if web_config is None:
        return ""
    scheme = "HTTPS" if web_config.tls else "plain HTTP"
    auth = f"basic auth for {len(web_config.users)} users" if web_config.requires_auth else "no authentication"
    return f" ({scheme}, {auth})"


def reload_routes(args, policy, lock):
    """Re-read --routes-file and --routes-from after a SIGHUP; keep the old routes on error."""
    from .cli import UsageError, endpoint_mapper_from

    if not args.routes_file and not args.routes_from:
        log.info("SIGHUP: no --routes-file or --routes-from to reload")
        return
    try:
        mapper = endpoint_mapper_from(args)
    except UsageError as error:
        log.error("reloading the routes failed, the previous ones stay in use: %s", error)
        return
    with lock:
        # The overflow counter is a Prometheus counter: it must not restart.
        mapper.overflow_total = policy.mapper.overflow_total
        policy.mapper = mapper
    log.info("SIGHUP: reloaded the routes; route templates: %d", len(mapper.templates))


def user_name():
    """Return the effective user's name, or its uid when it has no passwd entry."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


# <linux/prctl.h> and <linux/capability.h>
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522


def drop_privileges(user):
    """Switch to ``user`` and its primary group, with no supplementary groups and no capabilities.

    setuid() from root already empties the permitted, effective and ambient
    sets. The bounding set is emptied first (while CAP_SETPCAP is still
    held) and the inheritable set after, so no later execve() can regain a
    capability, and no_new_privs keeps setuid binaries from doing so either.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    dropped = _drop_bounding_set(libc)
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    _clear_ambient_and_inheritable(libc)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        log.warning("setting no_new_privs failed: %s", os.strerror(ctypes.get_errno()))
    log.debug(
        "switched to user %s (uid %d, gid %d), %d capabilities dropped from the bounding set",
        user.pw_name, user.pw_uid, user.pw_gid, dropped,
    )


def _drop_bounding_set(libc):
    try:
        with open("/proc/sys/kernel/cap_last_cap") as file:
            last_capability = int(file.read())
    except (OSError, ValueError):
        last_capability = 63
    dropped = 0
    for capability in range(last_capability + 1):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) == 0:
            dropped += 1
            continue
        error = ctypes.get_errno()
        if error == errno.EINVAL:
            # The kernel does not know this capability number.
            break
        log.warning(
            "dropping capability %d from the bounding set failed: %s; the bounding set stays partly full",
            capability, os.strerror(error),
        )
        break
    return dropped


def _clear_ambient_and_inheritable(libc):
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        # EINVAL: a kernel before 4.3, which has no ambient set.
        if ctypes.get_errno() != errno.EINVAL:
            log.warning("clearing the ambient capabilities failed: %s", os.strerror(ctypes.get_errno()))
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    # Two struct __user_cap_data_struct {effective, permitted, inheritable}, all zero.
    data = (ctypes.c_uint32 * 6)()
    if libc.capset(header, data) != 0:
        log.warning("clearing the inheritable capabilities failed: %s", os.strerror(ctypes.get_errno()))


class Agent:
    """The capture loop and the state that the metrics endpoint reads."""

    def __init__(self, args, capture, pipeline):
        self.args = args
        self.capture = capture
        self.pipeline = pipeline
        self.writer = None
        self.stopping = False
        self.heartbeat = time.monotonic()
        self.received = 0
        self.dropped = 0
        self._dropped_warned = 0
        self._next_drop_warning = 0.0
        # False while the interface is down or gone and the capture is retried.
        self.capture_up = True
        # Held by the capture loop while it processes a batch and by each
        # scrape while it collects, so a scrape never iterates over a dict
        # that the pipeline is changing.
        self.lock = threading.Lock()
        # Called once a second from the capture loop; fan-out workers send
        # their counters to the parent from it.
        self.on_tick = None
        # Called from the capture loop after a SIGHUP.
        self.reload = None
        self.reload_requested = False

    def run(self, server):
        args = self.args
        host, port = server.server_address[:2]
        log.info(
            "capturing on %s (%s, %s backend, kernel buffer %.0f MiB), filter: TCP port %s; "
            "serving /metrics and /healthz on %s port %d%s; running as %s",
            args.iface,
            linktype_name(self.capture.linktype),
            self.capture.backend,
            self.capture.kernel_buffer_bytes / (1 << 20),
            " or ".join(str(port) for port in sorted(set(args.port))),
            host,
            port,
            describe_access(args.web_config),
            user_name(),
        )
        self.capture_until_stopped()
        self._log_summary("stopped")
        return EXIT_OK

    def capture_until_stopped(self):
        """Run the capture loop until SIGINT or SIGTERM, then close every flow and flush."""
        wake_reader, wake_writer = socket.socketpair()
        wake_writer.setblocking(False)
        previous = {number: signal.signal(number, self._stop) for number in (signal.SIGINT, signal.SIGTERM)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._request_reload)
        previous_wakeup = signal.set_wakeup_fd(wake_writer.fileno(), warn_on_full_buffer=False)
        try:
            self._loop(wake_reader)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for number, handler in previous.items():
                signal.signal(number, handler)
            wake_reader.close()
            wake_writer.close()
        with self.lock:
            self.pipeline.finish()
            self._read_statistics()
        if self.writer is not None:
            self.writer.close()

    def _stop(self, number, frame):
        self.stopping = True

    def _request_reload(self, number, frame):
        self.reload_requested = True

    def _loop(self, wake_reader):
        capture = self.capture
        poller = select.poll()
        poller.register(capture.fileno(), select.POLLIN)
        poller.register(wake_reader.fileno(), select.POLLIN)
        handle_packet = self.pipeline.packet
        if self.writer is not None:
            write = self.writer.write
            packet = self.pipeline.packet

            def handle_packet(ts, linktype, data, wirelen):
                write(ts, data, wirelen)
                packet(ts, linktype, data, wirelen)

        next_tick = time.monotonic() + TICK_S
        next_summary = time.monotonic() + SUMMARY_INTERVAL_S
        packets_at_tick = 0
        while not self.stopping:
            try:
                with self.lock:
                    count = capture.read_batch(handle_packet, BATCH_PACKETS)
            except CaptureLostError as error:
                self._recover_capture(str(error), wake_reader)
                poller = self._new_poller(wake_reader)
                continue
            if count == 0:
                poller.poll(TICK_S * 1000 / 4)
                try:
                    wake_reader.recv(64, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass
            now = time.monotonic()
            if now < next_tick:
                continue
            next_tick = now + TICK_S
            if self.reload_requested:
                self.reload_requested = False
                if self.reload is not None:
                    self.reload()
            self.heartbeat = now
            with self.lock:
                self._read_statistics()
                if self.pipeline.packets == packets_at_tick:
                    # Idle expiry runs on packet timestamps. Without packets the
                    # wall clock, which the kernel stamps packets with, drives it,
                    # so idle connections still release their memory.
                    self.pipeline.table.sweep(time.time())
                packets_at_tick = self.pipeline.packets
            if self.writer is not None:
                self.writer.flush()
            if self.on_tick is not None:
                self.on_tick()
            if now >= next_summary:
                next_summary = now + SUMMARY_INTERVAL_S
                self._log_summary("running")
            problem = capture.check_interface()
            if problem is not None:
                self._recover_capture(problem, wake_reader)
                poller = self._new_poller(wake_reader)

    def _new_poller(self, wake_reader):
        # A reopened capture can have a new descriptor.
        poller = select.poll()
        poller.register(self.capture.fileno(), select.POLLIN)
        poller.register(wake_reader.fileno(), select.POLLIN)
        return poller

    def _recover_capture(self, reason, wake_reader):
        """Retry the capture with exponential backoff until it reads again or a signal stops the agent.

        /metrics keeps serving meanwhile, with netmon_capture_up 0. The first
        failure is logged at once, and repeats at most every
        RETRY_LOG_INTERVAL_S seconds, with the number of retries.
        """
        interface = self.args.iface
        self.capture_up = False
        lost_at = time.monotonic()
        log.warning(
            "capture on %s lost: %s; retrying with backoff from %.1f to %.0f s",
            interface, reason, RETRY_INITIAL_S, RETRY_MAX_S,
        )
        next_log = lost_at + RETRY_LOG_INTERVAL_S
        delay = RETRY_INITIAL_S
        retries = 0
        while not self.stopping:
            _wait_readable(wake_reader, delay)
            now = time.monotonic()
            self.heartbeat = now
            if self.on_tick is not None:
                self.on_tick()
            if self.stopping:
                break
            reason = self.capture.recover()
            retries += 1
            if reason is None:
                self.capture_up = True
                log.info(
                    "capture on %s resumed after %.1f s and %d attempts", interface, time.monotonic() - lost_at, retries
                )
                return
            if now >= next_log:
                log.warning(
                    "capture on %s still down after %d retries in %.0f s: %s", interface, retries, now - lost_at, reason
                )
                next_log = now + RETRY_LOG_INTERVAL_S
            delay = min(delay * 2, RETRY_MAX_S)

    def _read_statistics(self):
        received, dropped = self.capture.read_statistics()
        self.received, self.dropped = received, dropped
        now = time.monotonic()
        if dropped > self._dropped_warned and now >= self._next_drop_warning:
            log.warning(
                "capture dropped %d packets since the last warning (%d in total of %d received); "
                "the counts are now incomplete; raise --buffer-mb or reduce the traffic captured",
                dropped - self._dropped_warned,
                dropped,
                received,
            )
            self._dropped_warned = dropped
            self._next_drop_warning = now + DROP_WARNING_INTERVAL_S

    def _log_summary(self, state):
        pipeline = self.pipeline
        log.info(
            "%s: packets %d, transactions %d, connections tracked %d, capture received %d, dropped %d",
            state,
            pipeline.packets,
            pipeline.table.transactions,
            len(pipeline.table.flows),
            self.received,
            self.dropped,
        )

    def healthy(self):
        return not self.stopping and self.capture_up and time.monotonic() - self.heartbeat < STALL_LIMIT_S


def _wait_readable(wake_reader, timeout):
    """Sleep up to ``timeout`` seconds, less when a signal arrives; drain the wake-up bytes."""
    ready, _, _ = select.select([wake_reader], [], [], timeout)
    if ready:
        try:
            wake_reader.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass


class LockedCollector:
    """A collector wrapper that collects while holding ``lock``, so its samples come from one consistent state."""

    def __init__(self, collector, lock):
        self.collector = collector
        self.lock = lock

    def collect(self):
        with self.lock:
            return list(self.collector.collect())


class CaptureCollector:
    """The capture source's counters, as last read by the capture loop."""

    def __init__(self, agent):
        self.agent = agent

    def collect(self):
        agent = self.agent
        received = CounterMetricFamily(
            "netmon_capture_packets_received",
            "Packets the kernel capture filter accepted, dropped ones included.",
        )
        received.add_metric([], agent.received)
        yield received
        dropped = CounterMetricFamily(
            "netmon_capture_packets_dropped",
            "Packets the kernel dropped because the capture buffer was full; their bytes are missing from all counts.",
        )
        dropped.add_metric([], agent.dropped)
        yield dropped
        written = CounterMetricFamily("netmon_pcap_written_bytes", "Bytes written to --write-pcap files.")
        written.add_metric([], agent.writer.bytes_written if agent.writer is not None else 0)
        yield written
        up = GaugeMetricFamily(
            "netmon_capture_up",
            "1 while the capture loop reads the interface; 0 while the interface is down or gone, "
            "and once the loop has stalled or stopped.",
        )
        up.add_metric([], 1 if agent.healthy() else 0)
        yield up


# -- metrics endpoint -------------------------------------------------------


# Seconds a metrics connection may take for the TLS handshake and for each
# read, so stalled clients do not keep their threads forever.
CONNECTION_TIMEOUT_S = 10.0


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    ssl_context = None

    def finish_request(self, request, client_address):
        # Runs in the connection's own thread, so a slow TLS handshake does
        # not hold up accept().
        request.settimeout(CONNECTION_TIMEOUT_S)
        if self.ssl_context is not None:
            request = self.ssl_context.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        # Usually a scraper that hung up mid-response, or a client that does
        # not speak TLS; the default handler would print a traceback to stderr.
        error = sys.exc_info()[1]
        log.debug("metrics request from %s failed: %s", client_address[0], error)


def start_metrics_server(address, port, registry, agent, web_config=None):
    """Serve /metrics and /healthz from a daemon thread; raise OSError when the bind fails.

    With ``web_config`` (a WebConfig) the server speaks TLS when it has a
    certificate, and responds with 401 to requests without a listed user.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if web_config is not None and not web_config.authorized(self.headers.get("Authorization")):
                self._send(401, "text/plain; charset=utf-8", b"unauthorized\n",
                           {"WWW-Authenticate": 'Basic realm="netmon"'})
                return
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/healthz":
                if agent.healthy():
                    self._send(200, "text/plain; charset=utf-8", b"ok\n")
                else:
                    self._send(503, "text/plain; charset=utf-8", b"capture down, stalled or stopping\n")
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found; try /metrics or /healthz\n")

        def _send(self, status, content_type, body, headers=None):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            log.debug("metrics request from %s: " + format, self.client_address[0], *args)

    server_class = _MetricsServer
    if ":" in address:
        server_class = type("_MetricsServer6", (_MetricsServer,), {"address_family": socket.AF_INET6})
    server = server_class((address, port), Handler)
    if web_config is not None:
        server.ssl_context = web_config.ssl_context
    thread = threading.Thread(target=server.serve_forever, name="netmon-metrics", daemon=True)
    thread.start()
    return server


# -- logging ----------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message."""

    def format(self, record):
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def use_json_logging():
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter())
