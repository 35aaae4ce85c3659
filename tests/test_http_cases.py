"""HTTP/1.x framing cases: message lengths, interim responses, pipelining, tunnels and non-HTTP bytes.

Every expected value comes from the bytes crafted here. Transactions are compared as
(method, path, status, request_bytes, response_bytes, complete) rows.
"""

import struct

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

# A chunked body with chunk extensions (one quoted, holding a semicolon), an
# upper-case hex size, an extension on the last chunk and two trailer fields.
CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Trailer: X-Checksum, X-Trailer-Two\r\n"
    b"\r\n"
    b"5;name=value\r\n"
    b"hello\r\n"
    b'1A;ext="quoted;semi"\r\n'
    b"abcdefghijklmnopqrstuvwxyz\r\n"
    b"0;final\r\n"
    b"X-Checksum: 1234\r\n"
    b"X-Trailer-Two: yes\r\n"
    b"\r\n"
)

CHUNKED_SPLIT_POINTS = {
    "status-line": CHUNKED_RESPONSE.index(b" 200") + 2,
    "between-header-crlfs": CHUNKED_RESPONSE.index(b"\r\n\r\n") + 2,
    "first-size-line": CHUNKED_RESPONSE.index(b"5;name") + 1,
    "inside-extension": CHUNKED_RESPONSE.index(b';ext="') + 3,
    "inside-hex-size": CHUNKED_RESPONSE.index(b"1A;") + 1,
    "chunk-data": CHUNKED_RESPONSE.index(b"abcdef") + 10,
    "chunk-data-cr-lf": CHUNKED_RESPONSE.index(b"xyz\r\n") + 4,
    "last-chunk-size": CHUNKED_RESPONSE.index(b"0;final") + 1,
    "trailer-field": CHUNKED_RESPONSE.index(b"X-Checksum: 1234") + 5,
    "final-cr-lf": len(CHUNKED_RESPONSE) - 1,
}


def chunked_connection(split: int | None, client_port: int = 40000, t0: float = 1700000000.0):
    """Build a keep-alive connection whose first response is CHUNKED_RESPONSE, cut into two segments at `split`.

    With `split` None the response travels in one segment.

    A second transaction follows, so a wrong end of the chunked body shows in its row.
    Returns the conversation and the expected rows.
    """
    request_a = build_request("GET", "/chunked")
    request_b = build_request("GET", "/after-chunked")
    response_b = build_response(b"next")

    conv = Conversation(client=("10.0.0.1", client_port), t0=t0)
    conv.handshake()
    conv.client_send(request_a)
    if split is None:
        conv.server_send(CHUNKED_RESPONSE)
    else:
        conv.server_send(CHUNKED_RESPONSE[:split])
        conv.server_send(CHUNKED_RESPONSE[split:])
    conv.client_send(request_b)
    conv.server_send(response_b)
    conv.close()
    expected = [
        ("GET", "/chunked", 200, len(request_a), len(CHUNKED_RESPONSE), True),
        ("GET", "/after-chunked", 200, len(request_b), len(response_b), True),
    ]
    return conv, expected


