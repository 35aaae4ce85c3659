"""Live capture split across worker processes with the kernel's PACKET_FANOUT.

``netmon live --workers N`` forks N workers. Each opens its own capture on
the interface and joins one fan-out group with ``PACKET_FANOUT_HASH``. The
kernel then hands each packet to exactly one worker, chosen by a symmetric
hash of its addresses and ports, so both directions of a TCP connection
reach the same worker, which reassembles it alone. Each worker runs the ordinary pipeline
and, once a second, sends a snapshot of its counters to the parent over a
pipe. The parent sums the latest snapshots and serves them on ``/metrics``
through the same collectors as the single-process agent, so the exposition
has the same families, labels and order.
"""

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from types import SimpleNamespace

from .capture_live import SOL_PACKET, LiveCaptureError, open_capture
from .decode import linktype_name
from .metrics import HealthCollector, HttpMetrics, LabelPolicy, new_registry
from .pipeline import Pipeline

log = logging.getLogger("netmon.live")

# <linux/if_packet.h>
PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0

# Seconds the parent waits for every worker to open its capture.
READY_TIMEOUT_S = 15.0
# Seconds the parent waits for the final counters of a stopping worker.
STOP_TIMEOUT_S = 30.0
# Seconds after joining the group during which packets stamped before the
# join are discarded (see JoinedCapture).
JOIN_GRACE_S = 2.0

_HTTP_FIELDS = ("inbound_bytes", "outbound_bytes", "request_count", "response_count")
_PIPELINE_FIELDS = ("packets", "wire_bytes", "tso_packets")
_TABLE_COUNTS = ("flows_created", "unmatched_evicted", "transactions", "buffered", "flows_tracked")
_TABLE_COUNTERS = ("skipped", "parse_errors", "evicted")
_DIRECTION_FIELDS = ("payload", "attributed", "retransmitted", "gaps")


def join_fanout(capture, group_id):
    """Add the capture's packet socket to fan-out group ``group_id``, split by flow hash.

    Works for both backends, because libpcap's handle is an AF_PACKET socket
    too: the option is set on a duplicate of its descriptor, which refers to
    the same socket. Raises LiveCaptureError.
    """
    sock = socket.socket(fileno=os.dup(capture.fileno()))
    try:
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT, group_id | PACKET_FANOUT_HASH << 16)
    except OSError as error:
        raise LiveCaptureError(f"joining packet fan-out group {group_id} failed: {error.strerror or error}") from None
    finally:
        sock.close()


class JoinedCapture:
    """A capture that discards packets stamped before it joined the fan-out group.

    Until a socket joins the group it receives every matching packet, as do
    the workers already in the group, so those early packets would be counted
    twice. The kernel stamps packets on arrival, so dropping the ones stamped
    before the join removes the copies. NOTE: a packet stamped just before the
    join but handed out after it is dropped too. That loss happens at start-up
    only, like the loss of any capture that starts during traffic.
    """

    def __init__(self, capture, joined_at, group_id):
        self.capture = capture
        self.joined_at = joined_at
        self.group_id = group_id
        self.discarded = 0
        # True from a reopen of the capture until the new socket joined the group.
        self.join_pending = False

    def __getattr__(self, name):
        return getattr(self.capture, name)

    def recover(self):
        """Resume the capture like ``capture.recover()``, and join the group again with a new socket.

        The join fails while another worker's old socket, bound to the
        deleted interface, is still in the group, so it is retried. NOTE:
        opening the new socket needs CAP_NET_RAW, so after the switch to
        --user a re-created interface keeps the worker down until a restart.
        """
        reopened = self.capture.reopened
        problem = self.capture.recover()
        if self.capture.reopened != reopened:
            self.join_pending = True
        if problem is not None or not self.join_pending:
            return problem
        try:
            join_fanout(self.capture, self.group_id)
        except LiveCaptureError as error:
            return str(error)
        self.join_pending = False
        self.joined_at = time.time()
        return None

    def read_batch(self, handle_packet, max_packets):
        joined_at = self.joined_at
        if joined_at is None:
            return self.capture.read_batch(handle_packet, max_packets)

        def admit(ts, linktype, data, wirelen):
            if ts >= joined_at:
                handle_packet(ts, linktype, data, wirelen)
            else:
                self.discarded += 1

        count = self.capture.read_batch(admit, max_packets)
        if time.time() > joined_at + JOIN_GRACE_S:
            self.joined_at = None
        return count


