"""HTTP/1.x message framing for one direction of a TCP connection.

Theory of operation
-------------------
A ``MessageParser`` receives the bytes of one direction in order, plus notice
of gaps (bytes proven by TCP sequence numbers but not captured) and of the
end of the stream. It returns events: ``(START, message)`` when a message's
head (start line and headers) has been parsed, ``(END, message)`` when the
message is over. It never performs I/O and never looks at the clock: every
time comes from the caller's packet timestamps.

Every byte handed to the parser ends up in exactly one place: in a message's
``wire_bytes`` or in the direction's unattributed counter under one reason
from ``UNATTRIBUTED_REASONS``. That is the conservation contract the tests
check on every capture.

States (one per direction):

    HEAD          collecting a start line and headers
    BODY          Content-Length body, ``remaining`` bytes to go
    CHUNK_SIZE    reading a chunk-size line (may be cut anywhere)
    CHUNK_DATA    chunk data, ``remaining`` bytes to go
    CHUNK_END     the CRLF after chunk data
    TRAILER       trailer lines after the last chunk
    UNTIL_CLOSE   response body delimited by the end of the connection
    UPGRADE_WAIT  after a CONNECT or Upgrade request: either another request
                  (the upgrade was refused) or tunnel bytes
    TUNNEL        after 101 or a 2xx answer to CONNECT: not HTTP any more
    SYNC          skipping bytes until a request or status line appears

Only a head is ever copied; body bytes are counted, never stored, so a body
segment costs a few integer operations.
"""

import re

START = 0
END = 1

HEAD = 0
BODY = 1
CHUNK_SIZE = 2
CHUNK_DATA = 3
CHUNK_END = 4
TRAILER = 5
UNTIL_CLOSE = 6
UPGRADE_WAIT = 7
TUNNEL = 8
SYNC = 9

# Reasons for bytes that belong to no HTTP message.
UNATTRIBUTED_REASONS = (
    "midstream",  # before the first message start of a capture that began mid-connection
    "not_http",   # bytes on the port that do not parse as HTTP/1.x
    "tunnel",     # after 101 Switching Protocols or a 2xx answer to CONNECT
    "gap",        # lost bytes whose place no framing proves, and bytes skipped after them
    "truncated",  # bytes the snaplen cut off where no framing places them
)

# Protocol errors, counted as netmon_http_parse_errors_total{reason}.
PARSE_ERROR_REASONS = (
    "bad_start_line",
    "bad_header",
    "bad_content_length",
    "bad_chunk_size",
    "head_too_large",
    "chunk_line_too_large",
    "unsupported_transfer_coding",
    "unexpected_response",
)

# Largest head netmon buffers. Servers reject heads far smaller (nginx and
# Apache default to 8 KiB per line, Node.js to 16 KiB in total), so a longer
# one is counted as an error instead of growing a buffer without bound.
MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE_BYTES = 4096

NO_EVENTS = ()


class _NoPeer:
    method = None

    def __repr__(self):
        return "NO_PEER"


# A message's peer once it is known to have none (a response whose request
# was not captured, a request that got no response). Its method is None, so
# code reading ``msg.peer.method`` needs no special case.
NO_PEER = _NoPeer()

# Methods recognised when resynchronising inside arbitrary bytes. A message
# that starts a stream cleanly may use any token as its method.
KNOWN_METHODS = (
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE",
    b"PATCH", b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK",
    b"UNLOCK", b"REPORT", b"SEARCH", b"MKCALENDAR", b"ACL", b"MERGE", b"CHECKOUT",
)
_REQUEST_START = re.compile(
    rb"(?<![A-Za-z])(?:" + b"|".join(KNOWN_METHODS) + rb") +[^\s]+ +HTTP/[0-9]\.[0-9] *\r?\n"
)
_RESPONSE_START = re.compile(rb"HTTP/1\.[019] +[1-5][0-9][0-9]")
# Lenient on purpose: servers answer (mostly with 400) request lines whose
# version is missing or malformed, so those are requests on the wire too.
# The method must be followed by a space, and the line must be printable.
# A known method alone on the line is accepted too (tshark does the same).
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]{1,32})(?: +([\x20-\x7e\x80-\xff]*?)|)\r?\n")
# The shape nearly every request line has; the lenient pattern handles the rest.
_REQUEST_LINE_COMMON = re.compile(rb"([A-Z]{1,20}) ([^ \r\n]+) HTTP/[0-9]\.[0-9]\r?\n")
_REQUEST_TARGET = re.compile(rb"(.*?) +HTTP/([0-9])\.([0-9]?) *$")
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) +([0-9]{3})(?:[ \t][^\r\n]*)?\r?\n")
_HEAD_END = re.compile(rb"\n\r?\n")

