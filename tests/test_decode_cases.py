"""Capture decoding cases: link types, IPv6, IP fragments, TSO frames, snaplen, file formats and damaged files.

Every expected value comes from the bytes crafted here.
"""

import gzip
import re
import struct

import pytest
from scapy.layers.inet import fragment
from scapy.utils import checksum

from crafted import (
    Conversation,
    assert_conservation,
    assert_transactions,
    build_request,
    build_response,
    link_frame,
    parse_jsonl,
    run_analyze,
    run_jsonl,
    run_netmon,
    run_prometheus,
    write_pcap,
)

REQUEST = build_request("GET", "/index.html", headers=[("Accept", "text/html")])
RESPONSE = build_response(b"<html><body>hello</body></html>", headers=[("Content-Type", "text/html")])

ETHERNET_HEADER_LENGTH = 14

LINKS = ["ether", "vlan", "qinq", "sll", "raw", "null"]


def simple_conversation(ipv6: bool = False, ipv6_ext: str | None = None) -> tuple[Conversation, int]:
    """Build one GET/200 transaction and return the conversation and the index of the request packet."""
    conv = Conversation(ipv6=ipv6, ipv6_ext=ipv6_ext)
    conv.handshake()
    request_index = len(conv.packets)
    conv.client_send(REQUEST)
    conv.server_send(RESPONSE, segment_size=40)
    conv.close()
    return conv, request_index


def assert_simple_transaction(transactions: list[dict], conv: Conversation, request_timestamp: float) -> None:
    assert len(transactions) == 1, f"expected one transaction, got {transactions}"
    transaction = transactions[0]
    expected = {
        "client": conv.client_address,
        "server": conv.server_address,
        "method": "GET",
        "path": "/index.html",
        "endpoint": "/index.html",
        "status": 200,
        "request_bytes": len(REQUEST),
        "response_bytes": len(RESPONSE),
        "complete": True,
    }
    assert {key: transaction[key] for key in expected} == expected
    assert transaction["ts"] == pytest.approx(request_timestamp, abs=1e-6)


def assert_same_transactions(got: list[dict], expected: list[dict]) -> None:
    """Assert equal transactions, with timestamps and durations equal to the microsecond."""
    assert len(got) == len(expected), f"got {got}\nexpected {expected}"
    for got_transaction, expected_transaction in zip(got, expected):
        for key, value in expected_transaction.items():
            if key in ("ts", "duration_s"):
                assert got_transaction[key] == pytest.approx(value, abs=1e-6), key
            else:
                assert got_transaction[key] == value, key


@pytest.mark.parametrize("link", LINKS)
def test_link_type_ipv4(tmp_path, link):
    conv, request_index = simple_conversation()
    path = tmp_path / f"ipv4_{link}.pcap"
    timestamps = conv.write(path, link)

    assert_simple_transaction(run_jsonl(path), conv, timestamps[request_index])
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("inbound") == len(REQUEST)
    assert exposition.payload("outbound") == len(RESPONSE)


@pytest.mark.parametrize(
    "link, ipv6_ext",
    [(link, None) for link in LINKS] + [("ether", "hopbyhop"), ("ether", "destopt"), ("raw", "hopbyhop")],
)
def test_link_type_ipv6(tmp_path, link, ipv6_ext):
    conv, request_index = simple_conversation(ipv6=True, ipv6_ext=ipv6_ext)
    path = tmp_path / f"ipv6_{link}.pcap"
    timestamps = conv.write(path, link)

    transactions = run_jsonl(path)
    assert_simple_transaction(transactions, conv, timestamps[request_index])
    assert transactions[0]["client"] == "[2001:db8::1]:40000"
    assert transactions[0]["server"] == "[2001:db8::2]:80"
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("inbound") == len(REQUEST)
    assert exposition.payload("outbound") == len(RESPONSE)


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_link_types_give_identical_output(tmp_path, ipv6):
    conv, _ = simple_conversation(ipv6=ipv6)
    outputs = {}
    for link in LINKS:
        path = tmp_path / f"{link}.pcap"
        conv.write(path, link)
        outputs[link] = run_jsonl(path)

    for link in LINKS:
        assert outputs[link] == outputs["ether"], f"{link} output differs from ether"