# -- worker ------------------------------------------------------------------


def take_snapshot(agent, policy, metrics):
    """Copy the counters that /metrics shows into plain data that pickles."""
    pipeline = agent.pipeline
    table = pipeline.table
    snapshot = {
        "request_series": metrics.request_series,
        "response_series": metrics.response_series,
        "outcomes": metrics.outcomes,
        "skipped": dict(table.skipped),
        "parse_errors": dict(table.parse_errors),
        "evicted": dict(table.evicted),
        "flows_created": table.flows_created,
        "unmatched_evicted": table.unmatched_evicted,
        "transactions": table.transactions,
        "buffered": table.buffered,
        "flows_tracked": len(table.flows),
        "overflow_total": policy.mapper.overflow_total,
        "other_methods": policy.other_methods,
        "received": agent.received,
        "dropped": agent.dropped,
        # Summed in the parent: the number of workers whose capture is down.
        "capture_down": 0 if agent.capture_up else 1,
    }
    for name in _HTTP_FIELDS:
        snapshot[name] = getattr(metrics, name)
    for name in _PIPELINE_FIELDS:
        snapshot[name] = getattr(pipeline, name)
    for direction in ("inbound", "outbound"):
        counters = getattr(table, direction)
        values = {name: getattr(counters, name) for name in _DIRECTION_FIELDS}
        values["unattributed"] = dict(counters.unattributed)
        snapshot[direction] = values
    return snapshot


def _worker_main(index, args, group_id, connection, drop_to):
    """Open a capture in the fan-out group, run the pipeline and report counters to the parent."""
    from .cli import endpoint_mapper_from, limits_from
    from .live import Agent, drop_privileges, reload_routes

    try:
        policy = LabelPolicy(endpoint_mapper_from(args))
        metrics = HttpMetrics(new_registry(), prefix=args.metric_prefix, buckets=args.buckets)

        def sink(transaction):
            method, endpoint = policy.labels(transaction)
            metrics.observe(transaction, method, endpoint)

        pipeline = Pipeline(args.port, sink, limits_from(args))
        capture = open_capture(args.capture_backend, args.iface, args.port, int(args.buffer_mb * (1 << 20)))
        try:
            join_fanout(capture, group_id)
        except LiveCaptureError:
            capture.close()
            raise
    except LiveCaptureError as error:
        connection.send(("error", str(error)))
        return 1
    capture = JoinedCapture(capture, time.time(), group_id)
    connection.send(("ready", {
        "linktype": capture.linktype,
        "backend": capture.backend,
        "kernel_buffer_bytes": capture.kernel_buffer_bytes,
    }))
    try:
        if drop_to is not None:
            drop_privileges(drop_to)
        agent = Agent(args, capture, pipeline)
        agent.reload = lambda: reload_routes(args, policy, agent.lock)
        agent.on_tick = lambda: connection.send(("snapshot", take_snapshot(agent, policy, metrics)))
        agent.capture_until_stopped()
        connection.send(("final", take_snapshot(agent, policy, metrics)))
    except (LiveCaptureError, OSError) as error:
        log.error("capture worker %d (pid %d) failed: %s", index, os.getpid(), error)
        return 1
    finally:
        capture.close()
        connection.close()
    log.debug("worker %d: %d packets stamped before joining the fan-out group discarded", index, capture.discarded)
    return 0


# -- parent ------------------------------------------------------------------


