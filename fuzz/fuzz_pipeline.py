"""Fuzz target: netmon's decoder and packet pipeline fed frames built from fuzz bytes.

The input is a sequence of records (fuzz/make_seeds.py writes seeds in this
layout). The first byte of a record selects its kind:

    bit 7 set    raw frame: bits 0-3 pick a link type from LINK_TYPES, then a
                 2-byte big-endian length and that many frame bytes
    bit 7 clear  TCP segment of one of four connections to port 80: bit 0
                 direction (set: server to client), bits 1-2 connection,
                 bits 3-5 link header (see wrap_link); then flags (1 byte),
                 sequence offset from the next expected byte (2 bytes,
                 signed), snaplen cut (1 byte, bytes removed from the end of
                 the frame), payload length (2 bytes) and the payload

Every record ends with one byte of time step: 0-254 hundredths of a second,
255 jumps 400 s ahead so the idle timeout fires.

Small limits make buffering, eviction and pairing bounds trigger on short
inputs. After each packet the target checks that the reassembly buffer stays
within its bounds, and after finish() that every flow is gone, the buffer is
empty and, per direction, payload == attributed + unattributed.
"""

import struct
import sys

import atheris

with atheris.instrument_imports():
    from netmon import decode, http
    from netmon.pipeline import Pipeline
    from netmon.stream import Limits

LINK_TYPES = (
    decode.LINKTYPE_ETHERNET, decode.LINKTYPE_RAW, decode.LINKTYPE_LINUX_SLL, decode.LINKTYPE_LINUX_SLL2,
    decode.LINKTYPE_NULL, decode.LINKTYPE_LOOP, decode.LINKTYPE_C_HDLC, decode.LINKTYPE_NFLOG,
    decode.LINKTYPE_IPV4, decode.LINKTYPE_IPV6, 12, 14, 147,
)
SERVER_PORT = 80
# The bundled scheduler captures in pcaps/ use port 8080, and some raw-frame seeds come from them.
SERVER_PORTS = (SERVER_PORT, 8080)
CLIENT_IP = bytes((10, 0, 0, 1))
SERVER_IP = bytes((10, 0, 0, 2))
CLIENT_IP6 = bytes.fromhex("20010db8000000000000000000000001")
SERVER_IP6 = bytes.fromhex("20010db8000000000000000000000002")
# Initial sequence numbers per connection and direction, two of them close to the 2**32 wrap.
ISNS = ((1000, 5000), (0xFFFFFF00, 77), (123456, 0xFFFFFFF0), (9, 9))

LIMITS = Limits(
    max_stream_buffer=4096,
    max_stream_segments=8,
    max_total_buffer=12288,
    max_pending=4,
    max_flows=3,
    idle_timeout=60.0,
    closed_linger=5.0,
)

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")


def tcp_segment(sport, dport, seq, ack, flags, payload):
    return _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0) + payload


def wrap_link(selector, from_server, segment):
    """Return (linktype, frame) for one of eight link and IP header layouts."""
    src, dst = (SERVER_IP, CLIENT_IP) if from_server else (CLIENT_IP, SERVER_IP)
    ipv4 = _IPV4.pack(0x45, 0, 20 + len(segment), 1, 0x4000, 64, 6, 0, src, dst) + segment
    if selector == 0:
        return decode.LINKTYPE_RAW, ipv4
    if selector == 1:
        return decode.LINKTYPE_ETHERNET, b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + ipv4
    if selector == 2:
        return decode.LINKTYPE_ETHERNET, b"\x02" * 12 + b"\x81\x00\x00\x64\x08\x00" + ipv4
    if selector == 3:
        return decode.LINKTYPE_LINUX_SLL, b"\x00\x00\x00\x01\x00\x06" + b"\x02" * 8 + b"\x08\x00" + ipv4
    if selector == 4:
        return decode.LINKTYPE_NULL, struct.pack("<I", 2) + ipv4
    src6, dst6 = (SERVER_IP6, CLIENT_IP6) if from_server else (CLIENT_IP6, SERVER_IP6)
    ipv6 = _IPV6.pack(0x60000000, len(segment), 6, 64, src6, dst6) + segment
    if selector == 5:
        return decode.LINKTYPE_RAW, ipv6
    if selector == 6:
        return decode.LINKTYPE_ETHERNET, b"\x02" * 12 + b"\x86\xdd" + ipv6
    # Ethernet padded to its 60-byte minimum: the IP length must end the payload.
    frame = b"\x02" * 12 + b"\x08\x00" + ipv4
    return decode.LINKTYPE_ETHERNET, frame + b"\x00" * max(0, 60 - len(frame))


