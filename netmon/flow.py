"""Flows (both directions of a TCP connection) and request/response pairing.

Requests and responses are paired in order, per connection, as HTTP/1.1
requires. Three things make plain FIFO pairing wrong on real captures, and
the ACK number carried by a response's first segment resolves each of them:

- The capture starts mid-connection, or a request fell into a gap: the
  response's ACK does not reach past the start of the oldest pending request,
  so the server sent it before that request arrived. It answers a request
  that was not captured.
- A response fell into a gap of the server's stream: after such a gap, the
  next response answers the newest pending request that the server had
  received (start before the ACK); the older ones get no response.
- One direction lags the other in the capture: a response arrives before its
  request. It waits until the client's stream reaches its ACK.

A transaction is emitted when both its messages have ended, or when one of
them is known to have no partner.
"""

import collections

from .http import END, NO_PEER, START, DirectionCounters, MessageParser
from .stream import Stream, seq_le, seq_lt


class Transaction:
    """A request and its final response; either may be None when not captured."""

    __slots__ = ("client", "server", "request", "response")

    def __init__(self, client, server, request, response):
        self.client = client
        self.server = server
        self.request = request
        self.response = response

    @property
    def complete(self):
        request, response = self.request, self.response
        return request is not None and response is not None and request.complete and response.complete


class Flow:
    """Both directions of one TCP connection, keyed (client ip, client port, server ip, server port)."""

    __slots__ = ("key", "table", "requests", "responses", "pending", "waiting", "last_ts", "done", "reset_seen")

    def __init__(self, table, key, ts):
        self.key = key
        self.table = table
        self.last_ts = ts
        self.done = False
        self.reset_seen = False
        self.pending = collections.deque()  # requests started, not yet paired
        self.waiting = None  # responses that arrived before their request
        request_parser = MessageParser(True, table.inbound, table.parse_errors)
        response_parser = MessageParser(False, table.outbound, table.parse_errors, self._pair_response)
        self.requests = Stream(self, request_parser, table.inbound)
        self.responses = Stream(self, response_parser, table.outbound)

    # -- events from the parsers ------------------------------------------

    def on_events(self, events):
        for kind, msg in events:
            if kind == START:
                if msg.is_request:
                    self._request_started(msg)
            elif kind == END:
                msg.ended = True
                if msg.upgrade and not msg.is_request:
                    self.requests.parser.enter_tunnel()
                self._settle(msg)

    def _request_started(self, request):
        waiting = self.waiting
        while waiting:
            response = waiting[0]
            if response.ack is not None and seq_le(response.ack, request.start_seq):
                waiting.popleft()
                self._orphan(response)
                continue
            waiting.popleft()
            self._link(request, response)
            return
        self.pending.append(request)
        if len(self.pending) > self.table.limits.max_pending:
            self.table.unmatched_evicted += 1
            self._no_response(self.pending.popleft())

    def _pair_response(self, response):
        """Return the request this new response answers, NO_PEER, or None to wait."""
        pending = self.pending
        ack = response.ack
        client = self.requests
        if client.ooo and ack is not None:
            # Requests buffered behind a hole the server has acknowledged
            # past: declare the hole lost so that those requests start now.
            client.declare_lost_before(ack, response.start_ts)
        if response.after_gap and ack is not None:
            # Responses to the older pending requests may be lost in the gap.
            while len(pending) > 1 and seq_lt(pending[1].start_seq, ack):
                self._no_response(pending.popleft())
        if pending:
            request = pending[0]
            if ack is not None and seq_le(ack, request.start_seq):
                return NO_PEER
            pending.popleft()
            request.peer = response
            return request
        lagging = client.next_seq is None or seq_lt(client.next_seq, ack) if ack is not None else False
        if lagging and not client.closed:
            if self.waiting is None:
                self.waiting = collections.deque()
            self.waiting.append(response)
            if len(self.waiting) > self.table.limits.max_pending:
                self.table.unmatched_evicted += 1
                self._orphan(self.waiting.popleft())
            return None
        return NO_PEER

    def check_waiting(self):
        """Give up waiting for requests the client's stream has passed by."""
        client_seq = self.requests.next_seq
        waiting = self.waiting
        while waiting and not self.pending and seq_le(waiting[0].ack, client_seq):
            self._orphan(waiting.popleft())

    def _link(self, request, response):
        request.peer = response
        response.peer = request
        if response.ended and request.ended:
            self.table.emit(self, request, response)

    def _orphan(self, response):
        response.peer = NO_PEER
        if response.ended:
            self.table.emit(self, None, response)

    def _no_response(self, request):
        request.peer = NO_PEER
        if request.ended:
            self.table.emit(self, request, None)

    def _settle(self, msg):
        peer = msg.peer
        if peer is None:
            return
        if peer is NO_PEER:
            if msg.is_request:
                self.table.emit(self, msg, None)
            else:
                self.table.emit(self, None, msg)
        elif peer.ended:
            if msg.is_request:
                self.table.emit(self, msg, peer)
            else:
                self.table.emit(self, peer, msg)

    # -- connection state -------------------------------------------------

    def stream_closed(self):
        if self.requests.closed and self.responses.closed:
            self._flush()

    def close(self, ts, reset):
        """End both directions (RST, expiry or end of capture) and flush."""
        self.requests.finish(ts, reset)
        self.responses.finish(ts, reset)
        self._flush()

    def _flush(self):
        if self.done:
            return
        self.done = True
        while self.pending:
            self._no_response(self.pending.popleft())
        while self.waiting:
            self._orphan(self.waiting.popleft())