def merge_snapshots(snapshots):
    """Sum worker snapshots: numbers add, dicts add per key, series add per element."""
    merged = {}
    for snapshot in snapshots:
        for key, value in snapshot.items():
            if key in ("request_series", "response_series"):
                series_map = merged.setdefault(key, {})
                for labels, series in value.items():
                    total = series_map.get(labels)
                    series_map[labels] = list(series) if total is None else [a + b for a, b in zip(total, series)]
            elif isinstance(value, dict):
                target = merged.setdefault(key, {})
                _add_into(target, value)
            else:
                merged[key] = merged.get(key, 0) + value
    return merged


def _add_into(target, values):
    for key, value in values.items():
        if isinstance(value, dict):
            _add_into(target.setdefault(key, {}), value)
        else:
            target[key] = target.get(key, 0) + value


class MergedState:
    """The parent's view of all workers, shaped like the objects the collectors read."""

    def __init__(self, args, worker_count):
        self.lock = threading.Lock()
        self.latest = [None] * worker_count
        self.last_seen = [time.monotonic()] * worker_count
        self.stopping = False
        self.metrics = HttpMetrics(new_registry(), prefix=args.metric_prefix, buckets=args.buckets)
        self.pipeline = SimpleNamespace(packets=0, wire_bytes=0, tso_packets=0, table=None)
        self.policy = SimpleNamespace(mapper=SimpleNamespace(overflow_total=0), other_methods=0)
        self.received = 0
        self.dropped = 0
        self.capture_down = 0
        self.writer = None
        self.update(0, None)

    def update(self, index, snapshot):
        with self.lock:
            if snapshot is not None:
                self.latest[index] = snapshot
                self.last_seen[index] = time.monotonic()
            merged = merge_snapshots(s for s in self.latest if s is not None)
            self._apply(merged)

    def _apply(self, merged):
        metrics = self.metrics
        metrics.request_series = merged.get("request_series", {})
        metrics.response_series = merged.get("response_series", {})
        metrics.outcomes = {**metrics.outcomes, **merged.get("outcomes", {})}
        for name in _HTTP_FIELDS:
            setattr(metrics, name, merged.get(name, 0))
        for name in _PIPELINE_FIELDS:
            setattr(self.pipeline, name, merged.get(name, 0))

        def direction(name):
            values = merged.get(name, {})
            counters = SimpleNamespace(**{field: values.get(field, 0) for field in _DIRECTION_FIELDS})
            counters.unattributed = _ZeroDict(values.get("unattributed", {}))
            return counters

        table = SimpleNamespace(inbound=direction("inbound"), outbound=direction("outbound"))
        for name in _TABLE_COUNTERS:
            setattr(table, name, _ZeroDict(merged.get(name, {})))
        for name in _TABLE_COUNTS:
            setattr(table, name, merged.get(name, 0))
        # The health collector reports len(table.flows).
        table.flows = range(table.flows_tracked)
        self.pipeline.table = table
        self.policy.mapper.overflow_total = merged.get("overflow_total", 0)
        self.policy.other_methods = merged.get("other_methods", 0)
        self.received = merged.get("received", 0)
        self.dropped = merged.get("dropped", 0)
        self.capture_down = merged.get("capture_down", 0)

    def healthy(self):
        from .live import STALL_LIMIT_S

        now = time.monotonic()
        return (
            not self.stopping
            and self.capture_down == 0
            and all(now - seen < STALL_LIMIT_S for seen in self.last_seen)
        )


class _ZeroDict(dict):
    def __missing__(self, key):
        return 0


