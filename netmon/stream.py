"""TCP reassembly for one direction of a connection.

A ``Stream`` turns captured segments into the in-order byte stream that its
``MessageParser`` consumes. Sequence numbers are compared modulo 2**32.

- In-order data goes straight to the parser (the common case costs a dict
  lookup less than anything else here).
- Data ahead of the expected sequence number is buffered until the missing
  bytes arrive. A retransmission or overlap is trimmed so that every byte is
  delivered once; the trimmed bytes are counted as retransmitted.
- The buffer is bounded per stream (bytes and segments) and in total. When a
  bound is hit, or the stream ends, the missing range is declared a gap: its
  size is proven by the sequence numbers on both sides of it, and the parser
  decides whether the message framing places those bytes.

Captures do not always show packets in wire order, so a gap is never
declared from an ACK alone.
"""

MASK = 0xFFFFFFFF
HALF = 0x80000000


def seq_lt(a, b):
    """Return whether sequence number a comes before b (modulo 2**32)."""
    return a != b and ((b - a) & MASK) < HALF


def seq_le(a, b):
    return a == b or ((b - a) & MASK) < HALF


class Limits:
    """Resource bounds for reassembly and pairing; see the CLI for units."""

    def __init__(
        self,
        max_stream_buffer=1 << 20,
        max_stream_segments=1024,
        max_total_buffer=256 << 20,
        max_pending=1000,
        max_flows=1_000_000,
        idle_timeout=300.0,
        closed_linger=30.0,
    ):
        self.max_stream_buffer = max_stream_buffer
        self.max_stream_segments = max_stream_segments
        self.max_total_buffer = max_total_buffer
        self.max_pending = max_pending
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self.closed_linger = closed_linger


