"""Damaged capture files through the CLI: exit status, one-line message, and the transactions before the damage.

Each test writes a capture of one keep-alive connection with three
transactions (pcap or pcapng, written here with struct so that every record
offset is known), damages it, and runs
`python3 -m netmon analyze FILE --port 80 --format jsonl`. A damaged file
must give exit status 1, a single `netmon: error:` line on stderr that names
the file and the packet number or byte offset, no traceback, and the
transactions completed before the damage on stdout. A file that is fine,
such as a pcapng with a block type netmon does not know, gives exit status 0.
"""

import gzip
import re
import struct

import pytest

from crafted import (
    Conversation,
    assert_conservation,
    build_request,
    build_response,
    link_frame,
    parse_jsonl,
    run_analyze,
    run_prometheus,
    transaction_row,
    write_pcap,
)

LINKTYPE_ETHERNET = 1
T0 = 1_700_000_000

REQUESTS = [
    build_request("GET", "/jobs"),
    build_request("POST", "/jobs", body=b'{"name": "nightly"}'),
    build_request("GET", "/jobs/17"),
]
RESPONSES = [
    build_response(b"[]" * 300),
    build_response(b'{"id": 17}', status=201, reason="Created"),
    build_response(b"j" * 2500),
]
EXPECTED_ROWS = [
    ("GET", "/jobs", 200, len(REQUESTS[0]), len(RESPONSES[0]), True),
    ("POST", "/jobs", 201, len(REQUESTS[1]), len(RESPONSES[1]), True),
    ("GET", "/jobs/17", 200, len(REQUESTS[2]), len(RESPONSES[2]), True),
]


def conversation():
    """Return the Ethernet frames of the connection and the index of the third request's frame."""
    conv = Conversation()
    conv.handshake()
    third_request = None
    for index, (request, response) in enumerate(zip(REQUESTS, RESPONSES)):
        if index == 2:
            third_request = len(conv.packets)
        conv.client_send(request)
        conv.server_send(response, segment_size=1000)
    conv.close()
    frames = [bytes(link_frame(packet, "ether")) for packet in conv.packets]
    return frames, third_request


FRAMES, THIRD_REQUEST = conversation()


def pcap_file(frames):
    """Return a little-endian microsecond pcap of `frames` and the file offset of each record."""
    data = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
    offsets = []
    for index, frame in enumerate(frames):
        offsets.append(len(data))
        data += struct.pack("<IIII", T0, index * 1000, len(frame), len(frame)) + frame
    return bytes(data), offsets


def pcapng_block(block_type, body):
    body += b"\x00" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


SECTION_HEADER = pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
INTERFACE = pcapng_block(1, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 65535))


def enhanced_packet(frame, index, interface=0):
    microseconds = T0 * 1_000_000 + index * 1000
    header = struct.pack("<IIIII", interface, microseconds >> 32, microseconds & 0xFFFFFFFF, len(frame), len(frame))
    return pcapng_block(6, header + frame)


def pcapng_file(frames, extra_blocks=None):
    """Return a pcapng of `frames` and the file offset of each enhanced packet block.

    `extra_blocks` maps a frame index to blocks written just before that frame.
    """
    data = bytearray(SECTION_HEADER + INTERFACE)
    offsets = []
    for index, frame in enumerate(frames):
        for block in (extra_blocks or {}).get(index, ()):
            data += block
        offsets.append(len(data))
        data += enhanced_packet(frame, index)
    return bytes(data), offsets


def analyze(path, exit_status):
    """Run netmon on `path` and return (transaction rows, stderr lines)."""
    result = run_analyze(path, "jsonl", exit_status=exit_status)
    rows = [transaction_row(transaction) for transaction in parse_jsonl(result.stdout)]
    return rows, result.stderr.splitlines()


def assert_one_error_line(lines, path, packet=None, offset=None):
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("netmon: error: "), line
    assert str(path) in line, line
    # The path may contain digits, so numbers are searched for without it.
    where = line.replace(str(path), "")
    if packet is not None:
        assert re.search(rf"\bpacket {packet}\b", where), line
    if offset is not None:
        assert re.search(rf"\boffset {offset}\b", where), line


# -- pcap --------------------------------------------------------------------------


def test_bad_magic(tmp_path):
    data, _ = pcap_file(FRAMES)
    path = tmp_path / "bad-magic.pcap"
    path.write_bytes(b"\x00\x01\x02\x03" + data[4:])

    rows, errors = analyze(path, exit_status=1)
    assert rows == []
    assert_one_error_line(errors, path, offset=0)
    assert "magic" in errors[0]


def test_zero_length_file(tmp_path):
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")

    rows, errors = analyze(path, exit_status=1)
    assert rows == []
    assert_one_error_line(errors, path, offset=0)


def test_cut_in_file_header(tmp_path):
    data, _ = pcap_file(FRAMES)
    path = tmp_path / "cut-header.pcap"
    path.write_bytes(data[:10])

    rows, errors = analyze(path, exit_status=1)
    assert rows == []
    assert_one_error_line(errors, path, offset=0)


