"""Metrics carry only bounded labels: no header values, query strings, bodies or addresses."""

from crafted import Conversation, run_analyze, run_jsonl, write_pcap

SECRETS = {
    "authorization": "Bearer s3cr3t-token-AAAA",
    "cookie": "session=c00kie-value-BBBB",
    "query": "api_key=qu3ry-secret-CCCC",
    "body": "password=b0dy-secret-DDDD",
    "set_cookie": "id=s3t-c00kie-EEEE",
}
CLIENT_IP = "10.66.77.88"


def planted_capture(path):
    body = SECRETS["body"].encode()
    request = (
        f"POST /login?{SECRETS['query']} HTTP/1.1\r\n"
        f"Host: scheduler\r\nAuthorization: {SECRETS['authorization']}\r\n"
        f"Cookie: {SECRETS['cookie']}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    response = (
        f"HTTP/1.1 200 OK\r\nSet-Cookie: {SECRETS['set_cookie']}\r\nContent-Length: 2\r\n\r\nok"
    ).encode()
    conversation = Conversation(client=(CLIENT_IP, 41000))
    conversation.handshake()
    conversation.client_send(request)
    conversation.server_send(response)
    conversation.close()
    write_pcap(path, conversation.packets)
    return request, response


def test_exposition_has_no_planted_secrets(tmp_path):
    capture = tmp_path / "secrets.pcap"
    request, response = planted_capture(capture)

    for output_format in ("prometheus", "openmetrics"):
        text = run_analyze(capture, output_format).stdout
        for name, secret in SECRETS.items():
            assert secret not in text, f"{name} leaked into {output_format}"
            # Neither the distinctive part alone.
            assert secret.split("-")[-1] not in text, f"{name} leaked into {output_format}"
        assert CLIENT_IP not in text
        assert 'endpoint="/login"' in text
        assert f'scheduler_http_request_bytes_total{{endpoint="/login",method="POST"}} {float(len(request))}' in text


def test_jsonl_has_no_header_or_body_values(tmp_path):
    capture = tmp_path / "secrets.pcap"
    planted_capture(capture)

    records = run_jsonl(capture)
    assert len(records) == 1
    text = str(records)
    for name in ("authorization", "cookie", "body", "set_cookie"):
        assert SECRETS[name] not in text, name
    # The jsonl path drops the query string too.
    assert SECRETS["query"] not in text
    assert records[0]["path"] == "/login"