def test_content_length(tmp_path):
    body = b"name=value&x=1"
    request_a = build_request("POST", "/submit", body=body, headers=[("Content-Type", "application/x-www-form-urlencoded")])
    response_a = build_response(b'{"id": 7}', status=201, reason="Created")
    request_b = build_request("GET", "/zero")
    response_b = build_response(b"")

    conv = Conversation()
    conv.handshake()
    conv.client_send(request_a, segment_size=50)
    conv.server_send(response_a)
    conv.client_send(request_b)
    conv.server_send(response_b)
    conv.close()
    path = tmp_path / "content_length.pcap"
    conv.write(path)

    assert_transactions(
        run_jsonl(path),
        [
            ("POST", "/submit", 201, len(request_a), len(response_a), True),
            ("GET", "/zero", 200, len(request_b), len(response_b), True),
        ],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.message("inbound") == len(request_a) + len(request_b)
    assert exposition.message("outbound") == len(response_a) + len(response_b)


def test_query_removed_from_path(tmp_path):
    request = build_request("GET", "/search?q=netmon&page=2")
    response = build_response(b"results")

    conv = Conversation()
    conv.handshake()
    conv.client_send(request)
    conv.server_send(response)
    conv.close()
    path = tmp_path / "query.pcap"
    conv.write(path)

    transactions = run_jsonl(path)
    assert_transactions(transactions, [("GET", "/search", 200, len(request), len(response), True)])
    assert transactions[0]["endpoint"] == "/search"
    assert_conservation(run_prometheus(path))


def test_chunked_response_with_extensions_and_trailers(tmp_path):
    conv, expected = chunked_connection(split=None)
    path = tmp_path / "chunked.pcap"
    conv.write(path)

    assert_transactions(run_jsonl(path), expected)
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.unattributed("outbound") == 0


@pytest.mark.parametrize("split", list(CHUNKED_SPLIT_POINTS.values()), ids=list(CHUNKED_SPLIT_POINTS))
def test_chunked_response_split_at(tmp_path, split):
    conv, expected = chunked_connection(split)
    path = tmp_path / "chunked_split.pcap"
    conv.write(path)

    assert_transactions(run_jsonl(path), expected)
    assert_conservation(run_prometheus(path))


def test_chunked_response_split_at_every_byte(tmp_path):
    # One connection per split point, each on its own client port, in a single capture.
    packets = []
    expected = []
    for split in range(1, len(CHUNKED_RESPONSE)):
        conv, rows = chunked_connection(split, client_port=41000 + split, t0=1700000000.0 + split)
        packets += conv.packets
        expected += rows
    path = tmp_path / "chunked_every_split.pcap"
    write_pcap(path, packets)

    assert_transactions(run_jsonl(path), expected)
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.unattributed("outbound") == 0


def test_body_until_close(tmp_path):
    request = b"GET /legacy HTTP/1.0\r\nHost: example.com\r\n\r\n"
    response = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"c" * 900

    conv = Conversation()
    conv.handshake()
    conv.client_send(request)
    conv.server_send(response, segment_size=400, fin=True)
    conv.fin(CLIENT)
    conv.ack(SERVER)
    path = tmp_path / "until_close.pcap"
    conv.write(path)

    assert_transactions(run_jsonl(path), [("GET", "/legacy", 200, len(request), len(response), True)])
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.message("outbound") == len(response)


def test_body_until_close_capture_ends(tmp_path):
    request = b"GET /legacy HTTP/1.0\r\nHost: example.com\r\n\r\n"
    response = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"c" * 900

    # No FIN follows the body, so the capture ends before the message does.
    conv = Conversation()
    conv.handshake()
    conv.client_send(request)
    conv.server_send(response, segment_size=400)
    path = tmp_path / "until_close_cut.pcap"
    conv.write(path)

    assert_transactions(run_jsonl(path), [("GET", "/legacy", 200, len(request), len(response), False)])
    assert_conservation(run_prometheus(path))


def test_head_response_has_no_body(tmp_path):
    request_a = build_request("HEAD", "/file")
    response_a = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: application/octet-stream\r\n\r\n"
    request_b = build_request("GET", "/after-head")
    response_b = build_response(b"h" * 20)

    conv = Conversation()
    conv.handshake()
    conv.client_send(request_a)
    conv.server_send(response_a)
    conv.client_send(request_b)
    conv.server_send(response_b)
    conv.close()
    path = tmp_path / "head.pcap"
    conv.write(path)

    assert_transactions(
        run_jsonl(path),
        [
            ("HEAD", "/file", 200, len(request_a), len(response_a), True),
            ("GET", "/after-head", 200, len(request_b), len(response_b), True),
        ],
    )
    assert_conservation(run_prometheus(path))


def test_204_and_304_have_no_body(tmp_path):
    request_a = build_request("DELETE", "/item/1")
    response_a = b"HTTP/1.1 204 No Content\r\nServer: crafted-test\r\n\r\n"
    request_b = build_request("GET", "/cached", headers=[("If-None-Match", '"v1"')])
    # Content-Length in a 304 gives the size of the selected representation, not a body.
    response_b = b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 5000\r\n\r\n'
    request_c = build_request("GET", "/after")
    response_c = build_response(b"after")

    conv = Conversation()
    conv.handshake()
    conv.client_send(request_a)
    conv.server_send(response_a)
    conv.client_send(request_b)
    conv.server_send(response_b)
    conv.client_send(request_c)
    conv.server_send(response_c)
    conv.close()
    path = tmp_path / "no_body.pcap"
    conv.write(path)

    assert_transactions(
        run_jsonl(path),
        [
            ("DELETE", "/item/1", 204, len(request_a), len(response_a), True),
            ("GET", "/cached", 304, len(request_b), len(response_b), True),
            ("GET", "/after", 200, len(request_c), len(response_c), True),
        ],
    )
    assert_conservation(run_prometheus(path))


def test_early_hints_counted_in_response(tmp_path):
    request = build_request("GET", "/page")
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"
    final = build_response(b"<html></html>")

    conv = Conversation()
    conv.handshake()
    conv.client_send(request)
    conv.server_send(early_hints)
    conv.server_send(final)
    conv.close()
    path = tmp_path / "early_hints.pcap"
    conv.write(path)

    assert_transactions(
        run_jsonl(path),
        [("GET", "/page", 200, len(request), len(early_hints) + len(final), True)],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.message("outbound") == len(early_hints) + len(final)


def test_expect_100_continue(tmp_path):
    body = b"u" * 1000
    request_head = (
        b"PUT /upload HTTP/1.1\r\n"
        b"Host: example.com\r\n"
        b"Content-Length: 1000\r\n"
        b"Expect: 100-continue\r\n"
        b"\r\n"
    )
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    final = build_response(b"stored", status=201, reason="Created")
    request_b = build_request("GET", "/after-upload")
    response_b = build_response(b"ok")

    conv = Conversation()
    conv.handshake()
    conv.client_send(request_head)
    conv.server_send(interim)
    conv.client_send(body, segment_size=600)
    conv.server_send(final)
    conv.client_send(request_b)
    conv.server_send(response_b)
    conv.close()
    path = tmp_path / "expect_continue.pcap"
    conv.write(path)

    assert_transactions(
        run_jsonl(path),
        [
            ("PUT", "/upload", 201, len(request_head) + len(body), len(interim) + len(final), True),
            ("GET", "/after-upload", 200, len(request_b), len(response_b), True),
        ],
    )
    assert_conservation(run_prometheus(path))


def test_several_interim_responses(tmp_path):
    request_a = build_request("PROPFIND", "/dav/folder", headers=[("Depth", "1")])
    interims = [
        b"HTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\n\r\n",
    ]
    final = build_response(b"<multistatus/>", status=207, reason="Multi-Status")
    request_b = build_request("GET", "/after-interim")
    response_b = build_response(b"plain")

    conv = Conversation()
    conv.handshake()
    conv.client_send(request_a)
    for interim in interims:
        conv.server_send(interim)
    conv.server_send(final)
    conv.client_send(request_b)
    conv.server_send(response_b)
    conv.close()
    path = tmp_path / "interim.pcap"
    conv.write(path)

    interim_bytes = sum(len(interim) for interim in interims)
    assert_transactions(
        run_jsonl(path),
        [
            ("PROPFIND", "/dav/folder", 207, len(request_a), interim_bytes + len(final), True),
            ("GET", "/after-interim", 200, len(request_b), len(response_b), True),
        ],
    )
    assert_conservation(run_prometheus(path))


def test_pipelined_requests_paired_in_order(tmp_path):
    request_a = build_request("GET", "/p/a")
    request_b = build_request("GET", "/p/b")
    request_c = build_request("GET", "/p/c")
    response_a = build_response(b"A" * 10)
    response_b = build_response(b"B" * 200, status=404, reason="Not Found")
    response_c = build_response(b"C" * 3000)
    responses = response_a + response_b + response_c

    conv = Conversation()
    conv.handshake()
    conv.client_send(request_a + request_b + request_c)
    # The first response segment ends inside response B.
    first_cut = len(response_a) + 50
    conv.server_send(responses[:first_cut])
    conv.server_send(responses[first_cut:], segment_size=1400)
    conv.close()
    path = tmp_path / "pipelined.pcap"
    conv.write(path)

    assert_transactions(
        run_jsonl(path),
        [
            ("GET", "/p/a", 200, len(request_a), len(response_a), True),
            ("GET", "/p/b", 404, len(request_b), len(response_b), True),
            ("GET", "/p/c", 200, len(request_c), len(response_c), True),
        ],
        ordered=True,
    )
    assert_conservation(run_prometheus(path))


def test_chunked_request_body(tmp_path):
    request = (
        b"POST /stream HTTP/1.1\r\n"
        b"Host: example.com\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"\r\n"
        b"4\r\nWiki\r\n"
        b"5\r\npedia\r\n"
        b"E\r\n in\r\n\r\nchunks.\r\n"
        b"0\r\n"
        b"\r\n"
    )
    response = build_response(b"received")
    request_b = build_request("GET", "/after-stream")
    response_b = build_response(b"ok")

    conv = Conversation()
    conv.handshake()
    conv.client_send(request, segment_size=7)
    conv.server_send(response)
    conv.client_send(request_b)
    conv.server_send(response_b)
    conv.close()
    path = tmp_path / "chunked_request.pcap"
    conv.write(path)

    assert_transactions(
        run_jsonl(path),
        [
            ("POST", "/stream", 200, len(request), len(response), True),
            ("GET", "/after-stream", 200, len(request_b), len(response_b), True),
        ],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.message("inbound") == len(request) + len(request_b)


def test_response_before_request_body_complete(tmp_path):
    body = b"b" * 5000
    request_head = b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5000\r\n\r\n"
    response = b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n"
    request_b = build_request("GET", "/login")
    response_b = build_response(b"form")

    # The server responds after the first 1000 body bytes, and the client still sends the rest.
    conv = Conversation()
    conv.handshake()
    conv.client_send(request_head + body[:1000])
    conv.server_send(response)
    conv.client_send(body[1000:], segment_size=1400)
    conv.client_send(request_b)
    conv.server_send(response_b)
    conv.close()
    path = tmp_path / "early_response.pcap"
    conv.write(path)

    assert_transactions(
        run_jsonl(path),
        [
            ("POST", "/upload", 401, len(request_head) + len(body), len(response), True),
            ("GET", "/login", 200, len(request_b), len(response_b), True),
        ],
    )
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.message("inbound") == len(request_head) + len(body) + len(request_b)


def websocket_frame(payload: bytes, mask: bytes | None = None) -> bytes:
    """Return one final WebSocket text frame (RFC 6455), masked when `mask` is given."""
    header = bytes([0x81])
    mask_bit = 0x80 if mask else 0
    if len(payload) < 126:
        header += bytes([mask_bit | len(payload)])
    else:
        header += bytes([mask_bit | 126]) + struct.pack("!H", len(payload))
    if not mask:
        return header + payload
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return header + mask + masked


def test_switching_protocols_then_tunnel(tmp_path):
    request = (
        b"GET /chat HTTP/1.1\r\n"
        b"Host: example.com\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"\r\n"
    )
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"\r\n"
    )
    client_frames = websocket_frame(b"hello server", mask=b"\x12\x34\x56\x78") + websocket_frame(
        b"x" * 300, mask=b"\x9a\xbc\xde\xf0"
    )
    # The server frame carries text that looks like an HTTP response. After 101 it is
    # tunnel data and must not become a transaction.
    server_frames = websocket_frame(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") + websocket_frame(b"y" * 200)

    conv = Conversation()
    conv.handshake()
    conv.client_send(request)
    conv.server_send(response)
    conv.client_send(client_frames, segment_size=100)
    conv.server_send(server_frames)
    conv.close()
    path = tmp_path / "websocket.pcap"
    conv.write(path)

    assert_transactions(run_jsonl(path), [("GET", "/chat", 101, len(request), len(response), True)])
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.unattributed("inbound", "tunnel") == len(client_frames)
    assert exposition.unattributed("outbound", "tunnel") == len(server_frames)
    assert exposition.message("inbound") == len(request)
    assert exposition.message("outbound") == len(response)


def tls_client_hello() -> bytes:
    """Return a minimal TLS 1.2 ClientHello record with an SNI extension."""
    server_name = b"example.com"
    sni_entry = b"\x00" + struct.pack("!H", len(server_name)) + server_name
    sni_list = struct.pack("!H", len(sni_entry)) + sni_entry
    extensions = struct.pack("!HH", 0x0000, len(sni_list)) + sni_list
    hello = (
        b"\x03\x03"  # client_version TLS 1.2
        + bytes(range(32))  # random
        + b"\x00"  # empty session id
        + struct.pack("!H", 4)
        + b"\xc0\x2f\x00\x9c"  # two cipher suites
        + b"\x01\x00"  # one compression method: null
        + struct.pack("!H", len(extensions))
        + extensions
    )
    handshake = b"\x01" + len(hello).to_bytes(3, "big") + hello
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def tls_server_records() -> bytes:
    """Return bytes shaped like a ServerHello record followed by application data."""
    hello_body = b"\x03\x03" + bytes(32) + b"\x00" + b"\xc0\x2f" + b"\x00"
    server_hello = b"\x02" + len(hello_body).to_bytes(3, "big") + hello_body
    application_data = b"\x17\x03\x03" + struct.pack("!H", 64) + bytes(range(64))
    return b"\x16\x03\x03" + struct.pack("!H", len(server_hello)) + server_hello + application_data


def test_connect_then_tunnel(tmp_path):
    request = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    response = b"HTTP/1.1 200 Connection Established\r\n\r\n"
    client_tunnel = tls_client_hello()
    server_tunnel = tls_server_records()

    # A forward proxy on port 3128, so the run passes --port 3128.
    conv = Conversation(server=("10.0.0.2", 3128))
    conv.handshake()
    conv.client_send(request)
    conv.server_send(response)
    conv.client_send(client_tunnel)
    conv.server_send(server_tunnel)
    conv.close()
    path = tmp_path / "connect.pcap"
    conv.write(path)

    # The row leaves out `path`, because the jsonl format defines it only for
    # origin-form and absolute-form targets, not for an authority-form host:port.
    transactions = run_jsonl(path, port=3128)
    rows = [
        (t["method"], t["status"], t["request_bytes"], t["response_bytes"], t["complete"]) for t in transactions
    ]
    assert rows == [("CONNECT", 200, len(request), len(response), True)]
    exposition = run_prometheus(path, port=3128)
    assert_conservation(exposition)
    assert exposition.unattributed("inbound", "tunnel") == len(client_tunnel)
    assert exposition.unattributed("outbound", "tunnel") == len(server_tunnel)


def test_absolute_form_target(tmp_path):
    request = build_request("GET", "http://example.com/p/q?x=1")
    response = build_response(b"proxied")

    conv = Conversation()
    conv.handshake()
    conv.client_send(request)
    conv.server_send(response)
    conv.close()
    path = tmp_path / "absolute_form.pcap"
    conv.write(path)

    transactions = run_jsonl(path)
    assert_transactions(transactions, [("GET", "/p/q", 200, len(request), len(response), True)])
    assert transactions[0]["endpoint"] == "/p/q"
    assert_conservation(run_prometheus(path))


def test_tls_client_hello_on_http_port(tmp_path):
    hello = tls_client_hello()

    conv = Conversation()
    conv.handshake()
    conv.client_send(hello)
    conv.close(first=SERVER)
    path = tmp_path / "tls_on_80.pcap"
    conv.write(path)

    assert run_jsonl(path) == []
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.unattributed("inbound", "not_http") == len(hello)
    assert exposition.message("inbound") == 0


def test_garbage_then_new_connection(tmp_path):
    garbage = b"\x00\x01\x02\xffnot a request line\r\n\x7f\x80binary\r\n\r\n"
    request = build_request("GET", "/valid")
    response = build_response(b"fine")

    # The server resets the connection that sent garbage, and the client reconnects
    # from another port.
    rejected = Conversation(client=("10.0.0.1", 40001))
    rejected.handshake()
    rejected.client_send(garbage)
    rejected.rst(SERVER)

    accepted = Conversation(client=("10.0.0.1", 40002), t0=rejected.clock + 0.5)
    accepted.handshake()
    accepted.client_send(request)
    accepted.server_send(response)
    accepted.close()

    path = tmp_path / "garbage.pcap"
    write_pcap(path, rejected.packets + accepted.packets)

    assert_transactions(run_jsonl(path), [("GET", "/valid", 200, len(request), len(response), True)])
    exposition = run_prometheus(path)
    assert_conservation(exposition)
    assert exposition.unattributed("inbound", "not_http") == len(garbage)


def test_header_names_case_insensitive(tmp_path):
    request_a = b"POST /form HTTP/1.1\r\nhost: example.com\r\ncontent-length: 11\r\n\r\nhello world"
    response_a = (
        b"HTTP/1.1 200 OK\r\n"
        b"Transfer-encoding: Chunked\r\n"
        b"CONTENT-TYPE: text/plain\r\n"
        b"\r\n"
        b"5\r\nhello\r\n"
        b"0\r\n\r\n"
    )
    request_b = b"GET /mixed HTTP/1.1\r\nHOST: example.com\r\n\r\n"
    response_b = b"HTTP/1.1 200 OK\r\nCoNtEnT-LeNgTh: 3\r\n\r\nabc"

    conv = Conversation()
    conv.handshake()
    conv.client_send(request_a)
    conv.server_send(response_a)
    conv.client_send(request_b)
    conv.server_send(response_b)
    conv.close()
    path = tmp_path / "header_case.pcap"
    conv.write(path)

    assert_transactions(
        run_jsonl(path),
        [
            ("POST", "/form", 200, len(request_a), len(response_a), True),
            ("GET", "/mixed", 200, len(request_b), len(response_b), True),
        ],
    )
    assert_conservation(run_prometheus(path))
