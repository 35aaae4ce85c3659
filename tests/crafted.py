"""Build TCP conversations as scapy packets and run the netmon CLI on captures of them.

A test builds a `Conversation`, edits `Conversation.packets` to drop, duplicate,
reorder or overlap segments, and writes the list with `write_pcap` into pytest's
tmp_path. Nothing in this module sends a packet on a network.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether, Loopback
from scapy.packet import Packet, Raw
from scapy.utils import PcapNgWriter, PcapWriter

REPO_ROOT = Path(__file__).resolve().parents[1]

SEQ_MODULUS = 2**32

# LINKTYPE_* values for the link-layer header field of a pcap file.
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINK_TYPES = {
    "ether": LINKTYPE_ETHERNET,
    "vlan": LINKTYPE_ETHERNET,
    "qinq": LINKTYPE_ETHERNET,
    "sll": LINKTYPE_LINUX_SLL,
    "raw": LINKTYPE_RAW,
    "null": LINKTYPE_NULL,
}

# Address family values in the 4-byte LINKTYPE_NULL header. AF_INET6 differs between
# BSDs (24, 28 or 30, as scapy's LOOPBACK_TYPES lists them), and 30 is the macOS value.
NULL_FAMILY_INET = 2
NULL_FAMILY_INET6 = 30

DEFAULT_SNAPLEN = 65535

PAYLOAD_METRIC = "netmon_tcp_payload_bytes_total"
MESSAGE_METRIC = "netmon_http_message_bytes_total"
UNATTRIBUTED_METRIC = "netmon_unattributed_bytes_total"
DIRECTIONS = ("inbound", "outbound")

CLIENT = "client"
SERVER = "server"


@dataclass
class Endpoint:
    """One side of a TCP connection and the payload bytes it has sent so far."""

    ip: str
    port: int
    isn: int
    stream: bytearray = field(default_factory=bytearray)
    syn_sent: bool = False
    syn_data: bytes = b""
    fin_sent: bool = False

    def seq_at(self, offset: int) -> int:
        """Return the sequence number of stream byte `offset`, before wrapping at 2**32."""
        return self.isn + 1 + offset

    def next_seq(self) -> int:
        """Return the sequence number that follows everything sent, a FIN included."""
        return self.seq_at(len(self.stream)) + int(self.fin_sent)


class Conversation:
    """Builder for the packets of one TCP connection, with seq and ack tracked per side.

    Each sending method (syn, syn_ack, handshake, send, ack, fin, close, rst,
    retransmit) appends the packets it builds to `packets` and returns them.
    Each packet gets a timestamp `step` seconds after the previous one, but
    `write_pcap` restamps packets in file order by default.

    The ack number of a packet covers everything the other side has sent so far,
    as if each segment arrived at once. A test that drops a segment from `packets`
    therefore models a capture that missed it while the receiver got it.
    Stream offsets (for `retransmit`) count payload bytes from 0 and exclude SYN and FIN.
    """

    def __init__(
        self,
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
        *,
        ipv6: bool = False,
        ipv6_ext: str | None = None,
        t0: float = 1700000000.0,
        step: float = 0.001,
        client_isn: int = 1000,
        server_isn: int = 5000,
    ) -> None:
        if client is None:
            client = ("2001:db8::1", 40000) if ipv6 else ("10.0.0.1", 40000)
        if server is None:
            server = ("2001:db8::2", 80) if ipv6 else ("10.0.0.2", 80)
        if ipv6_ext not in (None, "hopbyhop", "destopt"):
            raise ValueError(f"invalid ipv6_ext {ipv6_ext!r}: expected None, 'hopbyhop' or 'destopt'")
        if ipv6_ext is not None and not ipv6:
            raise ValueError("ipv6_ext requires ipv6=True")

        self.ipv6 = ipv6
        self.ipv6_ext = ipv6_ext
        self.endpoints = {
            CLIENT: Endpoint(client[0], client[1], client_isn),
            SERVER: Endpoint(server[0], server[1], server_isn),
        }
        self.clock = t0
        self.step = step
        self.packets: list[Packet] = []

    # Addresses as netmon prints them in the jsonl `client` and `server` fields.
    @property
    def client_address(self) -> str:
        return self._format_address(self.endpoints[CLIENT])

    @property
    def server_address(self) -> str:
        return self._format_address(self.endpoints[SERVER])

    def _format_address(self, end: Endpoint) -> str:
        if self.ipv6:
            return f"[{end.ip}]:{end.port}"
        return f"{end.ip}:{end.port}"

    def stream(self, side: str) -> bytes:
        """Return the payload bytes that `side` has sent so far."""
        return bytes(self.endpoints[side].stream)

    def _other(self, side: str) -> str:
        if side not in self.endpoints:
            raise ValueError(f"invalid side {side!r}: expected 'client' or 'server'")
        return SERVER if side == CLIENT else CLIENT

    def _emit(
        self,
        side: str,
        flags: str,
        seq: int,
        payload: bytes = b"",
        options: list | None = None,
    ) -> Packet:
        """Build one segment from `side`, append it to `packets` and return it."""
        sender = self.endpoints[side]
        receiver = self.endpoints[self._other(side)]

        # Every segment except the client's SYN carries an ACK.
        ack = 0
        if flags != "S":
            flags = flags if "A" in flags else flags + "A"
            ack = receiver.next_seq() % SEQ_MODULUS

        tcp = TCP(
            sport=sender.port,
            dport=receiver.port,
            seq=seq % SEQ_MODULUS,
            ack=ack,
            flags=flags,
            window=65535,
            options=options or [],
        )
        if self.ipv6:
            network = IPv6(src=sender.ip, dst=receiver.ip)
            if self.ipv6_ext == "hopbyhop":
                network = network / IPv6ExtHdrHopByHop()
            elif self.ipv6_ext == "destopt":
                network = network / IPv6ExtHdrDestOpt()
        else:
            network = IP(src=sender.ip, dst=receiver.ip, id=len(self.packets) + 1)

        packet = network / tcp
        if payload:
            packet = packet / Raw(load=bytes(payload))
        packet.time = self.clock
        self.clock += self.step
        self.packets.append(packet)
        return packet

    def syn(self, data: bytes = b"", options: list | None = None) -> Packet:
        """Send the client SYN, with `data` for TCP Fast Open.

        A second call retransmits the same SYN (same ISN, same data).
        """
        client = self.endpoints[CLIENT]
        if client.syn_sent and data != client.syn_data:
            raise ValueError("a retransmitted SYN must carry the data of the first one")
        if not client.syn_sent:
            client.syn_sent = True
            client.syn_data = data
            client.stream += data
        if options is None:
            options = [("MSS", 1460)]
        return self._emit(CLIENT, "S", client.isn, data, options)

    def syn_ack(self) -> Packet:
        """Send the server SYN-ACK. A second call retransmits it."""
        server = self.endpoints[SERVER]
        server.syn_sent = True
        return self._emit(SERVER, "SA", server.isn, b"", [("MSS", 1460)])

    def handshake(self) -> list[Packet]:
        """Send SYN, SYN-ACK and the client's ACK."""
        return [self.syn(), self.syn_ack(), self.ack(CLIENT)]

    def send(
        self,
        side: str,
        data: bytes,
        segment_size: int | None = None,
        fin: bool = False,
    ) -> list[Packet]:
        """Send `data` from `side` in segments of at most `segment_size` bytes.

        With `fin`, the last segment also carries FIN.
        """
        sender = self.endpoints[side]
        if not data:
            raise ValueError("data must not be empty. Use ack() or fin() for segments without payload")
        size = segment_size or len(data)

        sent = []
        for start in range(0, len(data), size):
            chunk = data[start : start + size]
            last = start + size >= len(data)
            seq = sender.next_seq()
            sender.stream += chunk
            flags = "PA" if last else "A"
            if last and fin:
                flags += "F"
                sender.fin_sent = True
            sent.append(self._emit(side, flags, seq, chunk))
        return sent

    def client_send(self, data: bytes, segment_size: int | None = None, fin: bool = False) -> list[Packet]:
        return self.send(CLIENT, data, segment_size, fin)

    def server_send(self, data: bytes, segment_size: int | None = None, fin: bool = False) -> list[Packet]:
        return self.send(SERVER, data, segment_size, fin)

    def ack(self, side: str) -> Packet:
        """Send a pure ACK from `side`."""
        sender = self.endpoints[side]
        return self._emit(side, "A", sender.next_seq())

    def fin(self, side: str = CLIENT) -> Packet:
        """Send a FIN from `side`."""
        sender = self.endpoints[side]
        seq = sender.next_seq()
        sender.fin_sent = True
        return self._emit(side, "FA", seq)

    def close(self, first: str = CLIENT) -> list[Packet]:
        """Close both directions: FIN from `first`, FIN from the other side, final ACK."""
        other = self._other(first)
        return [self.fin(first), self.fin(other), self.ack(first)]

    def rst(self, side: str = CLIENT) -> Packet:
        """Send a RST from `side` at its next sequence number."""
        sender = self.endpoints[side]
        return self._emit(side, "RA", sender.next_seq())

    def retransmit(self, side: str, start: int, end: int) -> Packet:
        """Send stream bytes [start, end) of `side` again, at their original sequence numbers."""
        sender = self.endpoints[side]
        if not 0 <= start < end <= len(sender.stream):
            raise ValueError(f"invalid range [{start}, {end}) for a stream of {len(sender.stream)} bytes")
        return self._emit(side, "PA", sender.seq_at(start), bytes(sender.stream[start:end]))

    def drop(self, *packets: Packet) -> None:
        """Remove `packets` from the capture, matching by identity, as if the capture missed them."""
        for packet in packets:
            index = next(i for i, candidate in enumerate(self.packets) if candidate is packet)
            del self.packets[index]

    def write(self, path: Path, link: str = "ether", **options) -> list[float]:
        """Write `packets` to `path` with the options of `write_pcap`."""
        return write_pcap(path, self.packets, link, **options)


