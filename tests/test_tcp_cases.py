"""TCP reassembly cases: reordering, retransmission, loss, capture start and connection life cycle.

Every expected value comes from the bytes crafted here. Transactions are compared as
(method, path, status, request_bytes, response_bytes, complete) rows.
"""

import pytest

from crafted import (
    CLIENT,
    SERVER,
    Conversation,
    assert_conservation,
    assert_transactions,
    build_request,
    build_response,
    run_jsonl,
    run_prometheus,
    write_pcap,
)


def payload_length(packets) -> int:
    """Return the TCP payload bytes carried by `packets`."""
    return sum(len(packet["TCP"].payload) for packet in packets)


def test_keepalive_in_order(tmp_path):
    request_a = build_request("GET", "/a")
    response_a = build_response(b"a" * 300)
    request_b = build_request("GET", "/b?page=2")
    response_b = build_response(b"b" * 1200, status=404, reason="Not Found")

    conv = Conversation()
    conv.handshake()
    first_request_index = len(conv.packets)
    conv.client_send(request_a)
    conv.server_send(response_a, segment_size=100)
    conv.client_send(request_b)
    conv.server_send(response_b, segment_size=500)
    conv.close()
    path = tmp_path / "keepalive.pcap"
    timestamps = conv.write(path)

    transactions = run_jsonl(path)
    assert_transactions(
        transactions,
        [
            ("GET", "/a", 200, len(request_a), len(response_a), True),
            ("GET", "/b", 404, len(request_b), len(response_b), True),
        ],
        ordered=True,
    )
    first = transactions[0]
    assert first["client"] == "10.0.0.1:40000"
    assert first["server"] == "10.0.0.2:80"
    assert first["endpoint"] == "/a"
    assert first["ts"] == pytest.approx(timestamps[first_request_index], abs=1e-6)
    assert 0 < first["duration_s"] <= timestamps[-1] - timestamps[first_request_index]

    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("inbound") == len(request_a) + len(request_b)
    assert exposition.payload("outbound") == len(response_a) + len(response_b)
    assert exposition.message("inbound") == len(request_a) + len(request_b)
    assert exposition.message("outbound") == len(response_a) + len(response_b)
    assert exposition.unattributed("inbound") == 0
    assert exposition.unattributed("outbound") == 0
    assert exposition.value("scheduler_http_request_bytes_total", method="GET", endpoint="/a") == len(request_a)
    assert exposition.value(
        "scheduler_http_response_bytes_total", method="GET", endpoint="/b", status="404"
    ) == len(response_b)
    assert exposition.value("scheduler_http_requests_total") == 2


