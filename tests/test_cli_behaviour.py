"""CLI behaviour that is not about byte counts: idle expiry by packet time, progress bar."""

from crafted import Conversation, Exposition, run_analyze, run_jsonl, write_pcap

REQUEST = b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"
PARTIAL_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 500
QUICK_REQUEST = b"GET /quick HTTP/1.1\r\nHost: h\r\n\r\n"
QUICK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def idle_then_busy_capture(path):
    """A connection that stalls mid-response, then another one 400 s later."""
    stalled = Conversation(client=("10.0.0.1", 40000), t0=1_700_000_000.0)
    stalled.handshake()
    stalled.client_send(REQUEST)
    stalled.server_send(PARTIAL_RESPONSE)
    later = Conversation(client=("10.0.0.1", 40001), t0=1_700_000_400.0)
    later.handshake()
    later.client_send(QUICK_REQUEST)
    later.server_send(QUICK_RESPONSE)
    later.close()
    write_pcap(path, stalled.packets + later.packets, retime=False)


def test_idle_connection_expires_by_packet_time(tmp_path):
    capture = tmp_path / "idle.pcap"
    idle_then_busy_capture(capture)

    records = run_jsonl(capture)
    # Expired during the run (packet time passed 300 s), so it comes first.
    assert [record["path"] for record in records] == ["/slow", "/quick"]
    assert records[0]["complete"] is False
    assert records[0]["response_bytes"] == len(PARTIAL_RESPONSE)
    assert records[1]["complete"] is True

    exposition = Exposition(run_analyze(capture, "prometheus").stdout)
    assert exposition.value("netmon_connections_evicted_total", reason="idle") == 1


def test_longer_idle_timeout_keeps_connection(tmp_path):
    capture = tmp_path / "idle.pcap"
    idle_then_busy_capture(capture)

    records = run_jsonl(capture, "--idle-timeout", "1000")
    # Not expired: the stalled transaction is flushed at the end of the capture.
    assert [record["path"] for record in records] == ["/quick", "/slow"]


def test_progress_bar_on_request(tmp_path):
    capture = tmp_path / "idle.pcap"
    idle_then_busy_capture(capture)

    result = run_analyze(capture, "table", "--progress", "always")
    assert "100.0%" in result.stderr
    assert f"{capture.name}: [" in result.stderr


def test_progress_bar_off_without_terminal(tmp_path):
    capture = tmp_path / "idle.pcap"
    idle_then_busy_capture(capture)

    result = run_analyze(capture, "table")
    assert "%" not in result.stderr
