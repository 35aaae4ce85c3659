"""Fuzz target: netmon.http.MessageParser fed with fuzz bytes split at fuzz-chosen points.

Input layout (fuzz/make_seeds.py writes seeds in it):

    byte 0      configuration: bit 0 request parser, bit 1 stream starts
                mid-connection, bits 2-3 method of the request that a
                response is paired with (GET, HEAD, CONNECT, or not captured
                yet), bit 4 close by reset instead of FIN
    byte 1      number of operation bytes that follow
    op bytes    each one feeds, loses or tunnels part of the stream (see run_operations)
    rest        the byte stream. The operations feed its start, and what
                they leave is fed in one call.

After every call the target checks the parser's contract: each byte fed or
declared lost ends up in exactly one message or one unattributed reason, the
head and chunk-line buffers stay bounded, and every error reason is a known
one. A broken check raises AssertionError, which atheris reports as a crash.

`python3 fuzz/fuzz_http.py -help=1` lists libFuzzer's options, and
fuzz/README.md gives the CI and long-run commands.
"""

import collections
import sys

import atheris

with atheris.instrument_imports():
    from netmon import http

REQUEST_METHODS = ("GET", "HEAD", "CONNECT", None)


class CapturedRequest:
    """The request a response parser pairs with, as netmon.flow would pass it."""

    def __init__(self, method):
        self.method = method


def feed_size(code):
    """Map a 6-bit operation code to a byte count from 1 to 3970."""
    return code * code + 1


class Harness:
    """One MessageParser plus the byte accounting that its contract promises."""

    def __init__(self, config):
        self.is_request = bool(config & 1)
        midstream = bool(config & 2)
        method = REQUEST_METHODS[(config >> 2) & 3]
        self.reset = bool(config & 16)
        self.counters = http.DirectionCounters()
        self.errors = collections.Counter()
        self.handed = 0  # bytes fed plus bytes declared lost
        self.open_messages = {}
        self.ended_bytes = 0
        pair = None
        if not self.is_request:
            # None stands for a response that arrived before its request.
            pair = lambda response: CapturedRequest(method) if method else None
        self.parser = http.MessageParser(self.is_request, self.counters, self.errors, pair, midstream=midstream)
        if not midstream:
            self.parser.start_clean()
        self.seq = 1000
        self.ts = 1.0

    def feed(self, data):
        if not data:
            return
        self.check_events(self.parser.feed(data, self.seq, self.ts, 5000))
        self.handed += len(data)
        self.seq = (self.seq + len(data)) & 0xFFFFFFFF
        self.ts += 0.001
        self.check_bounds()

    def gap(self, size, reason):
        self.check_events(self.parser.gap(size, self.ts, reason))
        self.handed += size
        self.seq = (self.seq + size) & 0xFFFFFFFF
        self.check_bounds()

    def close(self):
        self.check_events(self.parser.close(self.ts, self.reset))
        assert not self.open_messages, f"messages left open after close: {list(self.open_messages.values())}"
        assert self.parser.msg is None
        assert self.parser.head is None
        unattributed = sum(self.counters.unattributed.values())
        assert self.counters.attributed == self.ended_bytes, (self.counters.attributed, self.ended_bytes)
        assert self.handed == self.counters.attributed + unattributed, (
            f"handed {self.handed} != attributed {self.counters.attributed} + unattributed "
            f"{dict(self.counters.unattributed)}"
        )

    def check_events(self, events):
        for kind, message in events:
            assert message.is_request == self.is_request
            if kind == http.START:
                assert id(message) not in self.open_messages, "START twice for one message"
                self.open_messages[id(message)] = message
                if self.is_request:
                    assert isinstance(message.method, str) and message.method
                    assert isinstance(message.target, str)
            else:
                assert kind == http.END
                assert self.open_messages.pop(id(message), None) is message, "END without START"
                assert message.wire_bytes > 0
                if not self.is_request:
                    assert 0 <= message.status <= 999
                self.ended_bytes += message.wire_bytes

    def check_bounds(self):
        parser = self.parser
        if parser.head is not None:
            assert len(parser.head) <= http.MAX_HEAD_BYTES, len(parser.head)
        if parser.line is not None:
            assert len(parser.line) <= http.MAX_CHUNK_LINE_BYTES, len(parser.line)
        assert set(self.counters.unattributed) == set(http.UNATTRIBUTED_REASONS)
        assert set(self.errors) <= set(http.PARSE_ERROR_REASONS), dict(self.errors)
        assert min(self.counters.unattributed.values()) >= 0


def run_operations(harness, operations, stream):
    """Apply the operation bytes to the stream and return the bytes not yet fed.

    The low two bits of an operation byte select the action and the high six
    bits a size code. Actions 0 and 1 feed the next bytes. Action 2 declares a
    gap whose size comes from the code's low five bits, with reason
    "truncated" when bit 7 of the operation byte is set. Action 3 switches a
    request parser to tunnel mode, as netmon.flow does after a 101 response or
    a 2xx response to CONNECT.
    """
    pos = 0
    for operation in operations:
        action = operation & 3
        code = operation >> 2
        if action <= 1:
            size = feed_size(code)
            harness.feed(stream[pos:pos + size])
            pos += size
        elif action == 2:
            harness.gap(feed_size(code & 31), "truncated" if code & 32 else "gap")
        elif harness.is_request:
            harness.parser.enter_tunnel()
    return stream[pos:]


def TestOneInput(data):
    if len(data) < 2:
        return
    harness = Harness(data[0])
    operations = data[2:2 + data[1]]
    stream = data[2 + data[1]:]
    rest = run_operations(harness, operations, stream)
    harness.feed(rest)
    harness.close()


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