TOKEN_FIRST_BYTES = frozenset(b"!#$%&'*+.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-")


class Message:
    """One HTTP request or response as it crossed the wire.

    ``wire_bytes`` counts the start line, headers and body exactly as sent,
    chunk framing included, plus the bytes a gap removed where the framing
    proves they were part of this message. A response's interim 1xx heads
    count toward it, and ``interim`` lists their statuses.
    """

    __slots__ = (
        "is_request", "method", "target", "status", "interim",
        "start_ts", "end_ts", "start_seq", "ack", "wire_bytes", "complete",
        "after_gap", "ended", "peer", "upgrade",
    )
    # ``ended`` is set by the consumer of the END event, not by the parser,
    # so that a START and END in one batch of events are seen in order.

    def __init__(self, is_request, start_ts, start_seq, ack):
        self.is_request = is_request
        self.method = None
        self.target = None
        self.status = None
        self.interim = None
        self.start_ts = start_ts
        self.end_ts = start_ts
        self.start_seq = start_seq
        self.ack = ack
        self.wire_bytes = 0
        self.complete = True
        self.after_gap = False
        self.ended = False
        self.peer = None
        self.upgrade = False

    def __repr__(self):
        if self.is_request:
            what = f"{self.method} {self.target!r}"
        else:
            what = f"status {self.status}"
        return f"<Message {what} {self.wire_bytes} bytes complete={self.complete}>"


class DirectionCounters:
    """Byte accounting for one direction (inbound or outbound) of all flows.

    ``payload`` is the TCP payload proven by sequence numbers; at every point
    where no message is in progress, payload == attributed + sum(unattributed).
    """

    __slots__ = ("payload", "attributed", "unattributed", "retransmitted", "gaps")

    def __init__(self):
        self.payload = 0
        self.attributed = 0
        self.unattributed = dict.fromkeys(UNATTRIBUTED_REASONS, 0)
        self.retransmitted = 0
        self.gaps = 0


