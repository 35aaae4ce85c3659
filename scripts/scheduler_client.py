#!/usr/bin/env python3
"""Socket-level HTTP/1.1 client that sends a seeded random mix of scheduler API requests.

The client writes every request itself and parses every response itself, so it counts the
exact number of bytes of each transaction on the wire:

    request_bytes   request line + headers + blank line + body, chunk framing included
    response_bytes  status line + headers + blank line + body, chunk framing and trailers
                    included, plus any 1xx interim responses before the final one

The mix contains keep-alive connections that carry several requests and connections that
carry one request; requests with query strings; POST bodies framed by Content-Length and by
chunked transfer coding; 404s for unknown ids, paths and methods; HEAD requests; and at
least one request with ``Connection: close``. The same seed sends the same requests.

Used as a module by record_capture.py (see run_mix). Example:

    python3 scripts/scheduler_client.py --requests 50 --seed 1 --port 8080
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

USER_AGENT = "scheduler-client/1.0"
RECV_SIZE = 65536
# Upper bound on a status line, header line, chunk-size line or trailer line.
MAX_LINE_BYTES = 65536
# Ids at or above this value are never allocated in a run, so requests for them get a 404.
UNKNOWN_ID_BASE = 100000

# Relative weight of each request kind in the random part of the mix.
KIND_WEIGHTS = {
    "list_jobs": 12,
    "head": 3,
    "get_job": 20,
    "get_missing_job": 5,
    "create_job": 14,
    "create_job_chunked": 4,
    "register_node": 4,
    "heartbeat": 20,
    "heartbeat_missing_node": 3,
    "list_nodes": 6,
    "unknown_route": 4,
}

LIST_JOBS_TARGETS = (
    "/jobs",
    "/jobs?state=running",
    "/jobs?state=queued&limit=5",
    "/jobs?limit=3",
    "/jobs?state=failed&limit=20",
)

COMMANDS = (
    "python train.py --epochs 10",
    "make -j8 all",
    "/usr/bin/backup --incremental /srv/data",
    "spark-submit etl.py",
    "pytest -q tests/",
)


class ResponseParseError(Exception):
    """The response could not be parsed, or the connection closed before it ended."""


@dataclass
class Transaction:
    """One completed request and response, with their exact sizes in bytes on the wire."""

    method: str
    path: str
    status: int
    request_bytes: int
    response_bytes: int


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    wire_bytes: int
    must_close: bool

    def header(self, name: str) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    # When set, the body is sent with Transfer-Encoding: chunked, one chunk per entry.
    chunks: list[bytes] | None = None
    chunk_extension: str = ""
    trailers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def encode_segments(self) -> list[bytes]:
        """Return the request's bytes, split where the client makes separate send calls.

        A request with a Content-Length body is one segment. A chunked request sends its
        head, each chunk and the last chunk with its trailers in separate calls, as a
        streaming client would.
        """
        head_lines = [f"{self.method} {self.target} HTTP/1.1"]
        head_lines += [f"{name}: {value}" for name, value in self.headers]
        if self.chunks is not None:
            head_lines.append("Transfer-Encoding: chunked")
        elif self.body or self.method in ("POST", "PUT", "PATCH"):
            head_lines.append(f"Content-Length: {len(self.body)}")
        head = ("\r\n".join(head_lines) + "\r\n\r\n").encode("ascii")

        if self.chunks is None:
            return [head + self.body]

        segments = [head]
        for index, chunk in enumerate(self.chunks):
            # Any chunk may carry an extension. This client puts it on the first chunk only.
            extension = self.chunk_extension if index == 0 else ""
            segments.append(b"%x%s\r\n%s\r\n" % (len(chunk), extension.encode("ascii"), chunk))
        trailer_block = "".join(f"{name}: {value}\r\n" for name, value in self.trailers)
        segments.append(b"0\r\n" + trailer_block.encode("ascii") + b"\r\n")
        return segments


class RawConnection:
    """One TCP connection that sends raw request bytes and parses responses byte by byte."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        # Without this, Nagle's algorithm could merge the segments of a chunked request.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.closed_by_peer = False

    def close(self) -> None:
        self.sock.close()

    def send(self, segments: list[bytes]) -> int:
        """Send each segment with its own sendall call and return the total bytes sent."""
        for segment in segments:
            self.sock.sendall(segment)
        return sum(len(segment) for segment in segments)

    def read_response(self, request_method: str) -> Response:
        """Read one final response, and any 1xx interim responses before it.

        The returned wire_bytes counts every byte consumed from the connection for this
        response. Bytes received beyond the end of the response stay buffered for the next.
        """
        wire_bytes = 0
        while True:
            status, headers, head_bytes = self.read_head()
            wire_bytes += head_bytes
            # 101 Switching Protocols ends HTTP on the connection, so it is a final response.
            if 100 <= status < 200 and status != 101:
                continue
            break

        body, body_bytes, close_delimited = self.read_body(request_method, status, headers)
        wire_bytes += body_bytes

        connection_tokens = {
            token.strip().lower()
            for name, value in headers
            if name.lower() == "connection"
            for token in value.split(",")
        }
        must_close = close_delimited or "close" in connection_tokens
        return Response(status, headers, body, wire_bytes, must_close)

    def read_head(self) -> tuple[int, list[tuple[str, str]], int]:
        status_line, consumed = self.read_line()
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ResponseParseError(f"invalid status line {status_line!r}")
        status = int(parts[1])

        headers: list[tuple[str, str]] = []
        while True:
            line, line_bytes = self.read_line()
            consumed += line_bytes
            if line == "":
                return status, headers, consumed
            name, separator, value = line.partition(":")
            if not separator or not name or name != name.strip():
                raise ResponseParseError(f"invalid header line {line!r}")
            headers.append((name, value.strip()))

    def read_body(
        self, request_method: str, status: int, headers: list[tuple[str, str]]
    ) -> tuple[bytes, int, bool]:
        """Read the body by the message body length rules of RFC 9112 section 6.3.

        Responses to HEAD and 1xx, 204 and 304 responses have no body. Otherwise chunked
        transfer coding wins over Content-Length, and without either the body ends when the
        server closes the connection.

        Returns the decoded body, the bytes consumed from the wire and whether the body was
        delimited by the server closing the connection.
        """
        if request_method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return b"", 0, False

        transfer_codings = [
            coding.strip().lower()
            for name, value in headers
            if name.lower() == "transfer-encoding"
            for coding in value.split(",")
        ]
        if transfer_codings:
            if transfer_codings[-1] == "chunked":
                body, consumed = self.read_chunked_body()
                return body, consumed, False
            return self.read_until_close()

        lengths = {value.strip() for name, value in headers if name.lower() == "content-length"}
        if len(lengths) > 1:
            raise ResponseParseError(f"conflicting Content-Length values {sorted(lengths)}")
        if lengths:
            length_text = lengths.pop()
            if not length_text.isdigit():
                raise ResponseParseError(f"invalid Content-Length {length_text!r}")
            length = int(length_text)
            return self.read_exact(length), length, False

        return self.read_until_close()

    def read_chunked_body(self) -> tuple[bytes, int]:
        body = bytearray()
        consumed = 0
        while True:
            size_line, line_bytes = self.read_line()
            consumed += line_bytes
            size_text = size_line.split(";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ResponseParseError(f"invalid chunk size line {size_line!r}") from None
            if size == 0:
                break
            body += self.read_exact(size)
            if self.read_exact(2) != b"\r\n":
                raise ResponseParseError("chunk data not followed by CRLF")
            consumed += size + 2

        # The trailer section: zero or more fields, then an empty line.
        while True:
            line, line_bytes = self.read_line()
            consumed += line_bytes
            if line == "":
                return bytes(body), consumed

    def read_until_close(self) -> tuple[bytes, int, bool]:
        while self.fill():
            pass
        body = bytes(self.buffer)
        self.buffer.clear()
        return body, len(body), True

    def read_line(self) -> tuple[str, int]:
        """Return one CRLF-terminated line without its CRLF, and its length including CRLF."""
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                break
            if len(self.buffer) > MAX_LINE_BYTES:
                raise ResponseParseError(f"line longer than {MAX_LINE_BYTES} bytes")
            if not self.fill():
                raise ResponseParseError("connection closed in the middle of a response line")
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line.decode("latin-1"), end + 2

    def read_exact(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not self.fill():
                raise ResponseParseError(
                    f"connection closed after {len(self.buffer)} of {count} body bytes"
                )
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def fill(self) -> bool:
        """Receive more bytes into the buffer. Return False once the peer has closed the connection."""
        if self.closed_by_peer:
            return False
        data = self.sock.recv(RECV_SIZE)
        if not data:
            self.closed_by_peer = True
            return False
        self.buffer += data
        return True


class RequestMix:
    """Seeded generator of scheduler requests that tracks the job and node ids created."""

    def __init__(self, host: str, port: int, rng: random.Random) -> None:
        self.host_header = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        self.rng = rng
        self.job_ids: list[int] = []
        self.node_ids: list[int] = []

    def plan_kinds(self, count: int) -> list[str]:
        """Return ``count`` request kinds.

        The first two create a node and a job, so later requests have ids to use. When
        ``count`` allows, every kind appears at least once, and the rest are drawn by weight.
        """
        opening = ["register_node", "create_job"]
        names = list(KIND_WEIGHTS)
        weights = list(KIND_WEIGHTS.values())
        if count < len(opening) + len(names):
            return (opening + self.rng.choices(names, weights, k=count))[:count]

        rest = names + self.rng.choices(names, weights, k=count - len(opening) - len(names))
        self.rng.shuffle(rest)
        return opening + rest

    def build(self, kind: str) -> Request:
        builder = getattr(self, f"build_{kind}")
        request: Request = builder()
        request.headers[:0] = [
            ("Host", self.host_header),
            ("User-Agent", USER_AGENT),
            ("Accept", "application/json"),
        ]
        return request

    def record_response(self, request: Request, response: Response) -> None:
        """Remember the ids of jobs and nodes that the server created."""
        if response.status != 201 or request.method != "POST":
            return
        created = json.loads(response.body)
        if request.path == "/jobs":
            self.job_ids.append(created["id"])
        elif request.path == "/nodes/register":
            self.node_ids.append(created["id"])

    def unknown_id(self) -> int:
        return UNKNOWN_ID_BASE + self.rng.randrange(900000)

    def build_list_jobs(self) -> Request:
        request = Request("GET", self.rng.choice(LIST_JOBS_TARGETS))
        if self.rng.random() < 0.5:
            # A sender of TE must also list "TE" in Connection (RFC 7230 section 4.3).
            request.headers += [("TE", "trailers"), ("Connection", "TE")]
        return request

    def build_head(self) -> Request:
        if self.job_ids and self.rng.random() < 0.5:
            return Request("HEAD", f"/jobs/{self.rng.choice(self.job_ids)}")
        # HEAD on the chunked list route returns Transfer-Encoding: chunked and no body.
        return Request("HEAD", "/jobs")

    def build_get_job(self) -> Request:
        job_id = self.rng.choice(self.job_ids) if self.job_ids else self.unknown_id()
        query = "?fields=all" if self.rng.random() < 0.2 else ""
        return Request("GET", f"/jobs/{job_id}{query}")

    def build_get_missing_job(self) -> Request:
        return Request("GET", f"/jobs/{self.unknown_id()}")

    def job_spec(self) -> bytes:
        spec = {
            "name": f"job-{self.rng.randrange(10000):04d}",
            "command": self.rng.choice(COMMANDS),
            "priority": self.rng.randint(0, 9),
            "cpus": self.rng.choice((1, 2, 4, 8)),
        }
        return json.dumps(spec).encode()

    def build_create_job(self) -> Request:
        return Request(
            "POST", "/jobs", headers=[("Content-Type", "application/json")], body=self.job_spec()
        )

    def build_create_job_chunked(self) -> Request:
        body = self.job_spec()
        cut_points = sorted(self.rng.sample(range(1, len(body)), self.rng.randint(1, 3)))
        chunks = [body[start:end] for start, end in zip([0] + cut_points, cut_points + [len(body)])]
        request = Request("POST", "/jobs", headers=[("Content-Type", "application/json")], chunks=chunks)
        if self.rng.random() < 0.3:
            request.chunk_extension = ";source=stream"
        if self.rng.random() < 0.3:
            request.headers.append(("Trailer", "X-Checksum"))
            request.trailers.append(("X-Checksum", f"{sum(body) % 65536:04x}"))
        return request

    def build_register_node(self) -> Request:
        spec = {"hostname": f"worker-{self.rng.randrange(1000):03d}", "cpus": self.rng.choice((4, 8, 16, 32))}
        return Request(
            "POST",
            "/nodes/register",
            headers=[("Content-Type", "application/json")],
            body=json.dumps(spec).encode(),
        )

    def heartbeat_request(self, node_id: int) -> Request:
        status = {"load": round(self.rng.uniform(0, 4), 2), "running_jobs": self.rng.randint(0, 8)}
        return Request(
            "POST",
            f"/nodes/{node_id}/heartbeat",
            headers=[("Content-Type", "application/json")],
            body=json.dumps(status).encode(),
        )

    def build_heartbeat(self) -> Request:
        node_id = self.rng.choice(self.node_ids) if self.node_ids else self.unknown_id()
        return self.heartbeat_request(node_id)

    def build_heartbeat_missing_node(self) -> Request:
        return self.heartbeat_request(self.unknown_id())

    def build_list_nodes(self) -> Request:
        return Request("GET", "/nodes")

    def build_unknown_route(self) -> Request:
        choice = self.rng.randrange(5)
        if choice == 0:
            return Request("GET", "/metrics")
        if choice == 1:
            return Request("GET", "/api/v2/jobs?state=running")
        if choice == 2:
            return Request("DELETE", f"/jobs/{self.rng.choice(self.job_ids or [1])}")
        if choice == 3:
            return Request("GET", "/jobs/latest")
        return Request(
            "POST",
            "/jobs/1/cancel",
            headers=[("Content-Type", "application/json")],
            body=b'{"reason":"manual"}',
        )


def plan_connections(count: int, rng: random.Random) -> list[int]:
    """Split ``count`` requests into connections and return the requests per connection.

    About half of the connections carry one request and the others carry 2 to 12.
    """
    sizes = []
    remaining = count
    while remaining:
        size = 1 if rng.random() < 0.5 else rng.randint(2, 12)
        size = min(size, remaining)
        sizes.append(size)
        remaining -= size
    return sizes


def run_mix(host: str, port: int, requests: int, seed: int, timeout: float = 10.0) -> list[Transaction]:
    """Send ``requests`` requests to the scheduler server and return them in completion order.

    Raises ResponseParseError or OSError when the server misbehaves or cannot be reached.
    """
    if requests < 1:
        raise ValueError(f"requests must be at least 1, got {requests}")
    rng = random.Random(seed)
    mix = RequestMix(host, port, rng)
    kinds = iter(mix.plan_kinds(requests))
    connection_sizes = plan_connections(requests, rng)
    transactions: list[Transaction] = []
    sent_close = False

    for connection_index, size in enumerate(connection_sizes):
        connection = RawConnection(host, port, timeout)
        try:
            for position in range(size):
                request = mix.build(next(kinds))
                is_last_on_connection = position == size - 1
                is_last_of_run = is_last_on_connection and connection_index == len(connection_sizes) - 1
                close_probability = 0.5 if size == 1 else 0.3
                if is_last_on_connection and (
                    rng.random() < close_probability or (is_last_of_run and not sent_close)
                ):
                    # A request with TE has "Connection: TE" already; replace it rather than
                    # send two Connection fields.
                    request.headers = [(n, v) for n, v in request.headers if n not in ("TE", "Connection")]
                    request.headers.append(("Connection", "close"))
                    sent_close = True

                request_bytes = connection.send(request.encode_segments())
                response = connection.read_response(request.method)
                mix.record_response(request, response)
                transaction = Transaction(
                    request.method, request.path, response.status, request_bytes, response.wire_bytes
                )
                transactions.append(transaction)

                if response.must_close and not is_last_on_connection:
                    raise ResponseParseError(
                        f"server closed the connection after {request.method} {request.target} "
                        f"although the client asked for keep-alive"
                    )
        finally:
            connection.close()

    return transactions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="server address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="server TCP port (default: 8080)")
    parser.add_argument("--requests", type=int, default=100, help="number of requests to send (default: 100)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random request mix (default: 1)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="socket timeout in seconds for connect and recv (default: 10)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print every transaction as a JSON list instead of a summary"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        transactions = run_mix(args.host, args.port, args.requests, args.seed, args.timeout)
    except (OSError, ResponseParseError) as error:
        print(f"error: request mix against {args.host} port {args.port} failed: {error}", file=sys.stderr)
        return 1

    if args.json:
        json.dump([asdict(transaction) for transaction in transactions], sys.stdout, indent=1)
        print()
        return 0

    statuses = Counter(transaction.status for transaction in transactions)
    methods = Counter(transaction.method for transaction in transactions)
    print(f"requests: {len(transactions)}")
    print(f"request bytes: {sum(t.request_bytes for t in transactions)}")
    print(f"response bytes: {sum(t.response_bytes for t in transactions)}")
    print("by method: " + ", ".join(f"{method}={count}" for method, count in sorted(methods.items())))
    print("by status: " + ", ".join(f"{status}={count}" for status, count in sorted(statuses.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
