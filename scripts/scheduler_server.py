#!/usr/bin/env python3
"""HTTP/1.1 server that imitates the master API of a distributed job scheduler.

It exists to produce realistic traffic for the bundled captures in pcaps/. The routes are:

    POST /jobs                   201, JSON with the new job id
    GET  /jobs                   200, JSON list sent with Transfer-Encoding: chunked
    GET  /jobs/{id}              200 JSON, or 404 for an unknown id
    POST /nodes/register         201, JSON with the new node id
    POST /nodes/{id}/heartbeat   200, or 404 for an unknown node id
    GET  /nodes                  200, JSON list

HEAD works on every GET route and sends the GET headers without a body. Every other method
or path gets a 404 JSON response. Connections stay open (HTTP/1.1 keep-alive) until the client
sends ``Connection: close`` or closes the socket. Request bodies are read by Content-Length or
by ``Transfer-Encoding: chunked``.

Only the standard library is used. Example:

    python3 scripts/scheduler_server.py --host 127.0.0.1 --port 8080
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger("scheduler_server")

JOB_STATES = ("queued", "running", "succeeded", "failed")
DEFAULT_LIST_LIMIT = 10
MAX_LIST_LIMIT = 50
# Upper bound on a request body, so that a broken client cannot make the server buffer
# without limit.
MAX_BODY_BYTES = 1 << 20
# Maximum length of one chunk-size line or trailer line in a chunked request body.
MAX_LINE_BYTES = 8192

JOB_PATH = re.compile(r"^/jobs/(\d+)$")
HEARTBEAT_PATH = re.compile(r"^/nodes/(\d+)/heartbeat$")


class BadRequest(Exception):
    """Invalid request framing or body. The handler responds with 400.

    After a framing error the handler also closes the connection, because it can no longer
    tell where the next request starts.
    """


class SchedulerState:
    """In-memory jobs and nodes, shared by all handler threads under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[int, dict] = {}
        self.nodes: dict[int, dict] = {}
        self.next_job_id = 1
        self.next_node_id = 1

    def create_job(self, spec: dict) -> dict:
        with self.lock:
            job_id = self.next_job_id
            self.next_job_id += 1
            job = {
                "id": job_id,
                "name": str(spec.get("name", f"job-{job_id}")),
                "command": str(spec.get("command", "true")),
                "priority": int(spec.get("priority", 0)),
                "cpus": int(spec.get("cpus", 1)),
                # The state cycles so that list filters by state return a mix of jobs.
                "state": JOB_STATES[job_id % len(JOB_STATES)],
            }
            self.jobs[job_id] = job
            return dict(job)

    def get_job(self, job_id: int) -> dict | None:
        with self.lock:
            job = self.jobs.get(job_id)
            return dict(job) if job is not None else None

    def list_jobs(self, state: str | None, limit: int) -> list[dict]:
        """Return up to ``limit`` of the newest jobs, optionally only those in ``state``."""
        with self.lock:
            selected = [
                dict(job)
                for job in reversed(self.jobs.values())
                if state is None or job["state"] == state
            ]
        return selected[:limit]

    def register_node(self, spec: dict) -> dict:
        with self.lock:
            node_id = self.next_node_id
            self.next_node_id += 1
            node = {
                "id": node_id,
                "hostname": str(spec.get("hostname", f"node-{node_id}")),
                "cpus": int(spec.get("cpus", 1)),
                "heartbeats": 0,
            }
            self.nodes[node_id] = node
            return dict(node)

    def record_heartbeat(self, node_id: int) -> dict | None:
        with self.lock:
            node = self.nodes.get(node_id)
            if node is None:
                return None
            node["heartbeats"] += 1
            return dict(node)

    def list_nodes(self) -> list[dict]:
        with self.lock:
            return [dict(node) for node in self.nodes.values()]