class MessageParser:
    """Incremental HTTP/1.x framing for one direction (see module docstring).

    ``pair_response`` is called by a response parser with each new response
    message, before its framing is decided, and returns the request it
    answers (or None). The framing of a response depends on that request's
    method (HEAD, CONNECT).
    """

    __slots__ = (
        "is_request", "state", "counters", "errors", "pair_response", "msg",
        "head", "head_ts", "head_seq", "head_ack", "remaining", "line",
        "sync_reason", "events", "after_gap",
    )

    def __init__(self, is_request, counters, errors, pair_response=None, midstream=True):
        self.is_request = is_request
        self.counters = counters
        self.errors = errors
        self.pair_response = pair_response
        self.msg = None
        self.head = None
        self.head_ts = 0.0
        self.head_seq = 0
        self.head_ack = None
        self.remaining = 0
        self.line = None
        self.events = None
        self.after_gap = False
        if midstream:
            self.state = SYNC
            self.sync_reason = "midstream"
        else:
            self.state = HEAD
            self.sync_reason = "not_http"

    def start_clean(self):
        """Mark the stream as starting at a message boundary (a SYN was seen)."""
        if self.state == SYNC and self.sync_reason == "midstream":
            self.state = HEAD

    # -- input -----------------------------------------------------------

    def feed(self, data, seq, ts, ack):
        """Consume in-order bytes; ``seq`` is the sequence number of data[0]."""
        n = len(data)
        state = self.state
        # Fast paths: a segment entirely inside a body or a tunnel.
        if state == BODY or state == CHUNK_DATA:
            if n < self.remaining:
                self.remaining -= n
                msg = self.msg
                msg.wire_bytes += n
                msg.end_ts = ts
                return NO_EVENTS
        elif state == UNTIL_CLOSE:
            msg = self.msg
            msg.wire_bytes += n
            msg.end_ts = ts
            return NO_EVENTS
        elif state == TUNNEL:
            self.counters.unattributed["tunnel"] += n
            return NO_EVENTS

        events = self.events = []
        pos = 0
        while pos < n:
            state = self.state
            if state == HEAD:
                pos = self._head(data, pos, seq, ts, ack)
            elif state == BODY or state == CHUNK_DATA:
                take = min(n - pos, self.remaining)
                self.remaining -= take
                msg = self.msg
                msg.wire_bytes += take
                msg.end_ts = ts
                pos += take
                if self.remaining == 0:
                    if state == BODY:
                        self._finish()
                    else:
                        self.state = CHUNK_END
            elif state == CHUNK_SIZE:
                pos = self._chunk_size(data, pos, ts)
            elif state == CHUNK_END:
                pos = self._chunk_end(data, pos, ts)
            elif state == TRAILER:
                pos = self._trailer(data, pos, ts)
            elif state == UNTIL_CLOSE:
                msg = self.msg
                msg.wire_bytes += n - pos
                msg.end_ts = ts
                pos = n
            elif state == TUNNEL:
                self.counters.unattributed["tunnel"] += n - pos
                pos = n
            elif state == UPGRADE_WAIT:
                if _REQUEST_START.match(data, pos):
                    self.state = HEAD
                else:
                    self.state = TUNNEL
            else:
                pos = self._sync(data, pos)
        self.events = None
        return events

    def gap(self, size, ts, reason="gap"):
        """Account for ``size`` bytes that the capture lost at this point.

        Where the current message's framing proves the lost bytes belong to
        it (inside a Content-Length body or a chunk's data, or in a body read
        until close), they count toward it and it is marked incomplete.
        Otherwise the message ends here and the parser skips to the next
        message start. ``reason`` is "gap" or "truncated" (snaplen).
        """
        events = self.events = []
        counters = self.counters
        state = self.state
        msg = self.msg
        if state == BODY or state == CHUNK_DATA:
            take = min(size, self.remaining)
            msg.wire_bytes += take
            msg.complete = False
            msg.end_ts = ts
            self.remaining -= take
            size -= take
            if self.remaining == 0 and size == 0:
                if state == BODY:
                    self._finish()
                else:
                    self.state = CHUNK_END
            elif size:
                self._finish()
        elif state == UNTIL_CLOSE:
            msg.wire_bytes += size
            msg.complete = False
            msg.end_ts = ts
            size = 0
        elif state == TUNNEL:
            counters.unattributed["tunnel"] += size
            size = 0
        elif state == HEAD and self.head:
            self._abandon_head(ts, reason)
        elif msg is not None:
            # Inside chunk-size lines, chunk CRLFs or trailers the framing
            # cannot place the lost bytes: the message ends incomplete.
            msg.complete = False
            self._finish()
        if size:
            counters.unattributed[reason] += size
            self.after_gap = True
            if self.state != TUNNEL:
                self.state = SYNC
                self.sync_reason = reason
        self.events = None
        return events

    def close(self, ts, reset=False):
        """End of the stream: FIN (``reset`` false), RST or end of capture."""
        events = self.events = []
        state = self.state
        msg = self.msg
        if state == HEAD and self.head:
            self._abandon_head(ts, "truncated")
        elif state == UNTIL_CLOSE:
            # A body read until close is whole when a FIN closed it.
            if reset:
                msg.complete = False
            self._finish()
        elif msg is not None:
            msg.complete = False
            self._finish()
        self.state = SYNC
        self.sync_reason = "not_http"
        self.events = None
        return events

    def enter_tunnel(self):
        """Switch a request parser to tunnel mode after 101 or CONNECT 2xx."""
        if self.state == UPGRADE_WAIT or (self.state == HEAD and not self.head):
            self.state = TUNNEL

    # -- head ------------------------------------------------------------

    def _head(self, data, pos, seq, ts, ack):
        head = self.head
        if not head:
            first = data[pos]
            if first == 13 or first == 10:
                # Empty lines between messages are tolerated (RFC 9112 2.2)
                # and counted with the message before them, or as not_http
                # when there is none.
                skip = pos
                while skip < len(data) and data[skip] in (13, 10):
                    skip += 1
                self._extra_bytes(skip - pos)
                return skip
            if not self._plausible_start(first):
                self._not_http(data, pos)
                return pos
            self.head_ts = ts
            self.head_seq = (seq + pos) & 0xFFFFFFFF
            self.head_ack = ack
            end = data.find(b"\r\n\r\n", pos)
            if end >= 0 and data.find(b"\n\n", pos, end) < 0:
                # CRLF heads are the norm; the regex below also finds bare LF ends.
                end += 4
                self._parse_head(data[pos:end], ts)
                return end
            match = _HEAD_END.search(data, pos)
            if match is not None:
                end = match.end()
                self._parse_head(data[pos:end], ts)
                return end
            self.head = bytearray(data[pos:])
            self._check_partial_head()
            return len(data)

        # Continue a head split across segments: the terminator may span the join.
        old_len = len(head)
        head += data[pos:]
        match = _HEAD_END.search(head, max(0, old_len - 3))
        if match is None:
            self._check_partial_head()
            return len(data)
        end = match.end()
        self.head = None
        self._parse_head(bytes(head[:end]), ts)
        return pos + end - old_len

    def _plausible_start(self, first):
        if self.is_request:
            return first in TOKEN_FIRST_BYTES
        return first == 72  # "H" of "HTTP/"

    def _check_partial_head(self):
        head = self.head
        if len(head) > MAX_HEAD_BYTES:
            self.errors["head_too_large"] += 1
            self._drop_head("not_http")
            return
        # Reject early when the first line is complete and is no start line,
        # so a binary protocol does not fill the head buffer.
        newline = head.find(b"\n")
        if newline >= 0:
            pattern = _REQUEST_LINE if self.is_request else _STATUS_LINE
            if pattern.match(head, 0, newline + 1) is None:
                self.errors["bad_start_line"] += 1
                self._drop_head("not_http")
        elif len(head) >= 8 and not self.is_request and not head.startswith(b"HTTP/"):
            self.errors["bad_start_line"] += 1
            self._drop_head("not_http")

    def _drop_head(self, reason):
        self.counters.unattributed[reason] += len(self.head)
        self.head = None
        self._end_open_message()
        self.state = SYNC
        self.sync_reason = reason

    def _abandon_head(self, ts, reason):
        """Keep what a head cut by a gap or the end of the stream proves."""
        head = self.head
        newline = head.find(b"\n")
        pattern = _REQUEST_LINE if self.is_request else _STATUS_LINE
        if newline >= 0 and pattern.match(head, 0, newline + 1):
            msg = self._new_message(head[:newline + 1], ts)
            if msg is not None:
                msg.wire_bytes += len(head)
                msg.complete = False
                self.head = None
                self._finish()
                return
        self.counters.unattributed[reason] += len(head)
        self.head = None
        self._end_open_message()

    def _end_open_message(self):
        """End a response left open after interim 1xx heads, as incomplete."""
        if self.msg is not None:
            self.msg.complete = False
            self._finish()

    def _parse_head(self, head, ts):
        newline = head.find(b"\n")
        msg = self._new_message(head[:newline + 1], ts)
        if msg is None:
            self.counters.unattributed["not_http"] += len(head)
            self._end_open_message()
            self.state = SYNC
            self.sync_reason = "not_http"
            return
        msg.wire_bytes += len(head)
        msg.end_ts = ts
        fields, valid = _parse_fields(head, newline + 1)
        if not valid:
            self.errors["bad_header"] += 1
        if self.is_request:
            self._frame_request(msg, fields)
        else:
            self._frame_response(msg, fields)

    def _new_message(self, start_line, ts):
        """Parse a start line into a new current message, or return None.

        A response's interim 1xx heads and its final head share one message.
        """
        if self.is_request:
            common = _REQUEST_LINE_COMMON.match(start_line)
            if common is not None:
                method, target = common.groups()
            else:
                method, target = self._lenient_request_line(start_line)
                if method is None:
                    return None
            msg = Message(True, self.head_ts, self.head_seq, self.head_ack)
            msg.method = method.decode("ascii")
            msg.target = target.decode("latin-1")
            msg.after_gap = self.after_gap
            self.after_gap = False
            self.msg = msg
            self.events.append((START, msg))
            return msg
        match = _STATUS_LINE.match(start_line)
        if match is None:
            self.errors["bad_start_line"] += 1
            return None
        status = int(match.group(3))
        msg = self.msg
        if msg is None:
            msg = Message(False, self.head_ts, self.head_seq, self.head_ack)
            msg.after_gap = self.after_gap
            self.after_gap = False
            self.msg = msg
            if self.pair_response is not None:
                msg.peer = self.pair_response(msg)
            self.events.append((START, msg))
        elif msg.status is not None:
            # The previous head was interim (1xx): remember it.
            msg.interim = (msg.interim or ()) + (msg.status,)
        msg.status = status
        return msg

    def _lenient_request_line(self, start_line):
        """Return (method, target) of an unusual request line, or (None, None)."""
        match = _REQUEST_LINE.match(start_line)
        if match is None:
            self.errors["bad_start_line"] += 1
            return None, None
        rest = match.group(2)
        if rest is None and match.group(1) not in KNOWN_METHODS:
            self.errors["bad_start_line"] += 1
            return None, None
        versioned = _REQUEST_TARGET.match(rest or b"")
        if versioned is not None:
            return match.group(1), versioned.group(1)
        return match.group(1), (rest or b"").strip()

    def _frame_request(self, msg, fields):
        # Request body length (RFC 9112 section 6.3): a Transfer-Encoding whose
        # last coding is chunked, else Content-Length, else no body.
        transfer_encoding = fields.get(b"transfer-encoding")
        content_length = fields.get(b"content-length")
        if msg.method == "CONNECT":
            msg.upgrade = True
        elif b"upgrade" in fields and b"upgrade" in fields.get(b"connection", b""):
            msg.upgrade = True
        if transfer_encoding is not None:
            if transfer_encoding.rstrip().endswith(b"chunked"):
                self._begin_chunked()
                return
            # A request cannot be read until close; the length is unknown.
            self.errors["unsupported_transfer_coding"] += 1
            msg.complete = False
            self._finish()
            self.state = SYNC
            self.sync_reason = "not_http"
            return
        if content_length is not None:
            length = _content_length(content_length)
            if length is None:
                self.errors["bad_content_length"] += 1
                msg.complete = False
                self._finish()
                self.state = SYNC
                self.sync_reason = "not_http"
                return
            if length:
                self.state = BODY
                self.remaining = length
                return
        self._finish()

    def _frame_response(self, msg, fields):
        # Response body length, RFC 9112 section 6.3, steps in order.
        status = msg.status
        request = msg.peer
        # NOTE: when the request lags behind its response in the capture, the
        # method is unknown here, so a HEAD response with a Content-Length is
        # framed as if its body followed.
        method = request.method if request is not None else None
        # 1. Interim responses (except 101) have no body, and the final
        #    response follows on the same message.
        if 100 <= status < 200 and status != 101:
            self.state = HEAD
            return
        # 2. 101 and a 2xx answer to CONNECT turn the connection into a tunnel.
        if status == 101 or (method == "CONNECT" and 200 <= status < 300):
            msg.upgrade = True
            self._finish()
            self.state = TUNNEL
            return
        # 3. HEAD responses, 204 and 304 never have a body.
        if method == "HEAD" or status == 204 or status == 304:
            self._finish()
            return
        transfer_encoding = fields.get(b"transfer-encoding")
        # 4. Transfer-Encoding: chunked last means chunked; any other coding
        #    means the body runs until the connection closes.
        if transfer_encoding is not None:
            if transfer_encoding.rstrip().endswith(b"chunked"):
                self._begin_chunked()
            else:
                self.state = UNTIL_CLOSE
            return
        # 5. A valid Content-Length gives the length.
        content_length = fields.get(b"content-length")
        if content_length is not None:
            length = _content_length(content_length)
            if length is not None:
                if length:
                    self.state = BODY
                    self.remaining = length
                else:
                    self._finish()
                return
            self.errors["bad_content_length"] += 1
        # 6. Otherwise the body runs until the connection closes.
        self.state = UNTIL_CLOSE

    # -- chunked bodies ----------------------------------------------------

    def _begin_chunked(self):
        self.state = CHUNK_SIZE
        self.line = None

    def _take_line(self, data, pos, ts):
        """Consume bytes up to and including the next LF into the current message.

        Return (line, next position). The line is None when the segment ends
        first (the partial line waits in self.line) or the line grew past
        MAX_CHUNK_LINE_BYTES, which ends the message.
        """
        msg = self.msg
        newline = data.find(b"\n", pos)
        if newline < 0:
            piece = data[pos:]
            self.line = piece if self.line is None else self.line + piece
            msg.wire_bytes += len(piece)
            msg.end_ts = ts
            if len(self.line) > MAX_CHUNK_LINE_BYTES:
                self.errors["chunk_line_too_large"] += 1
                self._framing_lost()
            return None, len(data)
        piece = data[pos:newline + 1]
        line = piece if self.line is None else self.line + piece
        self.line = None
        msg.wire_bytes += len(piece)
        msg.end_ts = ts
        return line, newline + 1

    def _chunk_size(self, data, pos, ts):
        line, pos = self._take_line(data, pos, ts)
        if line is None:
            return pos
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            size = -1
        if size < 0 or not size_text or b"_" in size_text or b"x" in size_text.lower():
            self.errors["bad_chunk_size"] += 1
            self._framing_lost()
            return pos
        if size == 0:
            self.state = TRAILER
        else:
            self.state = CHUNK_DATA
            self.remaining = size
        return pos

    def _chunk_end(self, data, pos, ts):
        byte = data[pos]
        msg = self.msg
        if byte == 13:
            msg.wire_bytes += 1
            return pos + 1
        if byte == 10:
            msg.wire_bytes += 1
            msg.end_ts = ts
            self.state = CHUNK_SIZE
            return pos + 1
        self.errors["bad_chunk_size"] += 1
        self._framing_lost()
        return pos

    def _trailer(self, data, pos, ts):
        # Trailer lines end with an empty line. A partial line waits in self.line.
        while pos < len(data):
            line, pos = self._take_line(data, pos, ts)
            if line is None:
                return pos
            if line == b"\r\n" or line == b"\n":
                self._finish()
                return pos
        return pos

    def _framing_lost(self):
        """End a message whose body framing broke, and look for the next start."""
        self.msg.complete = False
        self._finish()
        self.state = SYNC
        self.sync_reason = "not_http"

    # -- between messages --------------------------------------------------

    def _finish(self):
        msg = self.msg
        self.counters.attributed += msg.wire_bytes
        self.events.append((END, msg))
        self.msg = None
        self.line = None
        if self.is_request and msg.upgrade:
            self.state = UPGRADE_WAIT
        else:
            self.state = HEAD

    def _extra_bytes(self, count):
        # Stray CR/LF between messages: not part of any message.
        self.counters.unattributed["not_http"] += count

    def _not_http(self, data, pos):
        self.errors["bad_start_line"] += 1
        self.state = SYNC
        self.sync_reason = "not_http"

    def _sync(self, data, pos):
        # TODO: a message start split across two segments is not found, so
        # resynchronisation waits for the next start that fits in a segment.
        pattern = _REQUEST_START if self.is_request else _RESPONSE_START
        match = pattern.search(data, pos)
        if match is None:
            self.counters.unattributed[self.sync_reason] += len(data) - pos
            return len(data)
        start = match.start()
        self.counters.unattributed[self.sync_reason] += start - pos
        self.state = HEAD
        return start