def test_ipv4_fragments_skipped_and_counted(tmp_path):
    request_1 = build_request("GET", "/fragmented", headers=[("X-Pad", "f" * 500)])
    response_1 = build_response(b"1" * 100)
    request_2 = build_request("GET", "/whole")
    response_2 = build_response(b"2" * 50)

    conv = Conversation()
    conv.handshake()
    [request_packet] = conv.client_send(request_1)
    conv.server_send(response_1)
    conv.client_send(request_2)
    conv.server_send(response_2)
    conv.close()

    # The first request travels as IPv4 fragments. netmon skips fragments instead of
    # reassembling them, so request 1 is a gap in the client stream and response 1
    # has no request.
    fragments = fragment(request_packet, fragsize=200)
    assert len(fragments) > 1
    index = next(i for i, packet in enumerate(conv.packets) if packet is request_packet)
    packets = conv.packets[:index] + list(fragments) + conv.packets[index + 1 :]
    path = tmp_path / "fragments.pcap"
    write_pcap(path, packets)

    assert_transactions(
        run_jsonl(path),
        [
            (None, None, 200, 0, len(response_1), False),
            ("GET", "/whole", 200, len(request_2), len(response_2), True),
        ],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.value("netmon_packets_skipped_total", reason="fragment") > 0


def ipv4_total_length_zeroed(frame: bytes, ip_offset: int = ETHERNET_HEADER_LENGTH) -> bytes:
    """Return `frame` with the IPv4 total length set to 0 and the header checksum recomputed."""
    header_length = (frame[ip_offset] & 0x0F) * 4
    header = bytearray(frame[ip_offset : ip_offset + header_length])
    header[2:4] = b"\x00\x00"
    header[10:12] = b"\x00\x00"
    header[10:12] = checksum(bytes(header)).to_bytes(2, "big")
    return frame[:ip_offset] + bytes(header) + frame[ip_offset + header_length :]


def test_tso_frame_with_zero_total_length(tmp_path):
    request = build_request("GET", "/large")
    response = build_response(b"T" * 6000)

    conv = Conversation()
    conv.handshake()
    conv.client_send(request)
    [large_segment] = conv.server_send(response)
    conv.close()

    # A capture on a host that uses TCP segmentation offload contains frames larger
    # than the MTU. This one has IPv4 total length 0, so its length must come from
    # the captured length.
    large_frame = ipv4_total_length_zeroed(bytes(link_frame(large_segment, "ether")))
    assert len(large_frame) > 1514
    packets = [large_frame if packet is large_segment else packet for packet in conv.packets]
    path = tmp_path / "tso.pcap"
    write_pcap(path, packets)

    assert_transactions(run_jsonl(path), [("GET", "/large", 200, len(request), len(response), True)])
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("outbound") == len(response)


def test_snaplen_truncated_body(tmp_path):
    body = b"s" * 1000
    request_1 = build_request("GET", "/big")
    response_1 = build_response(body)
    response_1_head = response_1[: -len(body)]
    request_2 = build_request("GET", "/small")
    response_2 = build_response(b"tiny")
    snaplen = 200

    conv = Conversation()
    conv.handshake()
    conv.client_send(request_1)
    conv.server_send(response_1_head)
    [body_segment] = conv.server_send(body)
    conv.client_send(request_2)
    conv.server_send(response_2)
    conv.close()

    # Only the body segment exceeds the snaplen, so the capture contains every header
    # block whole and only the first bytes of the body.
    for packet in conv.packets:
        frame_length = len(bytes(link_frame(packet, "ether")))
        assert (frame_length > snaplen) == (packet is body_segment)
    path = tmp_path / "snaplen.pcap"
    conv.write(path, snaplen=snaplen)

    # The IP total length still gives the body's wire length, so response 1 counts
    # all its bytes but is incomplete.
    assert_transactions(
        run_jsonl(path),
        [
            ("GET", "/big", 200, len(request_1), len(response_1), False),
            ("GET", "/small", 200, len(request_2), len(response_2), True),
        ],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("outbound") == len(response_1) + len(response_2)


def test_unknown_link_type(tmp_path):
    conv, _ = simple_conversation()
    frames = [bytes(link_frame(packet, "ether")) for packet in conv.packets]
    path = tmp_path / "user0_link.pcap"
    # Link type 147 is LINKTYPE_USER0, which has no defined header.
    write_pcap(path, frames, linktype=147)

    result = run_analyze(path, "jsonl", exit_status=1)
    assert parse_jsonl(result.stdout) == []
    assert path.name in result.stderr


def test_unknown_link_type_with_readable_file(tmp_path):
    conv, request_index = simple_conversation()
    good = tmp_path / "good.pcap"
    timestamps = conv.write(good)
    bad = tmp_path / "user0_link.pcap"
    write_pcap(bad, [bytes(link_frame(packet, "ether")) for packet in conv.packets], linktype=147)

    result = run_analyze([good, bad], "jsonl", exit_status=1)
    assert_simple_transaction(parse_jsonl(result.stdout), conv, timestamps[request_index])
    assert bad.name in result.stderr


def test_gzip_capture_matches_plain(tmp_path):
    conv, request_index = simple_conversation()
    plain = tmp_path / "capture.pcap"
    timestamps = conv.write(plain)
    compressed = tmp_path / "capture.pcap.gz"
    compressed.write_bytes(gzip.compress(plain.read_bytes()))

    plain_result = run_analyze(plain, "jsonl")
    compressed_result = run_analyze(compressed, "jsonl")
    assert compressed_result.stdout == plain_result.stdout
    assert_simple_transaction(parse_jsonl(compressed_result.stdout), conv, timestamps[request_index])
    assert_conservation(run_prometheus(compressed))


@pytest.mark.parametrize(
    "options",
    [{"fmt": "pcapng"}, {"nano": True}, {"endianness": ">"}],
    ids=["pcapng", "nanosecond-pcap", "big-endian-pcap"],
)
def test_capture_format_matches_plain(tmp_path, options):
    conv, request_index = simple_conversation()
    plain = tmp_path / "plain.pcap"
    timestamps = conv.write(plain)
    variant = tmp_path / "variant.pcap"
    conv.write(variant, **options)

    variant_transactions = run_jsonl(variant)
    assert_same_transactions(variant_transactions, run_jsonl(plain))
    assert_simple_transaction(variant_transactions, conv, timestamps[request_index])
    assert_conservation(run_prometheus(variant))


def pcap_record_offsets(data: bytes) -> list[int]:
    """Return the file offset of each record in a classic pcap file."""
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    offsets = []
    position = 24
    while position < len(data):
        offsets.append(position)
        (captured_length,) = struct.unpack_from(endian + "I", data, position + 8)
        position += 16 + captured_length
    return offsets


@pytest.mark.parametrize("cut", ["record-header", "record-data"])
def test_truncated_file(tmp_path, cut):
    request_a = build_request("GET", "/a")
    response_a = build_response(b"a" * 100)
    request_b = build_request("GET", "/b")
    response_b = build_response(b"b" * 200)
    request_c = build_request("GET", "/c")

    conv = Conversation()
    conv.handshake()
    conv.client_send(request_a)
    conv.server_send(response_a)
    conv.client_send(request_b)
    conv.server_send(response_b)
    conv.client_send(request_c)
    whole = tmp_path / "whole.pcap"
    conv.write(whole)

    # The file ends inside the last record, which contains request c. Packet numbers
    # start at 1, as in Wireshark.
    data = whole.read_bytes()
    offsets = pcap_record_offsets(data)
    assert len(offsets) == len(conv.packets)
    last_record = offsets[-1]
    cut_at = last_record + 8 if cut == "record-header" else last_record + 16 + 20
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:cut_at])

    result = run_analyze(path, "jsonl", exit_status=1)
    assert_transactions(
        parse_jsonl(result.stdout),
        [
            ("GET", "/a", 200, len(request_a), len(response_a), True),
            ("GET", "/b", 200, len(request_b), len(response_b), True),
        ],
    )
    assert path.name in result.stderr
    # The path may contain digits, so the packet number is searched for without it.
    message = result.stderr.replace(str(path), "")
    assert re.search(rf"\b{len(offsets)}\b", message), result.stderr


def test_missing_input_file(tmp_path):
    conv, request_index = simple_conversation()
    good = tmp_path / "good.pcap"
    timestamps = conv.write(good)
    missing = tmp_path / "missing.pcap"

    result = run_analyze([good, missing], "jsonl", exit_status=1)
    assert_simple_transaction(parse_jsonl(result.stdout), conv, timestamps[request_index])
    assert missing.name in result.stderr


def test_no_input_file_is_usage_error():
    result = run_netmon("analyze", "--port", "80", "--format", "jsonl")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
