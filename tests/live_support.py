"""Helpers shared by the live-agent tests: commands, ports and background processes."""

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def netmon_command(*arguments):
    return [sys.executable, "-m", "netmon", *arguments]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running(command):
    """Run ``command`` in the background with stderr in a file; kill it on exit if still running."""
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, text=True, cwd=ROOT)

        def read_stderr():
            stderr.flush()
            stderr.seek(0)
            return stderr.read()

        process.read_stderr = read_stderr
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)


def wait_for(condition, timeout, message):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(message)
