"""Write the seed inputs of the fuzz targets into fuzz/seeds/.

    python3 fuzz/make_seeds.py

The seeds are committed, so run this only after changing an input layout or
adding a case. HTTP seeds are complete conversations in the layout of
fuzz_http.py. Pipeline seeds are a synthetic keep-alive connection as TCP
segment records, once per link layout, and the first packets of
pcaps/scheduler-small.pcap as raw frame records. fuzz_pipeline.py describes
both record kinds.
"""

import struct
import sys
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
REPO_ROOT = FUZZ_DIR.parent
sys.path.insert(0, str(REPO_ROOT))

from netmon.capture import CaptureFile  # noqa: E402

# Configuration bits of fuzz_http.py's first input byte.
REQUEST_PARSER = 1
MIDSTREAM = 2
ANSWERS_GET = 0 << 2
ANSWERS_HEAD = 1 << 2
ANSWERS_CONNECT = 2 << 2
RESET = 16

# (name, configuration byte, operation bytes, stream)
HTTP_SEEDS = [
    (
        "requests-keepalive",
        REQUEST_PARSER,
        bytes([0 | (3 << 2), 2 | (2 << 2), 1 | (10 << 2)]),
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
        b"PUT /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
    ),
    (
        "request-expect-continue",
        REQUEST_PARSER,
        bytes([0 | (6 << 2)]),
        b"POST /upload HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
    ),
    (
        "request-upgrade-tunnel",
        REQUEST_PARSER,
        bytes([0 | (8 << 2), 3, 0 | (2 << 2)]),
        b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    ),
    (
        "request-midstream",
        REQUEST_PARSER | MIDSTREAM,
        b"",
        b"tail of an earlier body\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "response-chunked-trailer",
        ANSWERS_GET,
        bytes([0 | (4 << 2), 1 | (1 << 2), 0 | (1 << 2)]),
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"1A\r\nabcdefghijklmnopqrstuvwxyz\r\n3;name=\"v\"\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
    ),
    (
        "response-content-length-gap",
        ANSWERS_GET,
        bytes([0 | (7 << 2), 2 | (3 << 2)]),
        b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n" + b"b" * 30
        + b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "response-head",
        ANSWERS_HEAD,
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    ),
    (
        "response-connect-tunnel",
        ANSWERS_CONNECT,
        b"",
        b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x01\x00\x05hello",
    ),
    (
        "response-until-close",
        ANSWERS_GET | RESET,
        bytes([0 | (5 << 2)]),
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody until the connection closes",
    ),
]


def http_seed(configuration, operations, stream):
    return bytes([configuration, len(operations)]) + operations + stream


# -- pipeline seeds --------------------------------------------------------

SYN, FIN, RST, PSH, ACK = 0x02, 0x01, 0x04, 0x08, 0x10


def segment_record(from_server, connection, link, flags, payload=b"", offset=0, cut=0, step=1):
    kind = (from_server & 1) | ((connection & 3) << 1) | ((link & 7) << 3)
    return (
        bytes([kind, flags])
        + struct.pack("!hBH", offset, cut, len(payload))
        + payload
        + bytes([step])
    )


def raw_frame_record(linktype_index, frame, step=1):
    return bytes([0x80 | linktype_index]) + struct.pack("!H", len(frame)) + frame + bytes([step])


def keepalive_seed(link):
    request = b"GET /jobs HTTP/1.1\r\nHost: x\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    records = [
        segment_record(0, 0, link, SYN),
        segment_record(1, 0, link, SYN | ACK),
        segment_record(0, 0, link, ACK),
        segment_record(0, 0, link, PSH | ACK, request[:10]),
        segment_record(0, 0, link, PSH | ACK, request[10:]),
        segment_record(1, 0, link, PSH | ACK, response[20:], offset=20),
        segment_record(1, 0, link, PSH | ACK, response[:20]),
        # The out-of-order segment again, now in order, then the whole response retransmitted.
        segment_record(1, 0, link, PSH | ACK, response[20:]),
        segment_record(1, 0, link, PSH | ACK, response, offset=-len(response)),
        segment_record(0, 0, link, FIN | ACK),
        segment_record(1, 0, link, FIN | ACK),
    ]
    return b"".join(records)


def scheduler_seed(count):
    """Return the first `count` packets of the small scheduler capture as raw Ethernet frames."""
    capture = CaptureFile(REPO_ROOT / "pcaps" / "scheduler-small.pcap").open()
    records = []
    try:
        for index, (_, linktype, frame, _) in enumerate(capture):
            if index == count:
                break
            assert linktype == 1, linktype
            records.append(raw_frame_record(0, frame))
    finally:
        capture.close()
    return b"".join(records)


def main():
    http_dir = FUZZ_DIR / "seeds" / "http"
    pipeline_dir = FUZZ_DIR / "seeds" / "pipeline"
    http_dir.mkdir(parents=True, exist_ok=True)
    pipeline_dir.mkdir(parents=True, exist_ok=True)
    for name, configuration, operations, stream in HTTP_SEEDS:
        (http_dir / name).write_bytes(http_seed(configuration, operations, stream))
    for link in range(8):
        (pipeline_dir / f"keepalive-link{link}").write_bytes(keepalive_seed(link))
    (pipeline_dir / "scheduler-small-first-60").write_bytes(scheduler_seed(60))
    print(f"wrote {len(HTTP_SEEDS)} HTTP seeds to {http_dir} and 9 pipeline seeds to {pipeline_dir}")


if __name__ == "__main__":
    main()