def _mac_for(address: str) -> str:
    """Return a locally administered MAC address derived from an IP address."""
    digest = zlib.crc32(address.encode())
    return "02:00:" + ":".join(f"{byte:02x}" for byte in digest.to_bytes(4, "big"))


def link_frame(packet: Packet, link: str) -> Packet | bytes:
    """Wrap an IP or IPv6 packet in the link-layer header that `link` names.

    The result is bytes for "raw" (LINKTYPE_RAW has no link header).
    """
    network = packet.copy()
    ipv6 = isinstance(network, IPv6)
    source_mac = _mac_for(network.src)
    destination_mac = _mac_for(network.dst)

    if link == "ether":
        return Ether(src=source_mac, dst=destination_mac) / network
    if link == "vlan":
        return Ether(src=source_mac, dst=destination_mac) / Dot1Q(vlan=100) / network
    if link == "qinq":
        return Ether(src=source_mac, dst=destination_mac) / Dot1AD(vlan=200) / Dot1Q(vlan=100) / network
    if link == "sll":
        # Linux cooked capture v1: packet type 0 is "sent to us", hardware type 1 is Ethernet,
        # and the 8-byte address field contains the 6-byte source MAC plus padding.
        source = bytes.fromhex(source_mac.replace(":", "")) + b"\x00\x00"
        return CookedLinux(
            pkttype=0,
            lladdrtype=1,
            lladdrlen=6,
            src=source,
            proto=0x86DD if ipv6 else 0x0800,
        ) / network
    if link == "raw":
        return bytes(network)
    if link == "null":
        return Loopback(type=NULL_FAMILY_INET6 if ipv6 else NULL_FAMILY_INET) / network
    raise ValueError(f"invalid link {link!r}: expected one of {sorted(LINK_TYPES)}")