class SchedulerHandler(BaseHTTPRequestHandler):
    """Request handler for the scheduler routes. One instance serves one connection."""

    protocol_version = "HTTP/1.1"
    server_version = "scheduler-master/1.0"
    # Each write goes out at once, so that chunked responses leave as separate TCP segments.
    disable_nagle_algorithm = True
    server: SchedulerHTTPServer

    def version_string(self) -> str:
        # The default adds the Python version, which would make the capture bytes depend
        # on the interpreter that recorded them.
        return self.server_version

    def log_message(self, format: str, *args) -> None:
        logger.info("%s %s", self.address_string(), format % args)

    # BaseHTTPRequestHandler dispatches on do_<METHOD>. All methods share one router so that
    # an unknown method gets the same 404 as an unknown path instead of the base class's 501.
    def do_GET(self) -> None:
        self.handle_request()

    def do_HEAD(self) -> None:
        self.handle_request()

    def do_POST(self) -> None:
        self.handle_request()

    def do_PUT(self) -> None:
        self.handle_request()

    def do_DELETE(self) -> None:
        self.handle_request()

    def do_PATCH(self) -> None:
        self.handle_request()

    def handle_request(self) -> None:
        try:
            body = self.read_request_body()
        except BadRequest as error:
            logger.warning("rejected request %s %s: %s", self.command, self.path, error)
            self.close_connection = True
            self.send_json(400, {"error": "bad request", "detail": str(error)})
            return

        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path
        method = "GET" if self.command == "HEAD" else self.command

        try:
            self.route(method, path, query, body)
        except BadRequest as error:
            logger.warning("rejected request %s %s: %s", self.command, self.path, error)
            self.send_json(400, {"error": "bad request", "detail": str(error)})

    def route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
        state = self.server.state

        if path == "/jobs" and method == "POST":
            job = state.create_job(parse_json_object(body))
            self.send_json(201, job)
            return

        if path == "/jobs" and method == "GET":
            state_filter = query.get("state", [None])[0]
            limit = parse_limit(query.get("limit", [str(DEFAULT_LIST_LIMIT)])[0])
            self.send_job_list(state.list_jobs(state_filter, limit))
            return

        match = JOB_PATH.match(path)
        if match and method == "GET":
            job = state.get_job(int(match.group(1)))
            if job is None:
                self.send_json(404, {"error": "job not found", "id": int(match.group(1))})
            else:
                self.send_json(200, job)
            return

        if path == "/nodes/register" and method == "POST":
            node = state.register_node(parse_json_object(body))
            self.send_json(201, node)
            return

        match = HEARTBEAT_PATH.match(path)
        if match and method == "POST":
            node = state.record_heartbeat(int(match.group(1)))
            if node is None:
                self.send_json(404, {"error": "node not found", "id": int(match.group(1))})
            else:
                self.send_json(200, {"id": node["id"], "heartbeats": node["heartbeats"]})
            return

        if path == "/nodes" and method == "GET":
            self.send_json(200, {"nodes": state.list_nodes()})
            return

        self.send_json(404, {"error": "not found", "method": self.command, "path": path})

    def read_request_body(self) -> bytes:
        """Read the request body by Transfer-Encoding: chunked or Content-Length.

        Raises BadRequest when the framing is invalid or the body exceeds MAX_BODY_BYTES.
        """
        transfer_encoding = self.headers.get("Transfer-Encoding")
        if transfer_encoding is not None:
            codings = [coding.strip().lower() for coding in transfer_encoding.split(",")]
            if codings[-1] != "chunked":
                raise BadRequest(f"unsupported Transfer-Encoding {transfer_encoding!r}")
            return self.read_chunked_body()

        content_length = self.headers.get("Content-Length")
        if content_length is None:
            return b""
        if not content_length.strip().isdigit():
            raise BadRequest(f"invalid Content-Length {content_length!r}")
        length = int(content_length)
        if length > MAX_BODY_BYTES:
            raise BadRequest(f"body of {length} bytes exceeds the limit of {MAX_BODY_BYTES}")
        body = self.rfile.read(length)
        if len(body) != length:
            raise BadRequest(f"connection closed after {len(body)} of {length} body bytes")
        return body

    def read_chunked_body(self) -> bytes:
        body = bytearray()
        while True:
            size_line = self.read_line()
            size_text = size_line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadRequest(f"invalid chunk size line {size_line!r}") from None
            if size == 0:
                break
            if len(body) + size > MAX_BODY_BYTES:
                raise BadRequest(f"chunked body exceeds the limit of {MAX_BODY_BYTES} bytes")
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise BadRequest("connection closed inside a chunk")
            body += chunk
            if self.rfile.read(2) != b"\r\n":
                raise BadRequest("chunk data not followed by CRLF")

        # Trailer fields follow the last chunk and end with an empty line. They are discarded.
        while self.read_line() != b"":
            pass
        return bytes(body)

    def read_line(self) -> bytes:
        line = self.rfile.readline(MAX_LINE_BYTES + 1)
        if not line.endswith(b"\n"):
            raise BadRequest("line too long or connection closed in a chunked body")
        return line.rstrip(b"\r\n")

    def send_common_headers(self, status: int) -> None:
        self.send_response(status)
        # parse_request sets close_connection for "Connection: close" and for HTTP/1.0 requests
        # without keep-alive. handle_request sets it after a framing error.
        if self.close_connection:
            self.send_header("Connection", "close")

    def send_json(self, status: int, payload: object) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
        self.send_common_headers(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_job_list(self, jobs: list[dict]) -> None:
        """Send the job list with chunked framing, one chunk per job plus the brackets.

        When the request carries ``TE: trailers``, the last chunk is followed by an
        ``X-Job-Count`` trailer field.
        """
        send_trailer = "trailers" in self.headers.get("TE", "").lower()
        self.send_common_headers(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        if send_trailer:
            self.send_header("Trailer", "X-Job-Count")
        self.end_headers()
        if self.command == "HEAD":
            return

        pieces = [b'{"jobs":[']
        for index, job in enumerate(jobs):
            separator = b"," if index else b""
            pieces.append(separator + json.dumps(job, separators=(",", ":")).encode())
        pieces.append(b"]}\n")

        for piece in pieces:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        trailer = b"X-Job-Count: %d\r\n" % len(jobs) if send_trailer else b""
        self.wfile.write(b"0\r\n" + trailer + b"\r\n")


class SchedulerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, SchedulerHandler)
        self.state = SchedulerState()


def parse_json_object(body: bytes) -> dict:
    if not body:
        return {}
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    return value


def parse_limit(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise BadRequest(f"invalid limit {text!r}, expected a positive integer")
    return min(int(text), MAX_LIST_LIMIT)


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8080, help="TCP port to listen on, or 0 for any free port (default: 8080)"
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="minimum level of log messages on stderr; INFO includes one line per request (default: INFO)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    try:
        server = SchedulerHTTPServer((args.host, args.port))
    except OSError as error:
        logger.error("failed to listen on %s port %d: %s", args.host, args.port, error)
        return 1

    # Python installs its SIGINT handler only when SIGINT is not ignored at startup, and shells
    # start background jobs with SIGINT ignored. Install the handlers explicitly, so that SIGINT
    # and SIGTERM stop the server wherever it was started.
    signal.signal(signal.SIGINT, raise_keyboard_interrupt)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)

    host, port = server.server_address[:2]
    # record_capture.py reads this line from stdout to learn the port, so keep its format.
    print(f"listening on {host} port {port}", flush=True)
    logger.info("started on %s port %d", host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        logger.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
