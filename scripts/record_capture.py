#!/usr/bin/env python3
"""Record a pcap of scheduler API traffic on loopback, with the exact byte counts beside it.

The script starts scheduler_server.py on 127.0.0.1, starts tcpdump on the loopback interface
for the server's port, sends the request mix of scheduler_client.py and stops tcpdump with
SIGINT. It then writes OUT with the suffix replaced by ``.truth.json``, which lists every
transaction in the order the client completed it, the sums per (method, path, status) and
the totals. Byte counts are HTTP message bytes (head and body with chunk framing), not
TCP/IP bytes.

It fails, and removes the capture, when tcpdump reports any packet dropped by the kernel.
Must run as root, because tcpdump needs capture privileges. Example:

    sudo python3 scripts/record_capture.py --out pcaps/scheduler-small.pcap --requests 300 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from scheduler_client import ResponseParseError, Transaction, run_mix

SCRIPTS_DIR = Path(__file__).resolve().parent
SERVER_SCRIPT = SCRIPTS_DIR / "scheduler_server.py"
HOST = "127.0.0.1"
PREFERRED_PORT = 8080
STARTUP_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0


class RecordingError(Exception):
    """Failure of one recording step. The message names the step and the next action."""


def start_server(port: int) -> tuple[subprocess.Popen, int]:
    """Start the scheduler server and return the process and the port it listens on.

    The server prints "listening on HOST port PORT" to stdout once its socket is bound.
    Raises RecordingError when the server exits or stays silent for STARTUP_TIMEOUT_SECONDS.
    """
    command = [
        sys.executable, str(SERVER_SCRIPT), "--host", HOST, "--port", str(port), "--log-level", "WARNING"
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout=STARTUP_TIMEOUT_SECONDS)
    line = process.stdout.readline() if ready else ""

    match = re.fullmatch(r"listening on \S+ port (\d+)\n", line)
    if match is None:
        stop_process(process, signal.SIGINT)
        raise RecordingError(f"scheduler server did not start on {HOST} port {port} (output: {line!r})")
    return process, int(match.group(1))


def start_server_on_free_port(requested_port: int | None) -> tuple[subprocess.Popen, int]:
    if requested_port is not None:
        return start_server(requested_port)
    try:
        return start_server(PREFERRED_PORT)
    except RecordingError:
        print(f"server failed to start on port {PREFERRED_PORT}, retrying with a free port", file=sys.stderr)
        return start_server(0)


class TcpdumpCapture:
    """A running tcpdump process, with a thread that collects its stderr lines."""

    def __init__(self, tcpdump: str, out: Path, port: int) -> None:
        command = [tcpdump, "-i", "lo", "-w", str(out), "-U", "-s", "0", f"tcp port {port}"]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.stderr_lines: list[str] = []
        self.listening = threading.Event()
        self.reader = threading.Thread(target=self.read_stderr, daemon=True)
        self.reader.start()

    def read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr_lines.append(line.rstrip("\n"))
            if "listening on" in line:
                self.listening.set()
        # Also wakes wait_until_listening when tcpdump exits without listening.
        self.listening.set()

    def wait_until_listening(self) -> None:
        if not self.listening.wait(STARTUP_TIMEOUT_SECONDS) or not any(
            "listening on" in line for line in self.stderr_lines
        ):
            stop_process(self.process, signal.SIGINT)
            raise RecordingError("tcpdump did not start listening:\n" + "\n".join(self.stderr_lines))

    def stop(self) -> dict[str, int]:
        """Stop tcpdump with SIGINT and return the packet statistics it prints on exit.

        The keys are the statistic names tcpdump prints, for example "captured",
        "received by filter" and "dropped by kernel".
        """
        returncode = stop_process(self.process, signal.SIGINT)
        self.reader.join(STOP_TIMEOUT_SECONDS)
        output = "\n".join(self.stderr_lines)
        if returncode != 0:
            raise RecordingError(f"tcpdump exited with status {returncode}:\n{output}")

        statistics: dict[str, int] = {}
        for count, name in re.findall(r"^(\d+) packets? (.+)$", output, flags=re.MULTILINE):
            statistics[name] = int(count)
        if "dropped by kernel" not in statistics:
            raise RecordingError(f"tcpdump did not report 'packets dropped by kernel':\n{output}")
        return statistics


def stop_process(process: subprocess.Popen, stop_signal: int) -> int:
    """Send ``stop_signal`` to the process and return its exit status.

    Raises RecordingError after killing the process when it is still running after
    STOP_TIMEOUT_SECONDS.
    """
    if process.poll() is None:
        process.send_signal(stop_signal)
    try:
        return process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RecordingError(
            f"process {process.args[0]} ignored signal {stop_signal} and was killed"
        ) from None


def build_truth(port: int, requests: int, seed: int, transactions: list[Transaction]) -> dict:
    by_key: dict[tuple[str, str, int], dict] = {}
    for transaction in transactions:
        key = (transaction.method, transaction.path, transaction.status)
        entry = by_key.setdefault(
            key,
            {
                "method": transaction.method,
                "path": transaction.path,
                "status": transaction.status,
                "requests": 0,
                "request_bytes": 0,
                "response_bytes": 0,
            },
        )
        entry["requests"] += 1
        entry["request_bytes"] += transaction.request_bytes
        entry["response_bytes"] += transaction.response_bytes

    return {
        "port": port,
        "requests": requests,
        "seed": seed,
        "transactions": [asdict(transaction) for transaction in transactions],
        "by_key": [by_key[key] for key in sorted(by_key)],
        "totals": {
            "requests": len(transactions),
            "request_bytes": sum(transaction.request_bytes for transaction in transactions),
            "response_bytes": sum(transaction.response_bytes for transaction in transactions),
        },
    }


def format_truth(truth: dict) -> str:
    """Format the truth as JSON with one list entry per line, so that diffs stay readable."""
    fields = []
    for key, value in truth.items():
        if isinstance(value, list):
            entries = ",\n  ".join(json.dumps(entry) for entry in value)
            fields.append(f"{json.dumps(key)}: [\n  {entries}\n ]")
        else:
            fields.append(f"{json.dumps(key)}: {json.dumps(value)}")
    return "{\n " + ",\n ".join(fields) + "\n}\n"


def truth_path_for(capture: Path) -> Path:
    return capture.with_suffix(".truth.json")


def record(
    out: Path, requests: int, seed: int, port: int | None, tcpdump: str, settle_seconds: float
) -> dict:
    """Record one capture into ``out``, write its truth file and return the truth."""
    truth_path = truth_path_for(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A truth file from an earlier run must not survive next to a new or failed capture.
    truth_path.unlink(missing_ok=True)

    server, port = start_server_on_free_port(port)
    try:
        capture = TcpdumpCapture(tcpdump, out, port)
        capture.wait_until_listening()
        try:
            transactions = run_mix(HOST, port, requests, seed)
        except (OSError, ResponseParseError) as error:
            stop_process(capture.process, signal.SIGINT)
            out.unlink(missing_ok=True)
            raise RecordingError(
                f"request mix against {HOST} port {port} failed, so {out} was removed: {error}"
            ) from error
        # Give tcpdump time to see the last FIN and ACK segments before it stops.
        time.sleep(settle_seconds)
        statistics = capture.stop()
    finally:
        stop_process(server, signal.SIGINT)

    dropped = statistics["dropped by kernel"] + statistics.get("dropped by interface", 0)
    if dropped:
        out.unlink(missing_ok=True)
        raise RecordingError(
            f"tcpdump reported {dropped} dropped packets ({statistics}), so the capture is incomplete "
            f"and {out} was removed. Rerun on a less busy machine."
        )

    # tcpdump creates the file as root, then chowns it to the user it drops privileges to
    # ("tcpdump" in Debian's 4.99 package). Hand it back to the user running this script.
    os.chown(out, os.geteuid(), os.getegid())

    truth = build_truth(port, requests, seed, transactions)
    truth_path.write_text(format_truth(truth))
    print(
        f"wrote {out} ({statistics.get('captured', 0)} packets) and {truth_path}: "
        f"{truth['totals']['requests']} requests, {truth['totals']['request_bytes']} request bytes, "
        f"{truth['totals']['response_bytes']} response bytes on port {port}"
    )
    return truth


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="pcap file to write. The truth file goes next to it, with the suffix .truth.json",
    )
    parser.add_argument("--requests", type=int, default=300, help="number of requests to send (default: 300)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random request mix (default: 1)")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"server TCP port (default: {PREFERRED_PORT} when free, otherwise a free port)",
    )
    parser.add_argument("--tcpdump", default="tcpdump", help="tcpdump executable (default: tcpdump on PATH)")
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=1.0,
        help="seconds to wait after the last response before stopping tcpdump (default: 1)",
    )
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error(f"--requests must be at least 1, got {args.requests}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    if os.geteuid() != 0:
        print(
            "error: record_capture.py must run as root, because tcpdump needs privileges to capture "
            "on the loopback interface. Rerun it with sudo.",
            file=sys.stderr,
        )
        return 2
    tcpdump = shutil.which(args.tcpdump)
    if tcpdump is None:
        print(
            f"error: tcpdump executable {args.tcpdump!r} not found. Install tcpdump or pass --tcpdump PATH.",
            file=sys.stderr,
        )
        return 2

    try:
        record(args.out, args.requests, args.seed, args.port, tcpdump, args.settle_seconds)
    except RecordingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