def write_pcap(
    path: Path,
    packets: Sequence[Packet | bytes],
    link: str = "ether",
    *,
    retime: bool = True,
    snaplen: int | None = None,
    fmt: str = "pcap",
    nano: bool = False,
    endianness: str = "",
    linktype: int | None = None,
) -> list[float]:
    """Write IP/IPv6 packets to a capture file and return each record's timestamp.

    `link` selects the link-layer header that wraps every packet. Items given as
    bytes are written unchanged, for frames that scapy cannot build.
    With `retime`, records get increasing timestamps in list order, starting at the
    earliest packet time and spaced 1 ms apart, so that reordered or duplicated
    packets still make a capture whose clock runs forward.
    With `snaplen`, each record contains at most `snaplen` bytes while its original
    length stays the wire length, as tcpdump -s writes it.
    `fmt` is "pcap" or "pcapng". `nano` and `endianness` ("<" or ">") apply to pcap only.
    `linktype` overrides the header's link type, e.g. to write an unknown one.
    """
    if fmt not in ("pcap", "pcapng"):
        raise ValueError(f"invalid fmt {fmt!r}: expected 'pcap' or 'pcapng'")

    timed = [getattr(packet, "time", None) for packet in packets]
    start = min((float(t) for t in timed if t is not None), default=1700000000.0)
    timestamps = []
    for index, original in enumerate(timed):
        if retime or original is None:
            timestamps.append(start + index * 0.001)
        else:
            timestamps.append(float(original))

    frames = [packet if isinstance(packet, bytes) else link_frame(packet, link) for packet in packets]
    header_linktype = LINK_TYPES[link] if linktype is None else linktype

    if fmt == "pcapng":
        writer = PcapNgWriter(str(path))
        with writer:
            for frame, timestamp in zip(frames, timestamps):
                if isinstance(frame, bytes):
                    raise ValueError("pcapng output requires scapy packets, because raw bytes carry no link type")
                frame.time = timestamp
                writer.write(frame)
        return timestamps

    file_snaplen = DEFAULT_SNAPLEN if snaplen is None else snaplen
    writer = PcapWriter(
        str(path),
        linktype=header_linktype,
        sync=True,
        nano=nano,
        endianness=endianness,
        snaplen=file_snaplen,
    )
    # PcapWriter ignores linktype=0 (LINKTYPE_NULL) because it tests the argument for
    # truth, so the attribute is set here. write_packet() skips the file header, hence
    # the explicit write_header().
    writer.linktype = header_linktype
    writer.write_header(None)
    with writer:
        for frame, timestamp in zip(frames, timestamps):
            data = bytes(frame)
            captured = data[:file_snaplen]
            # Integer arithmetic keeps the written fraction exact.
            units_per_second = 1_000_000_000 if nano else 1_000_000
            ticks = round(timestamp * units_per_second)
            seconds, fraction = divmod(ticks, units_per_second)
            writer.write_packet(captured, sec=seconds, usec=fraction, caplen=len(captured), wirelen=len(data))
    return timestamps