@pytest.mark.parametrize("cut", [8, 16 + 20], ids=["record-header", "packet-data"])
def test_cut_in_record(tmp_path, cut):
    data, offsets = pcap_file(FRAMES)
    path = tmp_path / "cut-record.pcap"
    path.write_bytes(data[:offsets[THIRD_REQUEST] + cut])

    rows, errors = analyze(path, exit_status=1)
    assert rows == EXPECTED_ROWS[:2]
    assert_one_error_line(errors, path, packet=THIRD_REQUEST + 1, offset=offsets[THIRD_REQUEST])


def test_whole_pcap_reads_cleanly(tmp_path):
    data, _ = pcap_file(FRAMES)
    path = tmp_path / "whole.pcap"
    path.write_bytes(data)

    rows, errors = analyze(path, exit_status=0)
    assert rows == EXPECTED_ROWS
    assert errors == []


# -- pcapng ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "block_type",
    [0x00000BAD, 0x80000001, 4, 5],
    ids=["unknown", "local-use", "name-resolution", "interface-statistics"],
)
def test_pcapng_unknown_block_skipped(tmp_path, block_type):
    block = pcapng_block(block_type, b"netmon test block\x00")
    data, _ = pcapng_file(FRAMES, extra_blocks={0: [block], THIRD_REQUEST: [block, block]})
    path = tmp_path / "unknown-block.pcapng"
    path.write_bytes(data)

    rows, errors = analyze(path, exit_status=0)
    assert rows == EXPECTED_ROWS
    assert errors == []


@pytest.mark.parametrize("damage", ["not-multiple-of-4", "past-end-of-file", "too-small"])
def test_pcapng_damaged_block_length(tmp_path, damage):
    data, offsets = pcapng_file(FRAMES)
    block = offsets[THIRD_REQUEST]
    (length,) = struct.unpack_from("<I", data, block + 4)
    new_length = {"not-multiple-of-4": length + 2, "past-end-of-file": len(data) + 64, "too-small": 8}[damage]
    damaged = bytearray(data)
    struct.pack_into("<I", damaged, block + 4, new_length)
    path = tmp_path / "damaged-length.pcapng"
    path.write_bytes(bytes(damaged))

    rows, errors = analyze(path, exit_status=1)
    assert rows == EXPECTED_ROWS[:2]
    assert_one_error_line(errors, path, packet=THIRD_REQUEST + 1, offset=block)


def test_pcapng_block_length_misaligns_next_block(tmp_path):
    # With a length 4 bytes too large the damaged block still reads, but the next read starts 4 bytes into the following block.
    data, offsets = pcapng_file(FRAMES)
    block = offsets[THIRD_REQUEST]
    (length,) = struct.unpack_from("<I", data, block + 4)
    damaged = bytearray(data)
    struct.pack_into("<I", damaged, block + 4, length + 4)
    path = tmp_path / "misaligned.pcapng"
    path.write_bytes(bytes(damaged))

    rows, errors = analyze(path, exit_status=1)
    assert rows[:2] == EXPECTED_ROWS[:2]
    assert_one_error_line(errors, path, packet=THIRD_REQUEST + 2, offset=block + length + 4)


def test_pcapng_interface_out_of_range(tmp_path):
    data, offsets = pcapng_file(FRAMES)
    damaged = bytearray(data)
    struct.pack_into("<I", damaged, offsets[THIRD_REQUEST] + 8, 5)
    path = tmp_path / "interface.pcapng"
    path.write_bytes(bytes(damaged))

    rows, errors = analyze(path, exit_status=1)
    assert rows == EXPECTED_ROWS[:2]
    assert_one_error_line(errors, path, packet=THIRD_REQUEST + 1, offset=offsets[THIRD_REQUEST])
    assert "interface" in errors[0]


def test_pcapng_cut_in_block(tmp_path):
    data, offsets = pcapng_file(FRAMES)
    path = tmp_path / "cut.pcapng"
    path.write_bytes(data[:offsets[THIRD_REQUEST] + 30])

    rows, errors = analyze(path, exit_status=1)
    assert rows == EXPECTED_ROWS[:2]
    assert_one_error_line(errors, path, packet=THIRD_REQUEST + 1, offset=offsets[THIRD_REQUEST])


# -- gzip --------------------------------------------------------------------------


def test_gzip_cut_inside_record(tmp_path):
    data, offsets = pcap_file(FRAMES)
    # Level 0 stores the data in blocks with a 5-byte header after the
    # 10-byte gzip header, so a compressed offset maps to a known record.
    compressed = gzip.compress(data, compresslevel=0, mtime=0)
    assert len(data) < 65535
    cut = 10 + 5 + offsets[THIRD_REQUEST] + 8
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(compressed[:cut])

    rows, errors = analyze(path, exit_status=1)
    assert rows == EXPECTED_ROWS[:2]
    assert_one_error_line(errors, path, packet=THIRD_REQUEST + 1)
    assert "gzip" in errors[0]