def test_reordered_segments(tmp_path):
    request_a = build_request("GET", "/reordered", headers=[("Accept", "*/*")])
    response_a = build_response(b"r" * 450)
    request_b = build_request("GET", "/reversed")
    response_b = build_response(b"v" * 250)

    conv = Conversation()
    handshake = conv.handshake()
    request_a_segments = conv.client_send(request_a, segment_size=20)
    response_a_segments = conv.server_send(response_a, segment_size=100)
    request_b_segments = conv.client_send(request_b)
    response_b_segments = conv.server_send(response_b, segment_size=60)
    closing = conv.close()

    # The first request swaps its first two segments and the first response swaps
    # segments 1 and 2, then 3 and 4. The second response arrives last segment first,
    # so its status line comes after the rest of the message.
    request_a_reordered = [request_a_segments[1], request_a_segments[0], *request_a_segments[2:]]
    assert len(response_a_segments) >= 5
    response_a_reordered = [
        response_a_segments[0],
        response_a_segments[2],
        response_a_segments[1],
        response_a_segments[4],
        response_a_segments[3],
        *response_a_segments[5:],
    ]
    packets = (
        handshake
        + request_a_reordered
        + response_a_reordered
        + request_b_segments
        + list(reversed(response_b_segments))
        + closing
    )
    path = tmp_path / "reordered.pcap"
    write_pcap(path, packets)

    assert_transactions(
        run_jsonl(path),
        [
            ("GET", "/reordered", 200, len(request_a), len(response_a), True),
            ("GET", "/reversed", 200, len(request_b), len(response_b), True),
        ],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("outbound") == len(response_a) + len(response_b)


def test_duplicate_retransmission(tmp_path):
    request = build_request("GET", "/dup")
    response = build_response(b"d" * 400)

    conv = Conversation()
    handshake = conv.handshake()
    request_segments = conv.client_send(request)
    response_segments = conv.server_send(response, segment_size=100)
    closing = conv.close()

    # An exact copy of the second response segment arrives after the third, and a
    # spurious retransmission of the whole request arrives after the response. Neither
    # may add bytes or a second transaction.
    response_copy = conv.retransmit(SERVER, 100, 200)
    request_copy = conv.retransmit(CLIENT, 0, len(request))
    packets = (
        handshake
        + request_segments
        + response_segments[:3]
        + [response_copy]
        + response_segments[3:]
        + [request_copy]
        + closing
    )
    path = tmp_path / "duplicate.pcap"
    write_pcap(path, packets)

    assert_transactions(run_jsonl(path), [("GET", "/dup", 200, len(request), len(response), True)])
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("inbound") == len(request)
    assert exposition.payload("outbound") == len(response)


def test_overlapping_retransmission(tmp_path):
    request = build_request("POST", "/overlap", body=b"q" * 80)
    response = build_response(b"o" * 500)

    conv = Conversation()
    handshake = conv.handshake()
    request_segments = conv.client_send(request, segment_size=60)
    response_segments = conv.server_send(response, segment_size=100)
    closing = conv.close()

    # The segment covering response bytes [100, 200) is lost. Its retransmission covers
    # [50, 250), and a second one covers [250, 350), so both overlap segments already
    # seen at different boundaries. The request's second segment, bytes [60, 120), arrives
    # only inside a retransmission of [30, 130).
    assert len(request_segments) >= 3
    request_overlap = conv.retransmit(CLIENT, 30, 130)
    response_overlap_a = conv.retransmit(SERVER, 50, 250)
    response_overlap_b = conv.retransmit(SERVER, 250, 350)
    packets = (
        handshake
        + [request_segments[0]]
        + request_segments[2:]
        + [request_overlap]
        + [response_segments[0]]
        + response_segments[2:]
        + [response_overlap_a, response_overlap_b]
        + closing
    )
    path = tmp_path / "overlap.pcap"
    write_pcap(path, packets)

    assert_transactions(
        run_jsonl(path),
        [("POST", "/overlap", 200, len(request), len(response), True)],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("inbound") == len(request)
    assert exposition.payload("outbound") == len(response)


def test_sequence_number_wraparound(tmp_path):
    request_a = build_request("GET", "/wrap-a", headers=[("X-Pad", "p" * 40)])
    response_a = build_response(b"w" * 200)
    request_b = build_request("GET", "/wrap-b")
    response_b = build_response(b"z" * 100)

    # Both ISNs sit just below 2**32, so the sequence numbers wrap inside the first
    # request (client byte 9) and inside the first response (server byte 49).
    conv = Conversation(client_isn=2**32 - 10, server_isn=2**32 - 50)
    handshake = conv.handshake()
    request_a_segments = conv.client_send(request_a, segment_size=30)
    response_a_segments = conv.server_send(response_a, segment_size=30)
    request_b_segments = conv.client_send(request_b)
    response_b_segments = conv.server_send(response_b)
    closing = conv.close()

    # Response segment [30, 60) contains the wrap point. Swapping it with the next
    # segment makes the reassembler order sequence numbers across 2**32.
    response_a_reordered = [response_a_segments[0], response_a_segments[2], response_a_segments[1], *response_a_segments[3:]]
    packets = handshake + request_a_segments + response_a_reordered + request_b_segments + response_b_segments + closing
    path = tmp_path / "wraparound.pcap"
    write_pcap(path, packets)

    assert_transactions(
        run_jsonl(path),
        [
            ("GET", "/wrap-a", 200, len(request_a), len(response_a), True),
            ("GET", "/wrap-b", 200, len(request_b), len(response_b), True),
        ],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("inbound") == len(request_a) + len(request_b)
    assert exposition.payload("outbound") == len(response_a) + len(response_b)


def test_lost_segment_in_content_length_body(tmp_path):
    request_a = build_request("GET", "/body-loss")
    response_a = build_response(b"L" * 3000)
    request_b = build_request("GET", "/after-loss")
    response_b = build_response(b"after")

    conv = Conversation()
    conv.handshake()
    conv.client_send(request_a)
    response_a_segments = conv.server_send(response_a, segment_size=1000)
    conv.client_send(request_b)
    conv.server_send(response_b)
    conv.close()

    # Response bytes [1000, 2000) lie inside the body, because the header block is
    # shorter than 1000 bytes, so Content-Length places the lost bytes.
    assert response_a.index(b"\r\n\r\n") < 1000
    conv.drop(response_a_segments[1])
    path = tmp_path / "body_loss.pcap"
    conv.write(path)

    assert_transactions(
        run_jsonl(path),
        [
            ("GET", "/body-loss", 200, len(request_a), len(response_a), False),
            ("GET", "/after-loss", 200, len(request_b), len(response_b), True),
        ],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("outbound") == len(response_a) + len(response_b)
    assert exposition.message("outbound") == len(response_a) + len(response_b)
    assert exposition.unattributed("outbound", "gap") == 0


def test_lost_segment_in_chunk_data(tmp_path):
    chunk = b"C" * 3000
    request_a = build_request("GET", "/chunk-loss")
    response_a = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(chunk):x}\r\n".encode()
        + chunk
        + b"\r\n10\r\n"
        + b"c" * 16
        + b"\r\n0\r\n\r\n"
    )
    request_b = build_request("GET", "/after-chunk-loss")
    response_b = build_response(b"after")

    conv = Conversation()
    conv.handshake()
    conv.client_send(request_a)
    response_a_segments = conv.server_send(response_a, segment_size=1000)
    conv.client_send(request_b)
    conv.server_send(response_b)
    conv.close()

    # Response bytes [1000, 2000) lie inside the 3000-byte chunk, so its size line
    # places the lost bytes.
    chunk_start = response_a.index(chunk)
    assert chunk_start < 1000
    assert chunk_start + len(chunk) > 2000
    conv.drop(response_a_segments[1])
    path = tmp_path / "chunk_loss.pcap"
    conv.write(path)

    assert_transactions(
        run_jsonl(path),
        [
            ("GET", "/chunk-loss", 200, len(request_a), len(response_a), False),
            ("GET", "/after-chunk-loss", 200, len(request_b), len(response_b), True),
        ],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("outbound") == len(response_a) + len(response_b)
    assert exposition.message("outbound") == len(response_a) + len(response_b)
    assert exposition.unattributed("outbound", "gap") == 0


def test_lost_segment_across_message_boundary(tmp_path):
    request_1 = build_request("GET", "/one")
    response_1 = build_response(b"1" * 500)
    request_2 = build_request("GET", "/two")
    response_2 = build_response(b"2" * 300, headers=[("X-Pad", "p" * 40)])
    request_3 = build_request("GET", "/three")
    response_3 = build_response(b"3" * 200)

    conv = Conversation()
    conv.handshake()
    conv.client_send(request_1)
    conv.server_send(response_1[:-50])
    lost_tail = conv.server_send(response_1[-50:])
    conv.client_send(request_2)
    lost_head = conv.server_send(response_2[:30])
    conv.server_send(response_2[30:])
    conv.client_send(request_3)
    conv.server_send(response_3)
    conv.close()

    # The capture misses server bytes from 50 bytes before the end of response 1 to 30
    # bytes into response 2. Content-Length places the first 50 in response 1. The
    # status line of response 2 is lost, so netmon skips the rest of response 2 and
    # resynchronises on response 3, which must still pair with request 3.
    conv.drop(lost_tail[0], lost_head[0])
    path = tmp_path / "boundary_loss.pcap"
    conv.write(path)

    assert_transactions(
        run_jsonl(path),
        [
            ("GET", "/one", 200, len(request_1), len(response_1), False),
            ("GET", "/two", None, len(request_2), 0, False),
            ("GET", "/three", 200, len(request_3), len(response_3), True),
        ],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("outbound") == len(response_1) + len(response_2) + len(response_3)
    assert exposition.message("outbound") == len(response_1) + len(response_3)
    assert exposition.unattributed("outbound", "gap") == len(response_2)


def test_lost_whole_response_keepalive(tmp_path):
    request_1 = build_request("GET", "/first")
    response_1 = build_response(b"f" * 120)
    request_2 = build_request("GET", "/second")
    response_2 = build_response(b"s" * 240)
    request_3 = build_request("GET", "/third")
    response_3 = build_response(b"t" * 360)

    conv = Conversation()
    conv.handshake()
    conv.client_send(request_1)
    conv.server_send(response_1)
    conv.client_send(request_2)
    lost = conv.server_send(response_2)
    conv.client_send(request_3)
    conv.server_send(response_3)
    conv.close()

    # Request 3 acknowledges the whole of response 2, so response 3 is the response to request 3
    # even though response 2 never appears in the capture.
    conv.drop(*lost)
    path = tmp_path / "lost_response.pcap"
    conv.write(path)

    assert_transactions(
        run_jsonl(path),
        [
            ("GET", "/first", 200, len(request_1), len(response_1), True),
            ("GET", "/second", None, len(request_2), 0, False),
            ("GET", "/third", 200, len(request_3), len(response_3), True),
        ],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.unattributed("outbound", "gap") == len(response_2)


def test_capture_starts_mid_connection(tmp_path):
    request_1 = build_request("GET", "/before-capture")
    response_1 = build_response(b"m" * 2000)
    request_2 = build_request("GET", "/in-capture")
    response_2 = build_response(b"n" * 100)

    conv = Conversation()
    conv.handshake()
    conv.client_send(request_1)
    response_1_segments = conv.server_send(response_1, segment_size=500)
    request_2_segments = conv.client_send(request_2)
    response_2_segments = conv.server_send(response_2)
    closing = conv.close()

    # The capture begins with the third segment of response 1: no handshake, and the
    # first bytes seen are the tail of a body.
    seen_tail = response_1_segments[2:]
    packets = seen_tail + request_2_segments + response_2_segments + closing
    path = tmp_path / "midstream.pcap"
    write_pcap(path, packets)

    assert_transactions(
        run_jsonl(path),
        [("GET", "/in-capture", 200, len(request_2), len(response_2), True)],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.unattributed("outbound", "midstream") == payload_length(seen_tail)
    assert exposition.unattributed("inbound", "midstream") == 0
    assert exposition.payload("outbound") == payload_length(seen_tail) + len(response_2)
    assert exposition.payload("inbound") == len(request_2)


def test_capture_starts_with_response(tmp_path):
    request_1 = build_request("GET", "/uncaptured")
    response_1 = build_response(b"u" * 150)
    request_2 = build_request("GET", "/captured")
    response_2 = build_response(b"c" * 50)

    conv = Conversation()
    conv.handshake()
    conv.client_send(request_1)
    response_1_segments = conv.server_send(response_1, segment_size=100)
    request_2_segments = conv.client_send(request_2)
    response_2_segments = conv.server_send(response_2)
    closing = conv.close()

    packets = response_1_segments + request_2_segments + response_2_segments + closing
    path = tmp_path / "starts_with_response.pcap"
    write_pcap(path, packets)

    # The first transaction lacks its request, so its bytes are incomplete and its
    # method and path are unknown.
    assert_transactions(
        run_jsonl(path),
        [
            (None, None, 200, 0, len(response_1), False),
            ("GET", "/captured", 200, len(request_2), len(response_2), True),
        ],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.unattributed("outbound", "midstream") == 0
    assert exposition.unattributed("inbound", "midstream") == 0
    assert exposition.message("outbound") == len(response_1) + len(response_2)


def test_ack_captured_before_data(tmp_path):
    request = build_request("GET", "/early-ack")
    response = build_response(b"e" * 700)

    conv = Conversation()
    handshake = conv.handshake()
    request_segments = conv.client_send(request)
    response_segments = conv.server_send(response, segment_size=350)
    early_ack = conv.ack(CLIENT)
    closing = conv.close()

    # The client's ACK for the whole response is captured before the response itself.
    packets = handshake + request_segments + [early_ack] + response_segments + closing
    path = tmp_path / "ack_first.pcap"
    write_pcap(path, packets)

    assert_transactions(
        run_jsonl(path),
        [("GET", "/early-ack", 200, len(request), len(response), True)],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("outbound") == len(response)
    assert exposition.unattributed("outbound") == 0


def test_response_captured_before_request(tmp_path):
    request_a = build_request("POST", "/lagged", body=b"k" * 120)
    response_a = build_response(b"l" * 90, status=201, reason="Created")
    request_b = build_request("GET", "/next")
    response_b = build_response(b"x" * 30)

    conv = Conversation()
    handshake = conv.handshake()
    request_a_segments = conv.client_send(request_a, segment_size=80)
    response_a_segments = conv.server_send(response_a, segment_size=70)
    request_b_segments = conv.client_send(request_b)
    response_b_segments = conv.server_send(response_b)
    closing = conv.close()

    # The capture point receives the server direction earlier than the client direction,
    # so the whole first response precedes its request in the file.
    packets = (
        handshake
        + response_a_segments
        + request_a_segments
        + request_b_segments
        + response_b_segments
        + closing
    )
    path = tmp_path / "direction_lag.pcap"
    write_pcap(path, packets)

    assert_transactions(
        run_jsonl(path),
        [
            ("POST", "/lagged", 201, len(request_a), len(response_a), True),
            ("GET", "/next", 200, len(request_b), len(response_b), True),
        ],
    )
    assert_conservation(run_prometheus(path))


def test_fin_on_last_data_segment(tmp_path):
    request = build_request("GET", "/fin")
    response = build_response(b"F" * 300)

    conv = Conversation()
    conv.handshake()
    conv.client_send(request)
    conv.server_send(response, segment_size=200, fin=True)
    conv.fin(CLIENT)
    conv.ack(SERVER)
    path = tmp_path / "fin.pcap"
    conv.write(path)

    assert_transactions(run_jsonl(path), [("GET", "/fin", 200, len(request), len(response), True)])
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("inbound") == len(request)
    assert exposition.payload("outbound") == len(response)


@pytest.mark.parametrize("reset_side", [CLIENT, SERVER])
def test_rst_cuts_body(tmp_path, reset_side):
    request = build_request("GET", "/reset")
    response = build_response(b"R" * 3000)
    sent = response[: len(response) - 2000]

    conv = Conversation()
    conv.handshake()
    conv.client_send(request)
    conv.server_send(sent, segment_size=500)
    conv.rst(reset_side)
    path = tmp_path / "rst.pcap"
    conv.write(path)

    # The RST ends the connection 2000 bytes before the declared end of the body.
    assert_transactions(run_jsonl(path), [("GET", "/reset", 200, len(request), len(sent), False)])
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("outbound") == len(sent)


def test_rst_after_complete_response(tmp_path):
    request = build_request("GET", "/done")
    response = build_response(b"D" * 100)

    conv = Conversation()
    conv.handshake()
    conv.client_send(request)
    conv.server_send(response)
    conv.rst(CLIENT)
    path = tmp_path / "rst_after.pcap"
    conv.write(path)

    assert_transactions(run_jsonl(path), [("GET", "/done", 200, len(request), len(response), True)])
    assert_conservation(run_prometheus(path))


@pytest.mark.parametrize(
    "second_isns",
    [(3_000_000_000, 2_000_000_000), (100, 200)],
    ids=["higher-isn", "lower-isn"],
)
def test_client_port_reuse(tmp_path, second_isns):
    request_a = build_request("GET", "/first-connection")
    response_a = build_response(b"a" * 111)
    request_b = build_request("GET", "/second-connection")
    response_b = build_response(b"b" * 222)

    first = Conversation(client_isn=1_000_000, server_isn=2_000_000)
    first.handshake()
    first.client_send(request_a)
    first.server_send(response_a)
    first.close()

    # Same 4-tuple and a new SYN after the FIN exchange, with new ISNs.
    client_isn, server_isn = second_isns
    second = Conversation(t0=first.clock + 1.0, client_isn=client_isn, server_isn=server_isn)
    second.handshake()
    second.client_send(request_b)
    second.server_send(response_b)
    second.close()

    path = tmp_path / "port_reuse.pcap"
    write_pcap(path, first.packets + second.packets)

    assert_transactions(
        run_jsonl(path),
        [
            ("GET", "/first-connection", 200, len(request_a), len(response_a), True),
            ("GET", "/second-connection", 200, len(request_b), len(response_b), True),
        ],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("inbound") == len(request_a) + len(request_b)
    assert exposition.payload("outbound") == len(response_a) + len(response_b)


def test_tcp_fast_open_data_in_syn(tmp_path):
    request = build_request("GET", "/tfo")
    response = build_response(b"T" * 64)

    conv = Conversation()
    # TCP option 34 is the Fast Open cookie. Scapy packs it as two 32-bit words.
    conv.syn(data=request, options=[("MSS", 1460), ("TFO", (0x11223344, 0x55667788))])
    conv.syn_ack()
    conv.ack(CLIENT)
    conv.server_send(response)
    conv.close()
    path = tmp_path / "tfo.pcap"
    conv.write(path)

    assert_transactions(run_jsonl(path), [("GET", "/tfo", 200, len(request), len(response), True)])
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("inbound") == len(request)
    assert exposition.payload("outbound") == len(response)


def test_syn_retransmission(tmp_path):
    request = build_request("GET", "/syn-again")
    response = build_response(b"S" * 80)

    conv = Conversation()
    conv.syn()
    conv.syn()
    conv.syn_ack()
    conv.syn_ack()
    conv.ack(CLIENT)
    conv.client_send(request)
    conv.server_send(response)
    conv.close()
    path = tmp_path / "syn_retransmission.pcap"
    conv.write(path)

    assert_transactions(run_jsonl(path), [("GET", "/syn-again", 200, len(request), len(response), True)])
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.payload("inbound") == len(request)
    assert exposition.payload("outbound") == len(response)