def run_netmon(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m netmon` from the repository root and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "netmon", *(str(arg) for arg in args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _path_list(paths: Path | str | Iterable[Path | str]) -> list[str]:
    if isinstance(paths, (str, Path)):
        return [str(paths)]
    return [str(path) for path in paths]


def run_analyze(
    paths: Path | str | Iterable[Path | str],
    output_format: str,
    *args: object,
    port: int = 80,
    exit_status: int = 0,
) -> subprocess.CompletedProcess:
    """Run `netmon analyze` and check its exit status and that stderr contains no traceback."""
    result = run_netmon("analyze", *_path_list(paths), "--port", port, "--format", output_format, *args)
    assert result.returncode == exit_status, (
        f"netmon exited with {result.returncode}, expected {exit_status}\nstderr:\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, f"netmon printed a traceback:\n{result.stderr}"
    return result


def parse_jsonl(text: str) -> list[dict]:
    """Parse one JSON object per non-empty line."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_jsonl(paths, *args: object, port: int = 80, exit_status: int = 0) -> list[dict]:
    """Run `netmon analyze --format jsonl` and return the transactions in output order."""
    result = run_analyze(paths, "jsonl", *args, port=port, exit_status=exit_status)
    return parse_jsonl(result.stdout)


class Exposition:
    """Samples of a Prometheus text exposition, looked up by sample name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]

    def has(self, name: str) -> bool:
        return any(sample.name == name for sample in self.samples)

    def value(self, name: str, **labels: str) -> float:
        """Return the sum of the samples named `name` whose labels include `labels`."""
        return sum(
            sample.value
            for sample in self.samples
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items())
        )

    def by_label(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """Return the samples named `name` and matching `labels`, summed per value of `label`."""
        totals: dict[str, float] = {}
        for sample in self.samples:
            if sample.name != name or label not in sample.labels:
                continue
            if all(sample.labels.get(key) == value for key, value in labels.items()):
                key = sample.labels[label]
                totals[key] = totals.get(key, 0) + sample.value
        return totals

    def payload(self, direction: str) -> float:
        return self.value(PAYLOAD_METRIC, direction=direction)

    def message(self, direction: str) -> float:
        return self.value(MESSAGE_METRIC, direction=direction)

    def unattributed(self, direction: str, reason: str | None = None) -> float:
        if reason is None:
            return self.value(UNATTRIBUTED_METRIC, direction=direction)
        return self.value(UNATTRIBUTED_METRIC, direction=direction, reason=reason)


def run_prometheus(paths, *args: object, port: int = 80, exit_status: int = 0) -> Exposition:
    """Run `netmon analyze --format prometheus` and return the parsed exposition."""
    result = run_analyze(paths, "prometheus", *args, port=port, exit_status=exit_status)
    return Exposition(result.stdout)


def assert_conservation(exposition: Exposition | str) -> None:
    """Assert that, per direction, TCP payload bytes = HTTP message bytes + unattributed bytes."""
    if isinstance(exposition, str):
        exposition = Exposition(exposition)
    assert exposition.has(PAYLOAD_METRIC), f"{PAYLOAD_METRIC} missing from the exposition:\n{exposition.text}"

    for direction in DIRECTIONS:
        payload = exposition.payload(direction)
        message = exposition.message(direction)
        unattributed = exposition.by_label(UNATTRIBUTED_METRIC, "reason", direction=direction)
        assert payload == message + sum(unattributed.values()), (
            f"{direction}: payload {payload} != message bytes {message} + unattributed {unattributed}"
        )


def transaction_row(transaction: dict) -> tuple:
    """Return the fields that tests compare: (method, path, status, request_bytes, response_bytes, complete)."""
    return (
        transaction["method"],
        transaction["path"],
        transaction["status"],
        transaction["request_bytes"],
        transaction["response_bytes"],
        transaction["complete"],
    )


def _row_sort_key(row: tuple) -> tuple:
    # None sorts before any value, and no None is ever compared with a str or an int.
    return tuple((value is not None, value if value is not None else 0) for value in row)


def sorted_rows(rows: Iterable[tuple]) -> list[tuple]:
    return sorted(rows, key=_row_sort_key)


def assert_transactions(transactions: list[dict], expected: Iterable[tuple], ordered: bool = False) -> None:
    """Assert that the transaction rows equal `expected`, in output order when `ordered`."""
    rows = [transaction_row(transaction) for transaction in transactions]
    expected = list(expected)
    if not ordered:
        rows = sorted_rows(rows)
        expected = sorted_rows(expected)
    assert rows == expected, (
        "transactions differ (method, path, status, request_bytes, response_bytes, complete)\n"
        f"  got:      {rows}\n  expected: {expected}"
    )


def build_request(method: str, target: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """Return an HTTP/1.1 request with a Host header, `headers`, and Content-Length when there is a body."""
    lines = [f"{method} {target} HTTP/1.1", "Host: example.com", "User-Agent: crafted-test"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def build_response(
    body: bytes = b"",
    status: int = 200,
    reason: str = "OK",
    headers: Sequence[tuple[str, str]] = (),
    content_length: bool = True,
    version: str = "HTTP/1.1",
) -> bytes:
    """Return an HTTP response with `headers` and, unless `content_length` is False, a Content-Length."""
    lines = [f"{version} {status} {reason}", "Server: crafted-test"]
    lines += [f"{name}: {value}" for name, value in headers]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