def run_fanout(args, drop_to):
    """Run ``args.workers`` capture workers and serve their summed metrics; return the exit status."""
    from .live import (
        CaptureCollector, EXIT_FAILURE, EXIT_OK, LockedCollector, _fail, describe_access, drop_privileges,
        start_metrics_server, user_name,
    )

    context = multiprocessing.get_context("fork")
    # Fan-out group ids are per network namespace, and the parent's pid keeps
    # two agents in one namespace apart. NOTE: two pids equal in their low 16 bits
    # would collide, and the second agent then fails to join.
    group_id = os.getpid() & 0xFFFF
    workers = []
    for index in range(args.workers):
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_worker_main, args=(index, args, group_id, sender, drop_to),
                                  name=f"netmon-capture-{index}", daemon=True)
        process.start()
        sender.close()
        workers.append((process, receiver))

    def stop_workers():
        for process, _ in workers:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    info = None
    for index, (process, receiver) in enumerate(workers):
        message = receiver.recv() if receiver.poll(READY_TIMEOUT_S) else ("error", f"no ready message within {READY_TIMEOUT_S:.0f} s")
        if message[0] != "ready":
            stop_workers()
            return _fail(f"capture worker {index} failed to start: {message[1]}")
        info = message[1]

    state = MergedState(args, len(workers))
    registry = new_registry()
    registry.register(LockedCollector(state.metrics, state.lock))
    registry.register(LockedCollector(HealthCollector(state.pipeline, state.policy), state.lock))
    registry.register(LockedCollector(CaptureCollector(state), state.lock))
    try:
        server = start_metrics_server(args.metrics_listen, args.metrics_port, registry, state, args.web_config)
    except OSError as error:
        stop_workers()
        return _fail(f"serving metrics on {args.metrics_listen} port {args.metrics_port} failed: {error}")
    try:
        if drop_to is not None:
            drop_privileges(drop_to)
        host, port = server.server_address[:2]
        log.info(
            "capturing on %s (%s, %s backend, kernel buffer %.0f MiB per worker, %d workers joined in "
            "fan-out group %d by flow hash), filter: TCP port %s; serving /metrics and /healthz on %s port %d%s; "
            "running as %s",
            args.iface, linktype_name(info["linktype"]), info["backend"], info["kernel_buffer_bytes"] / (1 << 20),
            len(workers), group_id, " or ".join(str(p) for p in sorted(set(args.port))), host, port,
            describe_access(args.web_config), user_name(),
        )
        status = _serve_until_stopped(workers, state, stop_workers)
    finally:
        server.shutdown()
        server.server_close()
    table = state.pipeline.table
    log.info(
        "stopped: packets %d, transactions %d, connections tracked %d, capture received %d, dropped %d",
        state.pipeline.packets, table.transactions, table.flows_tracked, state.received, state.dropped,
    )
    return EXIT_OK if status == 0 else EXIT_FAILURE


def _serve_until_stopped(workers, state, stop_workers):
    """Receive snapshots until a signal, then collect final ones; return 0, or 1 when a worker failed."""
    wake_reader, wake_writer = socket.socketpair()
    wake_writer.setblocking(False)
    stop_requested = []

    def request_stop(number, frame):
        stop_requested.append(number)

    def forward_reload(number, frame):
        # Each worker keeps its own routes: pass the SIGHUP on.
        for process, _ in workers:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)

    previous = {number: signal.signal(number, request_stop) for number in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, forward_reload)
    previous_wakeup = signal.set_wakeup_fd(wake_writer.fileno(), warn_on_full_buffer=False)
    open_pipes = {receiver: index for index, (_, receiver) in enumerate(workers)}
    finished = set()
    failed = False
    stop_deadline = None
    try:
        while open_pipes:
            if stop_requested and stop_deadline is None:
                state.stopping = True
                stop_workers()
                stop_deadline = time.monotonic() + STOP_TIMEOUT_S
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                log.error("capture workers %s sent no final counters within %.0f s; their last counters are shown",
                          sorted(open_pipes.values()), STOP_TIMEOUT_S)
                failed = True
                break
            for ready in multiprocessing.connection.wait([*open_pipes, wake_reader], timeout=1.0):
                if ready is wake_reader:
                    wake_reader.recv(64)
                    continue
                index = open_pipes[ready]
                try:
                    kind, snapshot = ready.recv()
                except (EOFError, OSError):
                    del open_pipes[ready]
                    if index not in finished:
                        log.error("capture worker %d exited without its final counters", index)
                        failed = True
                        stop_requested.append(None)
                    continue
                state.update(index, snapshot)
                if kind == "final":
                    finished.add(index)
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for number, handler in previous.items():
            signal.signal(number, handler)
        wake_reader.close()
        wake_writer.close()
        stop_workers()
        for process, _ in workers:
            process.join(5)
    return 1 if failed else 0