@pytest.mark.parametrize("kept", [0.5, 0.9])
def test_gzip_cut_short(tmp_path, kept):
    data, _ = pcap_file(FRAMES)
    compressed = gzip.compress(data, mtime=0)
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(compressed[:int(len(compressed) * kept)])

    rows, errors = analyze(path, exit_status=1)
    # The transaction in progress at the cut is reported incomplete.
    complete = [row for row in rows if row[-1]]
    assert complete == EXPECTED_ROWS[:len(complete)]
    assert len(rows) - len(complete) <= 1, rows
    assert_one_error_line(errors, path)
    assert "gzip" in errors[0]


def test_gzip_cut_in_gzip_header(tmp_path):
    path = tmp_path / "header.pcap.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00")

    rows, errors = analyze(path, exit_status=1)
    assert rows == []
    assert_one_error_line(errors, path)


# -- snaplen -----------------------------------------------------------------------

ETHERNET_IP_TCP_HEADERS = 14 + 20 + 20


def snaplen_conversation():
    """Return a connection whose response bodies are longer than the snaplen, and its requests and responses."""
    length_body = b"L" * 3000
    chunked_body = b"bb8\r\n" + b"C" * 3000 + b"\r\n0\r\n\r\n"
    requests = [build_request("GET", "/length"), build_request("GET", "/chunked"), build_request("GET", "/small")]
    responses = [
        build_response(length_body),
        build_response(chunked_body, headers=[("Transfer-Encoding", "chunked")], content_length=False),
        build_response(b"ok"),
    ]
    conv = Conversation()
    conv.handshake()
    for request, response in zip(requests, responses):
        conv.client_send(request)
        conv.server_send(response, segment_size=1000)
    conv.close()
    return conv, requests, responses


def test_snaplen_counts_ip_lengths(tmp_path):
    conv, requests, responses = snaplen_conversation()
    path = tmp_path / "snaplen.pcap"
    # Every response head and request fits in the first 100 payload bytes, but no body does.
    conv.write(path, snaplen=ETHERNET_IP_TCP_HEADERS + 100)

    rows, errors = analyze(path, exit_status=0)
    assert errors == []
    by_path = {row[1]: row for row in rows}
    assert by_path["/length"] == ("GET", "/length", 200, len(requests[0]), len(responses[0]), False)
    assert by_path["/small"] == ("GET", "/small", 200, len(requests[2]), len(responses[2]), True)
    # The last cut segment hides the end of the chunked body, whose place the
    # framing cannot prove, so those bytes are unattributed as "truncated".
    method, _, status, request_bytes, response_bytes, complete = by_path["/chunked"]
    assert (method, status, request_bytes, complete) == ("GET", 200, len(requests[1]), False)
    assert len(responses[1]) - len(b"\r\n0\r\n\r\n") <= response_bytes <= len(responses[1])

    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("inbound") == sum(len(request) for request in requests)
    assert exposition.payload("outbound") == sum(len(response) for response in responses)
    assert exposition.unattributed("outbound", "truncated") == len(responses[1]) - response_bytes


def test_snaplen_cutting_heads(tmp_path):
    conv, requests, responses = snaplen_conversation()
    path = tmp_path / "snaplen-heads.pcap"
    # 10 payload bytes per packet: no start line is whole.
    conv.write(path, snaplen=ETHERNET_IP_TCP_HEADERS + 10)

    rows, errors = analyze(path, exit_status=0)
    assert errors == []
    assert all(not row[-1] for row in rows), rows

    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("inbound") == sum(len(request) for request in requests)
    assert exposition.payload("outbound") == sum(len(response) for response in responses)
    assert exposition.unattributed("inbound", "truncated") > 0
    assert exposition.unattributed("outbound", "truncated") > 0


def test_snaplen_in_pcap_header_only(tmp_path):
    # Records written whole although the header's snaplen is smaller: netmon reads the records as they are.
    data, _ = pcap_file(FRAMES)
    damaged = bytearray(data)
    struct.pack_into("<I", damaged, 16, 64)
    path = tmp_path / "header-snaplen.pcap"
    path.write_bytes(bytes(damaged))

    rows, errors = analyze(path, exit_status=0)
    assert rows == EXPECTED_ROWS
    assert errors == []


def test_snaplen_conversation_whole_without_cut(tmp_path):
    # Baseline for the snaplen tests: without a snaplen every transaction is complete.
    conv, requests, responses = snaplen_conversation()
    path = tmp_path / "whole.pcap"
    write_pcap(path, conv.packets)

    rows, errors = analyze(path, exit_status=0)
    assert rows == [
        ("GET", "/length", 200, len(requests[0]), len(responses[0]), True),
        ("GET", "/chunked", 200, len(requests[1]), len(responses[1]), True),
        ("GET", "/small", 200, len(requests[2]), len(responses[2]), True),
    ]
    assert errors == []