class Harness:
    def __init__(self):
        self.transactions = []
        self.pipeline = Pipeline(SERVER_PORTS, self.transactions.append, LIMITS)
        # Next sequence number per (connection, from_server). A segment's offset is relative to it.
        self.next_seq = {}
        self.ts = 1_700_000_000.0

    def segment_frame(self, kind, data, pos):
        """Build one TCP frame from a segment record and return (linktype, frame, wirelen, next pos)."""
        if pos + 6 > len(data):
            return None
        from_server = kind & 1
        connection = (kind >> 1) & 3
        selector = (kind >> 3) & 7
        flags = data[pos]
        (offset,) = struct.unpack_from("!h", data, pos + 1)
        cut = data[pos + 3]
        (length,) = struct.unpack_from("!H", data, pos + 4)
        pos += 6
        payload = data[pos:pos + length]
        pos += len(payload)

        key = (connection, from_server)
        isn = ISNS[connection][from_server]
        expected = self.next_seq.get(key, isn)
        seq = (expected + offset) & 0xFFFFFFFF
        if flags & decode.TCP_SYN:
            seq = isn
            self.next_seq[key] = (isn + 1 + len(payload)) & 0xFFFFFFFF
        elif offset == 0:
            self.next_seq[key] = (seq + len(payload) + (flags & decode.TCP_FIN)) & 0xFFFFFFFF
        peer = self.next_seq.get((connection, 1 - from_server), ISNS[connection][1 - from_server])
        client_port = 40000 + connection
        if from_server:
            segment = tcp_segment(SERVER_PORT, client_port, seq, peer, flags, payload)
        else:
            segment = tcp_segment(client_port, SERVER_PORT, seq, peer, flags, payload)
        linktype, frame = wrap_link(selector, from_server, segment)
        wirelen = len(frame)
        if cut:
            frame = frame[:max(0, len(frame) - cut)]
        return linktype, frame, wirelen, pos

    def run(self, data):
        pos = 0
        while pos < len(data):
            kind = data[pos]
            pos += 1
            if kind & 0x80:
                if pos + 2 > len(data):
                    return
                linktype = LINK_TYPES[(kind & 0x0F) % len(LINK_TYPES)]
                (length,) = struct.unpack_from("!H", data, pos)
                frame = data[pos + 2:pos + 2 + length]
                pos += 2 + len(frame)
                wirelen = len(frame)
            else:
                built = self.segment_frame(kind, data, pos)
                if built is None:
                    return
                linktype, frame, wirelen, pos = built
            step = data[pos] if pos < len(data) else 1
            pos += 1
            self.ts += 400.0 if step == 255 else step / 100
            self.pipeline.packet(self.ts, linktype, frame, wirelen)
            self.check_bounds()

    def check_bounds(self):
        table = self.pipeline.table
        assert 0 <= table.buffered <= LIMITS.max_total_buffer, table.buffered
        assert len(table.flows) <= LIMITS.max_flows, len(table.flows)
        for flow in table.flows.values():
            for stream in (flow.requests, flow.responses):
                assert stream.ooo_bytes <= LIMITS.max_stream_buffer, stream.ooo_bytes
                assert not stream.ooo or len(stream.ooo) <= LIMITS.max_stream_segments
                parser = stream.parser
                if parser.head is not None:
                    assert len(parser.head) <= http.MAX_HEAD_BYTES
            assert len(flow.pending) <= LIMITS.max_pending
            assert not flow.waiting or len(flow.waiting) <= LIMITS.max_pending

    def finish(self):
        self.pipeline.finish()
        table = self.pipeline.table
        assert not table.flows, len(table.flows)
        assert set(table.skipped) <= set(decode.SKIP_REASONS), dict(table.skipped)
        assert set(table.parse_errors) <= set(http.PARSE_ERROR_REASONS), dict(table.parse_errors)
        for name, counters in (("inbound", table.inbound), ("outbound", table.outbound)):
            unattributed = sum(counters.unattributed.values())
            assert counters.payload == counters.attributed + unattributed, (
                f"{name}: payload {counters.payload} != attributed {counters.attributed} + "
                f"unattributed {counters.unattributed}"
            )
        attributed = {"inbound": 0, "outbound": 0}
        for transaction in self.transactions:
            assert transaction.request is not None or transaction.response is not None
            if transaction.request is not None:
                attributed["inbound"] += transaction.request.wire_bytes
            if transaction.response is not None:
                attributed["outbound"] += transaction.response.wire_bytes
        assert attributed["inbound"] == table.inbound.attributed, (attributed, table.inbound.attributed)
        assert attributed["outbound"] == table.outbound.attributed, (attributed, table.outbound.attributed)
        assert table.transactions == len(self.transactions)
        # Checked last, so that a leaked buffer count does not hide the checks above.
        assert table.buffered == 0, f"{table.buffered} bytes still counted as buffered after finish()"


def TestOneInput(data):
    harness = Harness()
    harness.run(data)
    harness.finish()


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