class Stream:
    """One direction of a TCP connection feeding one ``MessageParser``."""

    __slots__ = (
        "flow", "parser", "counters", "next_seq", "isn", "ooo", "ooo_bytes",
        "fin_seq", "closed",
    )

    def __init__(self, flow, parser, counters):
        self.flow = flow
        self.parser = parser
        self.counters = counters
        self.next_seq = None
        self.isn = None
        self.ooo = None  # {seq: (payload, missing, ts, ack)}
        self.ooo_bytes = 0
        self.fin_seq = None
        self.closed = False

    def syn(self, seq):
        """Start the stream after a SYN: at ISN + 1, on a message boundary."""
        if self.isn is None:
            self.isn = seq
        if self.next_seq is None:
            self.next_seq = (seq + 1) & MASK
            self.parser.start_clean()

    def data(self, seq, payload, missing, ts, ack):
        """Handle one segment's payload; ``missing`` bytes were cut by the snaplen."""
        next_seq = self.next_seq
        if seq == next_seq and not missing and not self.ooo and not self.closed:
            # The common case, in order with nothing buffered: _deliver inlined.
            size = len(payload)
            self.counters.payload += size
            self.next_seq = (seq + size) & MASK
            events = self.parser.feed(payload, seq, ts, ack)
            flow = self.flow
            if events:
                flow.on_events(events)
            if flow.waiting and self.parser.is_request:
                flow.check_waiting()
            if self.fin_seq is not None and self.next_seq == self.fin_seq and not self.closed:
                self._close(ts, reset=False)
            return
        if next_seq is None:
            # First data of a capture that began mid-connection.
            next_seq = self.next_seq = seq
        offset = (seq - next_seq) & MASK
        if offset >= HALF:
            # Starts before the expected byte: a retransmission or overlap.
            behind = MASK + 1 - offset
            size = len(payload) + missing
            if behind >= size:
                self.counters.retransmitted += size
                return
            self.counters.retransmitted += behind
            if behind <= len(payload):
                payload = payload[behind:]
            else:
                missing -= behind - len(payload)
                payload = b""
            offset = 0
        if self.closed:
            self.flow.table.skip("after_close")
            return
        if offset == 0:
            self._deliver(payload, missing, ts, ack)
            if self.ooo:
                self._drain(ts)
            return
        self._buffer(seq, payload, missing, ts, ack)

    def fin(self, end_seq, ts):
        """Record a FIN at ``end_seq``, the sequence number after the last data byte."""
        if self.fin_seq is None:
            self.fin_seq = end_seq
        if self.next_seq is None:
            self.next_seq = end_seq
        if self.next_seq == self.fin_seq and not self.closed:
            self._close(ts, reset=False)

    def finish(self, ts, reset):
        """End the stream: declare every remaining hole a gap, then close."""
        if self.closed:
            return
        self.flush(ts)
        if self.fin_seq is not None and self.next_seq is not None and seq_lt(self.next_seq, self.fin_seq):
            # The FIN's sequence number proves bytes that were never captured.
            size = (self.fin_seq - self.next_seq) & MASK
            self._gap(size, ts)
        self._close(ts, reset)

    def _close(self, ts, reset):
        self.closed = True
        if self.ooo:
            # Segments past the FIN can never be delivered: release them.
            for payload, _, _, _ in self.ooo.values():
                self._account_buffer(-len(payload))
                self.flow.table.skip("after_close")
            # Cleared in place: a _drain() up the stack may hold this dict.
            self.ooo.clear()
        events = self.parser.close(ts, reset)
        if events:
            self.flow.on_events(events)
        self.flow.stream_closed()

    def _deliver(self, payload, missing, ts, ack):
        size = len(payload)
        seq = self.next_seq
        self.counters.payload += size + missing
        self.next_seq = (seq + size + missing) & MASK
        if size:
            events = self.parser.feed(payload, seq, ts, ack)
            if events:
                self.flow.on_events(events)
        if missing:
            events = self.parser.gap(missing, ts, "truncated")
            if events:
                self.flow.on_events(events)
        if self.flow.waiting and self.parser.is_request:
            self.flow.check_waiting()
        if self.fin_seq is not None and self.next_seq == self.fin_seq and not self.closed:
            self._close(ts, reset=False)

    def _buffer(self, seq, payload, missing, ts, ack):
        ooo = self.ooo
        if ooo is None:
            ooo = self.ooo = {}
        previous = ooo.get(seq)
        if previous is not None:
            if len(previous[0]) + previous[1] >= len(payload) + missing:
                self.counters.retransmitted += len(payload) + missing
                return
            self.counters.retransmitted += len(previous[0]) + previous[1]
            self._account_buffer(-len(previous[0]))
        ooo[seq] = (payload, missing, ts, ack)
        self._account_buffer(len(payload))
        table = self.flow.table
        limits = table.limits
        while self.ooo and (
            self.ooo_bytes > limits.max_stream_buffer or len(self.ooo) > limits.max_stream_segments
        ):
            self._gap_to_next(ts)
        if table.buffered > limits.max_total_buffer:
            table.relieve_memory(ts)

    def flush(self, ts):
        """Declare every hole lost and deliver everything buffered."""
        while self.ooo:
            self._gap_to_next(ts)

    def declare_lost_before(self, seq, ts):
        """Declare holes before ``seq`` lost when data after them is already buffered.

        The peer acknowledged ``seq``, so the bytes before it were sent; with
        later bytes already captured, the missing ones are lost, not late.
        """
        while self.ooo and self.next_seq is not None and seq_lt(self.next_seq, seq):
            self._gap_to_next(ts)

    def _account_buffer(self, size):
        self.ooo_bytes += size
        self.flow.table.buffered += size

    def _drain(self, ts):
        ooo = self.ooo
        while ooo and not self.closed:
            item = ooo.pop(self.next_seq, None)
            if item is not None:
                self._account_buffer(-len(item[0]))
                self._deliver(*item)
                continue
            # Buffered segments that start before next_seq overlap what was
            # delivered; data() trims them.
            behind = [s for s in ooo if ((s - self.next_seq) & MASK) >= HALF]
            if not behind:
                return
            for s in behind:
                # data() drains too, so an earlier iteration may have taken it.
                item = ooo.pop(s, None)
                if item is None:
                    continue
                payload, missing, seg_ts, ack = item
                self._account_buffer(-len(payload))
                self.data(s, payload, missing, seg_ts, ack)

    def _gap_to_next(self, ts):
        """Declare the hole before the lowest buffered segment lost."""
        next_seq = self.next_seq
        first = min(self.ooo, key=lambda s: (s - next_seq) & MASK)
        size = (first - next_seq) & MASK
        if size >= HALF:
            self._drain(ts)
            return
        self._gap(size, ts)
        self._drain(ts)

    def _gap(self, size, ts):
        self.counters.payload += size
        self.counters.gaps += 1
        self.next_seq = (self.next_seq + size) & MASK
        events = self.parser.gap(size, ts, "gap")
        if events:
            self.flow.on_events(events)