# Matched against the lower-cased head, so no IGNORECASE is needed.
_FIELD_LINE = re.compile(rb"\n(content-length|transfer-encoding|upgrade|connection)[ \t]*:[ \t]*([^\r\n]*)")


def _parse_fields(head, start):
    """Return ({lowercase name: lowercase value} of the headers netmon needs, valid).

    ``start`` is the offset of the first header line. Repeated fields are
    joined with commas, as RFC 9110 section 5.3 allows for list-valued
    fields, so a repeated Content-Length with different values fails
    validation later. ``valid`` is false when there are fewer colons than
    header lines, so some line cannot be a field (a cheap check: a colon in
    a value can hide a bad line).
    """
    lowered = head.lower()
    fields = {}
    for match in _FIELD_LINE.finditer(lowered, start - 1):
        name = match.group(1)
        value = match.group(2).rstrip()
        if name in fields:
            fields[name] = fields[name] + b"," + value
        else:
            fields[name] = value
    # The head ends with an empty line, so it has two newlines more than fields.
    lines = head.count(b"\n", start) - 1
    valid = head.count(b":", start) >= lines
    return fields, valid


def _content_length(value):
    """Return the length from a Content-Length value, or None when invalid.

    Identical repeated values ("42, 42") are accepted, as RFC 9110 section
    8.6 allows; anything else that is not one decimal number is invalid.
    """
    values = {part.strip() for part in value.split(b",")}
    if len(values) != 1:
        return None
    text = values.pop()
    if not text.isdigit() or len(text) > 18:
        return None
    return int(text)
