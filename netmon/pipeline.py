"""The packet pipeline shared by offline analysis and the live agent.

packet source -> decode -> flow table (TCP reassembly, HTTP framing,
pairing) -> transaction sink (metrics, jsonl, tables). Only the source
differs between modes; all timing comes from packet timestamps.
"""

import collections
import re

from .decode import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, decode
from .flow import FlowTable
from .stream import MASK, Limits

_CONTROL_FLAGS = TCP_SYN | TCP_FIN | TCP_RST

# Longest run of samples written across a silence in the capture, in seconds
# of capture time: Prometheus' default lookback, after which the repeated
# values add nothing a query can see.
MAX_TICK_GAP_S = 300.0


class Pipeline:
    """Feed packets with ``packet()``; call ``finish()`` at the end of input."""

    def __init__(self, ports, sink, limits=None, tick=None, tick_interval=None):
        """``tick(ts)``, if given, runs each time packet time crosses a multiple of ``tick_interval`` seconds."""
        self.ports = frozenset(ports)
        self.limits = limits or Limits()
        self.table = FlowTable(self.limits, sink)
        self.packets = 0
        self.wire_bytes = 0
        self.tso_packets = 0
        self.last_ts = None
        self.tick = tick
        self.tick_interval = tick_interval
        self.tick_index = 0
        self.next_tick = None

    def packet(self, ts, linktype, data, wirelen):
        """Process one captured frame."""
        self.packets += 1
        self.wire_bytes += wirelen
        decoded = decode(linktype, data)
        table = self.table
        if decoded.__class__ is str:
            table.skipped[decoded] += 1
            return
        src, dst, sport, dport, seq, ack, flags, payload, missing, tso = decoded
        if tso:
            self.tso_packets += 1
        ports = self.ports
        if dport in ports:
            key = (src, sport, dst, dport)
            inbound = True
        elif sport in ports:
            key = (dst, dport, src, sport)
            inbound = False
        else:
            table.skipped["other_port"] += 1
            return

        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts
            if table.next_sweep is None:
                table.next_sweep = ts + 1.0
            elif ts >= table.next_sweep:
                table.sweep(ts)
            if self.tick is not None:
                self._maybe_tick(ts)

        flow = table.flows.get(key)
        if flow is None:
            flow = table.new_flow(key, ts)
        flow.last_ts = ts
        if flags & _CONTROL_FLAGS:
            self._control(flow, inbound, seq, ack, flags, payload, missing, ts)
            return
        if payload or missing:
            stream = flow.requests if inbound else flow.responses
            stream.data(seq, payload, missing, ts, ack)

    def _control(self, flow, inbound, seq, ack, flags, payload, missing, ts):
        """Handle SYN, FIN and RST (the slow path)."""
        table = self.table
        if flags & TCP_SYN:
            if inbound and not flags & TCP_ACK and self._is_new_connection(flow, seq):
                flow = table.replace_flow(flow, ts)
            stream = flow.requests if inbound else flow.responses
            stream.syn(seq)
            seq = (seq + 1) & MASK  # data in a SYN (TCP Fast Open) follows the ISN
        elif flags & TCP_RST:
            if payload:
                stream = flow.requests if inbound else flow.responses
                stream.data(seq, payload, missing, ts, ack)
            if not flow.done:
                flow.reset_seen = True
                flow.close(ts, reset=True)
            return
        stream = flow.requests if inbound else flow.responses
        if payload or missing:
            stream.data(seq, payload, missing, ts, ack)
        if flags & TCP_FIN:
            stream.fin((seq + len(payload) + missing) & MASK, ts)

    @staticmethod
    def _is_new_connection(flow, seq):
        """Return whether a client SYN starts a new connection on a reused 4-tuple."""
        isn = flow.requests.isn
        if isn is not None:
            return seq != isn
        # Seen mid-connection so far: a SYN after FIN or RST is a new
        # connection; otherwise the capture reordered the handshake.
        return flow.done or flow.requests.fin_seq is not None or flow.reset_seen

    def _maybe_tick(self, ts):
        interval = self.tick_interval
        if self.next_tick is None:
            # Ticks fall on whole multiples of the interval, computed from an
            # integer index so that they do not drift, and two runs line up.
            self.tick_index = int(ts // interval) + 1
            self.next_tick = round(self.tick_index * interval, 6)
            return
        ticks = 0
        while ts >= self.next_tick:
            if ticks * interval >= MAX_TICK_GAP_S:
                # A long silence in the capture: samples beyond Prometheus'
                # 5-minute lookback add nothing, so jump to the last tick.
                self.tick_index = int(ts // interval)
                self.next_tick = round(self.tick_index * interval, 6)
            self.tick(self.next_tick)
            ticks += 1
            self.tick_index += 1
            self.next_tick = round(self.tick_index * interval, 6)

    def finish(self):
        """End of input: close every flow so its transactions are emitted."""
        self.table.close_all()
        if self.tick is not None and self.last_ts is not None:
            # A last sample after the flush, at the next interval boundary.
            self.tick(self.next_tick if self.next_tick is not None else self.last_ts)


# -- server port discovery ------------------------------------------------

_REQUEST_PREFIX = re.compile(rb"[A-Z]{3,16} +\S+ +HTTP/1\.[01]\r?\n")
_RESPONSE_PREFIX = re.compile(rb"HTTP/1\.[01] +[1-5][0-9][0-9]")


class PortDiscovery:
    """Find the server ports of a capture from SYNs and HTTP start lines.

    A port earns a vote when it receives a request line or a client SYN, or
    sends a status line or a SYN-ACK. Ports with HTTP start lines are chosen;
    SYN votes only rank them, since any TCP service gets SYNs.
    """

    def __init__(self):
        self.http_votes = collections.Counter()
        self.syn_votes = collections.Counter()

    def packet(self, ts, linktype, data, wirelen):
        decoded = decode(linktype, data)
        if decoded.__class__ is str:
            return
        _, _, sport, dport, _, _, flags, payload, _, _ = decoded
        if flags & TCP_SYN:
            if flags & TCP_ACK:
                self.syn_votes[sport] += 1
            else:
                self.syn_votes[dport] += 1
        if payload:
            if _REQUEST_PREFIX.match(payload):
                self.http_votes[dport] += 1
            elif _RESPONSE_PREFIX.match(payload):
                self.http_votes[sport] += 1

    def ports(self):
        return sorted(port for port, votes in self.http_votes.items() if votes > 0)

    def describe(self):
        if not self.http_votes:
            return "no HTTP server port found (no request or status lines); name one with --port"
        parts = []
        for port in self.ports():
            start_lines = _plural(self.http_votes[port], "HTTP start line")
            syns = _plural(self.syn_votes[port], "SYN")
            parts.append(f"{port} ({start_lines}, {syns})")
        return "server ports detected: " + ", ".join(parts)


def _plural(count, noun):
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