class FlowTable:
    """All tracked flows, the shared counters, and the transaction sink."""

    def __init__(self, limits, sink):
        self.limits = limits
        self.sink = sink
        # Insertion-ordered with O(1) removal of the oldest entry, for eviction.
        self.flows = collections.OrderedDict()
        self.inbound = DirectionCounters()
        self.outbound = DirectionCounters()
        self.parse_errors = collections.Counter()
        self.skipped = collections.Counter()
        self.evicted = collections.Counter()
        self.buffered = 0
        self.flows_created = 0
        self.transactions = 0
        self.unmatched_evicted = 0
        self.next_sweep = None

    def skip(self, reason):
        self.skipped[reason] += 1

    def emit(self, flow, request, response):
        self.transactions += 1
        client_ip, client_port, server_ip, server_port = flow.key
        self.sink(Transaction((client_ip, client_port), (server_ip, server_port), request, response))

    def new_flow(self, key, ts):
        if len(self.flows) >= self.limits.max_flows:
            self.evict("table_full")
        flow = Flow(self, key, ts)
        self.flows[key] = flow
        self.flows_created += 1
        return flow

    def replace_flow(self, flow, ts):
        """Close a flow whose 4-tuple a new connection reuses; return the new one."""
        flow.close(ts, reset=True)
        del self.flows[flow.key]
        return self.new_flow(flow.key, ts)

    def evict(self, reason):
        """Close and drop the oldest flow to bound memory."""
        if not self.flows:
            return
        _, flow = self.flows.popitem(last=False)
        if not flow.done:
            flow.close(flow.last_ts, reset=True)
        self.evicted[reason] += 1

    def relieve_memory(self, ts):
        """Flush the largest reassembly buffers until the total is under the cap."""
        while self.buffered > self.limits.max_total_buffer:
            largest = None
            for flow in self.flows.values():
                for stream in (flow.requests, flow.responses):
                    if stream.ooo and (largest is None or stream.ooo_bytes > largest.ooo_bytes):
                        largest = stream
            if largest is None:
                return
            self.evicted["memory"] += 1
            largest.flush(ts)

    def sweep(self, ts):
        """Close flows idle past the timeout; drop closed ones after a short linger."""
        limits = self.limits
        idle_before = ts - limits.idle_timeout
        linger_before = ts - limits.closed_linger
        expired = []
        for key, flow in self.flows.items():
            if flow.last_ts < idle_before or (flow.done and flow.last_ts < linger_before):
                expired.append(key)
        for key in expired:
            flow = self.flows.pop(key)
            if not flow.done:
                flow.close(flow.last_ts, reset=True)
                self.evicted["idle"] += 1
        self.next_sweep = ts + max(1.0, min(limits.idle_timeout, limits.closed_linger) / 4)

    def close_all(self):
        """End of input: every remaining flow ends where its last packet was."""
        for flow in list(self.flows.values()):
            if not flow.done:
                flow.close(flow.last_ts, reset=True)
        self.flows.clear()
